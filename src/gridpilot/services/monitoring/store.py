"""The alarm table in KV ``gp_alarms`` (key: grid): read once at start, written after changes.

Only "no such key" means a first start. Any other failure (the broker restarting, JetStream
not answering) is an outage: the read is retried with back-off until it answers, because
starting with an empty table would overwrite the stored one and lose the alarms that are
cleared but not yet acknowledged. A write that fails is tried again by the service, with the
table as it is then (it is the whole table each time).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from gridpilot.core.backoff import Backoff
from gridpilot.core.bus import BUS_FAILURES
from gridpilot.core.schemas import Alarm

# What an outage looks like to nats-py: its own errors (no responders, connection closed or
# reconnecting, JetStream API errors other than not-found) and timeouts.
OUTAGE_ERRORS = BUS_FAILURES

_alarm = msgspec.json.Decoder(Alarm)


def decode_table(data: bytes, log: logging.Logger | None = None) -> tuple[list[Alarm], int]:
    """The alarms of a stored table, and how many entries did not decode (skipped, so that one
    entry a newer or older version wrote does not cost the others)."""
    try:
        raw = msgspec.json.decode(data or b"[]", type=list[msgspec.Raw])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        if log is not None:
            log.error("stored alarm table unreadable; starting empty", extra={"error": str(exc)})
        return [], 1
    alarms: list[Alarm] = []
    bad = 0
    for item in raw:
        try:
            alarms.append(_alarm.decode(item))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            bad += 1
            if log is not None:
                log.error("stored alarm skipped", extra={"error": str(exc)})
    return alarms, bad


class AlarmStore:
    def __init__(
        self,
        kv: KeyValue,
        grid: str,
        *,
        log: logging.Logger,
        backoff: Backoff | None = None,
    ) -> None:
        self.kv = kv
        self.grid = grid
        self.log = log
        self.backoff = backoff or Backoff(0.2, 5.0, names=("min_s", "max_s"))
        self.read_retries = 0
        self.write_failures = 0
        self.bad_entries = 0

    async def load(self) -> list[Alarm]:
        """The stored table; [] only when there is none. Retries (forever) through outages."""
        self.backoff.reset()
        while True:
            try:
                entry = await self.kv.get(self.grid)
            except nats.js.errors.KeyNotFoundError:  # also KeyDeletedError: no table, first start
                return []
            except OUTAGE_ERRORS as exc:
                self.read_retries += 1
                wait = self.backoff.next()
                self.log.warning(
                    "alarm table not readable; retrying",
                    extra={"error": repr(exc), "retry_in_s": wait, "attempt": self.read_retries},
                )
                await asyncio.sleep(wait)
                continue
            alarms, bad = decode_table(entry.value or b"[]", self.log)
            self.bad_entries += bad
            return alarms

    async def save(self, alarms: list[Alarm]) -> bool:
        """Write the whole table once; False (logged, counted) when the broker did not take
        it: the caller tries again with the table as it is then."""
        try:
            await self.kv.put(self.grid, msgspec.json.encode(alarms))
        except OUTAGE_ERRORS as exc:
            self.write_failures += 1
            self.log.warning("alarm table not written", extra={"error": repr(exc)})
            return False
        return True
