"""The device registry: defaults from the placement, round trip, errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridpilot.core.errors import ConfigError
from gridpilot.model.devices import (
    default_registry,
    load_registry,
    registry_to_toml,
    validate_registry,
)
from gridpilot.model.placement import default_placement
from tests.pipeline import grid


@pytest.fixture
def setup() -> tuple:  # type: ignore[type-arg]
    model = grid("cigre_mv")
    placement = default_placement(model)
    return model, placement, default_registry(placement, model)


def test_default_registry_covers_every_device(setup: tuple) -> None:  # type: ignore[type-arg]
    model, placement, reg = setup
    assert validate_registry(reg, placement, model) == []
    ids = {d.device for d in (*reg.pmu, *reg.rtu, *reg.der, *reg.meter)}
    control_only = {r.device for r in reg.rtu if not r.points}
    assert ids - control_only == {d.id for d in placement.devices}
    # every switch is remotely controlled, by exactly one RTU
    commanded = [c.switch for r in reg.rtu for c in r.commands]
    assert sorted(commanded) == sorted(s.id for s in model.switches)
    assert [d.generator for d in reg.der] == ["wka_7"]
    rtu = next(r for r in reg.rtu if r.device == "rtu_trafo_0_1")
    assert {c.switch for c in rtu.commands} == set()  # bus_1 has no switch; bus_0 has the CBs
    assert len({p.port for p in reg.pmu}) == len(reg.pmu)


def test_round_trip(tmp_path: Path, setup: tuple) -> None:  # type: ignore[type-arg]
    model, placement, reg = setup
    path = tmp_path / "devices.toml"
    path.write_text(registry_to_toml(reg))
    assert load_registry(path, placement, model) == reg


def test_errors_name_the_line(tmp_path: Path, setup: tuple) -> None:  # type: ignore[type-arg]
    model, placement, reg = setup
    text = registry_to_toml(reg)
    bad = text.replace('mrid = "line_12_13"', 'mrid = "line_99"', 1)
    path = tmp_path / "devices.toml"
    path.write_text(bad)
    with pytest.raises(ConfigError) as info:
        load_registry(path, placement, model)
    line = bad[: bad.index('"line_99"')].count("\n") + 1
    assert f"devices.toml:{line}:" in str(info.value)
    assert "line_99" in str(info.value)


def test_duplicate_ioa_and_port(tmp_path: Path, setup: tuple) -> None:  # type: ignore[type-arg]
    model, placement, reg = setup
    text = registry_to_toml(reg).replace("ioa = 1002", "ioa = 1001", 1)
    text = text.replace("port = 14713", "port = 14712", 1)
    path = tmp_path / "devices.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="IOA is used twice") as info:
        load_registry(path, placement, model)
    assert "14712 is already" in str(info.value)


@pytest.mark.slow
def test_the_largest_grid_gets_a_valid_registry() -> None:
    """mvlv_rural (5,479 buses, 10,968 switches): channel names stay unique within 16
    characters; its 294 medium-voltage switches are remotely controlled, low-voltage ones only
    where an RTU measures anyway."""
    model = grid("mvlv_rural")
    placement = default_placement(model)
    registry = default_registry(placement, model)
    assert validate_registry(registry, placement, model) == []
    for pmu in registry.pmu:
        names = [c.channel for c in pmu.channels]
        assert len(set(names)) == len(names) and max(map(len, names)) <= 16
    kv = {b.id: b.vn_kv for b in model.buses}
    remote = {c.switch for r in registry.rtu for c in r.commands}
    mv = {s.id for s in model.switches if kv[s.bus] >= 1.0}
    assert remote >= mv and len(mv) == 294 and len(remote) < 1000
    assert len(registry.rtu) < 200  # not one TCP server per low-voltage switch


def test_virtual_devices_listen_on_an_address_or_on_every_interface_for_a_name() -> None:
    from gridpilot.simulator.field import listen_address

    assert listen_address("127.0.0.1") == "127.0.0.1"
    assert listen_address("::1") == "::1"
    assert listen_address("localhost") == "localhost"
    assert listen_address("simulator") == "0.0.0.0"  # a container's name, as the gateways know it
