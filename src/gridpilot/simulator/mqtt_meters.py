"""Virtual smart meters that publish over MQTT to the broker's MQTT listener, as real ones do.

Each meter has its own MQTT connection and its own credential (user ``meter.<grid>.<device>``,
from device_credentials.json, which allows it to publish its own raw topic and nothing else),
as real meters do: revoking one meter's credential cuts that meter off and no other. A meter is
one asyncio task with one connection, so thousands stay cheap. Each meter reports every
``period_s`` of simulated time, on the period boundaries (00, 15, 30, 45 minutes for 900 s), at
QoS 1, in SOGNO's measurement format or GridPilot's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiomqtt

from gridpilot.core import subjects
from gridpilot.core.bus import env_tls
from gridpilot.core.errors import ConfigError
from gridpilot.platform.permissions import device_logins
from gridpilot.protocols.meter_json import ComponentReading, MeterFormat, MeterReading, encode

log = logging.getLogger("gridpilot.simulator.mqtt_meters")

DEFAULT_PERIOD_S = 900.0
# (device, t_ns) -> (p_mw, q_mvar), positive from the grid into the installation
# None: the meter has nothing to say (its supply is dead, or the twin has no solution)
ReadingFn = Callable[[str, int], tuple[float, float] | None]
# device -> (MQTT user, password), None when the meter has no credential (revoked)
LoginFn = Callable[[str], tuple[str, str] | None]
RETRY_S = 2.0  # a meter whose connection failed or was refused tries again after this
CONNECTING_AT_ONCE = 64  # connections being set up at the same time (not a listen backlog flood)


class SimClock(Protocol):
    """Simulated time: what time it is, and waiting until a given time."""

    def now_ns(self) -> int: ...

    async def sleep_until(self, t_ns: int) -> None: ...


class ScaledClock:
    """Simulated time that runs ``speed`` times as fast as the monotonic clock, from
    ``start_ns`` (default: now)."""

    def __init__(
        self,
        *,
        speed: float = 1.0,
        start_ns: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not speed > 0:
            raise ConfigError(f"clock speed must be > 0, not {speed}")
        self.speed = speed
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        self._monotonic = monotonic
        self._mono0 = monotonic()

    def now_ns(self) -> int:
        return self.start_ns + round((self._monotonic() - self._mono0) * self.speed * 1e9)

    async def sleep_until(self, t_ns: int) -> None:
        delay_s = (t_ns - self.now_ns()) / 1e9 / self.speed
        if delay_s > 0:
            await asyncio.sleep(delay_s)


@dataclass(frozen=True, kw_only=True)
class VirtualMeter:
    device: str
    format: MeterFormat = MeterFormat.GRIDPILOT
    # The SOGNO component id its power belongs to (default: the device id).
    component: str = ""


def payload(meter: VirtualMeter, t_ns: int, p_mw: float, q_mvar: float) -> bytes:
    """What ``meter`` publishes for one reading: SOGNO splits the power over phases A, B, C."""
    reading = MeterReading(
        device=meter.device,
        t_ns=t_ns,
        format=meter.format,
        components=(
            ComponentReading(
                component=meter.component or meter.device,
                phases="ABC" if meter.format is MeterFormat.SOGNO else "",
                p_mw=p_mw,
                q_mvar=q_mvar,
            ),
        ),
    )
    return encode(reading)


TLS_SCHEMES = ("mqtts", "ssl", "tls")


def _host_port(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("mqtt", "tcp", *TLS_SCHEMES) or not parsed.hostname:
        raise ConfigError(
            f"{url!r} is not an MQTT URL like mqtt://127.0.0.1:11883 or mqtts://HOST:PORT"
        )
    return parsed.hostname, parsed.port or (8883 if parsed.scheme in TLS_SCHEMES else 1883)


def url_tls(url: str, tls: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """The TLS context for an MQTT URL: ``tls`` if given; for an ``mqtts://`` URL else the CA
    GRIDPILOT_NATS_CA names (the platform's, under `gridpilot up --tls`), else the system's
    roots; None for plain ``mqtt://``."""
    if urllib.parse.urlsplit(url).scheme not in TLS_SCHEMES:
        return tls
    if tls is not None:
        return tls
    return env_tls() or ssl.create_default_context()


class FileLogins:
    """The meters' logins of one grid in a device_credentials.json, read again when the file
    changes (a rotated password is used at the meter's next connect)."""

    def __init__(self, path: Path, grid: str) -> None:
        self.path = Path(path)
        self.grid = grid
        self._stamp: tuple[int, int] | None = None
        self._logins: dict[str, tuple[str, str]] = {}

    def __call__(self, device: str) -> tuple[str, str] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._logins = device_logins(self.path, self.grid)
            self._stamp = stamp
        return self._logins.get(device)


class MqttMeterFleet:
    """Virtual meters, one MQTT connection each; ``await run()`` until cancelled.

    A meter whose connection fails or is refused (its credential revoked) tries again every
    ``retry_s``; the others go on. ``connected`` holds the meters connected now and
    ``all_connected`` is set once every meter has been connected at the same time
    (``connect_s`` after ``run()`` began)."""

    def __init__(
        self,
        *,
        url: str,
        logins: LoginFn,
        grid: str,
        meters: Sequence[VirtualMeter],
        reading: ReadingFn,
        clock: SimClock,
        period_s: float = DEFAULT_PERIOD_S,
        publish_timeout_s: float = 10.0,
        tls: ssl.SSLContext | None = None,
        retry_s: float = RETRY_S,
    ) -> None:
        """``url``: mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS (the server verified
        against ``tls``'s CAs, by default GRIDPILOT_NATS_CA's: see :func:`url_tls`)."""
        if not period_s > 0:
            raise ConfigError(f"meter period must be > 0 s, not {period_s}")
        if len({m.device for m in meters}) != len(meters):
            raise ConfigError("two virtual meters have the same device id")
        self.host, self.port = _host_port(url)
        self.tls = url_tls(url, tls)
        self.logins = logins
        self.grid = subjects.grid_token(grid)
        self.meters = tuple(meters)
        self.reading = reading
        self.clock = clock
        self.period_ns = round(period_s * 1e9)
        self.publish_timeout_s = publish_timeout_s
        self.retry_s = retry_s
        self.published = 0
        self.silent = 0  # readings a meter did not send
        self.periods_skipped = 0
        self.refused = 0  # connects that failed (no credential, refused, broker away)
        self.connected: set[str] = set()
        self.all_connected = asyncio.Event()
        self.connect_s: float | None = None
        self._started = 0.0
        self._slots = asyncio.Semaphore(CONNECTING_AT_ONCE)
        self._said: set[str] = set()  # meters whose current failure was logged

    def topic(self, meter: VirtualMeter) -> str:
        # MQTT topic levels are NATS subject tokens: gp/<grid>/meter/<id> is gp.<grid>.meter.<id>
        return subjects.METER_RAW.format(grid=self.grid, source=meter.device).replace(".", "/")

    async def run(self) -> None:
        """Run every meter (one task each) until cancelled."""
        self._started = time.monotonic()
        log.info(
            "meters starting",
            extra={"meters": len(self.meters), "mqtt": f"{self.host}:{self.port}"},
        )
        tasks = [asyncio.create_task(self._run_meter(m)) for m in self.meters]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_meter(self, meter: VirtualMeter) -> None:
        while True:
            problem = await self._session(meter)
            self.refused += 1
            if meter.device not in self._said:  # once per outage, not every retry
                self._said.add(meter.device)
                log.warning(
                    "meter disconnected",
                    extra={"device": meter.device, "error": problem, "retry_s": self.retry_s},
                )
            await asyncio.sleep(self.retry_s)

    async def _session(self, meter: VirtualMeter) -> str:
        """One connection of one meter, until it fails: says why."""
        login = self.logins(meter.device)
        if login is None:
            return "no credential (revoked, or not in device_credentials.json)"
        user, password = login
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=user,
            password=password,
            identifier=f"gp-{self.grid}-{meter.device}",
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            tls_context=self.tls,
        )
        try:
            async with self._slots:
                await client.__aenter__()
        except aiomqtt.MqttError as exc:
            return f"MQTT {self.host}:{self.port} as {user!r}: {exc}"
        try:
            self._up(meter)
            await self._loop(client, meter)
        except aiomqtt.MqttError as exc:
            return f"MQTT {self.host}:{self.port} as {user!r}: {exc}"
        finally:
            self.connected.discard(meter.device)
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
        return "ended"  # pragma: no cover  (_loop runs until it fails or is cancelled)

    def _up(self, meter: VirtualMeter) -> None:
        self.connected.add(meter.device)
        if meter.device in self._said:
            self._said.discard(meter.device)
            log.info("meter connected again", extra={"device": meter.device})
        if len(self.connected) == len(self.meters) and not self.all_connected.is_set():
            self.connect_s = time.monotonic() - self._started
            self.all_connected.set()
            log.info(
                "meters connected",
                extra={"meters": len(self.meters), "took_s": round(self.connect_s, 3)},
            )

    async def _loop(self, client: aiomqtt.Client, meter: VirtualMeter) -> None:
        period = self.period_ns
        # A meter reports once when it (re)connects, then on the period boundaries.
        await self.publish(client, meter, self.clock.now_ns() // 1_000_000_000 * 1_000_000_000)
        t_ns = -(-self.clock.now_ns() // period) * period  # the next boundary
        while True:
            await self.clock.sleep_until(t_ns)
            await self.publish(client, meter, t_ns)
            t_ns += period
            behind = (self.clock.now_ns() - t_ns) // period
            if behind > 0:  # slower than simulated time: skip, as a meter that lost power
                self.periods_skipped += behind
                t_ns += behind * period

    async def publish(self, client: aiomqtt.Client, meter: VirtualMeter, t_ns: int) -> None:
        """Send ``meter``'s reading for ``t_ns`` (QoS 1), if it has one."""
        reading = self.reading(meter.device, t_ns)
        if reading is None:
            self.silent += 1
            return
        p_mw, q_mvar = reading
        await client.publish(
            self.topic(meter),
            payload(meter, t_ns, p_mw, q_mvar),
            qos=1,
            timeout=self.publish_timeout_s,
        )
        self.published += 1
