"""The meter normaliser: both formats, every refusal, and fuzzing that nothing else escapes."""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridpilot.core.errors import ProtocolError
from gridpilot.protocols.meter_json import (
    MAX_PAYLOAD_BYTES,
    MAX_T_NS,
    MIN_T_NS,
    ComponentReading,
    MeterErrorCode,
    MeterFormat,
    MeterPayloadError,
    MeterReading,
    encode,
    normalise,
    parse_timestamp,
)

T_NS = 1_700_000_100_000_000_000  # 2023-11-14T22:15:00Z
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def sogno(device: str = "meter_7", **overrides: Any) -> dict[str, Any]:
    """A three-phase SOGNO message (the layout of pyvolt-service's sogno_input_v4.json)."""
    readings = [
        {"component": "load_7", "measurand": m, "phase": ph, "data": value}
        for m, value in (("activepower", 1500.0), ("reactivepower", -200.0))
        for ph in "ABC"
    ]
    readings += [
        {"component": "load_7", "measurand": "voltmagnitude", "phase": ph, "data": v}
        for ph, v in zip("ABC", (230.0, 231.0, 232.0), strict=True)
    ]
    readings.append({"component": "load_7", "measurand": "frequency", "phase": "A", "data": 50.0})
    msg = {"device": device, "timestamp": "2023-11-14T22:15:00+00:00", "readings": readings}
    msg.update(overrides)
    return msg


def own(device: str = "meter_7", **overrides: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"device": device, "t_ns": T_NS, "p_mw": 0.0042, "q_mvar": -0.001}
    msg.update(overrides)
    return msg


def read(msg: object, device: str = "meter_7") -> MeterReading:
    return normalise(json.dumps(msg).encode(), topic_device=device)


def refused(msg: object | bytes, code: MeterErrorCode, device: str = "meter_7") -> str:
    data = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
    with pytest.raises(MeterPayloadError) as err:
        normalise(data, topic_device=device)
    assert err.value.code is code, err.value
    assert isinstance(err.value, ProtocolError) and err.value.protocol == "meter-json"
    return err.value.reason


# --- SOGNO ---------------------------------------------------------------------------------------


def test_sogno_three_phase_meter_is_summed_in_mw_and_mvar() -> None:
    r = read(sogno())
    assert (r.device, r.t_ns, r.format) == ("meter_7", T_NS, MeterFormat.SOGNO)
    (c,) = r.components
    assert c.component == "load_7" and c.phases == "ABC"
    assert c.p_mw == pytest.approx(0.0045) and c.q_mvar == pytest.approx(-0.0006)
    assert c.v_ln_v == pytest.approx(231.0) and c.v_pu is None
    assert r.ignored == ("frequency",)


def test_sogno_single_phase_meter_and_several_components() -> None:
    msg = sogno(
        readings=[
            {"component": "house", "measurand": "ActivePower", "phase": "b", "data": 800},
            {"component": "house", "measurand": "reactivepower", "phase": "B", "data": 100},
            {"component": "pv", "measurand": "activepower", "phase": "A", "data": -3000.0},
            {"component": "bus", "measurand": "voltagemagnitude", "phase": "A", "data": 229.5},
            {"component": "pv", "measurand": "currmagnitude", "phase": "N", "data": 13.0},
        ]
    )
    r = read(msg)
    house, pv, bus = (r.component(c) for c in ("house", "pv", "bus"))
    assert house == ComponentReading(component="house", phases="B", p_mw=0.0008, q_mvar=0.0001)
    assert pv is not None and pv.p_mw == pytest.approx(-0.003) and pv.q_mvar is None
    assert bus is not None and bus.v_ln_v == 229.5 and bus.p_mw is None
    assert r.component("nothing") is None and r.ignored == ("currmagnitude",)


@pytest.mark.parametrize(
    ("stamp", "t_ns"),
    [
        ("2023-11-14T22:15:00+00:00", T_NS),
        ("2023-11-14T22:15:00Z", T_NS),
        ("2023-11-14T23:15:00.000000+01:00", T_NS),
        ("2023-11-14T22:15:00", T_NS),  # no offset: UTC
        ("2023-11-14 22:15:00.25", T_NS + 250_000_000),
        ("2023-11-14T22:15:00:123", T_NS + 123_000_000),  # SOGNO v3's milliseconds
        (1_700_000_100, T_NS),  # epoch seconds
        (1_700_000_100.5, T_NS + 500_000_000),
        (1_700_000_100_250, T_NS + 250_000_000),  # epoch milliseconds
    ],
)
def test_sogno_timestamps(stamp: str | float, t_ns: int) -> None:
    assert read(sogno(timestamp=stamp)).t_ns == t_ns
    assert parse_timestamp(stamp) == t_ns


@pytest.mark.parametrize(
    "stamp",
    [
        "2023-11-14",  # a day, not an instant
        "yesterday",
        "",
        "1999-12-31T23:59:59Z",
        "2100-01-01T00:00:00Z",
        "9999-12-31T23:59:59-23:59",
        "\uff12\uff10\uff12\uff13-11-14T22:15:00",  # full-width digits
        0,
        -1_700_000_100,
        1e300,
        10**40,
        4_102_444_800,  # 2100-01-01 exactly
    ],
)
def test_absurd_or_unreadable_timestamps_are_refused(stamp: str | float) -> None:
    refused(sogno(timestamp=stamp), MeterErrorCode.TIMESTAMP)


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        ({"readings": []}, MeterErrorCode.EMPTY, "no activepower"),
        (
            {"readings": [{"component": "x", "measurand": "frequency", "phase": "A", "data": 50}]},
            MeterErrorCode.EMPTY,
            "only frequency",
        ),
        ({"readings": "many"}, MeterErrorCode.SCHEMA, "Expected `array`"),
        ({"readings": [{"component": "x"}]}, MeterErrorCode.SCHEMA, "missing required field"),
        ({"timestamp": None}, MeterErrorCode.SCHEMA, "$.timestamp"),
        ({"timestamp": True}, MeterErrorCode.SCHEMA, "$.timestamp"),
        ({"device": 7}, MeterErrorCode.SCHEMA, "$.device"),
        ({"device": "meter_8"}, MeterErrorCode.DEVICE_MISMATCH, "'meter_8'"),
        (
            {"readings": [{"component": "x", "measurand": "activepower", "phase": 1, "data": 1}]},
            MeterErrorCode.SCHEMA,
            "$.readings[0].phase",
        ),
        (
            {
                "readings": [
                    {"component": "x", "measurand": "activepower", "phase": "A", "data": "1"}
                ]
            },
            MeterErrorCode.SCHEMA,
            "$.readings[0].data",
        ),
        (
            {"readings": [{"component": "x", "measurand": "activepower", "phase": "N", "data": 1}]},
            MeterErrorCode.VALUE,
            "use A, B or C",
        ),
        (
            {"readings": [{"component": "", "measurand": "activepower", "phase": "A", "data": 1}]},
            MeterErrorCode.VALUE,
            "component",
        ),
        (
            {
                "readings": [
                    {"component": "x", "measurand": "activepower", "phase": "A", "data": 2e9}
                ]
            },
            MeterErrorCode.VALUE,
            "(W)",
        ),
        (
            {
                "readings": [
                    {"component": "x", "measurand": "voltmagnitude", "phase": "A", "data": -1}
                ]
            },
            MeterErrorCode.VALUE,
            "(V)",
        ),
        (
            {
                "readings": [
                    {"component": "x", "measurand": "activepower", "phase": "A", "data": 1},
                    {"component": "x", "measurand": "ActivePower", "phase": "a", "data": 2},
                ]
            },
            MeterErrorCode.DUPLICATE,
            "phase A",
        ),
        (
            {
                "readings": [
                    {"component": "x", "measurand": "activepower", "phase": "A", "data": 1},
                    {"component": "x", "measurand": "activepower", "phase": "B", "data": 1},
                    {"component": "x", "measurand": "reactivepower", "phase": "A", "data": 1},
                ]
            },
            MeterErrorCode.PHASES,
            "phases AB",
        ),
    ],
)
def test_bad_sogno_messages_say_why(
    change: dict[str, Any], code: MeterErrorCode, says: str
) -> None:
    assert says in refused(sogno(**change), code)


# --- GridPilot's own format ----------------------------------------------------------------------


def test_own_format() -> None:
    r = read(own(v_pu=1.02))
    assert (r.device, r.t_ns, r.format, r.ignored) == ("meter_7", T_NS, MeterFormat.GRIDPILOT, ())
    assert r.components == (
        ComponentReading(component="meter_7", p_mw=0.0042, q_mvar=-0.001, v_pu=1.02),
    )
    assert read(own(p_mw=1, q_mvar=0)).components[0].p_mw == 1.0  # JSON integers are fine


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        (own(t_ns=1_700_000_100), MeterErrorCode.TIMESTAMP),  # seconds where ns are due
        (own(t_ns=MAX_T_NS), MeterErrorCode.TIMESTAMP),
        (own(t_ns=MIN_T_NS - 1), MeterErrorCode.TIMESTAMP),
        (own(t_ns=1.7e18), MeterErrorCode.SCHEMA),
        (own(t_ns="1700000100000000000"), MeterErrorCode.SCHEMA),
        (own(p_mw=None), MeterErrorCode.SCHEMA),
        ({"device": "meter_7", "t_ns": T_NS, "p_mw": 1.0}, MeterErrorCode.SCHEMA),
        (own(q_mvar=5000.0), MeterErrorCode.VALUE),
        (own(v_pu=-0.1), MeterErrorCode.VALUE),
        (own(v_pu=230.0), MeterErrorCode.VALUE),
        (own(device="meter_8"), MeterErrorCode.DEVICE_MISMATCH),
    ],
)
def test_bad_own_messages(msg: dict[str, Any], code: MeterErrorCode) -> None:
    refused(msg, code)


# --- not a meter message at all ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", MeterErrorCode.NOT_JSON),
        (b"p=1.5", MeterErrorCode.NOT_JSON),
        (b'{"device": "meter_7",', MeterErrorCode.NOT_JSON),
        (b'"\xff\xfe"', MeterErrorCode.NOT_JSON),
        (b'{"t_ns": 1e400}', MeterErrorCode.NOT_JSON),
        (b"[" * 50_000, MeterErrorCode.NOT_JSON),  # nesting deeper than the decoder goes
        (b"[1, 2]", MeterErrorCode.UNKNOWN_FORMAT),
        (b"null", MeterErrorCode.UNKNOWN_FORMAT),
        (b'{"device": "meter_7", "p_mw": 1}', MeterErrorCode.UNKNOWN_FORMAT),
        (b" " * MAX_PAYLOAD_BYTES + b"{}", MeterErrorCode.TOO_LARGE),
    ],
)
def test_not_a_meter_message(data: bytes, code: MeterErrorCode) -> None:
    refused(data, code)


def test_size_limit_is_inclusive() -> None:
    data = json.dumps(own()).encode()
    padded = data[:-1] + b" " * (MAX_PAYLOAD_BYTES - len(data)) + b"}"
    assert len(padded) == MAX_PAYLOAD_BYTES
    assert normalise(padded, topic_device="meter_7").t_ns == T_NS


# --- properties ----------------------------------------------------------------------------------

_KEYS = ["device", "timestamp", "readings", "t_ns", "p_mw", "q_mvar", "v_pu", "component"]
_KEYS += ["measurand", "phase", "data"]
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.sampled_from(["meter_7", "activepower", "A", "2023-11-14T22:15:00Z", ""])
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=5), inner, max_size=6)
    ),
    max_leaves=30,
)


def _accepts_or_refuses(data: bytes) -> None:
    try:
        r = normalise(data, topic_device="meter_7")
    except MeterPayloadError as exc:
        assert exc.reason and isinstance(exc.code, MeterErrorCode)
        return
    assert r.device == "meter_7" and MIN_T_NS <= r.t_ns < MAX_T_NS and r.components
    for c in r.components:
        for v in (c.p_mw, c.q_mvar, c.v_ln_v, c.v_pu):
            assert v is None or math.isfinite(v)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_bytes_only_ever_raise_the_meter_error(data: bytes) -> None:
    _accepts_or_refuses(data)


@FUZZ
@given(_json)
def test_fuzz_json_only_ever_raises_the_meter_error(value: object) -> None:
    _accepts_or_refuses(json.dumps(value).encode())


_reading = st.fixed_dictionaries(
    {
        "component": st.sampled_from(["load_1", "pv_2", "x"]) | st.text(max_size=8),
        "measurand": st.sampled_from(
            ["activepower", "reactivepower", "voltmagnitude", "voltangle", "frequency", "thd"]
        ),
        "phase": st.sampled_from(["A", "B", "C", "a", "N", "", "ABC"]),
        "data": st.floats(allow_nan=False) | st.integers(-(10**20), 10**20),
    }
)


@FUZZ
@given(
    st.lists(_reading, max_size=8),
    st.sampled_from(["2023-11-14T22:15:00Z", 1_700_000_100, 1_700_000_100_000, "x", -5, 1e99]),
)
def test_fuzz_sogno_shaped_messages(readings: list[dict[str, Any]], stamp: object) -> None:
    _accepts_or_refuses(
        msgspec.json.encode({"device": "meter_7", "timestamp": stamp, "readings": readings})
    )


_power = st.floats(min_value=-100.0, max_value=100.0, allow_nan=False)
_t_ns = st.integers(MIN_T_NS, MAX_T_NS - 1)


@FUZZ
@given(
    st.sampled_from(list(MeterFormat)),
    _t_ns,
    _power,
    _power,
    st.none() | st.floats(min_value=0.0, max_value=3.0),
    st.sampled_from(["ABC", "A", "BC"]),
)
def test_encode_then_normalise_gives_the_reading_back(
    fmt: MeterFormat, t_ns: int, p_mw: float, q_mvar: float, v: float | None, phases: str
) -> None:
    sogno_ = fmt is MeterFormat.SOGNO
    component = ComponentReading(
        component="load_1" if sogno_ else "meter_7",
        phases=phases if sogno_ else "",
        p_mw=p_mw,
        q_mvar=q_mvar,
        v_ln_v=None if v is None or not sogno_ else v * 230.0,
        v_pu=None if sogno_ else v,
    )
    sent = MeterReading(device="meter_7", t_ns=t_ns, format=fmt, components=(component,))
    got = normalise(encode(sent), topic_device="meter_7")
    # SOGNO's ISO 8601 text carries microseconds
    assert got.t_ns == (t_ns // 1000 * 1000 if sogno_ else t_ns)
    (c,) = got.components
    assert c.component == component.component and c.phases == component.phases
    assert c.p_mw == pytest.approx(p_mw, rel=1e-12, abs=1e-12)
    assert c.q_mvar == pytest.approx(q_mvar, rel=1e-12, abs=1e-12)
    assert c.v_pu == component.v_pu
    assert c.v_ln_v == pytest.approx(component.v_ln_v)
