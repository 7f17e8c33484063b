#!/bin/sh
# Generate the compose secrets (one random password per NATS identity and PostgreSQL) into
# deploy/compose/secrets/ (git-ignored); existing files are kept. The directory is 0700;
# the files are 0644 because podman-compose bind-mounts them and the containers run as
# uid 10001 (postgres as its own uid): the directory, not the file mode, keeps them private
# on the host.
set -eu
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
chmod 700 "$dir"
for name in nats_admin nats_simulator nats_state_estimation nats_monitoring nats_viewer \
        nats_mqtt_gateway nats_gateway_modbus nats_gateway_c37118 \
        nats_gateway_iec104 nats_historian nats_web postgres; do
    if [ ! -s "$dir/$name" ]; then
        head -c 24 /dev/urandom | base64 | tr -d "/+=\n" >"$dir/$name"
        chmod 644 "$dir/$name"
    fi
done
