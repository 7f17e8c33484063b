"""``gridpilot alarms``: the active and the unacknowledged alarms of a running platform, as the
monitoring service keeps them in KV ``gp_alarms``."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors

from gridpilot.core import subjects
from gridpilot.core.bus import BUS_FAILURES
from gridpilot.core.errors import BusError, GridPilotError
from gridpilot.core.schemas import Alarm, AlarmState, Severity


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("alarms", help="the active and the unacknowledged alarms")
    p.add_argument(
        "--grid",
        default=None,
        help="the grid, as given to `gridpilot up` (default: the running platform's grid)",
    )
    p.add_argument("--json", action="store_true", help="one JSON list, for scripts")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the platform's data dir (default: GRIDPILOT_DATA_DIR, else the nearest .gridpilot)",
    )


def run(args: argparse.Namespace) -> int:
    from gridpilot.core.config import DEFAULT_GRID
    from gridpilot.core.subjects import grid_token
    from gridpilot.model.registry import grid_key
    from gridpilot.platform.locate import platform

    found = platform(args.data_dir)
    grid = grid_token(grid_key(args.grid) if args.grid else (found.grid or DEFAULT_GRID))
    url = found.endpoints.get("nats", "")
    if not url:
        raise GridPilotError(f"{found.data_dir}: endpoints.json names no NATS server")
    alarms = asyncio.run(_read(found.data_dir, url, grid, found.endpoints))
    rows = [_row(a, time.time_ns()) for a in sorted(alarms, key=_order)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no active or unacknowledged alarms on {grid}")
        return 0
    print(
        f"{'kind':17s} {'equipment':24s} {'severity':8s} {'state':7s} {'age':>6s} "
        f"{'ack':3s}  message"
    )
    for r in rows:
        ack = "yes" if r["acknowledged"] else "no"
        print(
            f"{r['kind']:17s} {r['equipment']:24s} {r['severity']:8s} {r['state']:7s} "
            f"{_age(r['age_s']):>6s} {ack:3s}  {r['message']}"
        )
    return 0


async def _read(
    data_dir: Path, url: str, grid: str, endpoints: dict[str, str] | None = None
) -> list[Alarm]:
    from gridpilot.core.bus import connect
    from gridpilot.platform import permissions
    from gridpilot.platform.tls import platform_context
    from gridpilot.services.monitoring.store import decode_table

    password = permissions.service_password(data_dir, permissions.VIEWER)
    tls = platform_context(data_dir, endpoints or {}, permissions.VIEWER)
    nc = await connect(
        url,
        user=permissions.VIEWER,
        password=password,
        name="cli-alarms",
        startup_timeout=5,
        tls=tls,
    )
    try:
        kv = await nc.jetstream().key_value(subjects.ALARMS_BUCKET)
        entry = await kv.get(grid)
    except nats.js.errors.KeyNotFoundError:
        return []  # monitoring has not written a table for this grid: no alarm yet
    except nats.js.errors.BucketNotFoundError:
        raise GridPilotError(
            "the broker has no alarm table (KV gp_alarms): the platform is not initialised"
        ) from None
    except BUS_FAILURES as exc:
        raise BusError(f"cannot read the alarm table from {url}: {exc!r}") from None
    finally:
        await nc.close()
    alarms, _bad = decode_table(entry.value or b"[]")
    return alarms


def _order(a: Alarm) -> tuple[int, int, int]:
    """Raised before cleared, critical before warning, newest first."""
    return (
        a.state is not AlarmState.RAISED,
        a.severity is not Severity.CRITICAL,
        -a.raised_t_ns,
    )


def _row(a: Alarm, now_ns: int) -> dict[str, Any]:
    return {
        "id": a.id,
        "grid": a.grid,
        "kind": str(a.kind),
        "equipment": a.mrid,
        "severity": str(a.severity),
        "state": str(a.state),
        "age_s": round(max(0, now_ns - a.raised_t_ns) / 1e9, 1),
        "acknowledged": a.acknowledged,
        "acknowledged_by": a.acknowledged_by,
        "message": a.message,
        "value": a.value,
        "limit": a.limit,
        "raised_t_ns": a.raised_t_ns,
        "t_ns": a.t_ns,
    }


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
