"""Ports and identities of the virtual field devices, per data dir: chosen free on the first
start, kept afterwards, never another data dir's; a taken port is refused with a message that
says which device, which port and what to do."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from gridpilot.core.errors import ConfigError
from gridpilot.model import allocation, distribution
from gridpilot.model.devices import DeviceRegistry, default_registry, registry_to_toml
from tests.test_services import free_port

GRID = "cigre_mv"


@pytest.fixture(autouse=True)
def own_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's index of data dirs, not the developer's."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The grid, converted once for every data dir of this module."""
    folder = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:  # before own_index: not the developer's either
        patch.setenv("XDG_STATE_HOME", str(folder / "state"))
        distribution.prepare(GRID, folder)
    return folder / "models"


def data_dir(tmp_path: Path, name: str, models: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(models, folder / "models")
    return folder


def ports(registry: DeviceRegistry) -> set[int]:
    return allocation.ports_of(registry)


@pytest.fixture
def base_ports(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Base ports in a region of their own (free now), so the test does not depend on what
    the machine runs at 12404, 14712 and 15020."""
    bases = {}
    for name in ("PMU_BASE_PORT", "RTU_BASE_PORT", "DER_PORT"):
        bases[name] = free_port()
        for _ in range(40):  # room for cigre_mv's 5 PMUs and 9 RTUs, twice
            free_port()
        monkeypatch.setattr(allocation, name, bases[name])
    yield bases


def test_the_first_start_records_free_ports_and_a_restart_keeps_them(
    tmp_path: Path, models: Path, base_ports: dict[str, int]
) -> None:
    folder = data_dir(tmp_path, "a", models)
    taken = socket.socket()
    taken.bind(("127.0.0.1", base_ports["PMU_BASE_PORT"]))
    taken.listen()
    try:
        first = distribution.prepare(GRID, folder).devices
    finally:
        taken.close()
    pmu_ports = [p.port for p in first.pmu]
    assert base_ports["PMU_BASE_PORT"] not in pmu_ports  # in use at the first start
    assert len(set(pmu_ports)) == len(pmu_ports) and min(pmu_ports) > base_ports["PMU_BASE_PORT"]
    assert {d.port for d in first.der} == {base_ports["DER_PORT"]}
    assert len(first.site) == allocation.SITE_HEX
    assert all(p.station.startswith(first.site) for p in first.pmu)
    assert [d.serial for d in first.der] == [f"{first.site}-der_wka_7"]
    # a restart reads the registry: the same ports, identities and site, even though the
    # base port is free again now
    assert distribution.prepare(GRID, folder).devices == first


def test_a_second_data_dir_gets_other_ports_and_identities_even_when_the_first_is_down(
    tmp_path: Path, models: Path, base_ports: dict[str, int]
) -> None:
    a = distribution.prepare(GRID, data_dir(tmp_path, "a", models)).devices
    b = distribution.prepare(GRID, data_dir(tmp_path, "b", models)).devices
    assert not ports(a) & ports(b)  # nothing listens yet: the index knows a's registry
    assert not {p.idcode for p in a.pmu} & {p.idcode for p in b.pmu}
    assert not {r.common_address for r in a.rtu} & {r.common_address for r in b.rtu}
    assert a.site != b.site
    assert not {p.station for p in a.pmu} & {p.station for p in b.pmu}
    assert not {d.serial for d in a.der} & {d.serial for d in b.der}
    # a data dir that is gone no longer holds its ports
    shutil.rmtree(tmp_path / "a")
    c = distribution.prepare(GRID, data_dir(tmp_path, "c", models)).devices
    assert ports(c) & ports(a) and not ports(c) & ports(b)


def test_two_first_starts_at_once_choose_one_after_the_other(
    tmp_path: Path, models: Path, own_index: Path
) -> None:
    """Two processes, as two `gridpilot up` started together: the lock on the index orders
    them (the real base ports: whatever the machine runs there is skipped by both)."""
    folders = [data_dir(tmp_path, name, models) for name in ("a", "b")]
    code = "import sys; from gridpilot.model import distribution; " + (
        f"distribution.prepare({GRID!r}, __import__('pathlib').Path(sys.argv[1]))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(f)], env=_env(own_index)) for f in folders
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    a, b = (distribution.prepare(GRID, f).devices for f in folders)
    assert not ports(a) & ports(b)
    assert not {p.idcode for p in a.pmu} & {p.idcode for p in b.pmu}


def _env(state: Path) -> dict[str, str]:
    import os

    return {**os.environ, "XDG_STATE_HOME": str(state)}


def test_a_registry_edited_by_hand_keeps_its_ports(
    tmp_path: Path, models: Path, base_ports: dict[str, int]
) -> None:
    folder = data_dir(tmp_path, "a", models)
    first = distribution.prepare(GRID, folder).devices
    path = distribution.devices_path(folder, GRID)
    mine = free_port()
    text = path.read_text().replace(f"port = {first.pmu[0].port}\n", f"port = {mine}\n", 1)
    path.write_text(text)
    again = distribution.prepare(GRID, folder).devices
    assert again.pmu[0].port == mine and again.pmu[1:] == first.pmu[1:]
    assert path.read_text() == text  # not rewritten


def test_a_registry_of_an_earlier_version_gets_identities_and_keeps_its_ports(
    tmp_path: Path, models: Path
) -> None:
    folder = data_dir(tmp_path, "a", models)
    fresh = distribution.prepare(GRID, data_dir(tmp_path, "template", models))
    old = default_registry(fresh.placement, fresh.model)  # as earlier versions wrote it
    assert not old.site and not old.pmu[0].station
    path = distribution.devices_path(folder, GRID)
    path.parent.mkdir(parents=True)
    path.write_text(registry_to_toml(old))
    upgraded = distribution.prepare(GRID, folder).devices
    assert upgraded.site and upgraded.pmu[0].station.startswith(upgraded.site)
    assert [(p.port, p.idcode) for p in upgraded.pmu] == [(p.port, p.idcode) for p in old.pmu]
    assert [(r.port, r.common_address) for r in upgraded.rtu] == [
        (r.port, r.common_address) for r in old.rtu
    ]
    assert path.with_name(path.name + ".bak").read_text() == registry_to_toml(old)
    assert distribution.prepare(GRID, folder).devices == upgraded  # once


def test_a_taken_port_is_refused_naming_the_device_the_port_and_what_to_do(
    tmp_path: Path, models: Path, base_ports: dict[str, int]
) -> None:
    a_dir, b_dir = data_dir(tmp_path, "a", models), data_dir(tmp_path, "b", models)
    a = distribution.prepare(GRID, a_dir)
    b = distribution.prepare(GRID, b_dir)
    distribution.check_listen(b, b_dir)  # all free
    # b's registry copied from a's (as a user might): a's PMU port is in use
    b_path = distribution.devices_path(b_dir, GRID)
    b_path.write_text(distribution.devices_path(a_dir, GRID).read_text())
    b = distribution.prepare(GRID, b_dir)
    pmu = a.devices.pmu[0]
    holder = socket.socket()
    holder.bind(("127.0.0.1", pmu.port))
    holder.listen()
    try:
        with pytest.raises(ConfigError) as info:
            distribution.check_listen(b, b_dir)
    finally:
        holder.close()
    text = str(info.value)
    where = f"PMU {pmu.device} (ID code {pmu.idcode}): 127.0.0.1:{pmu.port}"
    assert f"{where}: the port is taken" in text
    assert f"{distribution.devices_path(a_dir, GRID)}, another data dir" in text
    assert str(b_path) in text and "another GridPilot platform" in text
    assert text.count("\n  ") == 1  # only the taken one


def test_identities_are_checked_in_the_registry(tmp_path: Path, models: Path) -> None:
    folder = data_dir(tmp_path, "a", models)
    registry = distribution.prepare(GRID, folder).devices
    der = msgspec.structs.replace(registry.der[0], serial="Zähler-1")
    pmu = msgspec.structs.replace(registry.pmu[0], station="x" * 17)
    bad = msgspec.structs.replace(registry, der=[der], pmu=[pmu, *registry.pmu[1:]])
    path = distribution.devices_path(folder, GRID)
    path.write_text(registry_to_toml(bad))
    with pytest.raises(ConfigError) as info:
        distribution.prepare(GRID, folder)
    assert "serial 'Zähler-1' is not 32 ASCII characters or fewer" in str(info.value)
    assert "station 'xxxxxxxxxxxxxxxxx' is not 16 ASCII" in str(info.value)
