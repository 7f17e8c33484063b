"""Least-privilege NATS identities: who may publish and subscribe to what, and their passwords.

The JetStream subjects below are exactly those nats-py 2.16 sends for the operations each
identity needs (found by tracing a real nats-server), scoped to one stream or bucket.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gridpilot.core import subjects as sj
from gridpilot.core.config import env_secret
from gridpilot.core.errors import ConfigError

ENV_USER = "GRIDPILOT_NATS_USER"
ENV_PASSWORD = "GRIDPILOT_NATS_PASSWORD"
CREDENTIALS_FILE = "credentials.json"

ADMIN = "admin"
SIMULATOR = "simulator"
STATE_ESTIMATION = "state_estimation"
MONITORING = "monitoring"
VIEWER = "viewer"
MQTT_DEVICE = "mqtt_device"
MQTT_GATEWAY = "mqtt_gateway"
GATEWAY_MODBUS = "gateway_modbus"
GATEWAY_IEC104 = "gateway_iec104"
GATEWAY_C37118 = "gateway_c37118"
HISTORIAN = "historian"
WEB = "web"

_BUCKETS = {b.name for b in sj.BUCKETS}
_OBJECT_STORES = {b.name for b in sj.OBJECT_STORES}
MODELS = "gp_models"
STATE_KV = "gp_state"
SERVICES_KV = "gp_services"
ALARMS_KV = "gp_alarms"
LEASES_KV = "gp_leases"
TWIN_KV = "gp_twin"
if (
    not {STATE_KV, SERVICES_KV, ALARMS_KV, LEASES_KV, TWIN_KV} <= _BUCKETS
    or MODELS not in _OBJECT_STORES
):
    raise ImportError("permissions.py names a bucket that core/subjects.py does not define")
# the estimate layouts in gp_state, every grid's (layout.<grid>.<id>)
LAYOUT_KEYS = sj.STATE_LAYOUT_KEY.format(grid="*", layout="*")


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # Lets a request handler reply to the requester's inbox without publish rights on _INBOX.>
    allow_responses: bool = False
    # Stops a service password from being usable by an MQTT device and the reverse.
    connection_types: tuple[str, ...] = ("STANDARD",)


_API = "$JS.API"
# Every reply (request/reply, JetStream API answers and publish acks) comes to the client's inbox.
_INBOX = "_INBOX.>"


def kv_put(bucket: str, key: str) -> tuple[str, ...]:
    """``js.key_value(bucket)`` (stream info) then ``kv.put(key, ...)`` (a JetStream publish)."""
    return (f"{_API}.STREAM.INFO.KV_{bucket}", f"$KV.{bucket}.{key}")


def kv_get(bucket: str, key: str = "*") -> tuple[str, ...]:
    """``js.key_value(bucket)`` then ``kv.get(key)``: buckets are created with direct get."""
    return (
        f"{_API}.STREAM.INFO.KV_{bucket}",
        f"{_API}.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key}",
    )


def kv_watch(bucket: str) -> tuple[str, ...]:
    """``kv.watch``/``kv.keys``: an ordered push consumer with flow control."""
    return (
        f"{_API}.CONSUMER.CREATE.KV_{bucket}",
        f"{_API}.CONSUMER.INFO.KV_{bucket}.*",
        f"$JS.FC.KV_{bucket}.>",
    )


def stream_last(stream: str) -> tuple[str, ...]:
    """``js.get_last_msg(stream, subject)``: the last message of a subject (any subject)."""
    return (f"{_API}.STREAM.MSG.GET.{stream}",)


def object_get(bucket: str) -> tuple[str, ...]:
    """``js.object_store(bucket)`` then ``.get(name)``.

    The meta entry is read with STREAM.MSG.GET; the chunks through an ordered consumer that
    nats-py binds by looking the stream up with STREAM.NAMES; large objects need flow control.
    """
    return (
        f"{_API}.STREAM.INFO.OBJ_{bucket}",
        f"{_API}.STREAM.MSG.GET.OBJ_{bucket}",
        f"{_API}.STREAM.NAMES",
        f"{_API}.CONSUMER.CREATE.OBJ_{bucket}",
        f"$JS.FC.OBJ_{bucket}.>",
    )


def durable_consumer(stream: str) -> tuple[str, ...]:
    """``js.pull_subscribe(durable=..., stream=...)``: look the consumer up or create it (with
    one filter subject), fetch batches and acknowledge them. Any consumer name of the stream."""
    return (
        f"{_API}.CONSUMER.INFO.{stream}.*",
        f"{_API}.CONSUMER.CREATE.{stream}.*",
        f"{_API}.CONSUMER.CREATE.{stream}.*.>",
        f"{_API}.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"{_API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.*.>",
    )


def _service(name: str) -> tuple[str, ...]:
    """What every service does: heartbeat on the bus and in gp_services, read the grid model;
    and read its own heartbeats back (``gridpilot health NAME``, the container probe)."""
    return (
        sj.HEARTBEAT.format(service=name),
        *kv_put(SERVICES_KV, name),
        *kv_get(SERVICES_KV, name),
        *kv_get(SERVICES_KV, f"{name}.*"),
        *kv_watch(SERVICES_KV),
        *object_get(MODELS),
    )


def _under(spec: sj.SubjectSpec) -> str:
    """The spec's subject for every grid with its last token open: gp.*.meas.> for MEAS."""
    return spec.wildcard().rsplit(".", 1)[0] + ".>"


# the stream that keeps the switch states reported (gp.*.topology)
_CMD_STREAM = next(s.name for s in sj.STREAMS if sj.TOPOLOGY.wildcard() in s.subjects)

# every history request: gp.*.request.history.>
HISTORY_REQUESTS = sj.HISTORY_QUERY.wildcard().rsplit(".", 1)[0] + ".>"


def _dedup(*subjects: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(subjects))


PERMISSIONS: dict[str, Permissions] = {
    # The supervisor creates streams and buckets with it, the CLI operates with it.
    ADMIN: Permissions(publish=(">",), subscribe=(">",)),
    SIMULATOR: Permissions(
        publish=_dedup(
            *_service(SIMULATOR),
            _under(sj.MEAS),
            sj.TRUTH.wildcard(),
            sj.TOPOLOGY.wildcard(),
            sj.COMMAND_RESULT.wildcard(),
            sj.CONDITION.wildcard(source=SIMULATOR),
            *kv_put(TWIN_KV, "*"),
            *kv_get(TWIN_KV, "*"),
        ),
        subscribe=(
            _under(sj.COMMAND),
            _under(sj.SIM_INJECT),
            _INBOX,
        ),
        allow_responses=True,
    ),
    # With --grid all its instances share the grids: leases (create, update, delete, get: all
    # KV writes go to $KV.<bucket>.<key>) and membership keys in gp_leases, watched; one
    # heartbeat key per instance; the grid list from gp_models (object_get covers listing).
    STATE_ESTIMATION: Permissions(
        publish=_dedup(
            *_service(STATE_ESTIMATION),
            sj.STATE.wildcard(),
            sj.STATE_LAYOUT.wildcard(),
            sj.CONDITION.wildcard(source=STATE_ESTIMATION),
            *kv_put(STATE_KV, "*"),
            *kv_put(STATE_KV, LAYOUT_KEYS),
            *stream_last(_CMD_STREAM),
            *kv_put(SERVICES_KV, f"{STATE_ESTIMATION}.*"),
            *kv_put(LEASES_KV, "se.*"),
            *kv_put(LEASES_KV, f"member.{STATE_ESTIMATION}.*"),
            *kv_get(LEASES_KV, "se.*"),
            *kv_watch(LEASES_KV),
            sj.CONDITION.wildcard(source=STATE_ESTIMATION),
        ),
        subscribe=(_under(sj.MEAS), sj.TOPOLOGY.wildcard(), _INBOX),
    ),
    MONITORING: Permissions(
        publish=_dedup(
            *_service(MONITORING),
            sj.ALARM.wildcard(),
            *kv_put(ALARMS_KV, "*"),
            *kv_get(ALARMS_KV),
            *kv_get(STATE_KV, LAYOUT_KEYS),
        ),
        # estimates (limits, bad data), every device's reports (communication loss), what
        # other services report (conditions) and every service's heartbeat (service down)
        subscribe=(
            sj.STATE.wildcard(),
            _under(sj.ALARM_ACK),
            _under(sj.MEAS),
            _under(sj.CONDITION),
            sj.HEARTBEAT.wildcard(),
            _INBOX,
        ),
        allow_responses=True,
    ),
    # Read-only operator views (the web UI): no commands, no writes.
    VIEWER: Permissions(
        publish=_dedup(
            *(s for b in (SERVICES_KV, STATE_KV, ALARMS_KV) for s in (*kv_get(b), *kv_watch(b))),
            *kv_get(SERVICES_KV, ">"),  # service.<instance> of the services sharing their grids
            *kv_get(STATE_KV, LAYOUT_KEYS),
            *object_get(MODELS),
            HISTORY_REQUESTS,
        ),
        subscribe=(
            sj.STATE.wildcard(),
            sj.ALARM.wildcard(),
            sj.COMMAND_RESULT.wildcard(),
            sj.HEARTBEAT.wildcard(),
            _INBOX,
        ),
    ),
    # A field device over MQTT: topic gp/<grid>/meter/<dev> is NATS subject gp.<grid>.meter.<dev>.
    # Its raw data goes through the MQTT gateway's normaliser, so it may not write gp.*.meas.>.
    # Older servers' docs ask for subscribe "$MQTT.sub.>" for QoS 1; nats-server 2.15 delivers
    # QoS 1 (also to resumed sessions) without it, and with it a device could read every
    # other device's QoS 1 deliveries through the MQTT topic $MQTT/sub/#.
    MQTT_DEVICE: Permissions(
        publish=(_under(sj.METER_RAW), sj.TOPOLOGY.wildcard(), sj.COMMAND_RESULT.wildcard()),
        # MQTT "gp/+/command/#" also matches the parent level, so the server subscribes
        # gp.*.command too and refuses the whole SUBSCRIBE if that one is not allowed.
        subscribe=(_under(sj.COMMAND), sj.COMMAND.wildcard().rsplit(".", 1)[0]),
        connection_types=("MQTT",),
    ),
    # Normalises what MQTT devices publish into measurement sets.
    MQTT_GATEWAY: Permissions(
        publish=_dedup(*_service(MQTT_GATEWAY), _under(sj.MEAS)),
        subscribe=(_under(sj.METER_RAW), _INBOX),
    ),
    # Polls DER inverters and carries setpoints to them; reports each command's outcome.
    # Each gateway reports conditions of its devices (a wrong device at a device's port).
    GATEWAY_MODBUS: Permissions(
        publish=_dedup(
            *_service(GATEWAY_MODBUS),
            _under(sj.MEAS),
            sj.COMMAND_RESULT.wildcard(),
            sj.CONDITION.wildcard(source=GATEWAY_MODBUS),
        ),
        subscribe=(_under(sj.COMMAND), _INBOX),
    ),
    # The PDC of the PMUs: measurements in, nothing out.
    GATEWAY_C37118: Permissions(
        publish=_dedup(
            *_service(GATEWAY_C37118), _under(sj.MEAS), sj.CONDITION.wildcard(source=GATEWAY_C37118)
        ),
        subscribe=(_INBOX,),
    ),
    # The operator HMI and API: reads everything an operator sees, sends what operators do
    # (commands, acknowledgements, history queries, training injections), writes the audit.
    WEB: Permissions(
        publish=_dedup(
            *_service(WEB),
            _under(sj.COMMAND),
            sj.AUDIT.wildcard(),
            _under(sj.ALARM_ACK),
            HISTORY_REQUESTS,
            _under(sj.SIM_INJECT),
            *(s for b in (STATE_KV, ALARMS_KV) for s in kv_get(b)),
            *kv_get(STATE_KV, LAYOUT_KEYS),
        ),
        subscribe=(
            sj.STATE.wildcard(),
            sj.TOPOLOGY.wildcard(),
            sj.ALARM.wildcard(),
            sj.COMMAND_RESULT.wildcard(),
            sj.HEARTBEAT.wildcard(),
            _under(sj.MEAS),
            _INBOX,
        ),
    ),
    # Stores what the streams carry and answers history queries; it publishes nothing else.
    HISTORIAN: Permissions(
        publish=_dedup(
            *_service(HISTORIAN),
            *(s for spec in sj.STREAMS for s in durable_consumer(spec.name)),
            *kv_get(STATE_KV, LAYOUT_KEYS),
        ),
        subscribe=(HISTORY_REQUESTS, _INBOX),
        allow_responses=True,
    ),
    # Masters of the RTUs: measurements in, switching commands out, outcomes reported.
    GATEWAY_IEC104: Permissions(
        publish=_dedup(
            *_service(GATEWAY_IEC104),
            _under(sj.MEAS),
            sj.COMMAND_RESULT.wildcard(),
            sj.CONDITION.wildcard(source=GATEWAY_IEC104),
        ),
        subscribe=(_under(sj.COMMAND), _INBOX),
    ),
}


def load_credentials(data_dir: Path) -> dict[str, str]:
    """Every identity's password, generated once per data dir and kept in credentials.json (0600).

    Identities added to PERMISSIONS after the file was written get a password the next time.
    """
    path = Path(data_dir) / CREDENTIALS_FILE
    stored: dict[str, str] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot read {path}: {e}; delete it to generate new passwords"
            ) from e
        if not isinstance(stored, dict):
            raise ConfigError(f"{path} is not a JSON object; delete it to generate new passwords")
    missing = [name for name in PERMISSIONS if name not in stored]
    if not missing:
        return {name: str(stored[name]) for name in PERMISSIONS}
    creds = {**stored, **{name: secrets.token_urlsafe(24) for name in missing}}
    _write_private(path, json.dumps(creds, indent=2) + "\n", exclusive=not stored)
    if not stored:
        # Another process may have won the race to create the file: use its passwords.
        creds = json.loads(path.read_text())
    return {name: str(creds[name]) for name in PERMISSIONS}


LEAFNODE = "leafnode"


def leafnode_password(data_dir: Path) -> str:
    """The password leaf nodes (edges) connect to this hub with: kept in credentials.json next
    to the identities' (it is not a client identity: it only works on the leafnode port)."""
    load_credentials(data_dir)  # the file exists afterwards
    path = Path(data_dir) / CREDENTIALS_FILE
    stored = json.loads(path.read_text())
    if LEAFNODE not in stored:
        stored[LEAFNODE] = secrets.token_urlsafe(24)
        _write_private(path, json.dumps(stored, indent=2) + "\n", exclusive=False)
    return str(stored[LEAFNODE])


def _write_private(path: Path, text: str, *, exclusive: bool) -> None:
    """Write a file only its owner can read; ``exclusive`` never replaces an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    try:
        if exclusive:
            # Atomic, and fails if the file appeared meanwhile: the caller then re-reads it.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def service_password(data_dir: Path, identity: str) -> str:
    if identity not in PERMISSIONS:
        raise ConfigError(
            f"unknown NATS identity {identity!r}; use one of {', '.join(PERMISSIONS)}"
        )
    return load_credentials(data_dir)[identity]


def service_env(data_dir: Path, identity: str) -> dict[str, str]:
    """Environment variables that hand a service process its NATS user and password."""
    return {ENV_USER: identity, ENV_PASSWORD: service_password(data_dir, identity)}


def env_credentials(url: str = "") -> tuple[str | None, str | None]:
    """The user and password to connect to ``url`` with: GRIDPILOT_NATS_USER and
    GRIDPILOT_NATS_PASSWORD (or the file GRIDPILOT_NATS_PASSWORD_FILE names), as a service reads
    them; None when not set. Every CLI command given a NATS URL connects with these.

    A user written into the URL (``nats://user:password@host``) wins: (None, None) then, and
    the client takes the URL's (nats-py would otherwise send ours instead)."""
    if any(urlsplit(u.strip()).username for u in url.split(",")):
        return None, None
    return os.environ.get(ENV_USER) or None, env_secret(ENV_PASSWORD)
