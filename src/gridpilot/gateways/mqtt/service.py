"""The ``mqtt_gateway`` service: reads what smart meters publish over MQTT (the broker's MQTT
listener turns topic ``gp/<grid>/meter/<id>`` into subject ``gp.<grid>.meter.<id>``) and
publishes measurement sets on ``gp.<grid>.meas.<id>``."""

from __future__ import annotations

from nats.aio.msg import Msg

from gridpilot.core import subjects
from gridpilot.core.config import ServiceConfig
from gridpilot.core.service import Service
from gridpilot.gateways.mqtt.meter import DeviceMap, MeterGateway
from gridpilot.model import distribution


class MqttGatewayService(Service):
    """``devices``: meter id -> (component, load/gen mRID, terminal) entries; by default the
    meters of the grid's device registry."""

    name = "mqtt_gateway"

    def __init__(self, config: ServiceConfig, *, devices: DeviceMap | None = None) -> None:
        super().__init__(config)
        self._devices = devices

    async def setup(self) -> None:
        devices = self._devices
        if devices is None:
            pkg = await distribution.wait_for(
                self.nc, self.grid, wait_s=self.config.model_wait_s, log=self.log
            )
            registry = pkg.devices
            devices = {
                m.device: [(c.component, c.mrid, c.terminal) for c in m.components]
                for m in registry.meter
            }
        self.gateway = MeterGateway(
            grid=self.grid, devices=devices, counters=self.counters, log=self.log
        )
        self.info["meters"] = len(self.gateway.devices)
        # Plain NATS: the payload is one of two formats, decoded by the meter normaliser.
        await self.nc.subscribe(
            subjects.METER_RAW.format(grid=self.grid, source="*"), cb=self._on_meter
        )

    async def _on_meter(self, msg: Msg) -> None:
        self.counters["msgs_in"] += 1
        try:
            mset = self.gateway.handle(msg.subject, msg.data)
            if mset is not None:
                await self.publish(subjects.MEAS.format(grid=self.grid, source=mset.source), mset)
        except Exception:  # one bad message must not stop the gateway
            self.counters["handler_errors"] += 1
            self.log.exception("meter message failed", extra={"subject": msg.subject})


def main(grid: str | None = None) -> int:
    return MqttGatewayService.main(grid=grid)
