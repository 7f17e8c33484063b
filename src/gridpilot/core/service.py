"""The service base: connect with the service's own credentials, heartbeat, typed subscriptions
that count and drop bad messages, structured logs, graceful shutdown on SIGTERM/SIGINT.

Publishes outlive broker outages (see ``gridpilot.core.bus.BusClient``: what cannot be
buffered is dropped and counted as ``dropped_outage``); a connection the server closed for good
ends the process with ``EXIT_BUS_CLOSED``, so that its supervisor starts it afresh.

A service subclasses ``Service``, sets ``name`` and implements ``setup`` (subscribe, start
tasks); ``gridpilot run NAME`` calls ``Service.main()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from gridpilot.core import bus, subjects
from gridpilot.core import schemas as s
from gridpilot.core.bus import connect, refuse_oversize
from gridpilot.core.config import ENV_PENDING_BYTES as ENV_PENDING_BYTES  # re-exported
from gridpilot.core.config import ServiceConfig, pending_bytes
from gridpilot.core.logs import setup_logging

T = TypeVar("T", bound=msgspec.Struct)

MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
# The exit code of a service whose bus connection was closed for good (nats-py gives up after
# the server closed it, e.g. for a protocol violation): living on without a connection would
# look alive to ``ps`` and do nothing.
EXIT_BUS_CLOSED = 3


class Service:
    """Base of every GridPilot service process."""

    name: ClassVar[str] = "service"
    # what the connection buffers while the broker is away, before publishes are dropped
    pending_bytes: ClassVar[int] = bus.PENDING_BYTES

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.grid = subjects.grid_token(config.grid)
        self.log = logging.getLogger(f"gridpilot.{self.name}")
        self.counters: Counter[str] = Counter()
        self.info: dict[str, int | float | str] = {}
        self.state = s.ServiceState.STARTING
        # GRIDPILOT_INSTANCE (a pod's name) lets a probe in the same container find this one
        self.instance = config.instance or uuid.uuid4().hex[:8]
        self.started = time.monotonic()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.nc: Client
        self._kv_services: KeyValue | None = None
        self._heartbeat_errors: set[str] = set()
        self.bus_closed = False  # the connection was closed for good, not by us

    # -- for subclasses -----------------------------------------------------------------------
    async def setup(self) -> None:
        """Subscribe and start background tasks; called once connected."""

    async def teardown(self) -> None:
        """Flush what must not be lost; called before disconnecting."""

    def spawn(self, coro: Awaitable[None], *, name: str) -> None:
        task = asyncio.ensure_future(self._guard(coro, name))
        self._tasks.append(task)

    async def subscribe(
        self,
        subject: str,
        payload: type[T],
        handler: Callable[[T, Msg], Awaitable[None]],
        *,
        queue: str = "",
    ) -> Subscription:
        """Subscribe with decoding; a message that does not fit ``payload`` is counted, dropped."""
        decoder = msgspec.json.Decoder(payload)

        async def on_msg(msg: Msg) -> None:
            self.counters["msgs_in"] += 1
            if len(msg.data) > MAX_PAYLOAD_BYTES:
                self._drop(msg.subject, f"oversized ({len(msg.data)} bytes)")
                return
            try:
                obj = decoder.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._drop(msg.subject, str(exc))
                if msg.reply:
                    await self.reply(msg, s.Reply(ok=False, error=f"bad request: {exc}"))
                return
            try:
                await handler(obj, msg)
            except Exception:
                self.counters["handler_errors"] += 1
                self.log.exception("handler failed", extra={"subject": msg.subject})

        return await self.nc.subscribe(subject, cb=on_msg, queue=queue)

    async def reply(self, msg: Msg, obj: msgspec.Struct) -> None:
        await msg.respond(s.encode(obj))

    async def publish(self, subject: str, obj: msgspec.Struct) -> None:
        """Publish; while the broker is away the message is buffered, or dropped and counted
        (``dropped_outage`` in the heartbeat) once the buffer is full: never an error. A
        message above the server's limit is refused and counted (``dropped_oversize``)."""
        data = s.encode(obj)
        if refuse_oversize(self.nc, subject, data, counters=self.counters):
            return  # the server would close the connection for it: counted, logged once
        st = bus.stats(self.nc)
        dropped = st.dropped_outage
        await self.nc.publish(subject, data)
        if st.dropped_outage == dropped:
            self.counters["msgs_out"] += 1

    async def command_result(
        self, cmd: s.Command, *, ok: bool, change: str = "", error: str = ""
    ) -> None:
        """Publish what became of a command this service carried out (or refused)."""
        self.counters["commands_ok" if ok else "commands_failed"] += 1
        result = s.CommandResult(
            command_id=cmd.id,
            grid=self.grid,
            target=cmd.target,
            ok=ok,
            t_ns=time.time_ns(),
            executed_by=self.name,
            change=change if ok else "",
            error=error,
        )
        await self.publish(subjects.COMMAND_RESULT.format(grid=self.grid), result)

    def _drop(self, subject: str, reason: str) -> None:
        self.counters["dropped_bad_payload"] += 1
        self.log.warning("dropped bad message", extra={"subject": subject, "reason": reason[:200]})

    # -- life cycle -----------------------------------------------------------------------------
    async def _guard(self, coro: Awaitable[None], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("task failed; stopping the service", extra={"task": name})
            self.counters["task_failures"] += 1
            self._stop.set()

    def stop(self) -> None:
        self._stop.set()

    @property
    def heartbeat_key(self) -> str:
        """The service's key in KV gp_services; instances that share work need one each."""
        return self.name

    async def heartbeat(self) -> None:
        if self._kv_services is None:
            with contextlib.suppress(Exception):
                self._kv_services = await self.nc.jetstream().key_value(subjects.SERVICES_BUCKET)
        hb = s.Heartbeat(
            service=self.name,
            grid=self.grid,
            instance=self.instance,
            pid=os.getpid(),
            state=self.state,
            t_ns=time.time_ns(),
            uptime_s=round(time.monotonic() - self.started, 1),
            counters=self.all_counters(),
            info=dict(self.info),
        )
        data = s.encode(hb)
        await self.nc.publish(subjects.HEARTBEAT.format(service=self.name), data)
        if self._kv_services is not None:
            try:
                await self._kv_services.put(self.heartbeat_key, data)
            except Exception as exc:  # the broker may be restarting; the next beat retries
                self.log.debug("heartbeat KV put failed", extra={"error": str(exc)})

    def all_counters(self) -> dict[str, int]:
        """The service's counters and its connection's: outages and what they cost."""
        st = bus.stats(self.nc)
        return {
            **self.counters,
            "bus_disconnects": st.disconnects,
            "bus_reconnects": st.reconnects,
            "dropped_outage": st.dropped_outage,
            "dropped_oversize": st.dropped_oversize,
        }

    def _on_bus_event(self, event: str, error: BaseException | None) -> None:
        if event == "closed" and not self._stop.is_set():
            # nats-py will not reconnect: end, so that the supervisor starts us afresh
            self.bus_closed = True
            self.log.error(
                "bus connection closed for good; exiting",
                extra={"error": repr(error), "exit_code": EXIT_BUS_CLOSED},
            )
            self._stop.set()

    async def _heartbeats(self) -> None:
        while not self._stop.is_set():
            if self.nc.is_connected:
                try:
                    await self.heartbeat()
                except Exception as exc:  # a broker restart, or a bug: say so, once each
                    self.counters["heartbeat_failures"] += 1
                    if str(exc) not in self._heartbeat_errors:
                        self._heartbeat_errors.add(str(exc))
                        self.log.warning("heartbeat failed", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.config.heartbeat_s)

    async def run(self, *, install_signals: bool = True) -> None:
        """Connect, set up, beat until stopped, then shut down cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT) if install_signals else ():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        self.nc = await connect(
            self.config.nats_url,
            user=self.config.user,
            password=self.config.password,
            name=f"{self.name}-{self.instance}",
            on_event=self._on_bus_event,
            pending_bytes=pending_bytes(self.pending_bytes),
        )
        self.log.info("connected", extra={"url": self.config.nats_url})
        try:
            await self.setup()
            self.state = s.ServiceState.RUNNING
            self.log.info("running")
            await self._heartbeats()
        finally:
            self._stop.set()  # from here on a closed connection is ours (drain), not a loss
            self.state = s.ServiceState.STOPPING
            self.log.info("stopping", extra={"counters": self.all_counters()})
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.teardown()
            with contextlib.suppress(Exception):
                await self.heartbeat()
            with contextlib.suppress(Exception):
                await self.nc.drain()

    @classmethod
    def main(cls, *, grid: str | None = None) -> int:
        config = ServiceConfig.from_env(grid=grid)
        setup_logging(service=cls.name, grid=config.grid)
        service = cls(config)
        asyncio.run(service.run())
        return service.exit_code()

    def exit_code(self) -> int:
        """What the process should exit with once ``run`` returned: non-zero tells the
        supervisor to start it again."""
        if self.bus_closed:
            return EXIT_BUS_CLOSED
        return 1 if self.counters["task_failures"] else 0
