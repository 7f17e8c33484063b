"""The HMI tells the operator what to trust, in a real browser on a running platform: the API
reference renders with no internet, the admin sees users and the audit trail, stale data is
never shown as live, the diagram fits its canvas with labels clear of the symbols, and
suspect and missing measurements are marked on their equipment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.web.hmi_support import (
    GRID,
    PASSWORDS,
    Browser,
    Page,
    Platform,
    _csp_violation,
    click_on_diagram,
    expect,
    fetch,
    login,
    require_browser,
    wait_for,
)

pytestmark = pytest.mark.slow

require_browser()

LOCAL = {"127.0.0.1", "localhost"}


def test_api_reference_renders_without_the_internet(browser: Browser, platform: Platform) -> None:
    context = browser.new_context(base_url=platform.url)
    outside: list[str] = []

    def only_local(route: Any) -> None:
        if urlsplit(route.request.url).hostname in LOCAL:
            route.continue_()
        else:  # the control room is offline: nothing may come from elsewhere
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    blocked: list[str] = []  # what the policy refused: only Redoc's footer logo from its CDN
    page.on("console", lambda m: _csp_violation(m.type, m.text, blocked))
    response = page.goto("/api/schema")
    assert response is not None
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    expect(page.locator("h1")).to_contain_text("GridPilot API", timeout=15_000)
    expect(page.get_by_role("menuitem", name="commands")).to_be_visible()
    page.get_by_role("menuitem", name="commands").click()
    expect(page.get_by_text("/api/grids/{grid}/commands/switch").first).to_be_attached()
    assert outside == [], outside
    assert not errors, errors
    assert all("https://cdn.redoc.ly/redoc/logo-mini.svg" in b for b in blocked), blocked
    context.close()


def _admin_rows(page: Page, testid: str, attr: str) -> list[str]:
    values: list[str] = page.eval_on_selector_all(
        f"[data-testid={testid}]", f"rows => rows.map(r => r.dataset.{attr})"
    )
    return values


def test_admin_page_lists_users_and_the_audit_trail(page: Page) -> None:
    login(page, "boss", PASSWORDS["boss"])
    page.get_by_test_id("nav-admin").click()
    expect(page.get_by_test_id("view-admin")).to_be_visible()
    # made through the CLI before the start (an admin among them: no first "admin" is made)
    expect(page.get_by_test_id("adm-user-row")).to_have_count(4)
    assert set(_admin_rows(page, "adm-user-row", "user")) == {"op", "view", "boss", "trainee"}
    page.get_by_test_id("adm-add-name").fill("newbie")
    page.get_by_test_id("adm-add-role").select_option("viewer")
    page.get_by_test_id("adm-add-submit").click()
    expect(page.get_by_test_id("adm-add-reply")).to_contain_text("One-time password")
    expect(page.locator("[data-testid=adm-user-row][data-user=newbie]")).to_be_visible()
    # the historian keeps the audit record; it shows once stored
    deadline = time.monotonic() + 30
    while "user_add" not in _admin_rows(page, "adm-audit-row", "action"):
        assert time.monotonic() < deadline, page.get_by_test_id("adm-audit-panel").inner_text()
        page.get_by_test_id("adm-audit-reload").click()
        page.wait_for_timeout(500)
    row = page.locator("[data-testid=adm-audit-row][data-action=user_add]").first
    expect(row).to_contain_text("boss")
    expect(row).to_contain_text("newbie")


def test_the_admin_page_is_for_admins_only(page: Page) -> None:
    login(page, "op", PASSWORDS["op"])
    expect(page.get_by_test_id("nav-admin")).to_be_hidden()
    page.evaluate("location.hash = '#/admin'")
    expect(page.get_by_test_id("view-network")).to_be_visible()
    expect(page.get_by_test_id("view-admin")).to_be_hidden()
    assert fetch(page, "GET", f"/api/grids/{GRID}/audit")["status"] == 403


def _service_pid(platform: Platform, service: str) -> int:
    out = subprocess.run(
        [sys.executable, "-m", "gridpilot", "status", "--json"],
        env={**os.environ, "GRIDPILOT_DATA_DIR": str(platform.data_dir)},
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    return next(int(r["pid"]) for r in json.loads(out) if r["service"] == service)


def test_stale_data_is_marked_when_estimates_stop(page: Page, platform: Platform) -> None:
    login(page, "op", PASSWORDS["op"])
    live = page.get_by_test_id("status-live")
    expect(live).to_have_attribute("data-fresh", "live")
    pid = _service_pid(platform, "state_estimation")
    os.kill(pid, signal.SIGSTOP)  # the estimator hangs: no estimate comes any more
    try:
        expect(live).to_have_attribute("data-fresh", "stale", timeout=15_000)
        expect(live).to_contain_text("stale")
        expect(live).not_to_contain_text("live")
        expect(page.get_by_test_id("stale-banner")).to_be_visible()
        expect(page.get_by_test_id("stale-banner")).to_contain_text("not live")
        assert page.evaluate("document.body.dataset.stale") == "1"
    finally:
        os.kill(pid, signal.SIGCONT)
    expect(live).to_have_attribute("data-fresh", "live", timeout=20_000)
    expect(page.get_by_test_id("stale-banner")).to_be_hidden()


FIT_CHECK = """() => {
    const d = gpHmi.diagram, c = d.canvas.getBoundingClientRect();
    const over = [...document.querySelectorAll('.diagram-tools, .legend')].map((el) => {
        const r = el.getBoundingClientRect();
        return [r.left - c.left, r.top - c.top, r.right - c.left, r.bottom - c.top];
    });
    const hit = (r, q) => r[0] < q[2] && r[2] > q[0] && r[1] < q[3] && r[3] > q[1];
    const out = {outside: [], underOverlay: [], labelOnSymbol: 0, labelOnLabel: 0,
                 labels: d.labelRects.length};
    for (const id of d.bus.id) {
        const p = d.screenPos('bus', id);
        if (p.x < 0 || p.y < 0 || p.x > d.w || p.y > d.h) out.outside.push(id);
        const box = [p.x - 4, p.y - 4, p.x + 4, p.y + 4];
        if (over.some((q) => hit(box, q))) out.underOverlay.push(id);
    }
    const L = d.labelRects, S = d.symbolRects;
    for (let i = 0; i < L.length; i++) {
        for (const s of S) if (hit(L[i], s)) out.labelOnSymbol++;
        for (let j = i + 1; j < L.length; j++) if (hit(L[i], L[j])) out.labelOnLabel++;
    }
    return out;
}"""


def test_the_diagram_fits_its_canvas_and_labels_clear_the_symbols(page: Page) -> None:
    login(page, "op", PASSWORDS["op"])
    wait_for(page, "gpHmi.estCount > 0")
    for size in ({"width": 1600, "height": 900}, {"width": 1150, "height": 700}):
        page.set_viewport_size(size)
        wait_for(
        page,
            "([w, h]) => gpHmi.diagram.k === gpHmi.diagram.fitK && gpHmi.diagram.w > 0 "
            "&& document.body.clientWidth === w", arg=[size["width"], size["height"]]
        )  # fmt: skip
        page.wait_for_timeout(300)  # the refit's frame
        check = page.evaluate(FIT_CHECK)
        assert check["outside"] == [] and check["underOverlay"] == [], (size, check)
        assert check["labels"] >= 8, (size, check)  # most of the 15 buses are labelled
        assert check["labelOnSymbol"] == 0 and check["labelOnLabel"] == 0, (size, check)


def test_suspect_and_missing_measurements_are_marked(page: Page) -> None:
    login(page, "op", PASSWORDS["op"])
    inject = f"/api/grids/{GRID}/training/inject"
    try:
        outage = {"kind": "comm_outage", "source": "pmu_bus_6", "duration_s": 120}
        r = fetch(page, "POST", inject, outage)
        assert r["status"] == 200, r
        r = fetch(page, "POST", inject, {
            "kind": "gross_error", "source": "rtu_trafo_0_1", "mrid": "trafo_0_1",
            "measurand": "power", "error": 1.5, "duration_s": 120,
        })  # fmt: skip
        assert r["status"] == 200, r
        wait_for(page, "gpHmi.diagram.markOf('bus', 'bus_6') === 'missing'", timeout=20_000)
        wait_for(page, "gpHmi.diagram.markOf('branch', 'trafo_0_1') === 'suspect'", timeout=20_000)
        click_on_diagram(page, "branch", "trafo_0_1")
        removed = page.locator(
            "[data-testid=meas-row][data-source=rtu_trafo_0_1][data-removed='1']"
        )
        expect(removed.first).to_be_visible()
        expect(removed.first.get_by_test_id("meas-quality")).to_have_text("bad data")
        expect(page.get_by_test_id("meas-suspect").first).to_contain_text("removed as bad data")
        click_on_diagram(page, "bus", "bus_6")
        expect(page.get_by_test_id("meas-missing").first).to_contain_text("pmu_bus_6: missing")
        expect(page.get_by_test_id("details-measurements")).to_contain_text("Quality")
    finally:
        fetch(page, "POST", inject, {"kind": "clear"})


def _publish_alarms(platform: Platform, alarms: list[Any]) -> None:
    """Alarms on the platform's bus, as monitoring publishes them (the HMI shows them live)."""
    import asyncio
    import concurrent.futures

    from gridpilot.core import bus, subjects
    from gridpilot.core import schemas as s
    from gridpilot.platform.broker import read_endpoints
    from gridpilot.platform.permissions import load_credentials

    async def publish() -> None:
        url = read_endpoints(platform.data_dir)["nats"]
        password = load_credentials(platform.data_dir)["admin"]
        nc = await bus.connect(url, user="admin", password=password, name="test-alarms")
        try:
            for alarm in alarms:
                await nc.publish(subjects.ALARM.format(grid=GRID), s.encode(alarm))
            await nc.flush()
        finally:
            await nc.close()

    # in a thread of its own: Playwright's sync API runs an event loop in this one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, publish()).result(timeout=30)


def test_platform_alarms_display_sensibly(page: Page, platform: Platform) -> None:
    from gridpilot.core import schemas as s

    login(page, "op", PASSWORDS["op"])
    now = time.time_ns()

    def alarm(kind: str, mrid: str, message: str) -> s.Alarm:
        return s.Alarm(
            id=f"{kind}:{mrid}", grid=GRID, kind=s.AlarmKind(kind), mrid=mrid,
            state=s.AlarmState.RAISED, severity=s.Severity.CRITICAL, value=0.0, limit=0.0,
            raised_t_ns=now, t_ns=now, message=message,
        )  # fmt: skip

    _publish_alarms(platform, [
        alarm("comm_loss", "pmu_bus_6", "pmu_bus_6 (bus_6, line_5_6, line_6_7) silent for 3 s"),
        alarm("service_down", "historian", "historian: no heartbeat for 12 s"),
        alarm("broker_outage", "", "the message broker was down for 8 s"),
    ])  # fmt: skip
    for alarm_id, kind_text, equipment in (
        ("comm_loss:pmu_bus_6", "communication lost", "pmu_bus_6"),
        ("service_down:historian", "service down", "historian"),
        ("broker_outage:", "broker outage", "platform"),
    ):
        row = page.locator(f"[data-testid=alarm-row][data-alarm-id='{alarm_id}']")
        expect(row.get_by_test_id("alarm-kind")).to_have_text(kind_text)
        expect(row.locator("td").nth(2)).to_have_text(equipment)
        expect(row.locator("td").nth(4)).to_have_text("\u2013")  # no p.u. or % for these
    expect(page.get_by_test_id("alarm-summary")).to_contain_text("critical")


def test_zz_a_lost_bus_is_a_banner(page: Page, platform: Platform) -> None:
    """The broker dies under the web service: the HMI says its data is not live. (Last in the
    module: the platform may not get its broker back.)"""
    login(page, "op", PASSWORDS["op"])
    banner = page.get_by_test_id("bus-banner")
    expect(banner).to_be_hidden()
    # the supervisor restarts a dead broker within a second: hold it while the broker is
    # down, so that the outage lasts long enough to be seen, then let it bring the broker back
    supervisor = int(
        json.loads((platform.data_dir / "endpoints.json").read_text())["supervisor_pid"]
    )
    pid = int((platform.data_dir / "nats" / "nats.pid").read_text().strip())
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(pid, signal.SIGKILL)
        expect(banner).to_be_visible(timeout=15_000)
        expect(banner).to_contain_text("lost its connection to the message bus")
        assert page.evaluate("document.body.dataset.bus") == "disconnected"
        expect(page.get_by_test_id("status-live")).to_have_attribute(
            "data-fresh", "stale", timeout=15_000
        )
    finally:
        os.kill(supervisor, signal.SIGCONT)
    expect(banner).to_be_hidden(timeout=20_000)  # the broker is back, and so is the bus
