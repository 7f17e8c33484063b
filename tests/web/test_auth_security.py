"""Login throttling and server-side sessions (issue 12, findings 3 and 4), on the real app over
a real broker: guesses are refused with 429 and Retry-After (the right password too) until
the delay has passed on an injected clock; logout, a password change, a user's removal, an
admin and the CLI end sessions, and a live WebSocket of an ended session is closed."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import websockets
from nats.aio.client import Client

from gridpilot.cli import main
from gridpilot.core import schemas as s
from gridpilot.core import subjects
from gridpilot.services.web import sessions
from gridpilot.services.web.sessions import (
    ADDRESS_FREE,
    BASE_DELAY_S,
    MAX_DELAY_S,
    USER_FREE,
    WINDOW_S,
    AuthDb,
    LoginThrottle,
)
from gridpilot.services.web.users import Role, Tokens, UserStore
from tests.conftest import ConnectAs
from tests.web.conftest import GRID, PASSWORDS, Api, login, publish_grid, serve

pytestmark = pytest.mark.security


class FakeClock:
    """Nanoseconds since the epoch that move only when told to."""

    def __init__(self) -> None:
        self.ns = time.time_ns()

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * 10**9)


@pytest.fixture
async def clocked(
    admin_nc: Client, connect_as: ConnectAs, tmp_path: Path
) -> AsyncIterator[tuple[Api, FakeClock]]:
    clock = FakeClock()
    await publish_grid(admin_nc)
    async with serve(await connect_as("web"), tmp_path, clock=clock) as client:
        yield client, clock


async def _try(api: Api, user: str, password: str) -> Any:
    return await api.post("/api/auth/login", json={"user": user, "password": password})


def _bearer(r: Any) -> dict[str, str]:
    assert r.status_code in (200, 201), r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def _refused(api: Api, headers: dict[str, str]) -> str:
    """The detail of a request refused with 401 (the token no longer works)."""
    r = await api.get("/api/auth/me", headers=headers)
    assert r.status_code == 401, r.text
    detail: str = r.json()["detail"]
    assert "log in again" in detail
    return detail


async def _works(api: Api, headers: dict[str, str]) -> None:
    r = await api.get("/api/auth/me", headers=headers)
    assert r.status_code == 200, r.text


# -- throttling -------------------------------------------------------------------------------
async def test_fifty_wrong_passwords_then_the_right_one_waits_for_retry_after(
    clocked: tuple[Api, FakeClock],
) -> None:
    api, clock = clocked
    codes = [(await _try(api, "olga", f"guess-number-{i}")).status_code for i in range(50)]
    assert codes == [401] * USER_FREE + [429] * (50 - USER_FREE)
    r = await _try(api, "olga", PASSWORDS["olga"])  # the right one, refused while locked
    assert r.status_code == 429
    wait = int(r.headers["Retry-After"])
    assert wait == BASE_DELAY_S  # refused attempts did not lengthen the lock
    body = r.json()
    assert body["extra"] == {"retry_after_s": wait, "locked": "user"}
    assert f"try again in {wait} s" in body["detail"] and "'olga'" in body["detail"]
    clock.advance(wait - 1)
    assert (await _try(api, "olga", PASSWORDS["olga"])).headers["Retry-After"] == "1"
    clock.advance(1)
    # the delay grows: one more failure after the lock ended locks twice as long
    r = await _try(api, "olga", "yet-another-guess")
    assert r.status_code == 401
    r = await _try(api, "olga", PASSWORDS["olga"])
    assert r.status_code == 429 and r.headers["Retry-After"] == str(2 * BASE_DELAY_S)
    clock.advance(2 * BASE_DELAY_S)
    headers = _bearer(await _try(api, "olga", PASSWORDS["olga"]))
    await _works(api, headers)
    # the success cleared the name's count: a typo is a 401 again, not a lock
    assert (await _try(api, "olga", "a-typo-in-it")).status_code == 401
    assert (await _try(api, "olga", PASSWORDS["olga"])).status_code == 201


async def test_parallel_guesses_do_not_slip_past_the_count(
    clocked: tuple[Api, FakeClock],
) -> None:
    api, _ = clocked
    replies = await asyncio.gather(*(_try(api, "vic", f"parallel-{i}") for i in range(30)))
    codes = sorted(r.status_code for r in replies)
    assert codes == [401] * USER_FREE + [429] * (30 - USER_FREE)


async def test_one_address_is_throttled_across_many_user_names(
    clocked: tuple[Api, FakeClock],
) -> None:
    api, clock = clocked
    codes = [(await _try(api, f"name{i}", "some-guess-1")).status_code for i in range(ADDRESS_FREE)]
    assert codes == [401] * ADDRESS_FREE  # each name failed once only
    r = await _try(api, "ada", PASSWORDS["ada"])  # another name, the right password
    assert r.status_code == 429 and r.json()["extra"]["locked"] == "address"
    assert "address 127.0.0.1" in r.json()["detail"]
    clock.advance(int(r.headers["Retry-After"]))
    assert (await _try(api, "ada", PASSWORDS["ada"])).status_code == 201
    # the success does not clear the address: its next failure locks it again, longer
    assert (await _try(api, "name0", "some-guess-2")).status_code == 401
    r = await _try(api, "ada", PASSWORDS["ada"])
    assert r.status_code == 429 and int(r.headers["Retry-After"]) == 2 * BASE_DELAY_S


async def test_an_unknown_name_is_throttled_like_a_known_one(
    clocked: tuple[Api, FakeClock],
) -> None:
    api, _ = clocked
    seen = {}
    for name in ("vic", "nobody"):
        replies = [await _try(api, name, f"guess-{i}-xyz") for i in range(USER_FREE + 2)]
        seen[name] = [
            (r.status_code, r.headers.get("Retry-After"), r.json()["detail"].replace(name, "N"))
            for r in replies
        ]
    assert seen["vic"] == seen["nobody"]
    assert seen["vic"][-1][:2] == (429, str(BASE_DELAY_S))


async def test_refusals_and_lockouts_are_audited(
    clocked: tuple[Api, FakeClock], admin_nc: Client
) -> None:
    api, _ = clocked
    records: list[s.AuditRecord] = []

    async def on_audit(msg: Any) -> None:
        records.append(msgspec.json.decode(msg.data, type=s.AuditRecord))

    sub = await admin_nc.subscribe(subjects.AUDIT.format(grid=GRID), cb=on_audit)
    for i in range(USER_FREE + 1):
        await _try(api, "nobody", f"guess-{i}-abc")
    deadline = time.monotonic() + 10
    while len(records) < USER_FREE + 2:
        assert time.monotonic() < deadline, records
        await asyncio.sleep(0.02)
    await sub.unsubscribe()
    mine = [r for r in records if r.user == "nobody"]
    assert all(not r.ok and r.target == "nobody" for r in mine)
    assert [r.action for r in mine] == ["login"] * USER_FREE + ["login_lockout", "login"]
    assert mine[0].error == "wrong user name or password"
    assert mine[0].detail == {"address": "127.0.0.1"}
    lockout, refused = mine[-2:]
    assert lockout.detail["locked"] == "user" and lockout.detail["failures"] == USER_FREE
    assert refused.detail["retry_after_s"] == BASE_DELAY_S
    assert "too many failed logins" in refused.error


def test_the_state_survives_a_restart_and_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    users = UserStore(tmp_path)
    users.add("vic", Role.VIEWER, PASSWORDS["vic"])
    first = Tokens(tmp_path, users, clock=clock)
    user = users.get("vic")
    assert user is not None
    token, _ = first.issue(user)
    for _ in range(USER_FREE):
        first.throttle.failed("vic", "10.0.0.1")
    first.db.close()
    path = tmp_path / sessions.DB_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Tokens(tmp_path, users, clock=clock)  # the web service restarted
    assert again.check(token).user == "vic"
    lock = again.throttle.locked("vic", "10.0.0.2")
    assert lock is not None and lock.kind == "user" and lock.retry_after_s(clock()) == 30

    # a flood of random names from many addresses: the table keeps at most MAX_FAILURE_ROWS,
    # and drops unlocked rows first (vic's lock stays)
    monkeypatch.setattr(sessions, "MAX_FAILURE_ROWS", 50)
    throttle = LoginThrottle(AuthDb(tmp_path, clock=clock))
    for i in range(300):
        throttle.failed(f"random{i}", f"10.1.{i // 256}.{i % 256}")
    assert throttle.rows() == 50
    assert throttle.locked("vic", "10.0.0.3") is not None
    clock.advance(WINDOW_S + 1)  # old rows expire at the next failure
    throttle.failed("late", "10.9.9.9")
    assert throttle.rows() == 2
    assert sessions.delay_s(100, USER_FREE) == MAX_DELAY_S


# -- sessions ---------------------------------------------------------------------------------
async def test_logout_ends_the_session(api: Api) -> None:
    viewer = await login(api, "vic")
    other = await login(api, "vic")
    r = await api.post("/api/auth/logout", headers=viewer)
    assert r.status_code == 204 and r.content == b""
    assert "ended" in await _refused(api, viewer)
    await _works(api, other)  # another session of the same user goes on
    # again, or without any session: still 204
    assert (await api.post("/api/auth/logout", headers=viewer)).status_code == 204
    assert (await api.post("/api/auth/logout", headers={})).status_code == 204


async def test_password_change_ends_the_other_sessions(api: Api) -> None:
    here = await login(api, "olga")
    elsewhere = await login(api, "olga")
    change = {"old_password": PASSWORDS["olga"], "new_password": "a-fresh-operator-pw"}
    r = await api.post("/api/auth/password", json=change, headers=here)
    new = _bearer(r)  # the current session is reissued: the answer carries a new token
    await _refused(api, here)
    await _refused(api, elsewhere)
    await _works(api, new)


async def test_user_removal_ends_its_sessions_even_if_the_name_comes_back(api: Api) -> None:
    admin = await login(api, "ada")
    body = {"name": "guest", "role": "viewer", "password": "orange-kettle-77"}
    assert (await api.post("/api/users", json=body, headers=admin)).status_code == 201
    first = _bearer(await _try(api, "guest", body["password"]))
    second = _bearer(await _try(api, "guest", body["password"]))
    assert (await api.delete("/api/users/guest", headers=admin)).status_code == 204
    await _refused(api, first)
    await _refused(api, second)
    # the same name and password again: the old tokens (same password generation) stay dead
    assert (await api.post("/api/users", json=body, headers=admin)).status_code == 201
    await _refused(api, first)


async def test_admin_ends_one_users_sessions_or_everyones(api: Api) -> None:
    viewer, operator, admin = [await login(api, u) for u in ("vic", "olga", "ada")]
    r = await api.delete("/api/users/vic/sessions", headers=admin)
    assert r.status_code == 200 and r.json() == {"ended": 1}
    await _refused(api, viewer)
    await _works(api, operator)
    r = await api.delete("/api/users/nobody/sessions", headers=admin)
    assert r.status_code == 404
    r = await api.post("/api/auth/sessions/end-all", headers=operator)
    assert r.status_code == 403  # admins only
    r = await api.post("/api/auth/sessions/end-all", headers=admin)
    assert r.status_code == 200 and r.json()["ended"] >= 2
    await _refused(api, operator)
    await _refused(api, admin)  # the admin's own too


async def test_cli_ends_sessions_offline(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    viewer, operator = await login(api, "vic"), await login(api, "olga")
    d = ["--data-dir", str(tmp_path)]
    assert main(["user", "end-sessions", "vic", *d]) == 0
    assert "ended 1 session(s) of vic" in capsys.readouterr().out
    await _refused(api, viewer)
    await _works(api, operator)
    assert main(["user", "end-sessions", "nobody", *d]) == 2
    assert "no user 'nobody'" in capsys.readouterr().err
    assert main(["user", "end-sessions", *d]) == 0
    assert "session(s) of every user" in capsys.readouterr().out
    await _refused(api, operator)


async def test_a_live_socket_of_an_ended_session_is_closed(api: Api) -> None:
    viewer = await login(api, "vic")
    other = await login(api, "vic")
    async with (
        api.websocket_connect(f"/api/grids/{GRID}/live", headers=viewer) as ws,
        api.websocket_connect(f"/api/grids/{GRID}/live", headers=other) as kept,
    ):
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"]
        assert (await api.post("/api/auth/logout", headers=viewer)).status_code == 204
        t0 = time.monotonic()
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            while time.monotonic() < t0 + 10:
                await asyncio.wait_for(ws.recv(), 5)
        took = time.monotonic() - t0
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert "log in again" in closed.value.rcvd.reason
        assert took < 4.5, took  # the socket checks its session every 2 s
        # the other session's socket goes on: it gets the next 2-second round
        deadline = time.monotonic() + 5
        while json.loads(await asyncio.wait_for(kept.recv(), 5))["type"] != "services":
            assert time.monotonic() < deadline
