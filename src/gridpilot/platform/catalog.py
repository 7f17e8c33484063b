"""The services ``gridpilot run`` knows, in the order ``gridpilot up`` starts them."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from importlib import resources

from gridpilot.core import manifest as mf
from gridpilot.core.errors import ConfigError

# The built-in services' package folders (under gridpilot/), each with its manifest.toml, in
# the order ``gridpilot up`` starts them.
BUILTIN: tuple[str, ...] = (
    "simulator",
    "services/state_estimation",
    "services/monitoring",
    "gateways/c37118",
    "gateways/iec104",
    "gateways/modbus",
    "gateways/mqtt",
    "services/historian",
    "services/web",
)


@functools.cache
def builtin_manifests() -> dict[str, mf.Manifest]:
    """Service name -> manifest of every built-in service, read from the installed package
    (``gridpilot/<folder>/manifest.toml``, shipped as package data)."""
    root = resources.files("gridpilot")
    out: dict[str, mf.Manifest] = {}
    identities: dict[str, str] = {}
    for folder in BUILTIN:
        res = root.joinpath(folder, mf.MANIFEST_FILE)
        where = f"gridpilot/{folder}/{mf.MANIFEST_FILE}"
        try:
            text = res.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read {where}: {e}; reinstall gridpilot") from None
        m = mf.parse(text, where)
        if m.name in out:
            raise ConfigError(f"{where}: service name {m.name!r} is taken by another manifest")
        if m.identity in identities:
            raise ConfigError(
                f"{where}: identity {m.identity!r} is the one of {identities[m.identity]!r}"
            )
        out[m.name] = m
        identities[m.identity] = m.name
    return out


# service name -> module with main(grid)
SERVICES: dict[str, str] = {name: m.module for name, m in builtin_manifests().items()}

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
    """The entry point of service ``name`` (its manifest's ``module:function``)."""
    m = builtin_manifests()[name]
    module = importlib.import_module(m.module)
    main: Callable[..., int] = getattr(module, m.function)
    return main
