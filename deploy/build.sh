#!/usr/bin/env bash
# Build the GridPilot image with podman on a machine without a registry (what the container
# tests and CI do). With a registry, `podman build -f deploy/Containerfile -t gridpilot .`
# (official python:3.11-slim base) is all it takes.
#
#   deploy/build.sh [--postgres]   -> localhost/gridpilot:latest (+ gridpilot-postgres:latest)
#
# Environment-specific steps, all here and nowhere else:
#  * containers.conf (named by CONTAINERS_CONF): runc, cgroupfs, no default ulimits;
#  * base image: `debootstrap --variant=minbase bookworm` from the mirror apt uses, imported
#    with `podman import`, cached in $GRIDPILOT_CACHE (~/.cache/gridpilot) between runs;
#  * the host's CA bundle mounted into the build for pip (PIP_CERT).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cache="${GRIDPILOT_CACHE:-$HOME/.cache/gridpilot}"
image="${GRIDPILOT_IMAGE:-localhost/gridpilot:latest}"
base="${GRIDPILOT_BASE:-localhost/gridpilot-debian-base:bookworm}"
postgres=0
[[ "${1:-}" == "--postgres" ]] && postgres=1
mkdir -p "$cache"

if [[ -z "${CONTAINERS_CONF:-}" ]]; then
    export CONTAINERS_CONF="$cache/containers.conf"
    cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
fi

command -v podman >/dev/null || { echo "build.sh: podman is not installed" >&2; exit 3; }
if grep -q '^runtime = "runc"' "$CONTAINERS_CONF" 2>/dev/null && ! command -v runc >/dev/null; then
    echo "build.sh: $CONTAINERS_CONF asks for runc, which is not installed (apt-get install runc)" >&2
    exit 3
fi

if ! podman image exists "$base"; then
    tarball="$cache/debian-bookworm-minbase.tar"
    if [[ ! -s "$tarball" ]]; then
        mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
                   | grep -E '^(URIs:|deb )' | grep -oE 'https?://[^ ]+/debian/?( |$)' \
                   | head -n1 | tr -d ' ' || true)"
        mirror="${mirror:-http://deb.debian.org/debian}"
        rootfs="$(mktemp -d)"
        trap 'rm -rf "$rootfs"' EXIT
        echo "build.sh: debootstrap bookworm from $mirror" >&2
        debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
            || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
        trap - EXIT
    fi
    podman import --change 'CMD ["/bin/bash"]' "$tarball" "$base" >/dev/null
fi

ca=/etc/ssl/certs/ca-certificates.crt
ca_args=()
if [[ -f "$ca" ]]; then
    ca_args=(--volume "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi

podman build --build-arg BASE="$base" "${ca_args[@]}" \
    -f "$here/Containerfile" -t "$image" "$root"

if (( postgres )); then
    podman build --build-arg BASE="$base" -f "$here/compose/postgres.Containerfile" \
        -t "${GRIDPILOT_POSTGRES_IMAGE:-localhost/gridpilot-postgres:latest}" "$here/compose"
fi
