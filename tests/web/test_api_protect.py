"""Cross-site request forgery and the security headers, on the app served by uvicorn: a
state-changing request from another origin is refused, a cookie-signed one must say where it
comes from, a body must be JSON; every answer carries the headers."""

from __future__ import annotations

import json

import pytest
import websockets

from gridpilot.core.errors import ConfigError
from gridpilot.services.web.protect import HMI_CSP, origin_of, public_origin
from gridpilot.services.web.users import Role
from tests.web.conftest import GRID, PASSWORDS, Api, login

pytestmark = pytest.mark.security

ACK = f"/api/grids/{GRID}/alarms/nope/ack"  # an operator's action that changes nothing here


def test_origins_are_compared_as_scheme_host_port() -> None:
    assert origin_of("http://Example.org:80/x?y") == "http://example.org"
    assert origin_of("https://example.org:443") == "https://example.org"
    assert origin_of("https://example.org:8443/") == "https://example.org:8443"
    assert origin_of("http://[::1]:8080") == "http://[::1]:8080"
    assert origin_of("wss://example.org") == "https://example.org"
    for bad in ("null", "", "/relative", "ftp://example.org", "http://host:99999", "http://"):
        assert origin_of(bad) is None, bad
    assert public_origin("https://dms.example.org/") == "https://dms.example.org"
    for bad in ("dms.example.org", "https://dms.example.org/hmi", "null"):
        with pytest.raises(ConfigError, match="GRIDPILOT_PUBLIC_ORIGIN must be"):
            public_origin(bad)


async def _cookie_login(client: Api, user: str) -> None:
    """Sign in like a browser: the session cookie, no token in the headers."""
    r = await client.post("/api/auth/login", json={"user": user, "password": PASSWORDS[user]})
    assert r.status_code == 201 and client.cookies.get("gp_session"), r.text


async def test_state_changing_requests_from_another_origin_are_refused(api: Api) -> None:
    own = str(api.base_url).rstrip("/")
    async with Api(base_url=str(api.base_url), timeout=30) as browser:
        await _cookie_login(browser, "olga")
        # a forged form or fetch from another site: the browser sends its Origin
        for origin in ("http://evil.example", "null", own.replace("127.0.0.1", "localhost")):
            r = await browser.post(ACK, json={}, headers={"Origin": origin})
            assert r.status_code == 403, (origin, r.text)
            assert "cross-origin request refused" in r.json()["detail"]
        r = await browser.post(ACK, json={}, headers={"Referer": "http://evil.example/page"})
        assert r.status_code == 403 and "Referer" in r.json()["detail"]
        # the cookie alone, with no word of where the request comes from, is not enough
        r = await browser.post(ACK, json={})
        assert r.status_code == 403 and "must carry an Origin or Referer" in r.json()["detail"]
        # from the HMI itself: past the check (monitoring is not running here: 503)
        r = await browser.post(ACK, json={}, headers={"Origin": own})
        assert r.status_code == 503, r.text
        r = await browser.post(ACK, json={}, headers={"Referer": own + "/#/network"})
        assert r.status_code == 503, r.text
        # reads are not checked: a cross-site read is what the same-origin policy stops
        r = await browser.get("/api/grids", headers={"Origin": "http://evil.example"})
        assert r.status_code == 200, r.text
    # a script with a token has no cookie to be ridden: no Origin needed, a wrong one refused
    token = await login(api, "olga")
    api.cookies.clear()
    assert (await api.post(ACK, json={}, headers=token)).status_code == 503
    r = await api.post(ACK, json={}, headers={**token, "Origin": "http://evil.example"})
    assert r.status_code == 403
    # sign-in reads no cookie: a stale one does not make it need an Origin; a foreign one fails
    login_body = {"user": "vic", "password": PASSWORDS["vic"]}
    r = await api.post("/api/auth/login", json=login_body, cookies={"gp_session": "stale"})
    assert r.status_code == 201, r.text
    r = await api.post("/api/auth/login", json=login_body, headers={"Origin": "http://evil.ex"})
    assert r.status_code == 403


async def test_a_body_must_be_json(api: Api) -> None:
    token = await login(api, "olga")
    api.cookies.clear()
    url = f"/api/grids/{GRID}/commands/switch"
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {**token, **({"Content-Type": content_type} if content_type else {})}
        r = await api.post(url, content=b'{"target": "sw_1", "closed": true}', headers=headers)
        assert r.status_code == 415, (content_type, r.text)
        assert "Content-Type: application/json" in r.json()["detail"]
    r = await api.post(
        url,
        content=b'{"target": "nope", "closed": true}',
        headers={**token, "Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 404, r.text  # past the check: no such switch
    r = await api.post(ACK, headers=token)  # no body: no type needed
    assert r.status_code == 503, r.text


async def test_every_answer_carries_the_security_headers(api: Api) -> None:
    token = await login(api, "vic")
    api.cookies.clear()
    for path, headers, status in [
        ("/", {}, 200),
        ("/js/api.js", {}, 200),
        ("/no-such-file.js", {}, 404),
        ("/api/health", {}, 200),
        ("/api/grids", {}, 401),
        ("/api/grids", token, 200),
        ("/api/no-such-route", {}, 404),
        ("/api/schema", {}, 200),
        ("/api/schema/openapi.json", {}, 200),
    ]:
        r = await api.get(path, headers=headers)
        assert r.status_code == status, (path, r.status_code)
        assert r.headers["x-frame-options"] == "DENY", path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["referrer-policy"] == "same-origin", path
        csp = r.headers["content-security-policy"]
        for directive in ("default-src 'self'", "frame-ancestors 'none'", "object-src 'none'"):
            assert directive in csp, (path, csp)
        assert "base-uri 'self'" in csp, (path, csp)
        assert (r.headers.get("cache-control") == "no-store") == path.startswith("/api/"), path
        if not path.startswith("/api/schema"):
            assert csp == HMI_CSP, path  # no inline script anywhere but the API reference
    r = await api.post("/api/auth/login", json={"user": "vic", "password": "wrong-wrong-1"})
    assert r.status_code == 401 and r.headers["cache-control"] == "no-store"


async def test_live_socket_refuses_another_origin_and_a_one_time_password(api: Api) -> None:
    token = await login(api, "vic")
    api.cookies.clear()
    path = f"/api/grids/{GRID}/live"
    own = str(api.base_url).rstrip("/")
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with api.websocket_connect(path, {**token, "Origin": "http://evil.example"}) as ws:
            await ws.recv()
    assert refused.value.response.status_code == 403  # the handshake is refused
    async with api.websocket_connect(path, {**token, "Origin": own}) as ws:
        assert "type" in json.loads(await ws.recv())
    api.users.add("newbie", Role.VIEWER, "fresh-start-91", must_change=True)
    r = await api.post("/api/auth/login", json={"user": "newbie", "password": "fresh-start-91"})
    assert r.status_code == 201 and r.json()["must_change_password"]
    fresh = {"Authorization": f"Bearer {r.json()['token']}"}
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with api.websocket_connect(path, fresh) as ws:
            await ws.recv()
    assert refused.value.response.status_code == 403
