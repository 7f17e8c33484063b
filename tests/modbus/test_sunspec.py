"""The SunSpec-like register map: the documented table is the data, the codec round-trips, and
its words agree with pymodbus's own conversions (an independent implementation)."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from gridpilot.protocols import sunspec
from gridpilot.protocols.sunspec import (
    BASE_ADDRESS,
    BLOCK_SIZE,
    BY_NAME,
    CONTROLS_ADDRESS,
    POINTS,
    DerState,
    InverterStatus,
    SunSpecError,
    points,
)

DT = ModbusClientMixin.DATATYPE


BASE = DerState(
    p_w=1.234e6,
    q_var=-2.0e5,
    v_v=408.3,
    status=InverterStatus.MPPT,
    rated_w=2.0e6,
    v_ref_v=400.0,
    f_hz=49.97,
    energy_wh=123_456_780,
    p_limit_pct=55.5,
    p_limit_enabled=True,
    q_set_pct=-12.3,
    q_set_enabled=True,
    t_ms=1_795_000_000_123,
)


def make_state(**overrides: Any) -> DerState:
    return dataclasses.replace(BASE, **overrides)


def test_documented_table_is_the_map() -> None:
    """Every row of the docstring table names a point at its address with its type."""
    doc = points.__doc__ or ""
    rows = re.findall(r"^(\d{5}) (\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(rw|r) ", doc, re.MULTILINE)
    documented = {name: (int(addr), typ, sf, rw == "rw") for addr, name, typ, sf, _u, rw in rows}
    actual = {p.name: (p.address, str(p.type), p.sf or "-", p.writable) for p in POINTS}
    assert documented == actual


def test_map_is_contiguous_and_its_length_is_declared() -> None:
    offset = 0
    for p in POINTS:
        assert p.offset == offset, p.name
        offset += p.size
    assert offset == BLOCK_SIZE
    assert BY_NAME["L"].const == BY_NAME["EndID"].offset - BY_NAME["L"].offset - 1
    controls = [p for p in POINTS if p.writable]
    assert [p.address for p in controls] == list(range(CONTROLS_ADDRESS, CONTROLS_ADDRESS + 4))
    assert all(p.sf is None or BY_NAME[p.sf].type is sunspec.PointType.SUNSSF for p in POINTS)


def test_grid_units() -> None:
    state = sunspec.decode(sunspec.encode(make_state()))
    assert state.p_mw == pytest.approx(1.234)
    assert state.q_mvar == pytest.approx(-0.2)
    assert state.v_pu == pytest.approx(408.3 / 400.0)
    assert state.p_limit_mw == pytest.approx(1.11)
    assert state.q_set_mvar == pytest.approx(-0.246)
    lifted = sunspec.decode(sunspec.encode(make_state(p_limit_enabled=False, q_set_enabled=False)))
    assert lifted.p_limit_mw is None and lifted.q_set_mvar is None


def test_words_agree_with_pymodbus_conversions() -> None:
    regs = sunspec.encode(make_state())
    sf = sunspec.read_scale_factors(regs)

    def words(name: str) -> list[int]:
        p = BY_NAME[name]
        return regs[p.offset : p.offset + p.size]

    convert = ModbusClientMixin.convert_from_registers
    assert convert(words("SunS"), DT.STRING) == "SunS"
    assert convert(words("Hz"), DT.FLOAT32) == pytest.approx(49.97, abs=1e-5)
    assert convert(words("WH"), DT.UINT32) * 10 ** sf["WH_SF"] == 123_456_780
    assert convert(words("Tms"), DT.UINT64) == 1_795_000_000_123
    assert convert(words("W"), DT.INT16) * 10 ** sf["W_SF"] == pytest.approx(1.234e6)
    assert convert(words("VAr"), DT.INT16) * 10 ** sf["VAr_SF"] == pytest.approx(-2.0e5)
    assert convert(words("VArPct"), DT.INT16) == -123
    assert convert(words("VArPct_SF"), DT.INT16) == -1


power = st.floats(min_value=100.0, max_value=5e7)


@st.composite
def states(draw: st.DrawFn) -> DerState:
    rated = draw(power)
    v_ref = draw(st.floats(min_value=100.0, max_value=50_000.0))
    return DerState(
        p_w=draw(st.floats(min_value=-rated, max_value=2 * rated)),
        q_var=draw(st.floats(min_value=-2 * rated, max_value=2 * rated)),
        v_v=draw(st.floats(min_value=0.0, max_value=2 * v_ref)),
        status=draw(st.sampled_from(InverterStatus)),
        rated_w=rated,
        v_ref_v=v_ref,
        f_hz=draw(st.floats(min_value=45.0, max_value=65.0)),
        energy_wh=draw(st.integers(min_value=0, max_value=10**12)),
        p_limit_pct=draw(st.floats(min_value=0.0, max_value=100.0)),
        p_limit_enabled=draw(st.booleans()),
        q_set_pct=draw(st.floats(min_value=-100.0, max_value=100.0)),
        q_set_enabled=draw(st.booleans()),
        t_ms=draw(st.integers(min_value=0, max_value=2**53)),
    )


@settings(max_examples=300, deadline=None)
@given(states())
def test_round_trip_within_one_step(state: DerState) -> None:
    regs = sunspec.encode(state)
    assert len(regs) == BLOCK_SIZE and all(0 <= r <= 0xFFFF for r in regs)
    sf = sunspec.read_scale_factors(regs)
    back = sunspec.decode(regs)
    for name in ("W", "VAr", "PhV", "WRtg", "VRef", "WMaxLimPct", "VArPct"):
        p = BY_NAME[name]
        assert p.field is not None and p.sf is not None
        step = 10.0 ** sf[p.sf]
        assert math.isclose(
            getattr(back, p.field), getattr(state, p.field), abs_tol=step / 2 * 1.0001
        )
    # resolution promised in scale_factors(): better than 0.07 % of the rating
    assert 10.0 ** sf["W_SF"] <= 7e-4 * state.rated_w or sf["W_SF"] == 0
    assert back.f_hz == pytest.approx(state.f_hz, rel=1e-6)
    wh_step = 10 ** sf["WH_SF"]  # the accumulator rolls over at 2**32 steps
    assert back.energy_wh == round(state.energy_wh / wh_step) % 2**32 * wh_step
    assert back.t_ms == state.t_ms
    assert (back.status, back.p_limit_enabled, back.q_set_enabled) == (
        state.status,
        state.p_limit_enabled,
        state.q_set_enabled,
    )
    assert sunspec.encode(back) == regs  # registers survive decode/encode exactly


def test_encode_refuses_what_the_map_cannot_carry() -> None:
    with pytest.raises(SunSpecError, match=r"W:.*outside int16"):
        sunspec.encode(make_state(p_w=4e7))  # 20 x rated
    with pytest.raises(SunSpecError, match="Hz: NaN"):
        sunspec.encode(make_state(f_hz=math.nan))
    with pytest.raises(SunSpecError, match="WMaxLimPct"):
        sunspec.encode(make_state(p_limit_pct=-1.0))


def test_decode_refuses_other_devices_and_unimplemented_points() -> None:
    regs = sunspec.encode(make_state())

    def with_(name: str, raw: int) -> list[int]:
        at = BY_NAME[name].offset
        return [*regs[:at], raw, *regs[at + 1 :]]

    with pytest.raises(SunSpecError, match=r"SunS: .* no GridPilot DER map"):
        sunspec.decode([0, 0, *regs[2:]])
    with pytest.raises(SunSpecError, match="C_ID"):
        sunspec.decode(with_("C_ID", 103))
    with pytest.raises(SunSpecError, match="ID"):
        sunspec.decode(with_("ID", 103))
    with pytest.raises(SunSpecError, match=r"W: .*not implemented"):
        sunspec.decode(with_("W", 0x8000))
    with pytest.raises(SunSpecError, match="unknown operating state 42"):
        sunspec.decode(with_("St", 42))
    with pytest.raises(SunSpecError, match=f"expected {BLOCK_SIZE} registers"):
        sunspec.decode(regs[:-1])


def test_the_common_model_says_who_the_device_is() -> None:
    state = make_state(serial="a1b2c3-der_wka_7", device_address=7, version="0.1")
    back = sunspec.decode(sunspec.encode(state))
    assert (back.serial, back.device_address, back.version) == ("a1b2c3-der_wka_7", 7, "0.1")
    assert (back.manufacturer, back.device_model) == ("GridPilot", "virtual DER inverter")
    assert BY_NAME["C_L"].const == BY_NAME["ID"].offset - BY_NAME["C_L"].offset - 1
    with pytest.raises(SunSpecError, match=r"SN: .* longer than 32"):
        sunspec.encode(make_state(serial="x" * 33))
    with pytest.raises(SunSpecError, match=r"SN: .* not ASCII"):
        sunspec.encode(make_state(serial="Zähler"))


def test_check_write_answers_like_an_inverter() -> None:
    regs = sunspec.encode(make_state())
    assert sunspec.check_write(regs, CONTROLS_ADDRESS, [500, 1, (-200) & 0xFFFF, 0]) == []
    [read_only] = sunspec.check_write(regs, BY_NAME["W"].address, [1])
    assert (read_only.point, read_only.read_only) == ("W", True)
    [outside] = sunspec.check_write(regs, BASE_ADDRESS + BLOCK_SIZE, [1])
    assert (outside.point, outside.read_only) == ("", True)
    [too_high] = sunspec.check_write(regs, CONTROLS_ADDRESS, [1001])
    assert too_high.point == "WMaxLimPct" and "100.1 % outside 0..100" in too_high.reason
    problems = sunspec.check_write(regs, CONTROLS_ADDRESS + 1, [2, (-1001) & 0xFFFF])
    assert [p.point for p in problems] == ["WMaxLim_Ena", "VArPct"]
    assert not any(p.read_only for p in problems)
