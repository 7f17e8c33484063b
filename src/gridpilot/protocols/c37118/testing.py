"""An in-memory PMU (a pure object, no sockets): answers command frames, makes data frames.

    pmu = FakePmu(config=cfg2, header="bay 1", sample=lambda t_ns: [PmuData(freq_hz=50.0)])
    reply = pmu.receive(encode(CommandFrame(idcode=cfg2.idcode, command=Command.SEND_CFG2)))
    pmu.receive(encode(CommandFrame(idcode=cfg2.idcode, command=Command.TURN_ON)))
    frame = pmu.tick(t_ns)  # b"" while transmission is off

``gridpilot.simulator.pmu_server`` runs one per TCP connection.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

import msgspec

from gridpilot.protocols.c37118.codec import encode
from gridpilot.protocols.c37118.codes import (
    Command,
    FrameType,
)
from gridpilot.protocols.c37118.errors import C37118Error
from gridpilot.protocols.c37118.framer import FrameBuffer
from gridpilot.protocols.c37118.frames import (
    CommandFrame,
    ConfigFrame,
    DataFrame,
    HeaderFrame,
    PmuData,
    from_ns,
)

SampleFn = Callable[[int], Sequence[PmuData]]

_CONFIG_COMMANDS = {
    Command.SEND_CFG1: FrameType.CFG1,
    Command.SEND_CFG2: FrameType.CFG2,
    Command.SEND_CFG3: FrameType.CFG3,
}


class FakePmu:
    """The PMU end of one connection to a stream (one or more PMUs) described by ``config``.

    CFG-1, CFG-2 and CFG-3 requests are all answered from ``config`` (CFG-1 from ``cfg1``
    when given). Commands for another IDCODE are ignored and counted, as a PMU would do;
    with ``reveal_config``, configuration requests for another IDCODE are answered with its
    own configuration (some PMUs do: a PDC that reached the wrong stream learns which one).
    """

    def __init__(
        self,
        *,
        config: ConfigFrame,
        sample: SampleFn | None = None,
        header: str = "GridPilot virtual PMU",
        cfg1: ConfigFrame | None = None,
        clock: Callable[[], int] = time.time_ns,
        reveal_config: bool = False,
    ) -> None:
        self.config = config
        self.reveal_config = reveal_config
        self.cfg1 = cfg1
        self.header = header
        self.sample = sample
        self.clock = clock
        self.transmitting = False
        self.commands: deque[CommandFrame] = deque(maxlen=100)  # the latest ones
        self.errors: deque[C37118Error] = deque(maxlen=100)  # bad input, the latest
        self.ignored = 0  # frames that are not commands to this stream
        self._framer = FrameBuffer(follow_config=False)

    @property
    def bad_bytes(self) -> int:
        return self._framer.skipped_bytes

    def receive(self, data: bytes) -> bytes:
        """Bytes from the PDC in; the replies (configuration, header frames) out."""
        replies = []
        for item in self._framer.feed(data):
            if isinstance(item, C37118Error):
                self.errors.append(item)
            elif isinstance(item, CommandFrame) and item.idcode == self.config.idcode:
                self.commands.append(item)
                replies.append(self.answer(item))
            elif (
                isinstance(item, CommandFrame)
                and self.reveal_config
                and item.command in _CONFIG_COMMANDS
            ):
                self.ignored += 1  # not ours: only says who we are
                replies.append(self.answer(item))
            else:
                self.ignored += 1
        return b"".join(replies)

    def answer(self, command: CommandFrame) -> bytes:
        """Act on one command; the reply frame's bytes, or b"" for commands without one."""
        code = command.command
        if code == Command.TURN_ON:
            self.transmitting = True
        elif code == Command.TURN_OFF:
            self.transmitting = False
        elif code == Command.SEND_HDR:
            soc, fracsec = from_ns(self.clock(), self.config.time_base)
            return encode(
                HeaderFrame(idcode=self.config.idcode, soc=soc, fracsec=fracsec, text=self.header)
            )
        elif code in _CONFIG_COMMANDS:
            return encode(self.config_frame(_CONFIG_COMMANDS[Command(code)]))
        return b""

    def config_frame(self, cfg_type: FrameType) -> ConfigFrame:
        base = self.cfg1 if cfg_type == FrameType.CFG1 and self.cfg1 is not None else self.config
        soc, fracsec = from_ns(self.clock(), base.time_base)
        return msgspec.structs.replace(base, cfg_type=cfg_type, soc=soc, fracsec=fracsec)

    def data_frame(self, t_ns: int, values: Sequence[PmuData], *, time_quality: int = 0) -> bytes:
        """A data frame stamped ``t_ns`` (rounded to the TIME_BASE), whatever the state."""
        soc, fracsec = from_ns(t_ns, self.config.time_base)
        return encode(
            DataFrame(
                idcode=self.config.idcode,
                soc=soc,
                fracsec=fracsec,
                time_quality=time_quality,
                config=self.config,
                pmus=tuple(values),
            )
        )

    def tick(self, t_ns: int) -> bytes:
        """The data frame for ``t_ns`` while transmission is on, else b""."""
        if not self.transmitting or self.sample is None:
            return b""
        return self.data_frame(t_ns, self.sample(t_ns))
