"""The ``gateway_c37118`` service: a PDC client for every PMU of the device registry. Each
data frame becomes a measurement set: the voltage phasor in p.u. of the bus's phase-to-neutral
base, and each branch end's P and Q from S = 3 V conj(I)."""

from __future__ import annotations

import cmath
import math

from gridpilot.core import subjects
from gridpilot.core.schemas import (
    DeviceKind,
    Measurand,
    Measurement,
    MeasurementSet,
    Terminal,
)
from gridpilot.core.service import Service
from gridpilot.gateways.c37118 import (
    ConnectionState,
    ConnectionStateChanged,
    PdcClient,
    WrongDevice,
)
from gridpilot.gateways.identity import WrongDevices
from gridpilot.gateways.quality import from_c37118_stat
from gridpilot.model import distribution
from gridpilot.model.devices import Pmu
from gridpilot.protocols.c37118 import DataFrame


class C37118GatewayService(Service):
    name = "gateway_c37118"

    async def setup(self) -> None:
        pkg = await distribution.wait_for(
            self.nc, self.grid, wait_s=self.config.model_wait_s, log=self.log
        )
        self.kv = {b.id: b.vn_kv for b in pkg.model.buses}
        self.seq = 0
        self.streaming: set[str] = set()
        self.wrong = WrongDevices(self)
        for pmu in pkg.devices.pmu:
            client = PdcClient(host=pmu.host, port=pmu.port, idcode=pmu.idcode, station=pmu.station)
            self.spawn(self._read(pmu, client), name=pmu.device)
        self.info["pmus"] = len(pkg.devices.pmu)

    async def _read(self, pmu: Pmu, client: PdcClient) -> None:
        volt = next(c for c in pmu.channels if c.quantity == "v")
        v_base = self.kv[volt.mrid] * 1e3 / math.sqrt(3)
        async with client:
            async for event in client:
                if isinstance(event, ConnectionStateChanged):
                    self.counters[f"pmu_{event.state}"] += 1
                    if event.state is ConnectionState.STREAMING:
                        self.streaming.add(pmu.device)
                        await self.wrong.right(pmu.device)  # its identity was checked
                    else:
                        self.streaming.discard(pmu.device)
                    self.info["pmus_streaming"] = len(self.streaming)
                    continue
                if isinstance(event, WrongDevice):
                    await self.wrong.wrong(pmu.device, event.message)
                    continue
                if isinstance(event, DataFrame):
                    await self._publish(pmu, event, volt.channel, v_base)

    async def _publish(self, pmu: Pmu, frame: DataFrame, volt: str, v_base: float) -> None:
        names = [p.name for p in frame.config.pmus[0].phasors]
        phasors = dict(zip(names, frame.pmus[0].phasors, strict=True))
        v = phasors.get(volt, complex("nan"))
        if not cmath.isfinite(v):
            self.counters["pmu_frames_without_voltage"] += 1
            return
        t_ns = frame.t_ns
        quality = from_c37118_stat(frame.pmus[0].stat)
        ms = []
        for ch in pmu.channels:
            value = phasors.get(ch.channel)
            if value is None or not cmath.isfinite(value):
                continue
            if ch.quantity == "v":
                ms.append(
                    Measurement(
                        mrid=ch.mrid,
                        measurand=Measurand.VOLTAGE,
                        terminal=Terminal.BUS,
                        t_ns=t_ns,
                        source=pmu.device,
                        v_pu=abs(value) / v_base,
                        va_deg=math.degrees(cmath.phase(value)),
                        quality=quality,
                    )
                )
            else:
                s = 3 * v * value.conjugate() / 1e6  # three phases, MVA
                ms.append(
                    Measurement(
                        mrid=ch.mrid,
                        measurand=Measurand.POWER,
                        terminal=ch.terminal,
                        t_ns=t_ns,
                        source=pmu.device,
                        p_mw=s.real,
                        q_mvar=s.imag,
                        quality=quality,
                    )
                )
        self.seq += 1
        await self.publish(
            subjects.MEAS.format(grid=self.grid, source=pmu.device),
            MeasurementSet(
                grid=self.grid,
                source=pmu.device,
                kind=DeviceKind.PMU,
                t_ns=t_ns,
                seq=self.seq,
                measurements=ms,
            ),
        )


def main(grid: str | None = None) -> int:
    return C37118GatewayService.main(grid=grid)
