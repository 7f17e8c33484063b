"""HMI benchmark: does the operator HMI stay responsive with thousands of buses?

For each grid (cigre_mv as the baseline, then mvlv_rural, simbench's 5,479-bus MV grid with
all its LV grids) this starts ``gridpilot up`` on a fresh data dir and drives Debian's
Chromium with Playwright:

1. time to first render after login, over ``--loads`` fresh page loads (new browser context,
   no cookie, after one untimed warm-up load): from the sign-in click to the diagram drawn with
   the topology, and to the first estimate drawn in colour, with where the time goes (the login
   request itself — scrypt on the server —, the topology download and parse, building and
   drawing the diagram);
2. the live update rate over ``--live-s`` seconds on one page: estimates applied per second
   and, per estimate, the time to apply it to the canvas (``Diagram.applyEstimate``: map the
   values onto the buses and branches, classify, redraw; timed with ``performance.now()`` in
   the page) and to parse its JSON; the longest main-thread task in the window (PerformanceObserver
   "longtask");
3. a full redraw (what one pan or zoom frame costs) at fit-to-screen and zoomed in 8x, and one
   hit-test (a click), each repeated in the page.

The server sends each browser at most two estimates per second (the latest wins), whatever
state estimation produces (10 per second), so the applied rate is expected to be 2/s; the
point is that applying one stays far below the 500 ms between them.

Needs /usr/bin/chromium (Playwright's own browser is not used) and the platform's fixed device
ports free: no other ``gridpilot up`` may run. With ``--screenshot`` (default docs/hmi.png) the
main view of cigre_mv is saved after a training disturbance: every voltage sensor reads 0.1 p.u.
high for a few seconds, raising voltage alarms that are then cleared (left unacknowledged).

    /tmp/v/bin/python benchmarks/hmi_bench.py                 # ~5 minutes on 2 cores
    /tmp/v/bin/python benchmarks/hmi_bench.py --grids cigre_mv --loads 3 --live-s 10 --no-write

Prints the table (progress on stderr) and writes benchmarks/results/hmi.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from playwright.sync_api import Browser, Page, sync_playwright

from gridpilot.model import devices as dv
from gridpilot.model.distribution import devices_path, placement_path
from gridpilot.model.placement import default_placement, placement_to_toml
from gridpilot.model.registry import grid_key, load_grid

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "hmi.md"
SCREENSHOT = ROOT / "docs" / "hmi.png"
CHROMIUM = "/usr/bin/chromium"
USER, PASSWORD = "bench", "copper-kettle-123"  # not the user name: refused
VIEWPORT = {"width": 1600, "height": 900}
READY_TIMEOUT_S = 180.0

# registers before the app: the longest main-thread task of the live window
LONGTASKS = """
window.__longtasks = [];
try {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__longtasks.push([e.startTime, e.duration]);
  }).observe({type: "longtask", buffered: true});
} catch (e) { /* not supported */ }
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


# -- the platform -------------------------------------------------------------------------
@dataclass
class Prepared:
    grid: str
    registry_note: str = ""  # what was changed in the default device registry, if anything


def prepare(grid: str, data_dir: Path, cache_dir: Path) -> Prepared:
    """The grid model from the cache, and the placement and device registry ``gridpilot up``
    would write, repaired if the default registry does not validate (see the note)."""
    model = load_grid(grid, cache_dir=cache_dir)
    models = data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(cache_dir / f"{grid_key(grid)}.model.json", models)
    placement = default_placement(model)
    registry = dv.default_registry(placement, model)
    problems = dv.validate_registry(registry, placement, model)
    note = ""
    if problems:
        # The default registry of a large grid does not validate: PMU channel names cut to 16
        # characters repeat, and one IEC 104 server per switched bus runs the RTU ports into
        # the PMU ports. Keep every measuring device, make channel names unique and leave out
        # the control-only feeder RTUs (switch positions and commands only; none are measured).
        pmus = [
            msgspec.structs.replace(p, channels=[
                msgspec.structs.replace(c, channel=f"{c.quantity.upper()}{k}_{c.mrid}"[:16])
                for k, c in enumerate(p.channels)
            ])
            for p in registry.pmu
        ]  # fmt: skip
        measuring = [r for r in registry.rtu if r.points]
        rtus = [
            msgspec.structs.replace(r, port=dv.RTU_BASE_PORT + i, common_address=i + 1)
            for i, r in enumerate(measuring)
        ]
        dropped = len(registry.rtu) - len(rtus)
        registry = msgspec.structs.replace(registry, pmu=pmus, rtu=rtus)
        left = dv.validate_registry(registry, placement, model)
        if left:
            raise SystemExit(f"{grid}: the repaired device registry still fails: {left[:5]}")
        note = (
            f"{grid}: the default device registry has {len(problems)} problem(s) "
            f"(first: {problems[0]}); the benchmark wrote a repaired one: unique PMU channel "
            f"names, and {dropped:,} control-only feeder RTUs left out ({len(rtus)} measuring "
            f"RTUs, {len(pmus)} PMUs, {len(registry.der)} DER, {len(registry.meter):,} meters)."
        )
        log(note)
    ppath = placement_path(data_dir, model.name)
    ppath.parent.mkdir(parents=True, exist_ok=True)
    ppath.write_text(placement_to_toml(placement))
    dpath = devices_path(data_dir, model.name)
    dpath.parent.mkdir(parents=True, exist_ok=True)
    dpath.write_text(dv.registry_to_toml(registry))
    return Prepared(grid=model.name, registry_note=note)


def _http(url: str, body: dict[str, Any] | None = None, token: str = "") -> bytes:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as r:
        out: bytes = r.read()
        return out


@contextlib.contextmanager
def platform_up(grid: str, data_dir: Path, speed: float) -> Iterator[tuple[str, int]]:
    """``gridpilot up``; yields (web URL, topology size in bytes) once a first estimate exists."""
    subprocess.run(
        [sys.executable, "-m", "gridpilot", "user", "add", USER, "--role", "operator",
         "--password-stdin", "--data-dir", str(data_dir)],
        input=PASSWORD + "\n", text=True, capture_output=True, check=True,
    )  # fmt: skip
    log_path = data_dir / "up.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridpilot", "up", "--grid", grid, "--data-dir", str(data_dir),
             "--speed", str(speed), "--no-live"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            started = time.monotonic()
            url, token = "", ""
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"gridpilot up exited:\n{log_path.read_text()[-3000:]}")
                if time.monotonic() - started > READY_TIMEOUT_S:
                    raise SystemExit(f"not ready in {READY_TIMEOUT_S:.0f} s:\n"
                                     f"{log_path.read_text()[-3000:]}")  # fmt: skip
                with contextlib.suppress(OSError, ValueError, KeyError):
                    if not url:
                        url = json.loads((data_dir / "endpoints.json").read_text())["http"]
                    if not token:
                        login = {"user": USER, "password": PASSWORD}
                        token = json.loads(_http(f"{url}/api/auth/login", login))["token"]
                    _http(f"{url}/api/grids/{grid}/estimate", token=token)
                    break
                time.sleep(0.5)
            log(f"{grid}: platform ready after {time.monotonic() - started:.0f} s")
            size = len(_http(f"{url}/api/grids/{grid}/topology", token=token))
            yield url, size
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# -- in the browser -------------------------------------------------------------------------
def wait_until(page: Page, expression: str, *, timeout: float) -> None:
    """Until the JavaScript ``expression`` is true on the page, evaluated through DevTools:
    Playwright's wait_for_function compiles its predicate with eval in the page, which the
    HMI's Content-Security-Policy forbids."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout / 1000:g} s: {expression}")
        page.wait_for_timeout(50)


def sign_in(page: Page, url: str) -> None:
    page.goto(url)
    page.get_by_test_id("login-user").fill(USER)
    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    wait_until(page, "document.body.dataset.diagram === 'ready'", timeout=120_000)
    wait_until(page, "gpHmi.metrics.firstEstimateAt !== null", timeout=60_000)


@dataclass
class Result:
    grid: str
    buses: int = 0
    branches: int = 0
    switches: int = 0
    topology_bytes: int = 0
    estimate_bytes: int = 0
    loads: list[dict[str, float]] = field(default_factory=list)
    apply_ms: list[float] = field(default_factory=list)
    parse_ms: list[float] = field(default_factory=list)
    rate: float = math.nan
    window_s: float = 0.0
    longest_task_ms: float = 0.0
    long_tasks: int = 0
    redraw_fit_ms: list[float] = field(default_factory=list)
    redraw_zoom_ms: list[float] = field(default_factory=list)
    hit_ms: list[float] = field(default_factory=list)
    se_per_s: float = math.nan
    note: str = ""


def page_loads(browser: Browser, url: str, n: int, res: Result) -> None:
    for i in range(n + 1):
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        sign_in(page, url)
        m = page.evaluate("gpHmi.metrics")
        context.close()
        if i == 0:
            continue  # warm-up: the server's first topology request computes the layout
        t0 = m["loginAt"]
        res.loads.append({
            "render": m["firstRenderAt"] - t0,
            "estimate": m["firstEstimateAt"] - t0,
            "login": m["marks"]["signedIn"] - t0,
            "topology": m["topologyAt"] - m["marks"]["topologyAsked"],
            "draw": m["firstRenderAt"] - m["topologyAt"],
        })  # fmt: skip
        log(f"  load {i}/{n}: first render {res.loads[-1]['render']:.0f} ms")


def live_window(browser: Browser, url: str, seconds: float, res: Result) -> None:
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(LONGTASKS)
    page = context.new_page()
    sign_in(page, url)
    info = page.evaluate(
        "({b: gpHmi.topo.buses.length, r: gpHmi.topo.branches.length,"
        " s: gpHmi.topo.switches.length})"
    )
    res.buses, res.branches, res.switches = info["b"], info["r"], info["s"]
    page.wait_for_timeout(2000)
    start = page.evaluate(
        "(() => { const m = gpHmi.metrics; m.applyMs.length = 0; m.parseMs.length = 0;"
        " m.appliedAt.length = 0; return performance.now(); })()"
    )
    page.wait_for_timeout(seconds * 1000)
    m = page.evaluate(
        f"""(() => {{
            const m = gpHmi.metrics;
            const lt = window.__longtasks.filter(([t]) => t >= {start});
            const se = (gpHmi.services.find((s) => s.service === 'state_estimation') || {{}}).info;
            return {{apply: m.applyMs, parse: m.parseMs, at: m.appliedAt, bytes: m.estimateBytes,
                     end: performance.now(), lt: lt.map(([, d]) => d),
                     se: se ? se.estimates_per_s : null}};
        }})()"""
    )
    res.apply_ms, res.parse_ms = m["apply"], m["parse"]
    res.estimate_bytes = m["bytes"]
    res.window_s = (m["end"] - start) / 1000
    res.rate = len(m["at"]) / res.window_s
    res.long_tasks = len(m["lt"])
    res.longest_task_ms = max(m["lt"], default=0.0)
    res.se_per_s = m["se"] if m["se"] is not None else math.nan
    # redraws and hit-tests, repeated in the page
    timing = page.evaluate(
        """(() => {
            const d = gpHmi.diagram, time = (f, n) => {
                const out = [];
                for (let i = 0; i < n; i++) {
                    const t = performance.now();
                    f(i);
                    out.push(performance.now() - t);
                }
                return out;
            };
            d.fit(); d.render();
            const fit = time(() => d.render(), 60);
            // one hit-test is below the timer's resolution: 20 rounds of 50 calls each
            const hits = time(() => {
                for (let j = 0; j < 50; j++) d.hitTest((j * 97) % d.w, (j * 61) % d.h);
            }, 20).map((ms) => ms / 50);
            d.zoom(8);
            d.render();
            const zoom = time(() => d.render(), 60);
            d.fit();
            return {fit, zoom, hits};
        })()"""
    )
    res.redraw_fit_ms, res.redraw_zoom_ms = timing["fit"], timing["zoom"]
    res.hit_ms = timing["hits"]
    context.close()


def screenshot(browser: Browser, url: str, path: Path) -> None:
    """The main view after a training disturbance (alarms raised, then cleared)."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    sign_in(page, url)
    inject = """async (body) => (await fetch(`/api/grids/${gpHmi.grid}/training/inject`, {
        method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body),
    })).status"""
    sets = page.evaluate(
        "async () => (await fetch(`/api/grids/${gpHmi.grid}/measurements`)).json()"
    )
    for s in sets:
        for x in s["measurements"]:
            if x["measurand"] == "voltage":
                body = {"kind": "gross_error", "source": s["source"], "mrid": x["mrid"],
                        "measurand": "voltage", "error": 0.1, "duration_s": 60}  # fmt: skip
                page.evaluate(inject, body)
    raised = "document.querySelectorAll('tr[data-state=raised]').length"
    wait_until(page, f"{raised} > 3", timeout=30_000)
    page.wait_for_timeout(4000)
    page.evaluate(inject, {"kind": "clear"})
    wait_until(page, f"{raised} === 0", timeout=30_000)
    page.wait_for_timeout(3000)
    page.get_by_test_id("alarm-ack").first.click()
    page.evaluate("gpHmi.select({kind: 'bus', id: 'bus_4'})")
    wait_until(
        page,
        "document.querySelector('[data-testid=trend-chart]').dataset.points > 3",
        timeout=30_000,
    )
    page.wait_for_timeout(1500)
    page.mouse.move(5, 300)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    log(f"screenshot: {path}")
    context.close()


# -- report ---------------------------------------------------------------------------------
def table(results: list[Result]) -> str:
    rows = [
        "| grid | buses / branches / switches | first render after login, median / p99 ms | "
        "first estimate drawn, median / p99 ms | estimates applied per s | apply one estimate, "
        "median / p99 ms | parse one, median ms | redraw (pan/zoom frame), fit / 8x, median ms | "
        "longest task ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        render = [x["render"] for x in r.loads]
        est = [x["estimate"] for x in r.loads]
        rows.append(
            f"| {r.grid} | {r.buses:,} / {r.branches:,} / {r.switches:,} "
            f"| {statistics.median(render):.0f} / {pct(render, 99):.0f} "
            f"| {statistics.median(est):.0f} / {pct(est, 99):.0f} "
            f"| {r.rate:.2f} "
            f"| {statistics.median(r.apply_ms):.1f} / {pct(r.apply_ms, 99):.1f} "
            f"| {statistics.median(r.parse_ms):.1f} "
            f"| {statistics.median(r.redraw_fit_ms):.1f} "
            f"/ {statistics.median(r.redraw_zoom_ms):.1f} "
            f"| {r.longest_task_ms:.0f} |"
        )
    return "\n".join(rows)


def breakdown(results: list[Result]) -> str:
    rows = [
        "| grid | page loads | login request | topology download + parse | build + draw | "
        "topology size | estimate message | samples (estimates) | hit-test median µs | "
        "long tasks (>50 ms) in window | SE estimates/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        med = {k: statistics.median(x[k] for x in r.loads) for k in ("login", "topology", "draw")}
        rows.append(
            f"| {r.grid} | {len(r.loads)} | {med['login']:.0f} ms | {med['topology']:.0f} ms "
            f"| {med['draw']:.0f} ms | {r.topology_bytes / 1e3:,.0f} kB "
            f"| {r.estimate_bytes / 1e3:.0f} kB | {len(r.apply_ms)} in {r.window_s:.0f} s "
            f"| {statistics.median(r.hit_ms) * 1000:.0f} | {r.long_tasks} | {r.se_per_s:.1f} |"
        )
    return "\n".join(rows)


def conclusion(results: list[Result]) -> str:
    big = max(results, key=lambda r: r.buses)
    base = min(results, key=lambda r: r.buses)
    med = statistics.median
    render = med(x["render"] for x in big.loads)
    apply99 = pct(big.apply_ms, 99)
    frame = max(med(big.redraw_fit_ms), med(big.redraw_zoom_ms))
    text = (
        f"With {big.grid} ({big.buses:,} buses) the diagram is drawn {render:.0f} ms after the "
        f"sign-in click (median; {base.grid}: {med(x['render'] for x in base.loads):.0f} ms), "
        f"and one live estimate is applied to the canvas in {med(big.apply_ms):.1f} ms "
        f"(p99 {apply99:.1f} ms; {base.grid}: {med(base.apply_ms):.1f} ms), "
        f"{apply99 / 500:.1%} of the 500 ms between two live estimates. A full redraw, what "
        f"one pan or zoom frame costs, takes {med(big.redraw_fit_ms):.1f} ms at fit-to-screen "
        f"and {med(big.redraw_zoom_ms):.1f} ms zoomed in 8x, {frame / (1000 / 60):.0%} of a "
        f"60 Hz frame."
    )
    if not any(r.long_tasks for r in results):
        text += " No main-thread task over 50 ms was seen in the live windows."
    return text


REPORT = """\
# HMI responsiveness: the largest simbench grid against cigre_mv

Written by `benchmarks/hmi_bench.py` (see its docstring and `benchmarks/README.md`); rerun it
to refresh.

{table}

{conclusion}

Where the time to first render goes (medians), and the rest:

{breakdown}

{notes}## Method

`gridpilot up --grid <grid> --speed {speed}` on a fresh data dir per grid, one after the other;
Chromium {chromium} headless, {width}x{height} viewport, driven by Playwright from the same
machine (browser, platform and benchmark share its cores). First render: {loads} fresh page
loads per grid (new context, sign in through the form) after one warm-up; times are
`performance.now()` differences in the page from the sign-in click. Live: one page, {live:.0f} s
after a 2 s settle; "apply" is `Diagram.applyEstimate` (values mapped by id onto the
buses and branches, voltage band and loading classes, full synchronous redraw), "parse" the
`JSON.parse` of the WebSocket message. Redraw: 60 `render()` calls at fit-to-screen and zoomed
8x into the centre; hit-test: 20 rounds of 50 `hitTest()` calls at spread points (one call is
below the page timer's resolution). Percentiles are nearest rank; p99 of a few dozen samples is
close to the maximum: indicative only.

## Machine

{machine}
"""


def machine(load: float, chromium: str) -> str:
    def fieldv(path: str, key: str) -> str:
        text = Path(path).read_text() if Path(path).exists() else ""
        return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if key in ln), "?")

    mem_kb = fieldv("/proc/meminfo", "MemTotal").split()[0]
    ram = f"{int(mem_kb) / 2**20:.1f} GiB" if mem_kb.isdigit() else "?"
    versions = {p: importlib.metadata.version(p) for p in ("playwright", "litestar", "uvicorn")}
    return "\n".join([
        f"- CPU: {fieldv('/proc/cpuinfo', 'model name')}, {os.cpu_count()} cores; RAM {ram}",
        f"- Python {platform.python_version()} ({platform.system()} {platform.release()})",
        f"- Chromium {chromium} (Debian, headless), Playwright {versions['playwright']}; "
        f"Litestar {versions['litestar']}, uvicorn {versions['uvicorn']}",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average at "
        f"start {load:.2f} (other work on the machine competes for its cores)",
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grids", nargs="+", default=["cigre_mv", "mvlv_rural"])
    ap.add_argument("--loads", type=int, default=10, help="timed page loads per grid")
    ap.add_argument("--live-s", type=float, default=60.0, help="live window per grid, seconds")
    ap.add_argument("--speed", type=float, default=1.0, help="gridpilot up --speed")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "gridpilot")
    ap.add_argument("--screenshot", type=Path, default=SCREENSHOT,
                    help="main view of cigre_mv saved here ('' to skip)")  # fmt: skip
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"no Chromium at {CHROMIUM}")
    load = os.getloadavg()[0]
    results: list[Result] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        chromium = browser.version
        for grid in args.grids:
            with tempfile.TemporaryDirectory(prefix=f"hmi-bench-{grid}-") as tmp:
                data_dir = Path(tmp)
                log(f"{grid}: preparing")
                prep = prepare(grid, data_dir, args.cache_dir)
                res = Result(grid=prep.grid, note=prep.registry_note)
                with platform_up(grid, data_dir, args.speed) as (url, size):
                    res.topology_bytes = size
                    page_loads(browser, url, args.loads, res)
                    log(f"{grid}: live window of {args.live_s:.0f} s")
                    live_window(browser, url, args.live_s, res)
                    if grid == "cigre_mv" and str(args.screenshot) not in ("", "."):
                        screenshot(browser, url, args.screenshot)
                results.append(res)
        browser.close()
    text_table = table(results)
    print(text_table)
    print()
    print(breakdown(results))
    print()
    print(conclusion(results))
    if args.no_write:
        return
    notes = "".join(f"Note: {r.note}\n\n" for r in results if r.note)
    RESULTS.write_text(REPORT.format(
        table=text_table, conclusion=conclusion(results), breakdown=breakdown(results),
        notes=notes, speed=args.speed, chromium=chromium, width=VIEWPORT["width"],
        height=VIEWPORT["height"], loads=args.loads, live=args.live_s,
        machine=machine(load, chromium),
    ))  # fmt: skip
    log(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
