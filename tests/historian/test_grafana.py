"""The Grafana provisioning in deploy/grafana: well-formed, and every dashboard query runs.

Grafana is not installed here, so what Grafana would do with the files is done by hand: the
YAML is read with a strict reader for the small subset the files use, and every SQL query of
the dashboard (panels and template variables) is turned into plain SQL the way Grafana does it
(template variables first, as the browser does, then the PostgreSQL data source's macros, as
the server does) and run against a real historian database that the store filled, in a
read-only transaction, with the results checked.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gridpilot.core import schemas as s
from gridpilot.services.historian import rows
from gridpilot.services.historian.backends import open_store
from gridpilot.services.historian.store import EventRow, Sample, SeriesKey, SeriesKind

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "gridpilot.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "gridpilot.yaml"
DASHBOARD = GRAFANA / "dashboards" / "gridpilot.json"
README = GRAFANA / "README.md"
UID = "gridpilot-historian"
DS_TYPE = "grafana-postgresql-datasource"
DASHBOARDS_PATH = "/var/lib/grafana/dashboards/gridpilot"

S = 1_000_000_000
MIN = 60 * S
HOUR = 3600 * S
DAY = 24 * HOUR
T0 = 1_780_000_000 * S - (1_780_000_000 * S) % DAY  # midnight UTC: every bucket starts here
STEP = 10 * S
TIMES = [T0 + i * STEP for i in range(360)]  # one hour of estimates, every 10 s
BUSES = ("b1", "b2", "b3")
BRANCHES = tuple(f"br{j:02d}" for j in range(12))
SPIKE_AT = 100  # br00 has the lowest loading but one spike above every other branch's maximum
GRID = "g"

# The three ranges the dashboard's queries treat differently: raw samples up to 6 h,
# per-minute aggregates up to 7 days, hourly aggregates beyond.
RAW_RANGE = (T0, T0 + HOUR)
MINUTE_RANGE = (T0 - 6 * HOUR, T0 + 6 * HOUR)
HOUR_RANGE = (T0 - 15 * DAY, T0 + 15 * DAY)


# --- a strict reader for the YAML subset of the provisioning files ----------------------------

_KEY = re.compile(r"([A-Za-z_][\w.-]*):(?: +(.*))?$")
_INT = re.compile(r"-?(0|[1-9]\d*)$")
_PLAIN_START = set("-?:,[]{}#&*!|>'\"%@`")
_AMBIGUOUS = {"yes", "no", "on", "off", "y", "n", "null", "~", "true", "false"}


def parse_yaml(text: str) -> Any:
    """Block mappings, block sequences (whose items may be mappings: ``- key: value``), and
    plain, quoted, integer and boolean scalars, with comments. Anything else raises
    ValueError, so a file this reader does not understand fails the test instead of being
    misread."""
    lines: list[list[Any]] = []  # [indent, content, line number]
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw:
            raise ValueError(f"line {number}: tab")
        content = _strip_comment(raw, number).rstrip()
        if content.strip():
            lines.append([len(content) - len(content.lstrip(" ")), content.lstrip(" "), number])
    if not lines:
        raise ValueError("empty document")
    value, end = _node(lines, 0, lines[0][0])
    if end != len(lines):
        raise ValueError(f"line {lines[end][2]}: unexpected indentation")
    return value


def _strip_comment(line: str, number: int) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"" and (i == 0 or line[i - 1] in " :-"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i]
    if quote:
        raise ValueError(f"line {number}: unterminated quote")
    return line


def _node(lines: list[list[Any]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][1] == "-" or lines[i][1].startswith("- "):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[list[Any]], i: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
        rest = lines[i][1][2:].lstrip(" ")
        if _KEY.match(rest):  # a mapping item: its first key is re-read as a mapping line
            inner = indent + len(lines[i][1]) - len(rest)
            lines[i][0], lines[i][1] = inner, rest
            item, i = _mapping(lines, i, inner)
        else:
            item, i = _scalar(rest, lines[i][2]), i + 1
        items.append(item)
    return items, i


def _mapping(lines: list[list[Any]], i: int, indent: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent:
        number = lines[i][2]
        match = _KEY.match(lines[i][1])
        if match is None:
            raise ValueError(f"line {number}: not a 'key: value' line")
        key, value = match.group(1), match.group(2)
        if key in out:
            raise ValueError(f"line {number}: duplicate key {key!r}")
        i += 1
        if value is not None:
            out[key] = _scalar(value, number)
        elif i < len(lines) and lines[i][0] > indent:
            out[key], i = _node(lines, i, lines[i][0])
        else:
            out[key] = None
    return out, i


def _scalar(text: str, number: int) -> Any:
    if len(text) >= 2 and text[0] == text[-1] == "'":
        inner = text[1:-1]
        if re.search(r"(?<!')'(?!')", inner):
            raise ValueError(f"line {number}: stray quote in {text!r}")
        return inner.replace("''", "'")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        if "\\" in text or '"' in text[1:-1]:
            raise ValueError(f"line {number}: escapes are not supported: {text!r}")
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    if _INT.match(text):
        return int(text)
    if text[0] in _PLAIN_START or ": " in text or " #" in text or text.lower() in _AMBIGUOUS:
        raise ValueError(f"line {number}: unsupported scalar {text!r}")
    try:
        float(text)
    except ValueError:
        return text
    raise ValueError(f"line {number}: floats are not supported: {text!r}")


def test_the_yaml_reader_reads_what_it_supports_and_refuses_the_rest() -> None:
    text = """
# comment
a: 1
b:
  c: 'x # y'
  d: "z"
  e:
    - f: ${ENV}  # trailing comment
      g: true
    - plain text
h:
"""
    assert parse_yaml(text) == {
        "a": 1,
        "b": {"c": "x # y", "d": "z", "e": [{"f": "${ENV}", "g": True}, "plain text"]},
        "h": None,
    }
    for bad in ("a: yes", "a: [1, 2]", "a: {b: 1}", "a: 1.5", "a: &x 1", "a: 1\na: 2", "a: 'b"):
        with pytest.raises(ValueError):
            parse_yaml(bad)


# --- the provisioning files -------------------------------------------------------------------


def env_refs(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_]\w*)\}", text))


def test_the_data_source_is_the_historian_on_postgresql_configured_from_the_environment() -> None:
    text = DATASOURCES.read_text(encoding="utf-8")
    doc = parse_yaml(text)
    assert doc["apiVersion"] == 1
    assert set(doc) == {"apiVersion", "datasources"}
    [ds] = doc["datasources"]
    assert ds["uid"] == UID
    assert ds["type"] == DS_TYPE
    assert ds["access"] == "proxy"
    env = re.compile(r"\$\{GRIDPILOT_PG_[A-Z]+\}")
    assert env.fullmatch(ds["url"])
    assert env.fullmatch(ds["user"])
    assert env.fullmatch(ds["jsonData"]["database"])
    assert env.fullmatch(ds["jsonData"]["sslmode"])
    assert "password" not in ds and "password" not in ds["jsonData"]
    # Every secret comes from the environment, never from the file.
    assert ds["secureJsonData"] == {"password": "${GRIDPILOT_PG_PASSWORD}"}
    # Every variable the file uses is explained where operators look.
    readme = README.read_text(encoding="utf-8")
    refs = env_refs(text)
    assert refs == {
        "GRIDPILOT_PG_HOST",
        "GRIDPILOT_PG_DB",
        "GRIDPILOT_PG_USER",
        "GRIDPILOT_PG_PASSWORD",
        "GRIDPILOT_PG_SSLMODE",
    }
    for name in refs:
        assert name in readme, f"{name} is not documented in {README.name}"


def test_the_dashboard_provider_reads_the_mounted_dashboards_directory() -> None:
    doc = parse_yaml(PROVIDERS.read_text(encoding="utf-8"))
    assert doc["apiVersion"] == 1
    [provider] = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARDS_PATH
    readme = README.read_text(encoding="utf-8")
    assert f"/dashboards:{DASHBOARDS_PATH}" in readme  # the mount the README shows
    assert "provisioning/datasources:/etc/grafana/provisioning/datasources" in readme
    assert "provisioning/dashboards:/etc/grafana/provisioning/dashboards" in readme
    assert "gridpilot up --db postgresql://" in readme


@pytest.mark.parametrize("path", [DATASOURCES, PROVIDERS], ids=lambda p: p.parent.name)
def test_the_yaml_reader_agrees_with_pyyaml(path: Path) -> None:
    yaml = pytest.importorskip("yaml")  # not a dependency: a cross-check where it is installed
    text = path.read_text(encoding="utf-8")
    assert parse_yaml(text) == yaml.safe_load(text)


# --- the dashboard ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return result


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def panels(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in dashboard["panels"]}


def queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every SQL query of the dashboard by a readable name: variable <name>, <panel> <refId>."""
    out = {f"variable {name}": v["query"] for name, v in variables(dashboard).items()}
    for title, panel in panels(dashboard).items():
        for target in panel.get("targets", []):
            out[f"{title} {target['refId']}"] = target["rawSql"]
    return out


VOLTAGE = "Estimated bus voltages |V| (p.u.)"
LOADING = "Branch loading (%), top 10 by maximum"
ALARMS = "Alarms"
ACTIVE = "Active alarms"


def test_the_dashboard_has_the_panels_and_variables(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] == "GridPilot \N{EM DASH} voltages and alarms"
    assert dashboard["uid"]
    assert set(panels(dashboard)) == {VOLTAGE, LOADING, ALARMS, ACTIVE}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    got = {title: p["type"] for title, p in panels(dashboard).items()}
    assert got == {VOLTAGE: "timeseries", LOADING: "timeseries", ALARMS: "table", ACTIVE: "stat"}
    grid, bus = variables(dashboard)["grid"], variables(dashboard)["bus"]
    assert grid["type"] == bus["type"] == "query"
    assert not grid["multi"]
    assert bus["multi"]
    assert set(queries(dashboard)) == {
        "variable grid",
        "variable bus",
        f"{VOLTAGE} A",
        f"{VOLTAGE} B",
        f"{LOADING} A",
        f"{ALARMS} A",
        f"{ACTIVE} A",
    }


def test_every_panel_query_and_variable_uses_the_historian(dashboard: dict[str, Any]) -> None:
    for title, panel in panels(dashboard).items():
        assert panel["datasource"] == {"type": DS_TYPE, "uid": UID}, title
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), title
        for target in panel["targets"]:
            assert target["datasource"] == {"type": DS_TYPE, "uid": UID}, title
            assert target["rawQuery"] is True
            assert target["editorMode"] == "code"
            wanted = "time_series" if panel["type"] == "timeseries" else "table"
            assert target["format"] == wanted, title
    for name, var in variables(dashboard).items():
        assert var["datasource"] == {"type": DS_TYPE, "uid": UID}, name
        assert var["definition"] == var["query"], name


def test_thresholds_mark_the_voltage_band_and_the_loading_limits(
    dashboard: dict[str, Any],
) -> None:
    def steps(title: str) -> list[float | None]:
        config = panels(dashboard)[title]["fieldConfig"]["defaults"]
        return [step["value"] for step in config["thresholds"]["steps"]]

    assert steps(VOLTAGE) == [None, 0.95, 1.05]
    assert steps(LOADING) == [None, 80, 100]
    assert steps(ACTIVE) == [None, 1]
    for title in (VOLTAGE, LOADING):
        style = panels(dashboard)[title]["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]
        assert style["mode"] != "off"


_VARIABLE_REF = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_MACRO = re.compile(r"\$(\w+)\(([^)]*)\)")  # as Grafana's PostgreSQL macro engine finds them


def test_every_variable_a_query_uses_is_defined(dashboard: dict[str, Any]) -> None:
    defined = set(variables(dashboard))
    for name, sql in queries(dashboard).items():
        used = {next(g for g in m.groups() if g) for m in _VARIABLE_REF.finditer(sql)}
        user = {u for u in used if not u.startswith("__")}  # __: Grafana's macros and globals
        assert user <= defined, f"{name} uses undefined variables {user - defined}"
        assert name != "variable grid" or not user  # the first variable depends on none


def grafana_sql(
    sql: str, *, t_from_ns: int, t_to_ns: int, values: dict[str, str | list[str]]
) -> str:
    """The SQL Grafana would send for this time range and these variable values.

    As Grafana does: the browser replaces the dashboard's variables (a single value escaped,
    not quoted; a multi-value variable as a list of quoted literals), then the server expands
    the macros of the PostgreSQL data source, of which this covers exactly those the
    dashboard may use. Whatever is left with a ``$`` fails the test."""

    def literal(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    def variable(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            return match.group(0)  # not a variable: Grafana leaves it alone
        value = values[name]
        if isinstance(value, list):
            return ",".join(literal(v) for v in value)
        return value.replace("'", "''")

    def macro(match: re.Match[str]) -> str:
        name, args = match.group(1), match.group(2)
        assert args == "", f"unexpected arguments in {match.group(0)}"
        if name == "__unixEpochNanoFrom":
            return str(t_from_ns)
        if name == "__unixEpochNanoTo":
            return str(t_to_ns)
        raise AssertionError(f"macro {match.group(0)} is not covered by this test")

    out = _MACRO.sub(macro, _VARIABLE_REF.sub(variable, sql))
    assert "$" not in out, f"not substituted: {out}"
    return out


# --- running the queries against a real historian database ------------------------------------


def v_pu(bus: int, i: int) -> float:
    return round(0.97 + 0.02 * bus + 0.0001 * (i % 50), 6)


def loading(branch: int, i: int) -> float:
    if branch == 0 and i == SPIKE_AT:
        return 150.0
    return 20.0 + 5 * branch + (i % 7)


def alarm(
    alarm_id: str,
    state: str,
    t_ns: int,
    *,
    raised_t_ns: int,
    severity: str = "warning",
    value: float = 0.93,
    limit: float = 0.95,
    acknowledged_by: str = "",
    grid: str = GRID,
) -> EventRow:
    kind, mrid = alarm_id.split(":")
    a = s.Alarm(
        id=alarm_id,
        grid=grid,
        kind=s.AlarmKind(kind),
        mrid=mrid,
        state=s.AlarmState(state),
        severity=s.Severity(severity),
        value=value,
        limit=limit,
        raised_t_ns=raised_t_ns,
        t_ns=t_ns,
        acknowledged=bool(acknowledged_by),
        acknowledged_by=acknowledged_by,
        message=f"{mrid} is out of limits",
    )
    return rows.alarm_event(a, s.encode(a))


B2_RAISED = T0 + 10 * MIN
BR00_RAISED = T0 + 30 * MIN
B1_RAISED = T0 + 50 * MIN
BR11_RAISED = T0 - 30 * MIN  # before the raw range, still raised at its end
B3_RAISED = T0 - 2 * HOUR  # before the raw range, cleared before it

ALARM_EVENTS = [
    alarm("voltage_low:b3", "raised", B3_RAISED, raised_t_ns=B3_RAISED),
    alarm("voltage_low:b3", "cleared", T0 - HOUR, raised_t_ns=B3_RAISED),
    alarm("overload:br11", "raised", BR11_RAISED, raised_t_ns=BR11_RAISED, value=101, limit=100),
    alarm("voltage_low:b2", "raised", B2_RAISED, raised_t_ns=B2_RAISED),
    alarm("voltage_low:b2", "raised", T0 + 15 * MIN, raised_t_ns=B2_RAISED, acknowledged_by="op1"),
    alarm("voltage_low:b2", "cleared", T0 + 20 * MIN, raised_t_ns=B2_RAISED, acknowledged_by="op1"),
    alarm("overload:br00", "raised", BR00_RAISED, raised_t_ns=BR00_RAISED, value=104, limit=100),
    alarm(
        "overload:br00",
        "raised",
        T0 + 40 * MIN,
        raised_t_ns=BR00_RAISED,
        severity="critical",
        value=150,
        limit=100,
    ),
    alarm("voltage_high:b1", "raised", B1_RAISED, raised_t_ns=B1_RAISED, value=1.06, limit=1.05),
    # Not of this grid, and not an alarm: in no panel.
    alarm("voltage_high:x1", "raised", T0 + 5 * MIN, raised_t_ns=T0 + 5 * MIN, grid="other"),
]


def historian_rows() -> tuple[list[Sample], list[EventRow]]:
    samples: list[Sample] = []
    for i, t in enumerate(TIMES):
        for b, bus in enumerate(BUSES):
            samples.append(
                Sample(SeriesKey(GRID, SeriesKind.EST, "se", bus, "v_pu"), t, v_pu(b, i))
            )
        for j, branch in enumerate(BRANCHES):
            key = SeriesKey(GRID, SeriesKind.EST, "se", branch, "loading_pct")
            samples.append(Sample(key, t, loading(j, i)))
        # Series no panel may show: another quantity, a measurement, another grid.
        samples.append(Sample(SeriesKey(GRID, SeriesKind.EST, "se", "b1", "va_deg"), t, -2.0))
        samples.append(Sample(SeriesKey(GRID, SeriesKind.MEAS, "rtu1", "b1", "t1.v_pu"), t, 2.0))
        samples.append(Sample(SeriesKey("other", SeriesKind.EST, "se", "x1", "v_pu"), t, 3.0))
        samples.append(
            Sample(SeriesKey("other", SeriesKind.EST, "se", "x1", "loading_pct"), t, 999.0)
        )
    command = s.Command(
        id="cmd1", grid=GRID, kind=s.CommandKind.SWITCH, target="sw1", issued_by="op1", t_ns=T0
    )
    events = [*ALARM_EVENTS, rows.command_event(command, s.encode(command))]
    return samples, events


# (query name, time range, variable values) -> (column names, rows)
Run = Callable[..., tuple[list[str], list[tuple[Any, ...]]]]


@pytest.fixture
def run(pg_url: str, dashboard: dict[str, Any]) -> Iterator[Run]:
    """Runs a dashboard query on a historian database filled through the store."""
    store = open_store(pg_url)
    try:
        store.write(*historian_rows())
    finally:
        store.close()
    all_queries = queries(dashboard)
    with psycopg.connect(pg_url) as conn:
        conn.read_only = True  # the dashboard must need no more than SELECT

        def execute(
            name: str, time_range: tuple[int, int], **values: str | list[str]
        ) -> tuple[list[str], list[tuple[Any, ...]]]:
            values = {"grid": GRID, "bus": list(BUSES), **values}
            t_from, t_to = time_range
            sql = grafana_sql(all_queries[name], t_from_ns=t_from, t_to_ns=t_to, values=values)
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(sql)
                assert cur.description is not None
                return [c.name for c in cur.description], cur.fetchall()

        yield execute


def ts(t_ns: int) -> datetime:
    return datetime.fromtimestamp(t_ns / S, UTC)


def assert_time_series(names: list[str], result: list[tuple[Any, ...]]) -> None:
    """What Grafana needs of a time series query: a time column, sorted."""
    assert names[0] == "time"
    times = [r[0] for r in result]
    assert times == sorted(times)


def test_the_variables_list_grids_and_the_buses_with_voltage_estimates(run: Run) -> None:
    assert run("variable grid", RAW_RANGE) == (["grid"], [("g",), ("other",)])
    assert run("variable bus", RAW_RANGE) == (["mrid"], [("b1",), ("b2",), ("b3",)])
    assert run("variable bus", RAW_RANGE, grid="other") == (["mrid"], [("x1",)])
    assert run("variable bus", RAW_RANGE, grid="it's not there") == (["mrid"], [])


def test_voltages_up_to_6_hours_are_the_raw_estimates_of_the_chosen_buses(run: Run) -> None:
    names, result = run(f"{VOLTAGE} A", RAW_RANGE, bus=["b1", "b3"])
    assert names == ["time", "mrid", "v_pu"]
    assert_time_series(names, result)
    expected = [(ts(t), "b1", v_pu(0, i)) for i, t in enumerate(TIMES)]
    expected += [(ts(t), "b3", v_pu(2, i)) for i, t in enumerate(TIMES)]
    assert sorted(result) == sorted(expected)
    # The range is inclusive at both ends, as Grafana's own time filter.
    _, edge = run(f"{VOLTAGE} A", (TIMES[5], TIMES[7]), bus=["b2"])
    assert edge == [(ts(TIMES[i]), "b2", v_pu(1, i)) for i in (5, 6, 7)]
    # Aggregates are not read for short ranges.
    assert run(f"{VOLTAGE} B", RAW_RANGE)[1] == []


@pytest.mark.parametrize(
    ("time_range", "width"), [(MINUTE_RANGE, MIN), (HOUR_RANGE, HOUR)], ids=["minute", "hour"]
)
def test_longer_voltage_ranges_are_avg_min_max_per_bucket(
    run: Run, time_range: tuple[int, int], width: int
) -> None:
    names, result = run(f"{VOLTAGE} B", time_range, bus=["b2"])
    assert names == ["time", "mrid", "avg", "min", "max"]
    assert_time_series(names, result)
    buckets: dict[int, list[float]] = {}
    for i, t in enumerate(TIMES):
        buckets.setdefault(t - t % width, []).append(v_pu(1, i))
    assert [r[:2] for r in result] == [(ts(b), "b2") for b in sorted(buckets)]
    for (_, _, avg, lo, hi), b in zip(result, sorted(buckets), strict=True):
        assert avg == pytest.approx(math.fsum(buckets[b]) / len(buckets[b]))
        assert (lo, hi) == (min(buckets[b]), max(buckets[b]))
    assert run(f"{VOLTAGE} A", time_range)[1] == []  # no raw samples for long ranges


def test_long_ranges_never_read_raw_samples(
    pg_url: str, run: Run, dashboard: dict[str, Any]
) -> None:
    """The range test is a constant, so PostgreSQL drops the raw branch when planning."""

    def tables(name: str, time_range: tuple[int, int]) -> set[str]:
        sql = grafana_sql(
            queries(dashboard)[name],
            t_from_ns=time_range[0],
            t_to_ns=time_range[1],
            values={"grid": GRID, "bus": list(BUSES)},
        )
        with psycopg.connect(pg_url) as conn:
            plan = json.dumps(conn.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchall())
        return set(re.findall(r'"Relation Name": "(\w+)"', plan))

    for name in (f"{VOLTAGE} A", f"{VOLTAGE} B", f"{LOADING} A"):
        assert "samples" not in tables(name, MINUTE_RANGE), name
        assert "samples" not in tables(name, HOUR_RANGE), name
    assert "samples" in tables(f"{LOADING} A", RAW_RANGE)
    assert tables(f"{VOLTAGE} B", MINUTE_RANGE) == {"series", "agg_60"}
    assert tables(f"{VOLTAGE} B", HOUR_RANGE) == {"series", "agg_3600"}


@pytest.mark.parametrize(
    "time_range", [RAW_RANGE, MINUTE_RANGE, HOUR_RANGE], ids=["raw", "minute", "hour"]
)
def test_loading_shows_the_10_branches_with_the_highest_maximum(
    run: Run, time_range: tuple[int, int]
) -> None:
    names, result = run(f"{LOADING} A", time_range)
    assert names == ["time", "mrid", "loading_pct"]
    assert_time_series(names, result)
    # br00 is the least loaded on average but has the highest peak; br01 and br02 are out.
    assert {r[1] for r in result} == {"br00", *BRANCHES[3:]}
    peak = max(r[2] for r in result if r[1] == "br00")
    assert peak == 150.0
    if time_range == RAW_RANGE:
        expected = [
            (ts(t), branch, loading(j, i))
            for i, t in enumerate(TIMES)
            for j, branch in enumerate(BRANCHES)
            if j == 0 or j >= 3
        ]
        assert sorted(result) == sorted(expected)


def test_the_alarm_table_lists_the_alarm_changes_of_the_range(run: Run) -> None:
    names, result = run(f"{ALARMS} A", RAW_RANGE)
    assert names == [
        "time",
        "alarm",
        "state",
        "severity",
        "message",
        "value",
        "limit",
        "acknowledged",
        "acknowledged_by",
    ]
    got = [(r[0], r[1], r[2], r[3], r[5], r[6], r[7], r[8]) for r in result]
    assert got == [
        (ts(B1_RAISED), "voltage_high:b1", "raised", "warning", 1.06, 1.05, False, ""),
        (ts(T0 + 40 * MIN), "overload:br00", "raised", "critical", 150.0, 100.0, False, ""),
        (ts(BR00_RAISED), "overload:br00", "raised", "warning", 104.0, 100.0, False, ""),
        (ts(T0 + 20 * MIN), "voltage_low:b2", "cleared", "warning", 0.93, 0.95, True, "op1"),
        (ts(T0 + 15 * MIN), "voltage_low:b2", "raised", "warning", 0.93, 0.95, True, "op1"),
        (ts(B2_RAISED), "voltage_low:b2", "raised", "warning", 0.93, 0.95, False, ""),
    ]
    assert {r[4] for r in result} == {
        "b1 is out of limits",
        "br00 is out of limits",
        "b2 is out of limits",
    }
    assert run(f"{ALARMS} A", RAW_RANGE, grid="other")[1][0][1] == "voltage_high:x1"


@pytest.mark.parametrize(
    ("end", "active"),
    [
        (T0 - 3 * HOUR, 0),
        (T0 - 90 * MIN, 1),  # b3
        (T0, 1),  # br11
        (T0 + 12 * MIN, 2),  # br11, b2
        (T0 + 25 * MIN, 1),  # b2 cleared
        (T0 + 45 * MIN, 2),  # br00 raised, then escalated: still one alarm
        (T0 + HOUR, 3),  # b1
    ],
    ids=["none-yet", "b3", "br11", "br11+b2", "b2-cleared", "br00-escalated", "b1"],
)
def test_the_active_count_is_the_alarms_raised_and_not_cleared_at_the_end(
    run: Run, end: int, active: int
) -> None:
    assert run(f"{ACTIVE} A", (end - HOUR, end)) == (["active"], [(active,)])
    # What the range starts with does not matter: an alarm raised earlier is still active.
    assert run(f"{ACTIVE} A", (end - MIN, end)) == (["active"], [(active,)])
