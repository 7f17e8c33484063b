"""The services ``gridpilot run`` knows, in the order ``gridpilot up`` starts them."""

from __future__ import annotations

import importlib
from collections.abc import Callable

# service name -> (module with main(grid), NATS identity)
SERVICES: dict[str, str] = {
    "simulator": "gridpilot.simulator.service",
    "state_estimation": "gridpilot.services.state_estimation.service",
    "monitoring": "gridpilot.services.monitoring.service",
    "gateway_c37118": "gridpilot.gateways.c37118.service",
    "gateway_iec104": "gridpilot.gateways.iec104.service",
    "gateway_modbus": "gridpilot.gateways.modbus.service",
    "mqtt_gateway": "gridpilot.gateways.mqtt.service",
    "historian": "gridpilot.services.historian.service",
    "web": "gridpilot.services.web.service",
}

# What ``gridpilot up --edge`` runs at a site: the field side and the state estimation next
# to its measurements (which it keeps running when the link to the hub is down); the
# measurements are stored at the edge and forwarded to the hub's stream.
EDGE_SERVICES: tuple[str, ...] = (
    "simulator",
    "state_estimation",
    "gateway_c37118",
    "gateway_iec104",
    "gateway_modbus",
    "mqtt_gateway",
)
# What a hub accepting edges (``gridpilot up --leafnodes``) runs: the control-room side.
HUB_SERVICES: tuple[str, ...] = ("monitoring", "historian", "web")


def service_main(name: str) -> Callable[..., int]:
    module = importlib.import_module(SERVICES[name])
    main: Callable[..., int] = module.main
    return main
