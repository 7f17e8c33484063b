"""The device registry: how each field device is reached and which protocol address carries
which measurement — PMU id code and channel, common address and IOA, Modbus unit and
register, MQTT device and component — mapped to CIM mRIDs. One readable TOML file per grid,
generated from the placement on first start and validated with errors that name the line.

It also says who each device is, so that a gateway refuses a device it did not expect (another
platform's on the same machine, a mis-wired one): a PMU's ID code and station name, an RTU's
common address, an inverter's unit id and serial number. ``site`` is a random id of the data
dir the registry belongs to; station names and serial numbers carry it, so two platforms of
the same grid never share them (``gridpilot.model.allocation`` picks the ports and identities
of a new registry).
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from gridpilot.core.errors import ConfigError
from gridpilot.core.schemas import DeviceKind, Measurand, Terminal
from gridpilot.model.grid import GridModel
from gridpilot.model.placement import Placement

PMU_BASE_PORT = 14712  # C37.118 servers of the virtual PMUs: one port per PMU from here
RTU_BASE_PORT = 12404  # IEC 104 servers of the virtual RTUs
DER_PORT = 15020  # one Modbus TCP server for every virtual DER inverter (unit ids 1..)
IOA_MEASURED = 1001  # first IOA of measured values; IOA_COMMAND for switch commands
IOA_COMMAND = 2001


class Quantity(msgspec.Struct, frozen=True, kw_only=True):
    """What one protocol address carries: a quantity of a measurement point."""

    mrid: str
    measurand: Measurand
    terminal: Terminal
    quantity: str  # "v" (p.u. for RTU, phasor for PMU), "i" (PMU current phasor), "p", "q"


class PmuChannel(Quantity, frozen=True, kw_only=True):
    channel: str  # C37.118 channel name (CHNAM)


class RtuPoint(Quantity, frozen=True, kw_only=True):
    ioa: int  # information object address; value is short float (MW, Mvar, p.u.)


class RtuCommand(msgspec.Struct, frozen=True, kw_only=True):
    # double command (C_DC_NA_1), select before operate; the switch's position is reported as
    # a double point (M_DP) at the same address
    ioa: int
    switch: str  # switch mRID


class Pmu(msgspec.Struct, frozen=True, kw_only=True):
    device: str
    host: str
    port: int
    idcode: int
    data_rate: int  # frames per second
    channels: list[PmuChannel]
    # STN of its configuration frames, at most 16 ASCII characters; "" accepts any station
    station: str = ""


class Rtu(msgspec.Struct, frozen=True, kw_only=True):
    device: str
    host: str
    port: int
    common_address: int
    points: list[RtuPoint]
    commands: list[RtuCommand] = []


class Der(msgspec.Struct, frozen=True, kw_only=True):
    device: str
    host: str
    port: int
    unit: int  # Modbus unit id; registers per gridpilot.protocols.sunspec
    generator: str  # generator mRID
    # SN of its SunSpec common model, at most 32 ASCII characters; "" accepts any serial
    serial: str = ""


class MeterComponent(msgspec.Struct, frozen=True, kw_only=True):
    component: str  # the component name in the meter's payload
    mrid: str
    terminal: Terminal


class Meter(msgspec.Struct, frozen=True, kw_only=True):
    device: str  # MQTT client's device id: topic gp/<grid>/meter/<device>
    components: list[MeterComponent]


class DeviceRegistry(msgspec.Struct, frozen=True, kw_only=True):
    grid: str
    site: str = ""  # the data dir's random id, in station names and serial numbers
    pmu: list[Pmu] = []
    rtu: list[Rtu] = []
    der: list[Der] = []
    meter: list[Meter] = []


REMOTE_CONTROL_MIN_KV = 1.0
CHANNEL_NAME_LEN = 16  # CHNAM of IEEE C37.118.2 configuration frames
STATION_NAME_LEN = 16  # STN, likewise
SERIAL_LEN = 32  # SN of the SunSpec common model


def station_name(site: str, device: str) -> str:
    """A PMU's station name: the site, then as much of the device id's end as fits, without
    its "pmu_" (the end tells a grid's PMUs apart: ``pmu_mv1_101_bus_12`` -> ``a1b2c3-
    01_bus_12``, ``pmu_bus_12`` -> ``a1b2c3-bus_12``)."""
    if not site:
        return ""
    room = STATION_NAME_LEN - len(site) - 1
    name = device.removeprefix("pmu_")
    return f"{site}-{name[-room:]}" if room > 0 else site[:STATION_NAME_LEN]


def serial_number(site: str, device: str) -> str:
    """An inverter's serial number: the site and its device id."""
    return f"{site}-{device}"[:SERIAL_LEN] if site else ""


def _channel_name(prefix: str, index: int, mrid: str) -> str:
    """A C37.118 channel name (at most 16 characters) unique within its PMU: ``V_bus_6``, or
    with the channel's index when the mRID is too long to fit whole (``I3_e_mv1_line_13``)."""
    name = f"{prefix}_{mrid}"
    if len(name) <= CHANNEL_NAME_LEN:
        return name
    head = f"{prefix}{index}_"
    return head + mrid[-(CHANNEL_NAME_LEN - len(head)) :]


def default_registry(
    placement: Placement, model: GridModel, *, host: str = "127.0.0.1", site: str = ""
) -> DeviceRegistry:
    """Addresses for every device of a placement: PMUs and RTUs each on their own port (from
    the base ports up), DER inverters as units of one Modbus server, meters by device id; ID
    codes and common addresses from 1. With a ``site``, station names and serial numbers that
    carry it."""
    pmus: list[Pmu] = []
    rtus: list[Rtu] = []
    ders: list[Der] = []
    meters: list[Meter] = []
    gens = {g.id for g in model.generators}
    switches_at: dict[str, list[str]] = {}
    for sw in model.switches:
        switches_at.setdefault(sw.bus, []).append(sw.id)
    for dev in placement.devices:
        if dev.kind is DeviceKind.PMU:
            channels: list[PmuChannel] = []
            for pt in dev.points:
                if pt.measurand is Measurand.VOLTAGE:
                    channels.append(
                        PmuChannel(
                            channel=_channel_name("V", len(channels), pt.mrid),
                            mrid=pt.mrid,
                            measurand=pt.measurand,
                            terminal=pt.terminal,
                            quantity="v",
                        )
                    )
                else:
                    channels.append(
                        PmuChannel(
                            channel=_channel_name("I", len(channels), pt.mrid),
                            mrid=pt.mrid,
                            measurand=pt.measurand,
                            terminal=pt.terminal,
                            quantity="i",
                        )
                    )
            pmus.append(
                Pmu(
                    device=dev.id,
                    host=host,
                    port=PMU_BASE_PORT + len(pmus),
                    idcode=len(pmus) + 1,
                    data_rate=max(1, round(1 / dev.period_s)),
                    channels=channels,
                    station=station_name(site, dev.id),
                )
            )
        elif dev.kind is DeviceKind.DER and len(dev.points) == 1 and dev.points[0].mrid in gens:
            ders.append(
                Der(
                    device=dev.id,
                    host=host,
                    port=DER_PORT,
                    unit=len(ders) + 1,
                    generator=dev.points[0].mrid,
                    serial=serial_number(site, dev.id),
                )
            )
        elif dev.kind is DeviceKind.RTU:
            points: list[RtuPoint] = []
            ioa = IOA_MEASURED
            for pt in dev.points:
                kinds = ("v",) if pt.measurand is Measurand.VOLTAGE else ("p", "q")
                for q in kinds:
                    points.append(
                        RtuPoint(
                            ioa=ioa,
                            mrid=pt.mrid,
                            measurand=pt.measurand,
                            terminal=pt.terminal,
                            quantity=q,
                        )
                    )
                    ioa += 1
            station = next((p.mrid for p in dev.points if p.measurand is Measurand.VOLTAGE), "")
            commands = [
                RtuCommand(ioa=IOA_COMMAND + i, switch=sw)
                for i, sw in enumerate(switches_at.get(station, []))
            ]
            rtus.append(
                Rtu(
                    device=dev.id,
                    host=host,
                    port=RTU_BASE_PORT + len(rtus),
                    common_address=len(rtus) + 1,
                    points=points,
                    commands=commands,
                )
            )
        else:
            meters.append(
                Meter(
                    device=dev.id,
                    components=[
                        MeterComponent(component=dev.id, mrid=pt.mrid, terminal=pt.terminal)
                        for pt in dev.points
                    ],
                )
            )
    # Every switch at a bus of 1 kV or more is remotely controlled: those at no RTU's station
    # get a feeder RTU of their own (a ring main unit's), which only reports positions and
    # takes commands. Low-voltage switches are operated on site (the twin carries out their
    # commands itself): a rural grid has thousands, and no DSO automates them.
    commanded = {c.switch for r in rtus for c in r.commands}
    vn_kv = {b.id: b.vn_kv for b in model.buses}
    for bus, sws in switches_at.items():
        if vn_kv.get(bus, 0.0) < REMOTE_CONTROL_MIN_KV:
            continue
        todo = [sw for sw in sws if sw not in commanded]
        if todo:
            rtus.append(
                Rtu(
                    device=f"frtu_{bus}",
                    host=host,
                    port=RTU_BASE_PORT + len(rtus),
                    common_address=len(rtus) + 1,
                    points=[],
                    commands=[
                        RtuCommand(ioa=IOA_COMMAND + i, switch=sw) for i, sw in enumerate(todo)
                    ],
                )
            )
    return DeviceRegistry(
        grid=placement.grid, site=site, pmu=pmus, rtu=rtus, der=ders, meter=meters
    )


def validate_registry(
    registry: DeviceRegistry, placement: Placement, model: GridModel
) -> list[str]:
    """Every problem, each naming the device and what is wrong (empty when good)."""
    problems: list[str] = []
    devices = {d.id: d for d in placement.devices}
    points = {
        d.id: {(p.mrid, p.measurand, p.terminal) for p in d.points} for d in placement.devices
    }
    switches = {s.id for s in model.switches}
    gens = {g.id for g in model.generators}
    seen: set[str] = set()
    endpoints: dict[tuple[str, int], str] = {}

    def device(dev_id: str) -> bool:
        if dev_id in seen:
            problems.append(f"device {dev_id!r} appears twice")
        seen.add(dev_id)
        if dev_id not in devices:
            problems.append(f"device {dev_id!r} is not in the placement")
            return False
        return True

    def quantity(dev_id: str, q: Quantity, label: str) -> None:
        if (q.mrid, q.measurand, q.terminal) not in points[dev_id]:
            problems.append(
                f"device {dev_id!r} {label}: the placement has no "
                f"{q.measurand} point at {q.terminal} {q.mrid!r}"
            )

    for pmu in registry.pmu:
        _endpoint(endpoints, problems, pmu.device, pmu.host, pmu.port)
        _identity(problems, pmu.device, "station", pmu.station, STATION_NAME_LEN)
        if device(pmu.device):
            names = [c.channel for c in pmu.channels]
            if len(set(names)) != len(names):
                problems.append(f"device {pmu.device!r}: channel names repeat")
            for ch in pmu.channels:
                quantity(pmu.device, ch, f"channel {ch.channel!r}")
    for rtu in registry.rtu:
        _endpoint(endpoints, problems, rtu.device, rtu.host, rtu.port)
        # a control-only RTU (switch positions and commands, no measurement) needs no placement
        if rtu.points or rtu.device in devices:
            ok = device(rtu.device)
        else:
            ok = rtu.device not in seen
            seen.add(rtu.device)
        if not rtu.points and not rtu.commands:
            problems.append(f"device {rtu.device!r} has neither points nor commands")
        if ok:
            ioas = [p.ioa for p in rtu.points] + [c.ioa for c in rtu.commands]
            if len(set(ioas)) != len(ioas):
                problems.append(f"device {rtu.device!r}: an IOA is used twice")
            for p in rtu.points:
                quantity(rtu.device, p, f"IOA {p.ioa}")
            for cmd in rtu.commands:
                if cmd.switch not in switches:
                    problems.append(
                        f"device {rtu.device!r} IOA {cmd.ioa}: no switch {cmd.switch!r}"
                    )
    units: set[tuple[str, int, int]] = set()
    serials: dict[str, str] = {}
    for der in registry.der:
        if (der.host, der.port, der.unit) in units:
            problems.append(f"device {der.device!r}: unit {der.unit} is used twice")
        units.add((der.host, der.port, der.unit))
        _identity(problems, der.device, "serial", der.serial, SERIAL_LEN)
        if der.serial and der.serial in serials:
            problems.append(
                f"device {der.device!r}: serial {der.serial!r} is already {serials[der.serial]!r}'s"
            )
        serials.setdefault(der.serial, der.device)
        if device(der.device) and der.generator not in gens:
            problems.append(f"device {der.device!r}: no generator {der.generator!r}")
    for meter in registry.meter:
        if device(meter.device):
            for comp in meter.components:
                quantity(
                    meter.device,
                    Quantity(
                        mrid=comp.mrid,
                        measurand=Measurand.POWER,
                        terminal=comp.terminal,
                        quantity="p",
                    ),
                    f"component {comp.component!r}",
                )
    return problems


def _identity(problems: list[str], dev: str, what: str, value: str, most: int) -> None:
    if not value.isascii() or len(value) > most:
        problems.append(f"device {dev!r}: {what} {value!r} is not {most} ASCII characters or fewer")


def _endpoint(
    taken: dict[tuple[str, int], str], problems: list[str], dev: str, host: str, port: int
) -> None:
    if (host, port) in taken:
        problems.append(f"device {dev!r}: {host}:{port} is already {taken[(host, port)]!r}'s")
    taken[(host, port)] = dev


HEADER = """\
# GridPilot device registry for grid {grid}: how each device of the placement is reached.
# pmu: IEEE C37.118.2 server (idcode, channels -> measured points; "v" voltage phasor,
#      "i" current phasor of a branch end, from which the gateway derives P and Q).
# rtu: IEC 60870-5-104 server (common_address; points: IOA -> short float in MW, Mvar or
#      p.u.; commands: IOA -> switch, double command with select before operate).
# der: Modbus TCP inverter (unit id -> generator), registers per gridpilot.protocols.sunspec.
# meter: MQTT device publishing on gp/<grid>/meter/<device>; components -> loads/generators.
# Identity: a gateway only takes data from the device it expects: a PMU's idcode and station
# (its STN, "" for any), an RTU's common_address, an inverter's unit and serial ("" for any).
# Ports and identities were chosen free for this data dir (site) on its first start and are
# kept: edit them here (then restart), e.g. when another program needs a port.
"""


def registry_to_toml(registry: DeviceRegistry) -> str:
    return HEADER.format(grid=registry.grid) + msgspec.toml.encode(registry).decode()


def load_registry(path: Path, placement: Placement, model: GridModel) -> DeviceRegistry:
    text = path.read_text()
    try:
        registry = msgspec.toml.decode(text, type=DeviceRegistry)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}; see the comments at the top of the file") from exc
    problems = validate_registry(registry, placement, model)
    if problems:
        lines = "\n".join(f"  {path}:{_line_of(text, p)}: {p}" for p in problems[:20])
        raise ConfigError(f"{path} has {len(problems)} problem(s):\n{lines}")
    return registry


def _line_of(text: str, problem: str) -> int:
    """The line a problem is about: where its most specific quoted name (the bad value, else
    the channel or IOA) stands after its device's line."""
    device = re.search(r"device '([^']+)'", problem)
    start = 0
    if device:
        start = max(0, text.find(f'device = "{device.group(1)}"'))
    for token in reversed(re.findall(r"'([^']+)'|IOA (\d+)", problem)[1:]):
        needle = f'"{token[0]}"' if token[0] else f"ioa = {token[1]}"
        at = text.find(needle, start)
        if at >= 0:
            return text.count("\n", 0, at) + 1
    return text.count("\n", 0, start) + 1
