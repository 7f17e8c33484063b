#!/bin/sh
# Generate the compose secrets (one random password per NATS identity and PostgreSQL) into
# deploy/compose/secrets/ (git-ignored), and the TLS certificates every connection uses into
# deploy/compose/secrets/tls/ (`gridpilot certs`: a private CA, a server certificate for the
# NATS nodes and the HMI, one client certificate per NATS identity), and one MQTT password
# per meter of $GRIDPILOT_GRIDS (default cigre_mv) in device_credentials.json. Existing files are kept
# (the CA too: `--renew` re-issues the certificates). secrets/ is 0700: it, not the modes
# below, keeps them private on the host. The files are 0644 and tls/ is 0755 because
# podman-compose bind-mounts them (tls/ as a directory) and the containers run as uid 10001
# (postgres as its own uid), which must read them and enter tls/. The CA key is not needed by
# any container and stays 0600.
#
# gridpilot comes from PATH, else `python3 -m gridpilot`, else the image ($GRIDPILOT_IMAGE,
# default localhost/gridpilot:latest) run with podman or docker.
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

hosts="nats1,nats2,nats3,web,${GRIDPILOT_TLS_HOSTS:-localhost}"
if command -v gridpilot >/dev/null 2>&1; then
    gridpilot certs --data-dir "$dir" --hosts "$hosts" "$@"
elif python3 -c "import gridpilot" >/dev/null 2>&1; then
    python3 -m gridpilot certs --data-dir "$dir" --hosts "$hosts" "$@"
else
    engine="$(command -v podman || command -v docker)"
    "$engine" run --rm --user 0 -v "$dir:/out:z" --entrypoint gridpilot \
        "${GRIDPILOT_IMAGE:-localhost/gridpilot:latest}" certs --data-dir /out --hosts "$hosts" "$@"
fi
chmod 755 "$dir/tls"

# Each meter's own MQTT user (meter.<grid>.<device>): device_credentials.json, which the NATS
# nodes turn into users and the simulator's meters log in with (as under `gridpilot up`).
grids="${GRIDPILOT_GRIDS:-cigre_mv}"
here="$(dirname "$dir")"
if python3 -c "import gridpilot" >/dev/null 2>&1; then
    python3 "$here/nats_node.py" --device-credentials "$dir" $grids
else
    engine="$(command -v podman || command -v docker)"
    "$engine" run --rm --user 0 -v "$dir:/out:z" -v "$here/nats_node.py:/deploy/nats_node.py:ro,z" \
        --entrypoint python "${GRIDPILOT_IMAGE:-localhost/gridpilot:latest}" \
        /deploy/nats_node.py --device-credentials /out $grids
fi
chmod 644 "$dir/device_credentials.json"
find "$dir/tls" -type f ! -name ca.key -exec chmod 644 {} +
chmod 600 "$dir/tls/ca.key"
