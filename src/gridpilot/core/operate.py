"""Operating equipment on someone's behalf, one path for the HMI and the command line: the
command goes into stream GP_CMD, its executor (the IEC 104 gateway does select-before-operate
with the RTU of an RTU-operated switch, the Modbus gateway writes an inverter's setpoint, the
simulator operates the rest itself) answers with a CommandResult, and the action goes into the
audit trail with who did it and what came of it.

When a gateway carried out a switching, the digital twin adds its own report (``executed_by``
"twin") of what the operation did to the grid (buses de-energised, load unserved, a power
flow that no longer solves); the result handed back says both.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from gridpilot.core import schemas as s
from gridpilot.core import subjects
from gridpilot.core.bus import BUS_FAILURES, barrier
from gridpilot.core.errors import BusError

COMMAND_TIMEOUT_S = 15.0  # select-before-operate at an RTU takes well under a second
# After a gateway's result: how long to wait for the twin's report when it has not come first
# (it normally comes first: the twin switches before the RTU confirms). No twin (real field
# devices): the result is handed back after this wait, without a report.
TWIN_REPORT_WAIT_S = 2.0
TWIN = "twin"  # executed_by of the twin's report


class NoResult(BusError):
    """The command was stored but no executor answered in time."""


async def execute(
    nc: Client,
    cmd: s.Command,
    *,
    timeout_s: float = COMMAND_TIMEOUT_S,
    twin_wait_s: float = TWIN_REPORT_WAIT_S,
) -> s.CommandResult:
    """Send ``cmd`` to its executor through GP_CMD and return what became of it: the
    executor's result, with the twin's report of the consequences appended to ``change``.

    Raises BusError when the broker does not store the command, NoResult when nobody
    answers within ``timeout_s``."""
    executor: asyncio.Future[s.CommandResult] = asyncio.get_running_loop().create_future()
    twin: asyncio.Future[s.CommandResult] = asyncio.get_running_loop().create_future()

    async def on_result(msg: Msg) -> None:
        try:
            result = s.decode(msg.data, s.CommandResult)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not ours to judge: the stream's other readers count it
        if result.command_id != cmd.id:
            return
        future = twin if result.executed_by == TWIN else executor
        if not future.done():
            future.set_result(result)

    sub = await nc.subscribe(subjects.COMMAND_RESULT.format(grid=cmd.grid), cb=on_result)
    try:
        try:
            await barrier(nc)  # subscribed at the server before the command can be answered
            await nc.jetstream().publish(
                subjects.COMMAND.format(grid=cmd.grid, target=cmd.target), s.encode(cmd)
            )
        except BUS_FAILURES as exc:
            raise BusError(
                f"the broker did not store command {cmd.id} in stream GP_CMD: {exc!r}"
            ) from None
        try:
            result = await asyncio.wait_for(asyncio.shield(executor), timeout_s)
        except TimeoutError:
            raise NoResult(
                f"no result for command {cmd.id} within {timeout_s:.0f} s: is the gateway "
                f"(IEC 104 for RTU-operated switches, Modbus for inverters) or the simulator of "
                f"grid {cmd.grid} running?"
            ) from None
        report: s.CommandResult | None = None
        if result.ok and cmd.kind is s.CommandKind.SWITCH and result.executed_by != "simulator":
            with contextlib.suppress(TimeoutError):
                report = await asyncio.wait_for(asyncio.shield(twin), twin_wait_s)
        return merge(result, report)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


def merge(result: s.CommandResult, report: s.CommandResult | None) -> s.CommandResult:
    """The executor's result, its ``change`` extended by the twin's report."""
    if report is None or not report.change:
        return result
    change = f"{result.change}; {report.change}" if result.change else report.change
    return msgspec.structs.replace(result, change=change)


def command_audit(
    cmd: s.Command, result: s.CommandResult | None, *, user: str, role: str, error: str = ""
) -> s.AuditRecord:
    """The audit record of a command: who, what, and what came of it (``result`` None: no
    executor answered, ``error`` says so)."""
    detail: dict[str, Any] = {
        "command_id": cmd.id,
        "closed": cmd.closed,
        "p_mw": cmd.p_mw,
        "q_mvar": cmd.q_mvar,
    }
    if result is not None:
        detail |= {"executed_by": result.executed_by, "change": result.change}
    return s.AuditRecord(
        grid=cmd.grid,
        t_ns=time.time_ns(),
        user=user,
        role=role,
        action=cmd.kind.value,
        target=cmd.target,
        detail=detail,
        ok=result is not None and result.ok,
        error=result.error if result is not None else error,
    )


async def write_audit(nc: Client, record: s.AuditRecord) -> None:
    """Store an audit record in GP_AUDIT; BusError when the broker does not take it, for an
    action must not drop out of the trail unnoticed."""
    try:
        await nc.jetstream().publish(subjects.AUDIT.format(grid=record.grid), s.encode(record))
    except BUS_FAILURES as exc:
        raise BusError(f"cannot write the audit trail: {exc!r}") from None
