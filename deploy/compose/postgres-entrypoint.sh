#!/bin/sh
# First start: initdb with the password from $POSTGRES_PASSWORD_FILE and create
# $POSTGRES_DB owned by $POSTGRES_USER; then run postgres in the foreground.
set -eu
: "${POSTGRES_USER:=gridpilot}" "${POSTGRES_DB:=gridpilot}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 \
        --locale=C.UTF-8 >/dev/null
    echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
    postgres -D "$PGDATA" -c listen_addresses='' &
    pid=$!
    until pg_isready -q -h /var/run/postgresql; do sleep 0.2; done
    createdb -h /var/run/postgresql -U "$POSTGRES_USER" -O "$POSTGRES_USER" "$POSTGRES_DB" \
        2>/dev/null || true
    kill "$pid"; wait "$pid" || true
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
