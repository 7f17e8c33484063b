"""Start one node of the compose NATS cluster (run inside the GridPilot image).

    python /deploy/nats_node.py /etc/nats/node1.conf
    python deploy/compose/nats_node.py --print-auth deploy/compose/secrets > auth.conf

Appends to the mounted node config an ``authorization`` block with every GridPilot identity,
its permissions (gridpilot.platform.permissions, the same as ``gridpilot up`` uses) and its
password read from ``$GRIDPILOT_SECRETS_DIR/nats_<identity>`` (default /run/secrets), writes
the result to /data/nats.conf and replaces itself with nats-server.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from gridpilot.platform.broker import nats_server_binary
from gridpilot.platform.permissions import PERMISSIONS


def authorization(secrets: Path) -> str:
    users = []
    for user, perms in PERMISSIONS.items():
        password = (secrets / f"nats_{user}").read_text().strip()
        entry = (
            f"    {{user: {json.dumps(user)}, password: {json.dumps(password)},\n"
            f"     allowed_connection_types: {json.dumps(list(perms.connection_types))},\n"
            f"     permissions: {{\n"
            f"       publish: {{allow: {json.dumps(list(perms.publish))}}},\n"
            f"       subscribe: {{allow: {json.dumps(list(perms.subscribe))}}}"
        )
        if perms.allow_responses:
            entry += ",\n       allow_responses: true"
        users.append(entry + "}}")
    return "authorization {\n  users: [\n" + ",\n".join(users) + "\n  ]\n}\n"


def main() -> None:
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
