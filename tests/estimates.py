"""Test helper: put a StateEstimate on the bus as the state-estimation service does (its layout
into KV gp_state first, then the values on gp.<grid>.state)."""

from __future__ import annotations

from nats.aio.client import Client

from gridpilot.core import subjects
from gridpilot.core.estimates import EstimateWriter, encode_layout, layout_key
from gridpilot.core.schemas import StateEstimate, encode


async def publish_estimate(
    nc: Client, est: StateEstimate, *, writer: EstimateWriter | None = None, stream: bool = False
) -> None:
    """``stream``: publish through JetStream and wait for the stream's acknowledgement."""
    writer = writer or EstimateWriter(est.grid)
    values, layout = writer.encode(est)
    js = nc.jetstream()
    if layout is not None:
        kv = await js.key_value(subjects.STATE_BUCKET)
        await kv.put(layout_key(layout.grid, layout.id), encode_layout(layout))
    subject = subjects.STATE.format(grid=est.grid)
    if stream:
        await js.publish(subject, encode(values))
    else:
        await nc.publish(subject, encode(values))
