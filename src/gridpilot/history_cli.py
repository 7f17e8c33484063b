"""``gridpilot history``: export, import and query the historian's data.

Export and import work on the database directly (like pg_dump; the historian may keep running:
SQLite in WAL mode and PostgreSQL both allow it). Queries go over the bus to the running
historian, as any client's would.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

from gridpilot.core.config import ENV_DB_PASSWORD, env_secret
from gridpilot.core.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from gridpilot.cli_common import DATA_DIR_HELP, GRID_HELP

    hist = sub.add_parser("history", help="export, import and query the historian's data")
    hsub = hist.add_subparsers(dest="history_command", required=True)

    def db_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", default="", help="postgresql://... (default: SQLite in data dir)")
        p.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)

    exp = hsub.add_parser("export", help="write a time range to .csv or .parquet")
    exp.add_argument("out", type=Path, help="output file; its suffix picks the format")
    exp.add_argument("--grid", default=None, help="one grid (default: every grid)")
    exp.add_argument("--from", dest="t_from", required=True, help="ISO time, UTC unless offset")
    exp.add_argument("--to", dest="t_to", default=None, help="ISO time (default: now)")
    db_options(exp)

    imp = hsub.add_parser("import", help="backfill from a CSV in the export format")
    imp.add_argument("file", type=Path)
    db_options(imp)

    q = hsub.add_parser("query", help="ask the running historian for one series")
    q.add_argument("--grid", default=None, help=GRID_HELP)
    q.add_argument("--kind", default="est", choices=["est", "meas"])
    q.add_argument("--mrid", required=True, help="bus, branch, load or generator id")
    q.add_argument("--quantity", default="v_pu", help="v_pu, loading_pct, bus.v_pu, from.p_mw")
    q.add_argument("--source", default="", help="one device (meas); default: every device")
    q.add_argument("--from", dest="t_from", default=None, help="ISO time (default: 1 h ago)")
    q.add_argument("--to", dest="t_to", default=None, help="ISO time (default: now)")
    q.add_argument("--bucket", type=int, default=0, help="seconds per bucket; 0: raw values")
    q.add_argument("--latest", action="store_true", help="only the newest value")
    q.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)
    q.add_argument(
        "--nats-url",
        default=None,
        help="ask this NATS server instead of the platform in --data-dir; connects as "
        "GRIDPILOT_NATS_USER/PASSWORD when set, or as the user in the URL",
    )


def parse_time(text: str) -> int:
    """ISO-8601 (UTC unless it has an offset) or Unix nanoseconds, as Unix nanoseconds."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{text!r} is not a time: use ISO-8601 like 2026-11-26T12:00:00Z or Unix nanoseconds"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return round(when.timestamp() * 1e9)


def db_url(args: argparse.Namespace) -> str:
    from gridpilot.platform.locate import data_dir
    from gridpilot.services.historian.service import DB_FILE

    if args.db:
        return str(args.db)
    path = data_dir(args.data_dir) / DB_FILE
    if not path.exists():
        raise ConfigError(
            f"no historian database at {path}: run `gridpilot up` first, pass --data-dir (or "
            "set GRIDPILOT_DATA_DIR), or --db postgresql://..."
        )
    return str(path)


def run(args: argparse.Namespace) -> int:
    if args.history_command == "query":
        return asyncio.run(_query(args))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from gridpilot.model.registry import grid_key
    from gridpilot.services.historian import transfer
    from gridpilot.services.historian.backends import open_store

    if args.history_command == "export":  # a bad time is refused before anything starts
        t_from = parse_time(args.t_from)
        t_to = parse_time(args.t_to) if args.t_to else time.time_ns()
    store = open_store(db_url(args), password=env_secret(ENV_DB_PASSWORD))
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns) as bar:
            task = bar.add_task(args.history_command, total=None)

            def progress(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            if args.history_command == "export":
                n = transfer.export(
                    store,
                    args.out,
                    grid=grid_key(args.grid) if args.grid else None,
                    t_from_ns=t_from,
                    t_to_ns=t_to,
                    progress=progress,
                )
                message = f"{n} samples written to {args.out}"
            else:
                stats = transfer.import_csv(store, args.file, progress=progress)
                message = (
                    f"{stats.samples_new} samples imported from {args.file}"
                    f" ({stats.samples_duplicate} already stored)"
                )
    finally:
        store.close()
    print(message)
    return 0


async def _query(args: argparse.Namespace) -> int:
    from gridpilot.cli_common import bus_error, bus_errors, resolve_grid
    from gridpilot.cli_common import client as _client
    from gridpilot.cli_common import platform_client as _platform_client
    from gridpilot.core import schemas as s
    from gridpilot.core import subjects
    from gridpilot.platform import locate

    now = time.time_ns()
    query = s.HistoryQuery(
        series=[
            s.SeriesRef(kind=args.kind, mrid=args.mrid, quantity=args.quantity, source=args.source)
        ],
        t_from_ns=parse_time(args.t_from) if args.t_from else now - 3600 * 10**9,
        t_to_ns=parse_time(args.t_to) if args.t_to else now,
        bucket_s=args.bucket,
        latest=args.latest,
    )
    if args.nats_url:  # another server: the grid must be named
        from gridpilot.model.registry import grid_key

        if not args.grid:
            raise ConfigError("with --nats-url, name the grid with --grid")
        grid = grid_key(args.grid)
        nc = await _client(None, args.nats_url)
    else:
        platform = locate.platform(args.data_dir)
        grid = resolve_grid(args.grid, platform)
        nc = await _platform_client(platform)
    subject = subjects.HISTORY_QUERY.format(grid=subjects.grid_token(grid))
    try:
        msg = await nc.request(subject, s.encode(query), timeout=30)
    except bus_errors() as exc:  # no responders, a timeout, the broker gone: one line each
        raise bus_error(exc, subject, "historian") from None
    finally:
        await nc.close()
    reply = s.decode(msg.data, s.HistoryReply)
    if not reply.ok:
        print(f"refused: {reply.error}")
        return 1
    for data in reply.data:
        ref = data.series
        print(f"# {ref.kind} {ref.source}/{ref.mrid} {ref.quantity}")
        stamps = [datetime.fromtimestamp(t / 1e9, UTC).isoformat() for t in data.t_ns]
        if data.count:
            print("time,min,avg,max,count")
            for row in zip(stamps, data.min, data.avg, data.max, data.count, strict=True):
                print(",".join(str(x) for x in row))
        else:
            print("time,value")
            for stamp, value in zip(stamps, data.value, strict=True):
                print(f"{stamp},{value}")
        if data.truncated:
            print("# truncated: ask again from after the last time")
    return 0
