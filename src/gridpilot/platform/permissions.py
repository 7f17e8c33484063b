"""Least-privilege NATS identities: who may publish and subscribe to what, and their passwords.

A service's rights are generated from its manifest (:mod:`gridpilot.core.manifest`); the
platform's own identities (admin, viewer) are declared here.

The JetStream subjects below are exactly those nats-py 2.16 sends for the operations each
identity needs (found by tracing a real nats-server), scoped to one stream or bucket.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import bcrypt

from gridpilot.core import subjects as sj
from gridpilot.core.bus import inbox_prefix
from gridpilot.core.config import (
    ENV_DEVICE_CREDENTIALS as ENV_DEVICE_CREDENTIALS,  # re-exported: the supervisor sets it
)
from gridpilot.core.config import (
    ENV_NATS_PASSWORD,
    ENV_NATS_USER,
    env,
    env_secret,
)
from gridpilot.core.errors import ConfigError
from gridpilot.core.manifest import KvRef, Manifest
from gridpilot.platform.catalog import builtin_manifests

# the variables a service reads its NATS login from (declared in core.config)
ENV_USER = ENV_NATS_USER
ENV_PASSWORD = ENV_NATS_PASSWORD
CREDENTIALS_FILE = "credentials.json"

ADMIN = "admin"
SIMULATOR = "simulator"
STATE_ESTIMATION = "state_estimation"
MONITORING = "monitoring"
VIEWER = "viewer"
MQTT_GATEWAY = "mqtt_gateway"
GATEWAY_MODBUS = "gateway_modbus"
GATEWAY_IEC104 = "gateway_iec104"
GATEWAY_C37118 = "gateway_c37118"
HISTORIAN = "historian"
WEB = "web"

MODELS = sj.MODELS_STORE
STATE_KV = sj.STATE_BUCKET
SERVICES_KV = sj.SERVICES_BUCKET
ALARMS_KV = sj.ALARMS_BUCKET
LEASES_KV = sj.LEASES_BUCKET
TWIN_KV = sj.TWIN_BUCKET
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


def _inbox(identity: str) -> str:
    """Every reply (request/reply, JetStream API answers and publish acks, KV watch and
    object get deliveries) comes to the client's inbox: each identity has its own prefix
    (core.bus.connect picks it from the user), so no identity reads another's replies."""
    return f"{inbox_prefix(identity)}.>"


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


def _service(name: str, *, shares_grids: bool = False) -> tuple[str, ...]:
    """What every service does: heartbeat on the bus and in gp_services, and read its own
    heartbeats back (``gridpilot health NAME``, the container probe); the instances of a service
    sharing its grids each heartbeat under ``<name>.<instance>`` too."""
    return (
        sj.HEARTBEAT.format(service=name),
        *kv_put(SERVICES_KV, name),
        *(kv_put(SERVICES_KV, f"{name}.*") if shares_grids else ()),
        *kv_get(SERVICES_KV, name),
        *kv_get(SERVICES_KV, f"{name}.*"),
        *kv_watch(SERVICES_KV),
    )


def _under(spec: sj.SubjectSpec) -> str:
    """The spec's subject for every grid with its last token open: gp.*.meas.> for MEAS."""
    return spec.wildcard().rsplit(".", 1)[0] + ".>"


# every history request: gp.*.request.history.>
HISTORY_REQUESTS = sj.HISTORY_QUERY.wildcard().rsplit(".", 1)[0] + ".>"


def _dedup(*subjects: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(subjects))


def _kv(manifest: Manifest, ref: KvRef) -> Iterator[str]:
    for key in (k.replace("{service}", manifest.name) for k in ref.keys):
        if "write" in ref.access:
            yield from kv_put(ref.bucket, key)
        if "read" in ref.access:
            yield from kv_get(ref.bucket, key)
    if "watch" in ref.access:
        yield from kv_watch(ref.bucket)


def manifest_permissions(manifest: Manifest) -> Permissions:
    """The NATS rights of a service's identity, from its manifest: what every service does
    (heartbeats), what it declares it publishes, requests, reads and writes, what it subscribes
    to and serves, and its own inbox. A service that serves requests may reply to them."""
    publish: list[str] = [*_service(manifest.name, shares_grids=manifest.shares_grids)]
    publish += [ref.subject() for ref in manifest.publishes]
    for ref in manifest.kv:
        publish += _kv(manifest, ref)
    for stream in manifest.streams:
        if "durable" in stream.access:
            publish += durable_consumer(stream.name)
        if "last" in stream.access:
            publish += stream_last(stream.name)
    for store in manifest.object_stores:
        publish += object_get(store)
    subscribe = [ref.subject() for ref in (*manifest.subscribes, *manifest.serves)]
    return Permissions(
        publish=_dedup(*publish),
        subscribe=_dedup(*subscribe, _inbox(manifest.identity)),
        allow_responses=bool(manifest.serves),
    )


# Identities of the platform itself, not services (no manifest).
PLATFORM_PERMISSIONS: dict[str, Permissions] = {
    # The supervisor creates streams and buckets with it, the CLI operates with it.
    ADMIN: Permissions(publish=(">",), subscribe=(">",)),
    # Read-only operator views (`gridpilot alarms`, ...): no commands, no writes.
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
            _inbox(VIEWER),
        ),
    ),
}


def _all_permissions() -> dict[str, Permissions]:
    out = dict(PLATFORM_PERMISSIONS)
    for m in builtin_manifests().values():
        if m.identity in out:
            raise ImportError(f"the manifest of {m.name!r} takes the identity {m.identity!r}")
        out[m.identity] = manifest_permissions(m)
    return out


# Every identity -> its rights: the platform's and one per built-in service's manifest.
PERMISSIONS: dict[str, Permissions] = _all_permissions()
if missing := {
    SIMULATOR,
    STATE_ESTIMATION,
    MONITORING,
    MQTT_GATEWAY,
    GATEWAY_MODBUS,
    GATEWAY_IEC104,
    GATEWAY_C37118,
    HISTORIAN,
    WEB,
} - set(PERMISSIONS):
    raise ImportError(f"no manifest declares the identities {sorted(missing)}")


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
    return env(ENV_USER) or None, env_secret(ENV_PASSWORD)


# -- field devices: one MQTT user per meter ---------------------------------------------------

DEVICE_CREDENTIALS_FILE = "device_credentials.json"
# The simulator's meter fleet reads its meters' logins from the file this names.


def device_user(grid: str, device: str) -> str:
    """The MQTT user name of one meter: ``meter.<grid>.<device>`` (what it sends in CONNECT)."""
    return f"meter.{grid}.{device}"


def device_permissions(grid: str, device: str) -> Permissions:
    """A meter may publish its own raw readings, gp.<grid>.meter.<device>, and nothing else:
    no topology, no command results, no other meter's topic, no subscription at all (QoS 1
    publishes need none: the server acknowledges them itself). MQTT connections only."""
    return Permissions(
        publish=(sj.METER_RAW.format(grid=grid, source=device),),
        subscribe=(),
        connection_types=("MQTT",),
    )


@dataclass(frozen=True)
class DeviceCredential:
    device: str
    password: str | None  # None once revoked
    revoked: bool = False

    @property
    def active(self) -> bool:
        return not self.revoked and bool(self.password)


def _new_secret() -> str:
    return secrets.token_urlsafe(24)  # 192 random bits


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of ``path`` between processes (the supervisor and the CLI)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_devices(path: Path) -> dict[str, dict[str, dict[str, object]]]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot read {path}: {e}; restore it from a backup, or delete it to give every "
            "meter a new password (revoked meters are then allowed again)"
        ) from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path} is not a JSON object of grids; restore or delete it")
    return data


def _device_entry(device: str, raw: object) -> DeviceCredential:
    if not isinstance(raw, dict):
        raise ConfigError(f"device {device!r} in {DEVICE_CREDENTIALS_FILE} is not an object")
    password = raw.get("password")
    return DeviceCredential(
        device=device,
        password=password if isinstance(password, str) and password else None,
        revoked=bool(raw.get("revoked", False)),
    )


def device_credentials(
    data_dir: Path, grid: str | None = None
) -> dict[str, list[DeviceCredential]]:
    """Every grid's meters and their credentials as device_credentials.json holds them (one
    grid with ``grid``), revoked ones included."""
    data = _read_devices(Path(data_dir) / DEVICE_CREDENTIALS_FILE)
    return {
        g: [_device_entry(d, raw) for d, raw in sorted(devices.items())]
        for g, devices in sorted(data.items())
        if grid is None or g == grid
    }


def ensure_device_credentials(data_dir: Path, grid: str, devices: Iterable[str]) -> int:
    """Give every meter of ``grid`` without an entry a random 192-bit password (the supervisor
    does this for its registry's meters when it starts a grid); revoked meters stay revoked.
    Returns how many were added."""
    path = Path(data_dir) / DEVICE_CREDENTIALS_FILE
    with _locked(path):
        data = _read_devices(path)
        known = data.setdefault(grid, {})
        added = 0
        for device in devices:
            if device not in known:
                known[device] = {"password": _new_secret(), "revoked": False}
                added += 1
        if added or not path.exists():
            _write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n", exclusive=False)
    return added


def _change_device(data_dir: Path, grid: str, device: str, entry: dict[str, object]) -> None:
    path = Path(data_dir) / DEVICE_CREDENTIALS_FILE
    with _locked(path):
        data = _read_devices(path)
        if device not in data.get(grid, {}):
            known = sorted(data.get(grid, {}))
            some = ", ".join(known[:5]) + (f" and {len(known) - 5} more" if len(known) > 5 else "")
            raise ConfigError(
                f"no meter {device!r} of grid {grid!r} in {path} (it has {some or 'none'}); "
                f"`gridpilot devices list --grid {grid}` shows them"
            )
        data[grid][device] = entry
        _write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n", exclusive=False)


def revoke_device(data_dir: Path, grid: str, device: str) -> None:
    """Take a meter's password away for good: it is no NATS user any more once the server
    reloads its config. ``rotate_device`` lets it in again with a new one."""
    _change_device(data_dir, grid, device, {"password": None, "revoked": True})


def rotate_device(data_dir: Path, grid: str, device: str) -> str:
    """A new random password for a meter (also one that was revoked); returns it."""
    password = _new_secret()
    _change_device(data_dir, grid, device, {"password": password, "revoked": False})
    return password


def device_logins(path: Path, grid: str) -> dict[str, tuple[str, str]]:
    """Device -> (MQTT user, password) of every active meter of ``grid`` in a
    device_credentials.json (what the simulator's meter fleet connects with)."""
    data = _read_devices(Path(path))
    out: dict[str, tuple[str, str]] = {}
    for device, raw in data.get(grid, {}).items():
        cred = _device_entry(device, raw)
        if cred.active and cred.password:
            out[device] = (device_user(grid, device), cred.password)
    return out


# -- nats.conf: the users, with bcrypt hashes ---------------------------------------------------

# bcrypt's cost exists to make guessing a weak password expensive; ours are random 192-bit
# secrets that no amount of guessing finds, so the hash only has to keep nats.conf from holding
# usable passwords, and the cost is set by what it costs us: the server checks the hash on every
# CONNECT. Measured (benchmarks/meter_credentials_bench.py, 2 cores): a NATS connect takes
# 1.8 ms at cost 4, 5.4 ms at 6, 0.8 ms with a clear password; 192 meters connect in 0.4 s at
# cost 4, 1.6 s at 6, and the largest built-in grid has 5948 meters (a reconnect storm after a
# broker restart). So the minimum cost bcrypt allows, 4.
BCRYPT_COST = 4
HASH_CACHE_FILE = "password_hashes.json"


def _bcrypt(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


class PasswordHasher:
    """bcrypt hashes for nats.conf, cached in ``<data_dir>/nats/password_hashes.json`` (0600)
    by the SHA-256 of the password: a restart re-renders the config without hashing every
    password again (a random 192-bit secret's SHA-256 reveals nothing usable)."""

    def __init__(self, cache: Path | None) -> None:
        self.cache = cache
        self._known: dict[str, str] = {}
        self._dirty = False
        if cache is not None and cache.exists():
            try:
                loaded = json.loads(cache.read_text())
            except (OSError, ValueError):
                loaded = {}  # a cache only: hashed again
            if isinstance(loaded, dict):
                self._known = {str(k): str(v) for k, v in loaded.items()}

    def prepare(self, passwords: Iterable[str]) -> None:
        """Hash the passwords not cached yet on every core (bcrypt releases the GIL): the first
        start of a grid with thousands of meters."""
        todo = list(dict.fromkeys(p for p in passwords if self._key(p) not in self._known))
        if len(todo) < 2:
            return
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            hashed = list(pool.map(_bcrypt, todo))
        self._known.update({self._key(p): h for p, h in zip(todo, hashed, strict=True)})
        self._dirty = True

    @staticmethod
    def _key(password: str) -> str:
        return hashlib.sha256(password.encode()).hexdigest()

    def __call__(self, password: str) -> str:
        key = self._key(password)
        hashed = self._known.get(key)
        if hashed is None:
            hashed = _bcrypt(password)
            self._known[key] = hashed
            self._dirty = True
        return hashed

    def save(self) -> None:
        """Write the cache if a hash was added."""
        if self.cache is None or not self._dirty:
            return
        _write_private(self.cache, json.dumps(self._known, indent=1) + "\n", exclusive=False)
        self._dirty = False


def _quoted(value: object) -> str:
    # JSON strings are valid NATS config strings; quoting keeps "$2b$..." and "$JS..." from
    # being read as variable references.
    return json.dumps(value)


def _user_entry(user: str, hashed: str, perms: Permissions) -> str:
    sub = (
        f"subscribe: {{allow: {_quoted(list(perms.subscribe))}}}"
        if perms.subscribe
        else 'subscribe: {deny: [">"]}'  # an empty allow list would allow everything
    )
    entry = (
        f"    {{user: {_quoted(user)}, password: {_quoted(hashed)},\n"
        f"     allowed_connection_types: {_quoted(list(perms.connection_types))},\n"
        f"     permissions: {{\n"
        f"       publish: {{allow: {_quoted(list(perms.publish))}}},\n"
        f"       {sub}"
    )
    if perms.allow_responses:
        entry += ",\n       allow_responses: true"
    return entry + "}}"


def authorization_block(
    passwords: Mapping[str, str],
    devices: Mapping[str, Iterable[DeviceCredential]] | None = None,
    *,
    hasher: PasswordHasher | None = None,
) -> str:
    """The ``authorization`` block of nats.conf: one user per identity of PERMISSIONS (its
    password from ``passwords``) and one per active meter of ``devices`` (grid -> meters),
    every password as a bcrypt hash."""
    hasher = hasher or PasswordHasher(None)
    active = [c for creds in (devices or {}).values() for c in creds if c.active and c.password]
    hasher.prepare([*passwords.values(), *(c.password for c in active if c.password)])
    users = [_user_entry(u, hasher(passwords[u]), perms) for u, perms in PERMISSIONS.items()]
    for grid, creds in (devices or {}).items():
        for cred in creds:
            if cred.active and cred.password:
                users.append(
                    _user_entry(
                        device_user(grid, cred.device),
                        hasher(cred.password),
                        device_permissions(grid, cred.device),
                    )
                )
    hasher.save()
    return "authorization {\n  users: [\n" + ",\n".join(users) + "\n  ]\n}\n"


def users_config(data_dir: Path) -> str:
    """The authorization block for the broker of ``data_dir``: its identities' passwords
    (credentials.json) and its meters' (device_credentials.json), hashes cached in nats/."""
    data_dir = Path(data_dir)
    hasher = PasswordHasher(data_dir / "nats" / HASH_CACHE_FILE)
    return authorization_block(
        load_credentials(data_dir), device_credentials(data_dir), hasher=hasher
    )


def hash_password(password: str, data_dir: Path | None = None) -> str:
    """A bcrypt hash of ``password`` for nats.conf (cost BCRYPT_COST), the one cached under
    ``data_dir`` if given: the same hash on every render, so a reload sees no change."""
    hasher = PasswordHasher(None if data_dir is None else Path(data_dir) / "nats" / HASH_CACHE_FILE)
    hashed = hasher(password)
    hasher.save()
    return hashed
