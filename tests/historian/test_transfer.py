"""Export to CSV and Parquet, and CSV import, against both stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gridpilot.core.errors import ConfigError
from gridpilot.services.historian import transfer
from gridpilot.services.historian.backends import open_store
from gridpilot.services.historian.store import Sample, SeriesKey, SeriesKind, Store, WriteStats
from gridpilot.services.historian.transfer import COLUMNS, format_time, parse_time

S = 1_000_000_000
T0 = 1_795_000_000 * S + 123_456_789
BUS = SeriesKey("g", SeriesKind.EST, "se", "bus1", "v_pu")
LINE = SeriesKey("g", SeriesKind.MEAS, "rtu1", "line,1", 'p_mw."from"')  # needs CSV quoting
OTHER = SeriesKey("h", SeriesKind.EST, "se", "bus1", "v_pu")
HEADER = ",".join(COLUMNS)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Store]:
    """An empty SQLite store to import into."""
    store = open_store(str(tmp_path / "target.sqlite"))
    yield store
    store.close()


def stored(store: Store, grid: str | None = None) -> list[Sample]:
    return [s for batch in store.iter_samples(grid, -(2**62), 2**62) for s in batch]


def some_samples() -> list[Sample]:
    values = [0.1, 1 / 3, -0.0, 1e-300, 1.7976931348623157e308, -12345.678]
    samples = [Sample(BUS, T0 + i * S // 3, v) for i, v in enumerate(values)]
    samples += [Sample(LINE, T0 + i, 2.5 * i, quality=0x40 * i) for i in range(4)]
    samples += [Sample(BUS, -S - 1, 7.0), Sample(OTHER, T0, 1.0)]  # before 1970; another grid
    return samples


def test_csv_export_then_import_round_trip(store: Store, target: Store, tmp_path: Path) -> None:
    samples = some_samples()
    store.write(samples, [])
    path = tmp_path / "g.csv"
    n = transfer.export(store, path, grid="g", t_from_ns=-(2**62), t_to_ns=2**62)
    assert n == len(samples) - 1
    assert path.read_text().splitlines()[0] == HEADER
    assert not path.with_name("g.csv.part").exists()

    assert transfer.import_csv(target, path) == WriteStats(samples_new=n)
    assert stored(target) == stored(store, "g")
    assert transfer.import_csv(target, path) == WriteStats(samples_duplicate=n)


def test_csv_times_have_nanoseconds_in_utc(store: Store, tmp_path: Path) -> None:
    store.write([Sample(BUS, -1, 1.0), Sample(BUS, 1_795_000_000 * S + 5, 2.0)], [])
    path = tmp_path / "x.csv"
    transfer.export(store, path, grid=None, t_from_ns=-S, t_to_ns=2**62)
    assert path.read_text().splitlines()[1:] == [
        "1969-12-31T23:59:59.999999999Z,g,est,se,bus1,v_pu,1.0,0",
        "2026-11-18T11:06:40.000000005Z,g,est,se,bus1,v_pu,2.0,0",
    ]


def test_parquet_export_reads_back_with_pyarrow(store: Store, tmp_path: Path) -> None:
    samples = some_samples()
    store.write(samples, [])
    path = tmp_path / "all.parquet"
    assert transfer.export(store, path, grid=None, t_from_ns=-(2**62), t_to_ns=2**62) == len(
        samples
    )
    table = pq.read_table(path)
    assert table.schema.names == list(COLUMNS)
    assert table.schema.field("time").type == pa.timestamp("ns", tz="UTC")
    assert table.schema.field("value").type == pa.float64()
    assert table.schema.field("quality").type == pa.int32()
    rows = table.to_pydict()
    times = table.column("time").cast(pa.int64()).to_pylist()
    got = [
        Sample(SeriesKey(g, SeriesKind(k), s, m, q), t, v, qual)
        for t, g, k, s, m, q, v, qual in zip(times, *(rows[c] for c in COLUMNS[1:]), strict=True)
    ]
    assert got == stored(store)


def test_parquet_is_written_a_row_group_per_batch(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "big.sqlite"))
    try:
        store.write([Sample(BUS, i, float(i)) for i in range(120_000)], [])
        path = tmp_path / "big.parquet"
        transfer.export(store, path, grid="g", t_from_ns=0, t_to_ns=2**62)
    finally:
        store.close()
    meta = pq.ParquetFile(path).metadata
    assert (meta.num_rows, meta.num_row_groups) == (120_000, 3)


def test_export_needs_a_known_suffix(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        transfer.export(store, out / "x.json", grid=None, t_from_ns=0, t_to_ns=1)
    assert list(out.iterdir()) == []


def test_progress_counts_up(store: Store, target: Store, tmp_path: Path) -> None:
    store.write([Sample(BUS, T0 + i, float(i)) for i in range(10)], [])
    path = tmp_path / "p.csv"
    calls: list[tuple[int, int | None]] = []
    transfer.export(store, path, grid="g", t_from_ns=0, t_to_ns=2**62, progress=_record(calls))
    assert calls[0] == (0, 10) and calls[-1] == (10, 10)
    calls.clear()
    transfer.import_csv(target, path, progress=_record(calls), batch=3)
    assert calls == [(0, None), (3, None), (6, None), (9, None), (10, None)]


def _record(calls: list[tuple[int, int | None]]) -> transfer.Progress:
    return lambda done, total: calls.append((done, total))


# --- import of hand-written files -------------------------------------------------------------


def write_csv(tmp_path: Path, *lines: str, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_accepts_integer_ns_offsets_and_short_fractions(
    target: Store, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path,
        "grid,kind,source,mrid,quantity,value,time",  # any order; quality left out
        f"g,est,se,bus1,v_pu,1.0,{T0}",
        "g,est,se,bus1,v_pu,2.0,2026-11-26T13:00:00.5+01:00",
        "g,est,se,bus1,v_pu,3.0,2026-11-26T12:00:01Z",
        "",
        "g,est,se,bus1,v_pu,4.0,-1",
        "g,est,se,bus1,v_pu,5,2026-11-26 12:00:02.000000001",  # no offset: UTC
    )
    assert transfer.import_csv(target, path) == WriteStats(samples_new=5)
    noon = parse_time("2026-11-26T12:00:00Z")
    got = target.raw([BUS], -(2**62), 2**62, limit=10)[BUS]
    assert got.t_ns == [-1, T0, noon + S // 2, noon + S, noon + 2 * S + 1]
    assert got.value == [4.0, 1.0, 2.0, 3.0, 5.0]


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("yesterday,g,est,se,bus1,v_pu,1.0,0", "bad time 'yesterday'"),
        ("2026-02-30T00:00:00Z,g,est,se,bus1,v_pu,1.0,0", "bad time"),
        ("2026-11-26T12:00:00Z,g,est,se,bus1,v_pu,one,0", "value 'one' is not a number"),
        ("2026-11-26T12:00:00Z,g,est,se,bus1,v_pu,nan,0", "value 'nan' is not finite"),
        ("2026-11-26T12:00:00Z,g,guess,se,bus1,v_pu,1.0,0", "unknown kind 'guess'"),
        ("2026-11-26T12:00:00Z,g,est,se,bus1,v_pu,1.0,good", "quality 'good'"),
        ("2026-11-26T12:00:00Z,g,est,se,bus1,1.0,0", "7 fields, but the header names 8"),
        ("2026-11-26T12:00:00Z,,est,se,bus1,v_pu,1.0,0", "empty grid"),
    ],
)
def test_import_errors_name_file_and_line_and_write_nothing(
    target: Store, tmp_path: Path, row: str, problem: str
) -> None:
    good = "2026-11-26T12:00:00Z,g,est,se,bus1,v_pu,1.0,0"
    path = write_csv(tmp_path, HEADER, good, good.replace(":00Z", ":01Z"), row)
    with pytest.raises(ConfigError) as caught:
        transfer.import_csv(target, path)
    assert f"{path}:4: {problem}" in str(caught.value)
    assert "nothing was imported" in str(caught.value)
    assert target.count_samples() == 0


def test_import_error_in_a_later_batch_keeps_the_earlier_ones(
    target: Store, tmp_path: Path
) -> None:
    rows = [f"{T0 + i},g,est,se,bus1,v_pu,{i},0" for i in range(5)]
    path = write_csv(tmp_path, HEADER, *rows[:4], "x,g,est,se,bus1,v_pu,1,0", rows[4])
    with pytest.raises(ConfigError, match=r"the 4 rows before this batch were stored") as caught:
        transfer.import_csv(target, path, batch=2)
    assert f"{path}:6: bad time 'x'" in str(caught.value)
    assert target.count_samples() == 4


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("time,grid,kind,source,mrid,quantity,quality", "missing column value"),
        ("time,grid,kind,source,mrid,quantity,value,unit", "unknown column unit"),
        ("time,grid,kind,source,mrid,quantity,value,value", "a column named twice"),
    ],
)
def test_import_checks_the_header(target: Store, tmp_path: Path, header: str, problem: str) -> None:
    path = write_csv(tmp_path, header, "2026-11-26T12:00:00Z,g,est,se,bus1,v_pu,1.0,0")
    with pytest.raises(ConfigError, match=rf"in\.csv:1: {problem}: the header must be {HEADER}"):
        transfer.import_csv(target, path)


def test_import_of_an_empty_or_missing_file(target: Store, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"empty\.csv:1: the file is empty"):
        transfer.import_csv(target, empty)
    with pytest.raises(ConfigError, match="cannot read"):
        transfer.import_csv(target, tmp_path / "absent.csv")


def test_time_text_round_trips() -> None:
    for t_ns in (0, -1, 1, T0, -(2**63), 2**63 - 1, 86_400 * S - 1):
        assert parse_time(format_time(t_ns)) == t_ns
    assert parse_time("2026-11-26T12:00:00.123+0530") == parse_time("2026-11-26T06:30:00.123Z")
    with pytest.raises(ValueError, match="1677 to 2262"):
        parse_time("2300-01-01T00:00:00Z")
