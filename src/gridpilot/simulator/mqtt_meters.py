"""Virtual smart meters that publish over MQTT to the broker's MQTT listener, as real ones do.

All meters of a fleet share one MQTT connection (identity ``mqtt_device``): a data
concentrator or head-end carrying many meters looks the same to the broker, and one connection
keeps hundreds of meters cheap. Each meter reports every ``period_s`` of simulated time, on the
period boundaries (00, 15, 30, 45 minutes for 900 s), at QoS 1, in SOGNO's measurement format or
GridPilot's own.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiomqtt

from gridpilot.core import subjects
from gridpilot.core.bus import env_tls
from gridpilot.core.errors import BusError, ConfigError
from gridpilot.platform.permissions import MQTT_DEVICE
from gridpilot.protocols.meter_json import ComponentReading, MeterFormat, MeterReading, encode

log = logging.getLogger("gridpilot.simulator.mqtt_meters")

DEFAULT_PERIOD_S = 900.0
# (device, t_ns) -> (p_mw, q_mvar), positive from the grid into the installation
# None: the meter has nothing to say (its supply is dead, or the twin has no solution)
ReadingFn = Callable[[str, int], tuple[float, float] | None]


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


class MqttMeterFleet:
    """Many virtual meters on one MQTT connection; ``await run()`` until cancelled."""

    def __init__(
        self,
        *,
        url: str,
        password: str,
        grid: str,
        meters: Sequence[VirtualMeter],
        reading: ReadingFn,
        clock: SimClock,
        period_s: float = DEFAULT_PERIOD_S,
        user: str = MQTT_DEVICE,
        client_id: str | None = None,
        publish_timeout_s: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``url``: mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS (the server verified
        against ``tls``'s CAs, by default GRIDPILOT_NATS_CA's: see :func:`url_tls`)."""
        if not period_s > 0:
            raise ConfigError(f"meter period must be > 0 s, not {period_s}")
        if len({m.device for m in meters}) != len(meters):
            raise ConfigError("two virtual meters have the same device id")
        self.host, self.port = _host_port(url)
        self.tls = url_tls(url, tls)
        self.user = user
        self.password = password
        self.grid = subjects.grid_token(grid)
        self.meters = tuple(meters)
        self.reading = reading
        self.clock = clock
        self.period_ns = round(period_s * 1e9)
        self.client_id = client_id or f"gridpilot-meters-{self.grid}-{time.time_ns() % 10**9}"
        self.publish_timeout_s = publish_timeout_s
        self.published = 0
        self.silent = 0  # readings a meter did not send
        self.periods_skipped = 0

    def topic(self, meter: VirtualMeter) -> str:
        # MQTT topic levels are NATS subject tokens: gp/<grid>/meter/<id> is gp.<grid>.meter.<id>
        return subjects.METER_RAW.format(grid=self.grid, source=meter.device).replace(".", "/")

    async def run(self) -> None:
        """Connect, then publish every meter at every period boundary; BusError if the broker
        refuses or drops the connection."""
        try:
            async with aiomqtt.Client(
                self.host,
                self.port,
                username=self.user,
                password=self.password,
                identifier=self.client_id,
                protocol=aiomqtt.ProtocolVersion.V311,
                clean_session=True,
                tls_context=self.tls,
            ) as client:
                log.info(
                    "meters connected",
                    extra={"meters": len(self.meters), "mqtt": f"{self.host}:{self.port}"},
                )
                await self._loop(client)
        except aiomqtt.MqttError as exc:
            raise BusError(f"MQTT {self.host}:{self.port} as {self.user!r}: {exc}") from exc

    async def _loop(self, client: aiomqtt.Client) -> None:
        period = self.period_ns
        # A head-end system reads every meter once when it (re)connects, then on the period.
        await self.publish_all(client, self.clock.now_ns() // 1_000_000_000 * 1_000_000_000)
        t_ns = -(-self.clock.now_ns() // period) * period  # the next boundary
        while True:
            await self.clock.sleep_until(t_ns)
            await self.publish_all(client, t_ns)
            t_ns += period
            behind = (self.clock.now_ns() - t_ns) // period
            if behind > 0:  # slower than simulated time: skip, as a meter that lost power
                self.periods_skipped += behind
                t_ns += behind * period

    async def publish_all(self, client: aiomqtt.Client, t_ns: int) -> None:
        for meter in self.meters:
            reading = self.reading(meter.device, t_ns)
            if reading is None:
                self.silent += 1
                continue
            p_mw, q_mvar = reading
            await client.publish(
                self.topic(meter),
                payload(meter, t_ns, p_mw, q_mvar),
                qos=1,
                timeout=self.publish_timeout_s,
            )
            self.published += 1
