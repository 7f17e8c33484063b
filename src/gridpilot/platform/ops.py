"""What a deployment without the supervisor needs (containers, Kubernetes): a one-shot
``gridpilot init`` that creates the streams and buckets and publishes a grid's model, and a
``gridpilot health SERVICE`` probe that reads the service's latest heartbeat (of the instance in
the probe's own container, with ``--instance`` or GRIDPILOT_INSTANCE)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from gridpilot.core import subjects
from gridpilot.core.bus import BUS_FAILURES, cluster_peers, ensure_jetstream
from gridpilot.core.errors import BusError, GridPilotError
from gridpilot.core.schemas import Heartbeat, ServiceState
from gridpilot.model import distribution

log = logging.getLogger(__name__)


async def init_platform(
    nc: Client,
    grid: str,
    data_dir: Path,
    *,
    field_host: str = "127.0.0.1",
    cluster_size: int = 1,
    wait_s: float = 120.0,
) -> list[str]:
    """Create (or bring up to date) every stream and bucket, then build the grid's model,
    placement and device registry and publish them to the object store; what was done.

    With ``cluster_size`` > 1 it first waits for that many servers in the cluster (so streams
    get three replicas), and it retries while the cluster has no JetStream leader yet."""
    done: list[str] = []
    deadline = time.monotonic() + wait_s
    for _ in range(round(wait_s)):  # the routes come up within seconds of each other
        if cluster_peers(nc) >= cluster_size:
            break
        await asyncio.sleep(1.0)
    while True:
        try:
            done += await ensure_jetstream(nc)
            break
        except Exception as exc:  # no meta leader yet, or a member still joining
            if time.monotonic() > deadline:
                raise GridPilotError(f"JetStream not ready after {wait_s:.0f} s: {exc!r}") from None
            log.info("JetStream not ready, retrying", extra={"error": repr(exc)})
            await asyncio.sleep(2.0)
    pkg = await asyncio.to_thread(distribution.prepare, grid, data_dir, field_host=field_host)
    await distribution.publish(nc, pkg)
    done.append(f"published {pkg.model.summary()}; {len(pkg.placement.devices)} devices")
    return done


async def health(
    nc: Client, service: str, *, max_age_s: float, instance: str | None = None
) -> tuple[bool, str]:
    """Whether ``service`` reported running within ``max_age_s``; and why not.

    Without ``instance``, any instance will do (shared services beat under
    ``service.<instance>``). With it, only that instance's heartbeat counts: the probe of one
    of several shared state estimators must fail when its own instance stops, whatever the
    others do."""
    try:
        kv = await nc.jetstream().key_value(subjects.SERVICES_BUCKET)
        if instance is None:
            keys = [service]
            with contextlib.suppress(nats.js.errors.NoKeysError):  # an empty bucket
                keys += [k for k in await kv.keys() if k.startswith(f"{service}.")]
        else:  # shared (service.<instance>) or not (service): the heartbeat names its instance
            keys = [f"{service}.{instance}", service]
        entries = []
        for key in keys:
            try:
                entries.append((key, await kv.get(key)))
            except nats.js.errors.KeyNotFoundError:  # never beat under that key
                continue
    except nats.js.errors.BucketNotFoundError:
        raise GridPilotError("no KV gp_services: the platform is not initialised") from None
    except BUS_FAILURES as exc:
        # An outage is no verdict on the service: say so (the probe fails, and says why).
        raise BusError(f"cannot read the heartbeats of {service}: {exc!r}") from None
    now = time.time_ns()
    reasons = []
    for key, entry in entries:
        try:
            hb = msgspec.json.decode(entry.value or b"", type=Heartbeat)
        except (msgspec.ValidationError, msgspec.DecodeError):
            reasons.append(f"{key}: not a heartbeat")
            continue
        if instance is not None and hb.instance != instance:
            continue  # another instance's (a service that beats under its own name)
        age_s = (now - hb.t_ns) / 1e9
        if hb.state in (ServiceState.RUNNING, ServiceState.DEGRADED) and age_s <= max_age_s:
            return True, f"{key} {hb.state}, heartbeat {age_s:.1f} s ago"
        reasons.append(f"{key} {hb.state}, heartbeat {age_s:.1f} s ago")
    if instance is None:
        return False, "; ".join(reasons) or f"no heartbeat of {service} yet"
    seen = "; ".join(reasons) or "not running yet, or stopped"
    return False, f"no recent heartbeat of {service} instance {instance} ({seen})"
