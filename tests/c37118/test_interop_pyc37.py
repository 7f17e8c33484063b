"""Interoperability with pyc37, an independent C37.118.2 implementation (test-only, BSD-3).

(a) pyc37's PDC (a blocking socket client, run in a thread) reads our PmuServer;
(b) our PdcClient reads pyc37's PMU server, run in a subprocess because it forks a process
    per connection and logs to stdout.

pyc37 quirks met on the way (none of them changes what is tested here):
- ``pyc37.pmu`` imports ``psutil``, which pyc37 does not declare; the subprocess stubs it (it
  is only used for resource logs, inside try/except).
- Its PDC decodes STAT with unshifted masks: any PMU time quality or unlocked-time bits make it
  raise (so our stream keeps STAT at 0 here), and it refuses float FREQ values outside
  ±32.767 (it takes float FREQ for a deviation, the standard for the frequency): the streams
  use 16-bit FREQ/DFREQ.
- It reads one frame per recv and drops coalesced frames, hence 10 frames/s towards it and a
  few lost frames tolerated.
- ``collections.abc``: pyc37 1.0.2 uses ``collections.abc.Sequence`` after a bare
  ``import collections``; importing ``collections.abc`` first is the whole shim it needs on
  Python 3.11 (the older ``synchrophasor`` package needed ``collections.Callable`` and such).
"""

from __future__ import annotations

import asyncio
import cmath
import collections.abc  # noqa: F401  # the attribute pyc37 reaches through ``collections``
import math
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gridpilot.gateways.c37118 import ConnectionStateChanged, PdcClient
from gridpilot.protocols.c37118 import (
    AnalogChannel,
    AnalogKind,
    DataFormat,
    DataFrame,
    DigitalWord,
    PhasorChannel,
    PhasorKind,
    PmuConfig,
    PmuData,
)
from gridpilot.simulator.pmu_server import PmuServer

pyc37_pdc = pytest.importorskip("pyc37.pdc")

RATE = 10
INTS = DataFormat(polar=False, phasors_float=False, analogs_float=False, freq_float=False)
POLAR_FLOATS_INT_FREQ = DataFormat(freq_float=False)  # float polar phasors, float analogs
STATIONS = [
    PmuConfig(
        station="SUBSTATION 1",
        idcode=11,
        format=INTS,
        phasors=(
            PhasorChannel(name="VA", phunit=915527),
            PhasorChannel(name="IA", kind=PhasorKind.CURRENT, phunit=45776),
        ),
        analogs=(AnalogChannel(name="P", anunit=10),),
        digitals=(DigitalWord(labels=tuple(f"BRK{i}" for i in range(16)), valid=0x00FF),),
    ),
    PmuConfig(
        station="SUBSTATION 2",
        idcode=12,
        nominal_freq_hz=60,
        format=POLAR_FLOATS_INT_FREQ,
        phasors=(PhasorChannel(name="V1"), PhasorChannel(name="I1", kind=PhasorKind.CURRENT)),
        analogs=(AnalogChannel(name="Q", kind=AnalogKind.RMS),),
    ),
]


def sample(t_ns: int) -> list[PmuData]:
    k = t_ns // (1_000_000_000 // RATE)
    return [
        PmuData(
            freq_hz=50.0 + (k % 50) / 1000,
            rocof_hz_s=0.12,
            phasors=(cmath.rect(13_000.0, 0.3), cmath.rect(200.0, -0.2 + (k % 10) / 100)),
            analogs=(1230.0,),
            digitals=(k % 256,),
        ),
        PmuData(
            freq_hz=59.99,
            phasors=(cmath.rect(7000.5, 1.0), cmath.rect(55.0, -3.0)),
            analogs=(float(k % 1000),),
        ),
    ]


def _pyc37_pdc(port: int, n: int) -> tuple[Any, Any, list[Any]]:
    pdc = pyc37_pdc.Pdc(pdc_id=5, pmu_ip="127.0.0.1", pmu_port=port)
    pdc.run()
    try:
        header = pdc.get_header()
        config = pdc.get_config("cfg2")
        pdc.start()
        frames = [pdc.get() for _ in range(n)]
        pdc.stop()
    finally:
        pdc.quit()
    return header, config, frames


async def test_pyc37_pdc_reads_our_pmu_server() -> None:
    async with PmuServer(stations=STATIONS, idcode=5, sample=sample, data_rate=RATE) as server:
        header, config, frames = await asyncio.to_thread(_pyc37_pdc, server.port, 10)

    assert "GridPilot virtual PMU" in header.get_header()
    assert [name.strip() for name in config.get_station_name()] == ["SUBSTATION 1", "SUBSTATION 2"]
    assert config.get_stream_id_code() == [11, 12] and config.get_id_code() == 5
    assert config.get_ph_units() == [[(915527, "v"), (45776, "i")], [(0, "v"), (0, "i")]]
    assert config.get_analog_units() == [[(10, "pow")], [(1, "rms")]]
    assert config.get_fnom() == [50, 60] and config.get_data_rate() == RATE
    assert [name.strip() for name in config.get_channel_names()[0][:4]] == ["VA", "IA", "P", "BRK0"]

    decoded = [f for f in frames if f is not None]
    assert len(decoded) >= 8, f"pyc37 lost {10 - len(decoded)} of 10 frames"
    for frame in decoded:
        soc, fracsec = frame.get_soc(), frame.get_frasec()[0]
        assert fracsec % (1_000_000 // RATE) == 0  # aligned to the reporting rate
        want = sample(soc * 1_000_000_000 + fracsec * 1000)
        phasors, freq, dfreq = frame.get_phasors(), frame.get_freq(), frame.get_dfreq()
        analog, digital = frame.get_analog(), frame.get_digital()
        for i, expected in enumerate(want):
            for (mag, angle), z in zip(phasors[i], expected.phasors, strict=True):
                # 16-bit rectangular: half a PHUNIT step per part
                assert abs(cmath.rect(mag, angle) - z) < 10.0
            nominal = (50, 60)[i]
            assert freq[i] == round((expected.freq_hz - nominal) * 1000)  # mHz from nominal
            assert dfreq[i] == round(expected.rocof_hz_s * 100)
            assert digital[i] == list(expected.digitals)
        assert analog[0] == [123]  # 1230 / ANUNIT 10, pyc37 does not scale analogs
        assert math.isclose(analog[1][0], want[1].analogs[0])


PYC37_PMU = textwrap.dedent(
    """
    import os, sys, time, types, logging
    try:
        import psutil  # noqa
    except ImportError:  # pyc37.pmu logs resource usage with it, without declaring it
        sys.modules["psutil"] = types.ModuleType("psutil")
    import collections.abc
    from pyc37.frame import ConfigFrame2, DataFrame
    from pyc37.pmu import Pmu

    port_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # pyc37 logs to stdout
    pmu = Pmu(pmu_id=7, data_rate=30, port=0, ip="127.0.0.1")
    Pmu.logger.setLevel(logging.WARNING)
    bits = [f"BIT{i}" for i in range(16)]
    cfg = ConfigFrame2(
        7, 1000000, 2, ["STATION A", "STATION B"], [71, 72], [0, 7], [2, 1], [1, 2], [1, 0],
        [["VA", "IA", "ANALOG1"] + bits, ["V1", "AN1", "AN2"]],
        [[(915527, "v"), (45776, "i")], [(0, "v")]], [[(1, "pow")], [(1, "rms"), (1, "peak")]],
        [[(0x0000, 0xFFFF)], []], [50, 60], [3, 4], 30,
    )
    pmu.set_configuration(cfg)
    pmu.set_header("Hi from pyc37")
    pmu.run()
    print(pmu.socket.getsockname()[1], file=port_out, flush=True)
    ok = ("ok", True, "timestamp", False, False, False, 0, "<10", 0)
    i = 0
    while True:
        if pmu.client_buffers:
            pmu.send(DataFrame(
                7, [ok, ok],
                [[(1000 + i % 1000, -(i % 1000)), (-50, 70)], [(230.5 + i, 0.5)]],
                [i % 100, -(i % 100)], [-5, 5], [[i % 30000], [1.25 * i, -2.5]], [[i], []], cfg,
            ))
            i += 1
        time.sleep(1 / 30)
    """
)


async def test_our_pdc_client_reads_the_pyc37_pmu(tmp_path: Path) -> None:
    log = (tmp_path / "pyc37.log").open("w")
    pmu = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PYC37_PMU,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        start_new_session=True,  # pyc37 forks a handler per connection: stop the whole group
    )
    try:
        assert pmu.stdout is not None
        port = int(await asyncio.wait_for(pmu.stdout.readline(), 10.0))
        async with PdcClient(host="127.0.0.1", port=port, idcode=7) as pdc:
            frames: list[DataFrame] = []
            async with asyncio.timeout(10.0):
                async for event in pdc:
                    if isinstance(event, DataFrame):
                        frames.append(event)
                        if len(frames) == 6:
                            break
                    else:
                        assert isinstance(event, ConnectionStateChanged)
            assert pdc.header is not None and pdc.header.text == "Hi from pyc37"
            assert pdc.stats.malformed_frames == 0 and pdc.stats.skipped_bytes == 0
    finally:
        os.killpg(pmu.pid, signal.SIGTERM)
        await asyncio.wait_for(pmu.wait(), 5.0)
        log.close()

    config = frames[0].config
    a, b = config.pmus
    assert (a.station, b.station) == ("STATION A", "STATION B") and (a.idcode, b.idcode) == (71, 72)
    assert a.format == INTS and b.format == POLAR_FLOATS_INT_FREQ
    assert [(p.name, p.kind, p.phunit) for p in a.phasors] == [
        ("VA", PhasorKind.VOLTAGE, 915527),
        ("IA", PhasorKind.CURRENT, 45776),
    ]
    assert [(x.name, x.kind) for x in b.analogs] == [
        ("AN1", AnalogKind.RMS),
        ("AN2", AnalogKind.PEAK),
    ]
    assert a.digitals[0].labels[15] == "BIT15"
    assert (a.nominal_freq_hz, b.nominal_freq_hz) == (50, 60)
    assert (a.cfgcnt, b.cfgcnt, config.data_rate, config.time_base) == (3, 4, 30, 1_000_000)
    for frame in frames:
        pa, pb = frame.pmus
        i = pa.digitals[0]  # pyc37 puts its frame counter there
        assert pa.phasors[0] == pytest.approx(complex(1000 + i % 1000, -(i % 1000)) * 9.15527)
        assert pa.phasors[1] == pytest.approx(complex(-50, 70) * 0.45776)
        assert pa.freq_hz == pytest.approx(50 + (i % 100) / 1000) and pa.rocof_hz_s == -0.05
        assert pa.analogs == (i % 30000,)
        assert pb.phasors[0] == pytest.approx(cmath.rect(230.5 + i, 0.5), rel=1e-6)
        assert pb.freq_hz == pytest.approx(60 - (i % 100) / 1000) and pb.rocof_hz_s == 0.05
        assert pb.analogs == pytest.approx((1.25 * i, -2.5))
        assert pa.data_valid and pa.time_synced
    assert [f.pmus[0].digitals[0] for f in frames] == list(range(6))  # none lost, in order
