"""The exception tree and the one mapping of nats-py's exceptions at the bus boundary."""

from __future__ import annotations

import nats.errors
import pytest

from gridpilot.core.bus import BUS_FAILURES, bus_error
from gridpilot.core.errors import BusError, GridPilotError, PermissionDeniedError
from gridpilot.services.historian.store import StoreError
from gridpilot.services.web.users import AuthError


@pytest.mark.parametrize("error", [StoreError, AuthError, BusError, PermissionDeniedError])
def test_every_error_raised_on_purpose_is_a_gridpilot_error(error: type[Exception]) -> None:
    assert issubclass(error, GridPilotError)


def test_auth_and_store_errors_are_not_bus_errors() -> None:
    """A handler of bus outages (BusError) must not take a bad token or a full disk for one."""
    assert not issubclass(AuthError, BusError) and not issubclass(StoreError, BusError)


def test_nats_failures_map_to_one_line_each() -> None:
    subject = "gp.g.history.query"
    none = bus_error(nats.errors.NoRespondersError(), subject, "historian")
    assert type(none) is BusError and str(none) == (
        f"nothing answers on {subject}: is the historian running for this grid?"
    )
    late = bus_error(nats.errors.TimeoutError(), subject, "historian")
    assert "did not answer on gp.g.history.query in time" in str(late)
    denied = bus_error(
        nats.errors.Error('nats: permissions violation for publish to "gp.g.history.query"'),
        subject,
        "historian",
    )
    assert isinstance(denied, PermissionDeniedError)
    assert (denied.subject, denied.operation) == (subject, "publish")
    other = bus_error(nats.errors.ConnectionClosedError(), subject, "historian")
    assert str(other).startswith("cannot ask the historian on gp.g.history.query: ")
    for exc in (nats.errors.NoRespondersError(), TimeoutError(), nats.errors.Error("x")):
        assert isinstance(exc, BUS_FAILURES)
