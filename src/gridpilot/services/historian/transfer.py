"""Export the historian's samples to CSV or Parquet, and import such a CSV back (backfill).

One row per sample; the columns are ``COLUMNS``. In CSV, ``time`` is ISO-8601 UTC with
nanoseconds (``2026-11-26T12:00:00.123456789Z``); in Parquet it is ``timestamp[ns, UTC]``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from gridpilot.core.errors import ConfigError
from gridpilot.services.historian.store import Sample, SeriesKey, SeriesKind, Store, WriteStats

COLUMNS = ("time", "grid", "kind", "source", "mrid", "quantity", "value", "quality")
OPTIONAL_COLUMNS = frozenset({"quality"})  # 0 when absent or empty

Progress = Callable[[int, int | None], None]  # (rows done, rows in all or None if unknown)
WriteBatch = Callable[[list[Sample]], None]

MAX_PROBLEMS = 10  # bad rows listed in one import error
_NS_PER_S = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64 = range(-(2**63), 2**63)
_INT32 = range(-(2**31), 2**31)
_INTEGER = re.compile(r"-?\d+", re.ASCII)
_ISO = re.compile(
    r"(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2})(?:[.,](\d{1,9}))?([Zz]|[+-]\d{2}:?\d{2})?",
    re.ASCII,
)


# --- export ---------------------------------------------------------------------------------


def export(
    store: Store,
    path: Path,
    *,
    grid: str | None,
    t_from_ns: int,
    t_to_ns: int,
    progress: Progress | None = None,
) -> int:
    """Write the samples of a grid (every grid when None) with t_from_ns <= t < t_to_ns to a
    ``.csv`` or ``.parquet`` file, in time order; returns how many.

    The file appears only when complete: it is written beside as ``<name>.part`` and renamed.
    """
    open_writer = _writer_for(path)
    total = store.count_samples(grid, t_from_ns, t_to_ns)
    if progress is not None:
        progress(0, total)
    part = path.with_name(path.name + ".part")
    done = 0
    try:
        with open_writer(part) as write:
            for batch in store.iter_samples(grid, t_from_ns, t_to_ns):
                write(batch)
                done += len(batch)
                if progress is not None:
                    progress(done, total)
        part.replace(path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return done


def _writer_for(path: Path) -> Callable[[Path], Any]:
    writers = {".csv": _csv_writer, ".parquet": _parquet_writer}
    suffix = path.suffix.lower()
    if suffix not in writers:
        raise ConfigError(
            f"cannot export to {path}: the file name must end in .csv or .parquet, "
            "which picks the format"
        )
    return writers[suffix]


@contextmanager
def _csv_writer(path: Path) -> Iterator[WriteBatch]:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(COLUMNS)

        def write(batch: list[Sample]) -> None:
            # csv writes a float with repr(): the shortest text that reads back exactly.
            out.writerows(
                (format_time(t_ns), *key, value, quality) for key, t_ns, value, quality in batch
            )

        yield write


@contextmanager
def _parquet_writer(path: Path) -> Iterator[WriteBatch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("time", pa.timestamp("ns", tz="UTC")),
            *((name, pa.string()) for name in COLUMNS[1:6]),
            ("value", pa.float64()),
            ("quality", pa.int32()),
        ]
    )
    with pq.ParquetWriter(path, schema) as out:

        def write(batch: list[Sample]) -> None:
            keys, t_ns, value, quality = zip(*batch, strict=True)
            columns = [t_ns, *zip(*keys, strict=True), value, quality]
            arrays = [pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)]
            # One row group per batch: memory stays bounded however long the export.
            out.write_table(pa.Table.from_arrays(arrays, schema=schema))

        yield write


def format_time(t_ns: int) -> str:
    """``2026-11-26T12:00:00.123456789Z``: always nine fraction digits, so the text sorts."""
    seconds, ns = divmod(t_ns, _NS_PER_S)
    return f"{_format_second(seconds)}.{ns:09d}Z"


@lru_cache(maxsize=4096)  # an export runs in time order: many samples share a second
def _format_second(seconds: int) -> str:
    return f"{_EPOCH + timedelta(seconds=seconds):%Y-%m-%dT%H:%M:%S}"


# --- import ---------------------------------------------------------------------------------


def import_csv(
    store: Store, path: Path, *, progress: Progress | None = None, batch: int = 50_000
) -> WriteStats:
    """Store the samples of a CSV file in the export format; samples stored already are skipped.

    The header names the columns (any order; ``quality`` may be left out). ``time`` may also be
    an integer of Unix nanoseconds, or ISO-8601 with an offset or fewer fraction digits (without
    an offset it is UTC). Rows are checked a batch at a time before the batch is written: a bad
    row raises ConfigError naming file, line and problem, with nothing of its batch written;
    batches before it stay written, so importing the corrected file again completes it.
    """
    stats = WriteStats()
    if progress is not None:
        progress(0, None)
    try:
        f = path.open(newline="", encoding="utf-8-sig")  # -sig: a spreadsheet's byte order mark
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    with f:
        reader = csv.reader(f)
        parse = _row_parser(path, next(reader, None))
        for samples, problems in _batches(path, reader, parse, batch):
            if problems:
                raise ConfigError(_problems_message(path, problems, _rows(stats)))
            stats = _add(stats, store.write(samples, []))
            if progress is not None:
                progress(_rows(stats), None)
    return stats


def _batches(
    path: Path,
    reader: Any,
    parse: Callable[[list[str]], Sample],
    size: int,
) -> Iterator[tuple[list[Sample], list[str]]]:
    """(samples, problems) per ``size`` rows; a batch with problems ends the file early."""
    samples: list[Sample] = []
    problems: list[str] = []
    for row in reader:
        if not row:
            continue  # a blank line
        try:
            samples.append(parse(row))
        except ValueError as e:
            problems.append(f"{path}:{reader.line_num}: {e}")
        if len(samples) + len(problems) >= size or len(problems) >= MAX_PROBLEMS:
            yield samples, problems
            samples, problems = [], []
    if samples or problems:
        yield samples, problems


def _row_parser(path: Path, header: list[str] | None) -> Callable[[list[str]], Sample]:
    """A function from one CSV row to a Sample (ValueError saying what is wrong), for the
    columns this header names."""
    expected = ",".join(COLUMNS)
    if header is None:
        raise ConfigError(f"{path}:1: the file is empty; its first line must be {expected}")
    names = [name.strip() for name in header]
    missing = [c for c in COLUMNS if c not in names and c not in OPTIONAL_COLUMNS]
    unknown = [n for n in names if n not in COLUMNS]
    if missing or unknown or len(set(names)) != len(names):
        what = (
            f"missing column {', '.join(missing)}"
            if missing
            else f"unknown column {', '.join(unknown)}"
            if unknown
            else "a column named twice"
        )
        raise ConfigError(f"{path}:1: {what}: the header must be {expected}")
    at = {name: i for i, name in enumerate(names)}
    i_time, i_value, i_quality = at["time"], at["value"], at.get("quality")
    i_key = [at[name] for name in ("grid", "kind", "source", "mrid", "quantity")]

    def parse(row: list[str]) -> Sample:
        if len(row) != len(names):
            raise ValueError(f"{len(row)} fields, but the header names {len(names)}")
        grid, kind, source, mrid, quantity = (_text(row[i], names[i]) for i in i_key)
        key = SeriesKey(grid, _kind(kind), source, mrid, quantity)
        quality = _quality(row[i_quality]) if i_quality is not None else 0
        return Sample(key, _time(row[i_time]), _value(row[i_value]), quality)

    return parse


def parse_time(text: str) -> int:
    """Unix nanoseconds of an integer or an ISO-8601 time (UTC unless it has an offset)."""
    text = text.strip()
    if _INTEGER.fullmatch(text):
        t_ns = int(text)
    else:
        match = _ISO.fullmatch(text)
        if match is None:
            raise ValueError("not an ISO-8601 time")
        whole, fraction, zone = match.groups()
        seconds = _epoch_seconds(whole.upper().replace(" ", "T"), (zone or "Z").upper())
        t_ns = seconds * _NS_PER_S + int((fraction or "").ljust(9, "0"))
    if t_ns not in _INT64:
        raise ValueError("outside the years 1677 to 2262 that 64-bit nanoseconds can hold")
    return t_ns


@lru_cache(maxsize=4096)  # a file in time order repeats each second many times
def _epoch_seconds(whole: str, zone: str) -> int:
    when = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        when -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return (when - _EPOCH) // timedelta(seconds=1)


def _time(text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as e:
        raise ValueError(
            f"bad time {text!r} ({e}): use ISO-8601 like 2026-11-26T12:00:00.123456789Z "
            "or integer Unix nanoseconds"
        ) from None


def _text(text: str, column: str) -> str:
    if not text:
        raise ValueError(f"empty {column}")
    return text


def _kind(text: str) -> SeriesKind:
    try:
        return SeriesKind(text)
    except ValueError:
        known = " or ".join(k.value for k in SeriesKind)
        raise ValueError(f"unknown kind {text!r}: use {known}") from None


def _value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"value {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"value {text!r} is not finite")
    return value


def _quality(text: str) -> int:
    if not text.strip():
        return 0
    try:
        quality = int(text)
    except ValueError:
        raise ValueError(f"quality {text!r} is not an integer") from None
    if quality not in _INT32:
        raise ValueError(f"quality {text!r} does not fit in 32 bits")
    return quality


def _problems_message(path: Path, problems: list[str], rows_written: int) -> str:
    more = " (and maybe more after these)" if len(problems) >= MAX_PROBLEMS else ""
    kept = (
        f"; the {rows_written} rows before this batch were stored"
        if rows_written
        else "; nothing was imported"
    )
    return f"cannot import {path}{more}{kept}:\n" + "\n".join(problems)


def _rows(stats: WriteStats) -> int:
    return stats.samples_new + stats.samples_duplicate


def _add(a: WriteStats, b: WriteStats) -> WriteStats:
    return WriteStats(
        samples_new=a.samples_new + b.samples_new,
        samples_duplicate=a.samples_duplicate + b.samples_duplicate,
        events_new=a.events_new + b.events_new,
        events_duplicate=a.events_duplicate + b.events_duplicate,
    )
