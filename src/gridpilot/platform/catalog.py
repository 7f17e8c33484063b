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


def service_main(name: str) -> Callable[..., int]:
    module = importlib.import_module(SERVICES[name])
    main: Callable[..., int] = module.main
    return main
