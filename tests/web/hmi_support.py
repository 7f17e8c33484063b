"""What the browser tests of the operator HMI share: ``gridpilot up`` (cigre_mv) once per
test module, users made beforehand through the CLI, Debian's Chromium driven by Playwright
(its own browser download is not used), and helpers to drive the page.

Without /usr/bin/chromium (or Playwright) the importing module is skipped, unless
``GRIDPILOT_REQUIRE_BROWSER=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
GRID = "cigre_mv"
PASSWORDS = {
    "op": "operator-pass-1234", "view": "reader-pass-1234", "boss": "admin-pass-12345",
}  # fmt: skip
NEW_TRAINEE_PASSWORD = "my-own-pass-99"
VIEWPORT = {"width": 1600, "height": 900}


def _need_browser(reason: str) -> None:
    if os.environ.get("GRIDPILOT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"GRIDPILOT_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason, allow_module_level=True)


def require_browser() -> None:
    """Skip the calling test module (at its import) without Chromium or Playwright."""
    if not CHROMIUM.exists():
        _need_browser(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:  # pragma: no cover - the test extra installs it
        _need_browser("playwright is not installed (pip install -e '.[test]')")


try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - require_browser() skips the modules that need it
    Browser = Page = expect = sync_playwright = None  # type: ignore[assignment,misc]


@dataclass
class Platform:
    url: str
    data_dir: Path
    trainee_password: str
    log: Path


def _cli(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gridpilot", *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


def _http(url: str, body: dict[str, Any] | None = None, token: str = "") -> Any:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=5) as r:
        return json.loads(r.read() or b"null")


def run_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """``gridpilot up`` on a fresh data dir, with users made beforehand through the CLI."""
    root = tmp_path_factory.mktemp("hmi")
    data_dir = root / "gp"
    data_dir.mkdir()  # `user add` works on an existing data dir only
    for user, role in (("op", "operator"), ("view", "viewer"), ("boss", "admin")):
        _cli("user", "add", user, "--role", role, "--password-stdin", "--data-dir", str(data_dir),
             stdin=PASSWORDS[user] + "\n")  # fmt: skip
    out = _cli("user", "add", "trainee", "--role", "operator", "--data-dir", str(data_dir))
    match = re.search(r"one-time password (\S+)", out)
    assert match, out
    log_path = root / "up.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridpilot", "up", "--data-dir", str(data_dir), "--no-live"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            url = _wait_ready(proc, data_dir, log_path)
            yield Platform(url, data_dir, match.group(1), log_path)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], data_dir: Path, log: Path) -> str:
    """The web URL, once the API answers and a first state estimate exists."""
    deadline = time.monotonic() + 90
    endpoints = data_dir / "endpoints.json"
    token = ""
    url = ""
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gridpilot up exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if not url and endpoints.exists():
                url = json.loads(endpoints.read_text()).get("http", "")
            if url and not token:
                login = {"user": "op", "password": PASSWORDS["op"]}
                token = _http(f"{url}/api/auth/login", login)["token"]
            if token:
                _http(f"{url}/api/grids/{GRID}/estimate", token=token)
                return url
        except (OSError, ValueError, urllib.error.URLError) as exc:
            last = repr(exc)
        time.sleep(0.3)
    pytest.fail(f"the platform was not ready within 90 s ({last}):\n{log.read_text()[-3000:]}")


def run_browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


def open_page(browser: Browser, platform: Platform) -> Iterator[Page]:
    """A fresh browser context (no cookie) per test; JavaScript exceptions fail the test."""
    context = browser.new_context(viewport=VIEWPORT, base_url=platform.url)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # what the Content-Security-Policy blocked (a script, a style, a connection) is only told
    # on the console: the HMI must need nothing its policy forbids
    pg.on("console", lambda m: _csp_violation(m.type, m.text, errors))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _csp_violation(kind: str, text: str, errors: list[str]) -> None:
    if kind == "error" and "Content Security Policy" in text:
        errors.append(text)


def wait_for(page: Page, expression: str, *, arg: Any = None, timeout: float = 15_000) -> None:
    """Until ``expression`` (a JavaScript expression, or a function of ``arg``) is true on the
    page. Playwright's own wait_for_function compiles its predicate with eval inside the page,
    which the HMI's Content-Security-Policy forbids (as it should); evaluated from outside
    through DevTools, the expression is not subject to the page's policy."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout / 1000:g} s: {expression}")
        page.wait_for_timeout(50)  # about three frames: what wait_for_function's polling does


def login(page: Page, user: str, password: str, *, ready: bool = True) -> None:
    page.goto("/")
    page.get_by_test_id("login-user").fill(user)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    if ready:
        expect(page.get_by_test_id("app-screen")).to_be_visible()
        wait_for(page, "document.body.dataset.diagram === 'ready'")
        expect(page.get_by_test_id("status-live")).to_have_attribute("data-state", "live")


def click_on_diagram(page: Page, kind: str, mrid: str) -> None:
    """Click where the diagram draws an element: goes through the canvas' hit-testing."""
    pos = page.evaluate("([k, i]) => gpHmi.diagram.screenPos(k, i)", [kind, mrid])
    assert pos, f"{kind} {mrid} is not on the diagram"
    box = page.get_by_test_id("diagram").bounding_box()
    assert box
    page.mouse.click(box["x"] + pos["x"], box["y"] + pos["y"])
    expect(page.locator("#details-body")).to_have_attribute("data-id", mrid)


def fetch(page: Page, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """A request from the page itself, with its session cookie: {status, body}."""
    result: dict[str, Any] = page.evaluate(
        """async ([method, path, body]) => {
            const init = {method, headers: {"content-type": "application/json"}};
            if (body !== null) init.body = JSON.stringify(body);
            const r = await fetch(path, init);
            const text = await r.text();
            return {status: r.status, body: text ? JSON.parse(text) : null};
        }""",
        [method, path, body],
    )
    return result


def estimate_count(page: Page) -> int:
    count: int = page.evaluate("gpHmi.estCount")
    return count


# -- the tests ------------------------------------------------------------------------------
