#!/bin/sh
# Entrypoint of the compose services: every GRIDPILOT_<NAME>_FILE=<path> (and PGPASSWORD_FILE)
# becomes GRIDPILOT_<NAME>=<the file's content> (passwords come from compose secrets, never
# from the compose file's environment), then `gridpilot "$@"` replaces this shell.
set -eu
for var in $(env | sed -n 's/^\(GRIDPILOT_[A-Z0-9_]*\|PGPASSWORD\)_FILE=.*/\1/p'); do
    eval "file=\${${var}_FILE}"
    # shellcheck disable=SC2154
    value="$(cat "$file")"
    export "$var=$value"
    unset "${var}_FILE"
done
exec gridpilot "$@"
