"""Start one node of the compose NATS cluster (run inside the GridPilot image).

    python /deploy/nats_node.py /etc/nats/node1.conf
    python deploy/compose/nats_node.py --print-auth deploy/compose/secrets > auth.conf
    python deploy/compose/nats_node.py --device-credentials deploy/compose/secrets cigre_mv

Appends to the mounted node config an ``authorization`` block with every GridPilot identity,
its permissions (gridpilot.platform.permissions, the same as ``gridpilot up`` uses) and the
bcrypt hash of its password read from ``$GRIDPILOT_SECRETS_DIR/nats_<identity>`` (default
/run/secrets), one MQTT user per meter of ``device_credentials.json`` there if present, writes
the result to /data/nats.conf and replaces itself with nats-server.

``--device-credentials DIR GRID...`` (gen-secrets.sh) gives every meter of each grid's default
device registry (the one ``gridpilot init`` writes) a random password in DIR's
device_credentials.json, as ``gridpilot up``'s supervisor does; meters already there keep theirs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gridpilot.platform.broker import nats_server_binary
from gridpilot.platform.permissions import (
    DEVICE_CREDENTIALS_FILE,
    PERMISSIONS,
    authorization_block,
    device_credentials,
    ensure_device_credentials,
)


def authorization(secrets: Path) -> str:
    passwords = {user: (secrets / f"nats_{user}").read_text().strip() for user in PERMISSIONS}
    # the meters' own MQTT users, if a device_credentials.json is among the secrets
    devices = device_credentials(secrets) if (secrets / DEVICE_CREDENTIALS_FILE).exists() else {}
    # bcrypt hashes only: the rendered config holds no usable password
    return authorization_block(passwords, devices)


def ensure_devices(secrets: Path, grid: str) -> int:
    """A credential for every meter of ``grid``'s default registry; returns how many are new."""
    from gridpilot.model.distribution import package
    from gridpilot.model.placement import default_placement
    from gridpilot.model.registry import load_grid

    model = load_grid(grid)
    meters = [m.device for m in package(model, default_placement(model)).devices.meter]
    added = ensure_device_credentials(secrets, model.name, meters)
    print(f"grid={model.name} meters={len(meters)} new_credentials={added}")
    return added


def main() -> None:
    if sys.argv[1] == "--device-credentials":
        for grid in sys.argv[3:]:
            ensure_devices(Path(sys.argv[2]), grid)
        return
    if sys.argv[1] == "--print-auth":
        # the block alone, e.g. for the Kubernetes secret gridpilot-nats-auth (deploy/README.md)
        print(authorization(Path(sys.argv[2])), end="")
        return
    node_conf = Path(sys.argv[1])
    secrets = Path(os.environ.get("GRIDPILOT_SECRETS_DIR", "/run/secrets"))
    data = Path(os.environ.get("GRIDPILOT_DATA_DIR", "/data"))
    out = data / "nats.conf"
    tmp = out.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(node_conf.read_text() + "\n" + authorization(secrets))
    tmp.replace(out)
    binary = str(nats_server_binary())
    os.execv(binary, [binary, "-c", str(out)])


if __name__ == "__main__":
    main()
