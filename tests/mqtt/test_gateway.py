"""The meter gateway's logic without a broker: mapping, signs, refusals counted, logs bounded."""

from __future__ import annotations

import json
import logging

import pytest

from gridpilot.core.errors import ConfigError
from gridpilot.core.schemas import DeviceKind, Measurand, Terminal
from gridpilot.gateways.mqtt.meter import DeviceMap, MeterGateway, MeterPoint, RateLimitedLog

T_NS = 1_700_000_100_000_000_000
DEVICES: DeviceMap = {
    "meter_1": [MeterPoint("meter_1", "load_1", Terminal.LOAD)],
    "meter_2": [("house", "load_2", "load"), ("pv", "gen_2", "gen")],
}


def own(device: str, p_mw: float = 0.004, q_mvar: float = 0.001) -> bytes:
    return json.dumps({"device": device, "t_ns": T_NS, "p_mw": p_mw, "q_mvar": q_mvar}).encode()


def sogno_meter_2() -> bytes:
    readings = [
        {"component": c, "measurand": m, "phase": "A", "data": v}
        for c, m, v in (
            ("house", "activepower", 900.0),
            ("house", "reactivepower", 90.0),
            ("pv", "activepower", -4000.0),
            ("pv", "reactivepower", 0.0),
        )
    ]
    msg = {"device": "meter_2", "timestamp": T_NS // 10**9, "readings": readings}
    return json.dumps(msg).encode()


def test_readings_become_meter_measurement_sets_with_equipment_signs() -> None:
    gw = MeterGateway(grid="g", devices=DEVICES)
    first = gw.handle("gp.g.meter.meter_1", own("meter_1"))
    assert first is not None
    assert (first.grid, first.source, first.kind, first.t_ns, first.seq) == (
        "g",
        "meter_1",
        DeviceKind.METER,
        T_NS,
        1,
    )
    (m,) = first.measurements
    assert (m.mrid, m.measurand, m.terminal, m.t_ns, m.source) == (
        "load_1",
        Measurand.POWER,
        Terminal.LOAD,
        T_NS,
        "meter_1",
    )
    assert (m.p_mw, m.q_mvar) == (0.004, 0.001)

    second = gw.handle("gp.g.meter.meter_2", sogno_meter_2())
    assert second is not None and second.seq == 2
    load, gen = second.measurements
    assert (load.mrid, load.terminal, load.p_mw, load.q_mvar) == ("load_2", "load", 0.0009, 9e-5)
    # The PV's export is a generator's production: positive, and no -0.0 for Q.
    assert (gen.mrid, gen.terminal, gen.p_mw) == ("gen_2", "gen", 0.004)
    assert gen.q_mvar == 0.0 and str(gen.q_mvar) == "0.0"
    assert gw.counters == {"meter_readings": 2}


def test_refusals_are_counted_per_reason_and_never_raise() -> None:
    gw = MeterGateway(grid="g", devices=DEVICES)
    assert gw.handle("gp.g.meter.meter_1", b"\x00garbage") is None
    assert gw.handle("gp.g.meter.meter_1", own("meter_2")) is None
    assert gw.handle("gp.g.meter.stranger", own("stranger")) is None
    voltage_only = {
        "device": "meter_2",
        "timestamp": "2023-11-14T22:15:00Z",
        "readings": [{"component": "house", "measurand": "voltmagnitude", "phase": "A", "data": 1}],
    }
    assert gw.handle("gp.g.meter.meter_2", json.dumps(voltage_only).encode()) is None
    assert gw.counters == {
        "meter_rejected_not_json": 1,
        "meter_rejected_device_mismatch": 1,
        "meter_unknown_device": 1,
        "meter_point_missing": 2,
        "meter_nothing_mapped": 1,
    }
    assert gw.seq == 0


def test_refusal_logs_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    gw = MeterGateway(grid="g", devices=DEVICES, log_every_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="gridpilot.gateway.mqtt"):
        for _ in range(5):
            gw.handle("gp.g.meter.stranger", own("stranger"))
        gw.handle("gp.g.meter.meter_1", b"{")  # another reason logs at once
        now[0] = 10.0
        gw.handle("gp.g.meter.stranger", own("stranger"))
    lines = [(r.msg, r.__dict__["reason"], r.__dict__["suppressed"]) for r in caplog.records]
    assert lines == [
        ("reading from an unknown meter", "meter_unknown_device", 0),
        ("meter payload refused", "meter_rejected_not_json", 0),
        ("reading from an unknown meter", "meter_unknown_device", 4),
    ]
    assert gw.counters["meter_unknown_device"] == 6


def test_rate_limited_log_says_when_it_logged() -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("t"), every_s=1.0, clock=lambda: now[0])
    assert [log.warning("k", "m") for _ in range(3)] == [True, False, False]
    now[0] = 1.5
    assert log.warning("k", "m")


@pytest.mark.parametrize(
    ("devices", "says"),
    [
        ({"meter.1": []}, "subject token"),
        ({"": []}, "subject token"),
        ({"m": [("c", "bus_1", "bus")]}, "a load or a generator"),
        ({"m": [("c", "line_1", "from")]}, "a load or a generator"),
        ({"m": [("c", "load_1", "consumer")]}, "is not \\(component"),
        ({"m": [("c", "load_1")]}, "is not \\(component"),
        ({"m": [("", "load_1", "load")]}, "empty"),
        ({"m": [("a", "load_1", "load"), ("b", "load_1", "load")]}, "twice"),
    ],
)
def test_bad_mappings_fail_at_start(devices: dict[str, list[tuple[str, ...]]], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        MeterGateway(grid="g", devices=devices)  # type: ignore[arg-type]
