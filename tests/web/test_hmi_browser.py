"""The operator HMI in a real browser: ``gridpilot up`` (cigre_mv) once for the module, and
Debian's Chromium driven by Playwright (tests/web/hmi_support.py; the fixtures are in
tests/web/conftest.py). With ``GRIDPILOT_HMI_SCREENSHOT`` set to a path, the main view is
saved there (``docs/hmi.png`` is made that way).
"""

from __future__ import annotations

import os
import re

import pytest

from tests.web.hmi_support import (
    GRID,
    NEW_TRAINEE_PASSWORD,
    PASSWORDS,
    Page,
    Platform,
    click_on_diagram,
    estimate_count,
    expect,
    fetch,
    login,
    require_browser,
    wait_for,
)

pytestmark = pytest.mark.slow

require_browser()


def test_one_time_password_is_changed_before_anything_else(page: Page, platform: Platform) -> None:
    login(page, "trainee", platform.trainee_password, ready=False)
    expect(page.get_by_test_id("password-screen")).to_be_visible()
    expect(page.get_by_test_id("app-screen")).to_be_hidden()
    # the server holds the line too: nothing but the password change with this session
    refused = fetch(page, "GET", "/api/grids")
    assert refused["status"] == 403, refused
    assert "one-time password" in refused["body"]["detail"]

    page.get_by_test_id("pw-old").fill(platform.trainee_password)
    page.get_by_test_id("pw-new").fill(NEW_TRAINEE_PASSWORD)
    page.get_by_test_id("pw-confirm").fill(NEW_TRAINEE_PASSWORD + "x")
    page.get_by_test_id("pw-submit").click()
    expect(page.get_by_test_id("pw-error")).to_contain_text("differ")
    page.get_by_test_id("pw-confirm").fill(NEW_TRAINEE_PASSWORD)
    page.get_by_test_id("pw-submit").click()
    expect(page.get_by_test_id("app-screen")).to_be_visible()
    expect(page.get_by_test_id("who-user")).to_have_text("trainee")
    expect(page.get_by_test_id("who-role")).to_have_text("operator")

    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-screen")).to_be_visible()
    assert fetch(page, "GET", "/api/auth/me")["status"] == 401
    login(page, "trainee", platform.trainee_password, ready=False)
    expect(page.get_by_test_id("login-error")).to_contain_text("Wrong user name or password")
    login(page, "trainee", NEW_TRAINEE_PASSWORD)
    expect(page.get_by_test_id("password-screen")).to_be_hidden()


def test_values_change_live_and_the_socket_reconnects(page: Page) -> None:
    login(page, "view", PASSWORDS["view"])
    expect(page.get_by_test_id("who-role")).to_have_text("viewer")
    expect(page.get_by_test_id("nav-training")).to_be_hidden()
    status_time = page.get_by_test_id("status-est-time")
    expect(status_time).not_to_have_text("\N{EN DASH}")  # what it shows before an estimate
    expect(page.get_by_test_id("status-est-status")).to_have_text("converged")
    first = status_time.inner_text()
    expect(status_time).not_to_have_text(first, timeout=5000)  # estimates keep coming (2/s)
    assert page.evaluate("gpHmi.diagram.busClass('bus_3')") == "normal"

    click_on_diagram(page, "bus", "bus_3")
    value = page.get_by_test_id("details-value")
    expect(value).to_contain_text(re.compile(r"^0\.9\d{3}|^1\.0\d{3}"))
    shown = value.inner_text()
    expect(value).not_to_have_text(shown, timeout=10_000)  # noise moves the 4th decimal

    services = page.get_by_test_id("service-row")
    expect(services).to_have_count(9)
    expect(page.locator("[data-testid=service-row][data-stale='1']")).to_have_count(0)

    # the socket drops: "reconnecting", then live again with fresh estimates
    page.evaluate("gpHmi.live.drop()")
    expect(page.get_by_test_id("status-live")).to_have_attribute("data-state", "reconnecting")
    expect(page.get_by_test_id("status-live")).to_contain_text("reconnecting")
    expect(page.get_by_test_id("status-live")).to_have_attribute("data-state", "live")
    n = estimate_count(page)
    wait_for(page, f"gpHmi.estCount > {n}")


def test_trend_of_a_branch_with_ranges(page: Page) -> None:
    login(page, "view", PASSWORDS["view"])
    click_on_diagram(page, "branch", "line_1_2")
    expect(page.get_by_test_id("details-title")).to_have_text("Line 1-2")
    chart = page.get_by_test_id("trend-chart")
    wait_for(
        page,
        "document.querySelector('[data-testid=trend-chart]').dataset.points > 3",
        timeout=15_000,
    )
    expect(chart).to_have_attribute("data-aggregated", "0")
    page.get_by_test_id("trend-range-1h").click()
    expect(chart).to_have_attribute("data-range", "1h")
    expect(chart).to_have_attribute("data-aggregated", "1")
    assert int(chart.get_attribute("data-points") or 0) > 0
    # something was drawn: the line's colour is on the canvas
    drawn = page.evaluate(
        """() => {
            const c = document.querySelector('[data-testid=trend-chart]');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i] < 120 && d[i + 1] > 180 && d[i + 2] > 220) n++;
            }
            return n;
        }"""
    )
    assert drawn > 20


def _voltage_sensors(page: Page) -> list[tuple[str, str]]:
    sets = fetch(page, "GET", f"/api/grids/{GRID}/measurements")["body"]
    return [
        (m["source"], x["mrid"])
        for m in sets
        for x in m["measurements"]
        if x["measurand"] == "voltage"
    ]


def test_operator_acknowledges_an_alarm(page: Page) -> None:
    login(page, "op", PASSWORDS["op"])
    # every voltage sensor reads 0.1 p.u. high: consistent, so not bad data but high voltage
    sensors = _voltage_sensors(page)
    assert len(sensors) >= 3
    for source, mrid in sensors:
        body = {"kind": "gross_error", "source": source, "mrid": mrid, "measurand": "voltage",
                "error": 0.1, "duration_s": 120}  # fmt: skip
        assert fetch(page, "POST", f"/api/grids/{GRID}/training/inject", body)["status"] == 200
    try:
        row = page.locator("[data-testid=alarm-row][data-alarm-id='voltage_high:bus_12']")
        expect(row).to_have_attribute("data-state", "raised", timeout=20_000)
        expect(row).to_have_attribute("data-severity", re.compile("critical|warning"))
        expect(row.get_by_test_id("alarm-message")).to_contain_text("bus_12 voltage")
        expect(page.get_by_test_id("alarm-summary")).to_contain_text("alarm")
        wait_for(page, "gpHmi.diagram.busClass('bus_12') === 'high'")
        row.get_by_test_id("alarm-ack").click()
        # the acknowledgement goes to monitoring and comes back over the bus and the socket
        expect(row.get_by_test_id("alarm-acked-by")).to_have_text("✓ op", timeout=15_000)
        expect(row).to_have_attribute("data-acknowledged", "1")
    finally:
        cleared = fetch(page, "POST", f"/api/grids/{GRID}/training/inject", {"kind": "clear"})
        assert cleared["status"] == 200
    # cleared and acknowledged: it leaves the list; the others stay until acknowledged
    expect(row).to_have_count(0, timeout=20_000)
    other = page.locator("[data-testid=alarm-row][data-alarm-id='voltage_high:bus_13']")
    expect(other).to_have_attribute("data-state", "cleared")
    wait_for(page, "gpHmi.diagram.busClass('bus_12') === 'normal'")


def test_operator_opens_a_switch_after_confirming(page: Page) -> None:
    login(page, "op", PASSWORDS["op"])
    click_on_diagram(page, "switch", "sw_0")
    row = page.locator("[data-testid=switch-row][data-switch-id=sw_0]")
    expect(row.get_by_test_id("switch-state")).to_have_text("CLOSED")
    dialog = page.get_by_test_id("confirm-dialog")

    # cancelled: nothing is sent
    row.get_by_test_id("switch-toggle").click()
    expect(dialog).to_be_visible()
    expect(page.get_by_test_id("confirm-text")).to_have_text("Open switch sw_0 on Line 6-7?")
    page.get_by_test_id("confirm-cancel").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("command-result")).to_be_hidden()

    row.get_by_test_id("switch-toggle").click()
    page.get_by_test_id("confirm-ok").click()
    result = page.get_by_test_id("command-result")
    expect(result).to_have_attribute("data-state", "ok", timeout=20_000)
    expect(result).to_contain_text("sw_0 opened")
    expect(result).to_contain_text("executed by")
    # the field reports the new topology: the switch is drawn open, then a new estimate comes
    wait_for(page, "gpHmi.diagram.switchClosed('sw_0') === false", timeout=15_000)
    expect(row.get_by_test_id("switch-state")).to_have_text("OPEN")
    wait_for(page, "gpHmi.topologyT && gpHmi.est.t_ns > gpHmi.topologyT", timeout=10_000)
    assert page.evaluate("gpHmi.diagram.branchClass('line_6_7')") == "open"

    # and back: closed again
    row.get_by_test_id("switch-toggle").click()
    expect(page.get_by_test_id("confirm-text")).to_have_text("Close switch sw_0 on Line 6-7?")
    page.get_by_test_id("confirm-ok").click()
    expect(result).to_contain_text("sw_0 closed", timeout=20_000)
    wait_for(page, "gpHmi.diagram.switchClosed('sw_0') === true", timeout=15_000)


def test_viewer_cannot_switch(page: Page) -> None:
    login(page, "view", PASSWORDS["view"])
    click_on_diagram(page, "branch", "line_6_7")
    toggles = page.get_by_test_id("switch-toggle")
    expect(toggles).to_have_count(2)
    for i in range(2):
        expect(toggles.nth(i)).to_be_disabled()
    expect(page.get_by_test_id("switch-viewer-note")).to_be_visible()

    # the server is the real guard: a direct POST with the viewer's cookie is refused
    refused = fetch(
        page, "POST", f"/api/grids/{GRID}/commands/switch", {"target": "sw_0", "closed": False}
    )
    assert refused["status"] == 403, refused
    assert "operator" in refused["body"]["detail"]
    # and the page says so in plain words if the button is forced
    page.evaluate("document.querySelector('[data-switch-id=sw_0] button').disabled = false")
    page.locator("[data-testid=switch-row][data-switch-id=sw_0]").get_by_test_id(
        "switch-toggle"
    ).click()
    page.get_by_test_id("confirm-ok").click()
    result = page.get_by_test_id("command-result")
    expect(result).to_have_attribute("data-state", "err")
    expect(result).to_contain_text("Not permitted")
    assert page.evaluate("gpHmi.diagram.switchClosed('sw_0')") is True


def test_training_injects_and_clears(page: Page) -> None:
    login(page, "op", PASSWORDS["op"])
    page.get_by_test_id("nav-training").click()
    expect(page.get_by_test_id("view-training")).to_be_visible()
    page.get_by_test_id("tr-ge-source").select_option("pmu_bus_6")
    page.get_by_test_id("tr-ge-mrid").select_option("line_5_6")
    expect(page.get_by_test_id("tr-ge-measurand")).to_have_value("power")
    page.get_by_test_id("tr-ge-error").fill("3")
    page.get_by_test_id("tr-ge-submit").click()
    reply = page.get_by_test_id("tr-reply")
    expect(reply).to_have_attribute("data-state", "ok")
    expect(reply).to_contain_text("Accepted: gross error +3 MW/Mvar on line_5_6")
    # the estimator finds and removes it
    expect(page.locator("#tr-bad")).to_contain_text("pmu_bus_6/line_5_6", timeout=15_000)

    page.get_by_test_id("tr-co-source").select_option("der_wka_7")
    page.get_by_test_id("tr-co-duration").fill("5")
    page.get_by_test_id("tr-co-submit").click()
    expect(reply).to_contain_text("Accepted: communication outage of der_wka_7 for 5 simulated s")

    page.get_by_test_id("tr-clear").click()
    expect(reply).to_contain_text("Accepted: every injection cleared")
    expect(page.get_by_test_id("tr-log").locator("li")).to_have_count(3)
    expect(page.locator("#tr-bad")).to_have_text("none", timeout=15_000)


def test_main_view_screenshot(page: Page) -> None:
    """The main view with a bus selected and its trend (saved with GRIDPILOT_HMI_SCREENSHOT)."""
    login(page, "op", PASSWORDS["op"])
    click_on_diagram(page, "bus", "bus_4")
    wait_for(
        page,
        "document.querySelector('[data-testid=trend-chart]').dataset.points > 3",
        timeout=15_000,
    )
    page.mouse.move(5, 5)  # no tooltip
    target = os.environ.get("GRIDPILOT_HMI_SCREENSHOT")
    shot = page.screenshot(path=target or None)
    assert len(shot) > 10_000
