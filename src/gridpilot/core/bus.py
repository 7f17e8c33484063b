"""Thin async helpers over nats-py: a resilient connection that reports refusals and outlives
broker outages, and the JetStream streams, key-value buckets and object stores of the subject
catalogue."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api

from gridpilot.core import subjects
from gridpilot.core.config import ENV_NATS_CA, ENV_NATS_CERT, ENV_NATS_KEY, env_text
from gridpilot.core.errors import BusError, ConfigError, PermissionDeniedError

log = logging.getLogger("gridpilot.bus")

# Called with the event name (error, permission_denied, disconnected, reconnected, closed)
# and the error, if any; for a service to count them in its heartbeat.
EventCallback = Callable[[str, BaseException | None], None]

# nats-py lowercases the server's -ERR text, so the subject arrives lowercased too.
_DENIED_RE = re.compile(
    r"permissions violation for (publish|subscription)(?: with reply of| to)? \"?([^\"']+)\"?"
)


@dataclass
class BusStats:
    """What one connection has seen; ``permission_denied`` also counts as a sequence number."""

    errors: int = 0
    permission_denied: int = 0
    disconnects: int = 0
    reconnects: int = 0
    # publishes dropped because the broker was away and the pending buffer was full
    dropped_outage: int = 0
    # refused here because payload and headers exceed the server's limit (which would close
    # the connection)
    dropped_oversize: int = 0
    denied: deque[tuple[int, PermissionDeniedError]] = field(
        default_factory=lambda: deque(maxlen=64)
    )
    oversize_logged: set[str] = field(default_factory=set)  # subjects said once each

    def denied_since(self, mark: int, subject: str | None = None) -> PermissionDeniedError | None:
        """The first refusal recorded after ``mark`` (for ``subject`` if given), else None.

        The server's message arrives lowercased; with ``subject`` the error names it as given.
        """
        for seq, err in self.denied:
            if seq <= mark:
                continue
            if subject is None:
                return err
            if err.subject == subject.lower():
                return PermissionDeniedError(subject, err.operation)
        return None


_STATS: WeakKeyDictionary[Client, BusStats] = WeakKeyDictionary()

# What a client keeps for the broker while it is away (nats-py's default is 2 MiB): about a
# minute of a mid-size grid's field data; beyond it publishes are dropped and counted.
PENDING_BYTES = 2 * 1024 * 1024


class BusClient(Client):
    """A nats-py client whose publishes never raise for an outage.

    While the broker is away, nats-py keeps publishes in its pending buffer (``PENDING_BYTES``)
    and sends them on reconnect; once the buffer is full it raises OutboundBufferLimitError,
    which ended every publisher's loop (the PMU gateway died after a 60 s outage). Here such a
    publish is dropped and counted (``stats(nc).dropped_outage``), so a service outlives an
    outage of any length and what it buffered still goes out. A message whose payload and
    headers exceed the server's limit raises MaxPayloadError here, counted, instead of being
    sent: the server would answer with a protocol violation and close the connection.
    """

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        st = stats(self)
        if self.is_connected and headers:
            limit = self.max_payload
            size = message_size(payload, headers)
            if limit and size > limit:
                st.dropped_oversize += 1
                log.warning(
                    "bus event=oversize client=%s subject=%s bytes=%d limit=%d",
                    self.options.get("name"),
                    subject,
                    size,
                    limit,
                )
                raise nats.errors.MaxPayloadError
        try:
            await super().publish(subject, payload, reply=reply, headers=headers)
        except nats.errors.OutboundBufferLimitError:
            st.dropped_outage += 1
            if st.dropped_outage == 1 or st.dropped_outage % 1000 == 0:
                log.warning(
                    "bus event=dropping client=%s dropped=%d reason=%s",
                    self.options.get("name"),
                    st.dropped_outage,
                    "broker away and pending buffer full",
                )
        except nats.errors.MaxPayloadError:
            st.dropped_oversize += 1
            raise


def stats(nc: Client) -> BusStats:
    """The counters of a connection made with :func:`connect` (fresh zeros for any other)."""
    return _STATS.setdefault(nc, BusStats())


# --- The NATS boundary: nats-py's exceptions as GridPilot's, in one place ----------------------

# What a request, a publish with an acknowledgement or a JetStream call can fail with besides an
# answer: nats-py's own errors (no responders, connection closed or reconnecting, JetStream API
# errors) and timeouts. Every ``except`` at the bus boundary names this tuple.
BUS_FAILURES: tuple[type[Exception], ...] = (TimeoutError, nats.errors.Error)


def bus_error(exc: BaseException, subject: str, who: str) -> BusError:
    """A request to ``who`` (the service that answers ``subject``) that failed with one of
    ``BUS_FAILURES``, as the one-line BusError a user reads: PermissionDeniedError for a
    refusal, otherwise what went wrong (nobody answers, no answer in time, the error)."""
    denied = permission_error(exc)
    if denied is not None:
        return PermissionDeniedError(subject, denied.operation)
    if isinstance(exc, nats.errors.NoRespondersError):
        return BusError(f"nothing answers on {subject}: is the {who} running for this grid?")
    if isinstance(exc, TimeoutError):  # nats' TimeoutError is one too
        return BusError(f"the {who} did not answer on {subject} in time (busy or stopping?)")
    return BusError(f"cannot ask the {who} on {subject}: {type(exc).__name__}: {exc}")


def permission_error(err: BaseException) -> PermissionDeniedError | None:
    """The PermissionDeniedError an asynchronous nats error stands for, if it is a refusal."""
    m = _DENIED_RE.search(str(err).lower())
    if m is None:
        return None
    operation = "publish" if m.group(1) == "publish" else "subscribe"
    return PermissionDeniedError(m.group(2), operation)


# The TLS files a service connects with (declared in core/config; these names are what the
# supervisor and platform.tls import).
ENV_CA = ENV_NATS_CA
ENV_CERT = ENV_NATS_CERT
ENV_KEY = ENV_NATS_KEY


def client_context(
    ca: os.PathLike[str] | str,
    cert: os.PathLike[str] | str | None = None,
    key: os.PathLike[str] | str | None = None,
) -> ssl.SSLContext:
    """A TLS client context that trusts only ``ca`` (checking the server's name) and presents
    ``cert``/``key`` when given; ConfigError naming the files when they do not load."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(ca))
        if cert is not None:
            ctx.load_cert_chain(os.fspath(cert), None if key is None else os.fspath(key))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"TLS files (CA {ca}, certificate {cert}, key {key}) do not load: {e}; make them "
            "with `gridpilot certs`"
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class _SslEofNoise(logging.Filter):
    """Drops asyncio's "returning true from eof_received() has no effect when using ssl": nats-py
    returns True there for every connection, harmless over TLS but printed on every command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_SslEofNoise())


def env_tls() -> ssl.SSLContext | None:
    """The client context GRIDPILOT_NATS_CA (with GRIDPILOT_NATS_CERT and GRIDPILOT_NATS_KEY)
    describes; None when GRIDPILOT_NATS_CA is not set."""
    ca = env_text(ENV_CA)
    if not ca:
        return None
    cert = env_text(ENV_CERT) or None
    key = env_text(ENV_KEY) or None
    return client_context(ca, cert, key)


_NOT_IN_TOKEN = re.compile(r"[^-_a-zA-Z0-9]")


def inbox_prefix(user: str | None) -> str:
    """The inbox prefix of a client connecting as ``user``: ``_INBOX_<user>`` (characters that
    are not letters, digits, '-' or '_' become '_', so the prefix is one subject token), or
    nats-py's ``_INBOX`` without a user. Each identity may subscribe only to its own prefix, so
    it cannot read the replies (JetStream answers, KV watches, request results) of another;
    nats-py builds every inbox from it: requests, JetStream publish acks and API calls, push
    and pull consumers (KV watch, object get, fetch)."""
    if not user:
        return "_INBOX"
    return "_INBOX_" + _NOT_IN_TOKEN.sub("_", user)


def _url_user(servers: list[str]) -> str | None:
    """The user a server URL names (nats://user:password@host), which nats-py logs in as."""
    for server in servers:
        name = urllib.parse.urlsplit(server).username
        if name:
            return urllib.parse.unquote(name)
    return None


def _is_auth_failure(err: BaseException) -> bool:
    return isinstance(err, nats.errors.AuthorizationError) or (
        "authorization violation" in str(err).lower()
    )


async def connect(
    url: str,
    *,
    user: str | None,
    password: str | None,
    name: str,
    on_event: EventCallback | None = None,
    connect_timeout: float = 2.0,
    startup_timeout: float | None = 30.0,
    pending_bytes: int = PENDING_BYTES,
    tls: ssl.SSLContext | None = None,
) -> Client:
    """Connect, retrying until ``startup_timeout`` (None: forever), then reconnect forever.

    The client is a :class:`BusClient`: while the broker is away it buffers up to
    ``pending_bytes`` of publishes, then drops and counts them instead of raising. If the
    connection is closed for good (the server closed it for a protocol violation, say)
    ``on_event`` hears ``closed``: the caller should end, so that its supervisor restarts it.

    ``url`` may list several servers separated by commas (the members of a cluster): the
    client fails over between them (it also learns the others from the server it reaches).
    A wrong user or password fails at once with PermissionDeniedError instead of retrying.

    ``tls`` (default: what GRIDPILOT_NATS_CA, _CERT and _KEY describe, see :func:`env_tls`)
    encrypts the connection and verifies the server against that CA; a ``tls://`` URL without
    it verifies against the system's roots.
    Replies come to the user's own inbox prefix (:func:`inbox_prefix`; the user may also be
    written into the URL).
    """
    if tls is None:
        tls = env_tls()
    nc = BusClient()
    st = stats(nc)
    loop = asyncio.get_running_loop()
    deadline = None if startup_timeout is None else loop.time() + startup_timeout
    started = False
    quiet = [False]  # the current outage's refusals were said once already

    def emit(event: str, err: BaseException | None) -> None:
        if on_event is not None:
            try:
                on_event(event, err)
            except Exception:
                log.exception("bus event=callback_failed client=%s", name)

    async def error_cb(e: Exception) -> None:
        if not started:
            # Raising here aborts nats-py's own retry loop inside nc.connect().
            if _is_auth_failure(e):
                raise PermissionDeniedError(url, f"connect as {user!r}") from e
            if deadline is not None and loop.time() > deadline:
                raise BusError(f"cannot reach NATS at {url} after {startup_timeout} s: {e}") from e
            log.info("bus event=waiting client=%s url=%s error=%r", name, url, e)
            return
        denied = permission_error(e)
        if denied is not None:
            st.permission_denied += 1
            st.denied.append((st.permission_denied, denied))
            log.warning(
                "bus event=permission_denied client=%s user=%s operation=%s subject=%s",
                name,
                user,
                denied.operation,
                denied.subject,
            )
            emit("permission_denied", denied)
            return
        st.errors += 1
        if nc.is_reconnecting and isinstance(e, OSError):
            # the broker is away: one line per outage, not one per attempt every 0.5 s
            if not quiet[0]:
                quiet[0] = True
                log.warning("bus event=reconnecting client=%s url=%s error=%r", name, url, e)
        else:
            log.warning("bus event=error client=%s error=%r", name, e)
        emit("error", e)

    async def disconnected_cb() -> None:
        # nats-py also calls this on a deliberate close(), after marking the client closed.
        if started and not nc.is_closed:
            st.disconnects += 1
            log.warning("bus event=disconnected client=%s url=%s", name, url)
            emit("disconnected", None)

    async def reconnected_cb() -> None:
        st.reconnects += 1
        quiet[0] = False
        log.info(
            "bus event=reconnected client=%s url=%s dropped_outage=%d",
            name,
            nc.connected_url,
            st.dropped_outage,
        )
        emit("reconnected", None)

    async def closed_cb() -> None:
        if started:
            # nats-py's last error says why (a protocol violation the server closed it for)
            log.info("bus event=closed client=%s error=%r", name, nc.last_error)
            emit("closed", nc.last_error)

    try:
        servers = [u.strip() for u in url.split(",") if u.strip()]
        await nc.connect(
            servers,
            user=user,
            password=password,
            name=name,
            error_cb=error_cb,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
            closed_cb=closed_cb,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # annotated int, used as float
            connect_timeout=connect_timeout,  # type: ignore[arg-type]
            pending_size=pending_bytes,
            tls=tls,
            inbox_prefix=inbox_prefix(user or _url_user(servers)),
        )
    except BaseException:
        await nc.close()
        raise
    started = True
    log.info("bus event=connected client=%s url=%s user=%s", name, url, user)
    return nc


@asynccontextmanager
async def denied_as_error(nc: Client, subject: str | None = None) -> AsyncIterator[None]:
    """Turn a request that timed out because the server refused it into PermissionDeniedError.

    A refused publish or request is silently dropped by the server, which only tells the
    client asynchronously; the caller sees a timeout unless it looks at what was refused.
    """
    st = stats(nc)
    mark = st.permission_denied
    try:
        yield
    except (TimeoutError, nats.errors.TimeoutError) as e:
        denied = st.denied_since(mark, subject)
        if denied is not None:
            raise denied from e
        raise


async def barrier(nc: Client, *, flush_timeout: float = 2.0) -> None:
    """Return once the server has handled everything this client sent before the call.

    nats-py 2.16 writes flush()'s PING straight to the socket while PUB and SUB wait in its
    buffer, so the PONG can overtake them: push the buffer out first, then round-trip.
    """
    await nc._flush_pending(force_flush=True)
    await nc.flush(timeout=flush_timeout)  # type: ignore[arg-type]  # annotated int, used as float


async def publish_checked(
    nc: Client, subject: str, payload: bytes, *, flush_timeout: float = 2.0
) -> None:
    """Publish and wait for the server's verdict (one round trip); raise if it was refused."""
    st = stats(nc)
    mark = st.permission_denied
    await nc.publish(subject, payload)
    # The server answers PING after handling the PUB, so any -ERR for it comes first.
    await barrier(nc, flush_timeout=flush_timeout)
    denied = st.denied_since(mark, subject)
    if denied is not None:
        raise denied


_HEADER_LINE = len(b"NATS/1.0\r\n")


def message_size(payload: bytes, headers: Mapping[str, str] | None = None) -> int:
    """The bytes the server counts against its max_payload: the payload and, for a message
    with headers, the header block as nats-py writes it ("NATS/1.0", one "key: value" line
    each, an empty line)."""
    if headers is None:
        return len(payload)
    lines = sum(len(f"{k.strip()}: {v.strip()}\r\n".encode()) for k, v in headers.items())
    return len(payload) + _HEADER_LINE + lines + 2


def refuse_oversize(
    nc: Client,
    subject: str,
    payload: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    counters: MutableMapping[str, int],
) -> int:
    """The message's size if the server would refuse it (0 if it fits): counted in
    ``dropped_oversize`` and logged once per subject, for the caller not to send it.

    The server closes the connection of a client that sends a message above its max_payload
    (from its INFO; 1 MiB by default), and nats-py checks the payload alone: a message whose
    headers take it over the limit costs the sender its connection.
    """
    size = message_size(payload, headers)
    limit = nc.max_payload
    if size <= limit:
        return 0
    counters["dropped_oversize"] = counters.get("dropped_oversize", 0) + 1
    said = stats(nc).oversize_logged
    if subject not in said:
        said.add(subject)
        log.error(
            "bus event=oversize_refused subject=%s bytes=%d max_payload=%d", subject, size, limit
        )
    return size


_COMPARED = (
    "subjects",
    "max_age",
    "max_bytes",
    "description",
    "max_msgs_per_subject",
    "allow_direct",
)


def _same(name: str, have: object, want: object) -> bool:
    if name == "subjects" and isinstance(have, list) and isinstance(want, list):
        return sorted(have) == sorted(want)
    if name == "max_age" and isinstance(want, float | int) and isinstance(have, float | int | None):
        return abs((have or 0.0) - want) < 1e-3  # seconds come back from nanoseconds
    return have == want


async def _reconcile(nc: Client, wanted: api.StreamConfig, create: bool) -> str | None:
    """Create the stream or bring an existing one to the wanted settings; say what changed.

    Only the settings in _COMPARED that ``wanted`` sets (not None) are enforced.
    """
    jsm = nc.jsm()
    name = wanted.name or ""
    try:
        info = await jsm.stream_info(name)
    except nats.js.errors.NotFoundError:
        if not create:
            return None
        await jsm.add_stream(wanted)
        return f"created {name}"
    current = info.config
    if wanted.storage is not None and current.storage != wanted.storage:
        # JetStream cannot move a stream between file and memory storage.
        log.warning("bus event=stream_storage_mismatch stream=%s have=%s", name, current.storage)
    changed = {
        key: getattr(wanted, key)
        for key in _COMPARED
        if getattr(wanted, key) is not None
        and not _same(key, getattr(current, key), getattr(wanted, key))
    }
    if not changed:
        return None
    max_age = changed.get("max_age")
    if max_age and current.duplicate_window > max_age:
        changed["duplicate_window"] = max_age  # the server refuses a window beyond max_age
    await jsm.update_stream(current.evolve(**changed))
    return f"updated {name} ({', '.join(changed)})"


def cluster_peers(nc: Client) -> int:
    """How many servers the connected one knows in its cluster (1 when it runs alone).

    A clustered server lists every member's client URL in its INFO (``connect_urls``).
    """
    info = getattr(nc, "_server_info", None) or {}
    if not info.get("cluster"):
        return 1
    return max(1, len(set(info.get("connect_urls") or ())))


def replicas(nc: Client) -> int:
    """The replication factor for new streams and buckets: three copies where the cluster
    has the servers, else one per server (a single server allows only one)."""
    return min(3, cluster_peers(nc))


async def ensure_jetstream(nc: Client) -> list[str]:
    """Create every stream, KV bucket and object store of the catalogue; idempotent.

    Existing ones whose settings drifted from the catalogue are updated. Returns what changed
    (empty when everything was already in place). New ones get :func:`replicas` copies; the
    replication of existing ones is left as it is.
    """
    js = nc.jetstream()
    changes: list[str] = []
    num_replicas = replicas(nc)
    for spec in subjects.STREAMS:
        wanted = api.StreamConfig(
            name=spec.name,
            description=spec.description,
            subjects=list(spec.subjects),
            storage=api.StorageType.FILE,
            max_age=spec.max_age_s,
            max_bytes=spec.max_bytes,
            duplicate_window=min(120.0, spec.max_age_s),
            num_replicas=num_replicas,
        )
        change = await _reconcile(nc, wanted, create=True)
        if change:
            changes.append(change)
    for bucket in subjects.BUCKETS:
        try:
            await js.key_value(bucket.name)
        except nats.js.errors.BucketNotFoundError:
            await js.create_key_value(
                api.KeyValueConfig(
                    bucket=bucket.name,
                    description=bucket.description,
                    history=bucket.history,
                    ttl=bucket.ttl_s,
                    storage=api.StorageType.FILE,
                    direct=True,  # readers' permissions allow DIRECT.GET only
                    replicas=num_replicas,
                )
            )
            changes.append(f"created KV {bucket.name}")
            continue
        kv_wanted = api.StreamConfig(
            name=f"KV_{bucket.name}",
            subjects=[f"$KV.{bucket.name}.>"],
            description=bucket.description,
            max_msgs_per_subject=bucket.history,
            max_age=bucket.ttl_s,
            allow_direct=True,
        )
        change = await _reconcile(nc, kv_wanted, create=False)
        if change:
            changes.append(change)
    for store in subjects.OBJECT_STORES:
        try:
            await js.object_store(store.name)
        except nats.js.errors.BucketNotFoundError:
            await js.create_object_store(
                store.name,
                api.ObjectStoreConfig(
                    description=store.description,
                    storage=api.StorageType.FILE,
                    replicas=num_replicas,
                ),
            )
            changes.append(f"created object store {store.name}")
    for change in changes:
        log.info("bus event=jetstream_changed what=%r", change)
    return changes


EDGE_STREAM = subjects.MEAS_STREAM  # what an edge stores and forwards to the hub


async def ensure_edge_source(nc: Client, *, hub_domain: str, edge_domain: str) -> bool:
    """Make the hub's GP_MEAS stream source the edge's (through the leaf link, from an edge).

    ``nc`` is connected to the edge's server; the hub's JetStream answers under
    ``$JS.<hub_domain>.API`` and the edge's under ``$JS.<edge_domain>.API``. The hub then
    pulls what the edge stored, resuming after an outage where it stopped: nothing lost,
    nothing twice. Returns True when the source was added (False: it was there already).
    """
    jsm = nc.jsm(prefix=f"$JS.{hub_domain}.API")
    info = await jsm.stream_info(EDGE_STREAM)
    api_prefix = f"$JS.{edge_domain}.API"
    sources = list(info.config.sources or [])
    if any(src.external is not None and src.external.api == api_prefix for src in sources):
        return False
    sources.append(api.StreamSource(name=EDGE_STREAM, external=api.ExternalStream(api=api_prefix)))
    await jsm.update_stream(info.config.evolve(sources=sources))
    log.info("bus event=edge_source_added hub=%s edge=%s", hub_domain, edge_domain)
    return True
