"""Service manifests: validation, the built-in ones, the permissions generated from them and
``gridpilot apps list``."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from gridpilot.cli import main as cli_main
from gridpilot.core import manifest as mf
from gridpilot.core.errors import ConfigError
from gridpilot.platform import catalog, permissions

# PERMISSIONS as the hand-written table had them before the manifests (frozen copy).
BEFORE = Path(__file__).parent / "data" / "permissions_before_manifests.json"

MINIMAL = """
name = "feeder_report"
version = "0.1.0"
entry_point = "feeder_report.app:main"
identity = "feeder_report"
"""


def parse(extra: str) -> mf.Manifest:
    return mf.parse(MINIMAL + extra, "apps/feeder_report/manifest.toml")


def test_a_minimal_manifest_parses_with_defaults() -> None:
    m = parse("")
    assert (m.module, m.function) == ("feeder_report.app", "main")
    assert m.publishes == () and not m.shares_grids and m.health.kind == "heartbeat"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (
            '[[publishes]]\nspec = "meas_raw"\n',
            "publishes[0].spec: unknown subject spec 'meas_raw'",
        ),
        ('[[serves]]\nspec = "state"\n', "serves[0].spec: 'state' is stream, not request/reply"),
        (
            '[[publishes]]\nspec = "condition"\nparams = { target = "x" }\n',
            "publishes[0].params: 'condition' (gp.{grid}.condition.{source}) has no parameter "
            "'target'",
        ),
        (
            '[[publishes]]\nspec = "condition"\nparams = { source = "a.b" }\n',
            "publishes[0].params.source: 'a.b' is not one subject token",
        ),
        ('[[kv]]\nbucket = "gp_secrets"\naccess = ["read"]\n', "kv[0].bucket: unknown KV bucket"),
        ('[[kv]]\nbucket = "gp_state"\naccess = ["delete"]\n', "`kv[0].access[0]`"),
        ('[[streams]]\nname = "GP_NOPE"\n', "streams[0].name: unknown stream 'GP_NOPE'"),
        ('object_stores = ["gp_files"]\n', "object_stores[0]: unknown object store 'gp_files'"),
        ('shares_grids = "yes"\n', "Expected `bool`, got `str` - at `shares_grids`"),
        ("colour = 3\n", "unknown field `colour`"),
        (
            '[[config]]\nname = "n"\ntype = "int"\ndefault = "7"\nenv = "X_N"\ndescription = ""\n',
            "config[0].default: '7' is not of type int",
        ),
        (
            '[[config]]\nname = "n"\ntype = "int"\ndefault = true\nenv = "X_N"\ndescription = ""\n',
            "config[0].default: True is not of type int",
        ),
        (
            '[[config]]\nname = "n"\ntype = "str"\nenv = "lower"\ndescription = ""\n',
            "config[0].env: 'lower' is not an environment variable name",
        ),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_file_and_field(extra: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(extra)
    assert str(err.value).startswith("apps/feeder_report/manifest.toml: ")
    assert says in str(err.value)


def test_bad_names_entry_points_and_toml_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"entry_point 'feeder_report\.app': write it as"):
        mf.parse(MINIMAL.replace("app:main", "app"), "m.toml")
    with pytest.raises(ConfigError, match="identity 'Feeder': use up to 64 lowercase"):
        mf.parse(MINIMAL.replace('identity = "feeder_report"', 'identity = "Feeder"'), "m.toml")
    path = tmp_path / "manifest.toml"
    path.write_text(MINIMAL + "[[publishes]\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: not valid TOML"):
        mf.load(path)
    with pytest.raises(ConfigError, match="cannot read the manifest"):
        mf.load(tmp_path / "absent.toml")


def test_every_built_in_manifest_loads_and_names_its_entry_point() -> None:
    manifests = catalog.builtin_manifests()
    assert list(manifests) == list(catalog.SERVICES)
    assert len(manifests) == len(catalog.BUILTIN) == 9
    for name, m in manifests.items():
        assert m.identity == name  # built-in services connect as their own name
        assert m.function == "main"
        assert importlib.util.find_spec(m.module) is not None, m.entry_point
        assert "gp_models" in m.object_stores
    assert {n for n, m in manifests.items() if m.shares_grids} == {"state_estimation"}
    assert set(catalog.EDGE_SERVICES) | set(catalog.HUB_SERVICES) <= set(manifests)


def _covers(allowed: str, subject: str) -> bool:
    """Whether every subject ``subject`` (which may hold wildcards) matches ``allowed``."""
    a, s = allowed.split("."), subject.split(".")
    for i, token in enumerate(a):
        if token == ">":
            return len(s) > i
        if i >= len(s) or s[i] == ">":
            return False
        if token != "*" and token != s[i]:
            return False
    return len(a) == len(s)


def test_covers() -> None:
    assert _covers("gp.*.request.history.>", "gp.*.request.history.query")
    assert _covers("gp.*.condition.>", "gp.*.condition.*")
    assert not _covers("gp.*.condition.*", "gp.*.condition.>")
    assert not _covers("gp.*.state", "gp.*.state.layout")
    assert not _covers("gp.g.state", "gp.*.state")


@pytest.mark.security
def test_generated_permissions_are_the_old_table_or_tighter() -> None:
    before = json.loads(BEFORE.read_text())
    assert set(permissions.PERMISSIONS) == set(before)
    tighter: dict[str, list[str]] = {}
    for identity, perm in permissions.PERMISSIONS.items():
        old = before[identity]
        for op in ("publish", "subscribe"):
            for subject in getattr(perm, op):
                assert any(_covers(o, subject) for o in old[op]), (identity, op, subject)
            if set(getattr(perm, op)) != set(old[op]):
                tighter.setdefault(identity, []).append(op)
        assert perm.allow_responses <= old["allow_responses"], identity
        assert list(perm.connection_types) == old["connection_types"], identity
    # what the manifests narrowed: request subjects to the exact ones served or sent,
    # conditions to one token
    assert tighter == {
        "simulator": ["subscribe"],
        "monitoring": ["subscribe"],
        "historian": ["subscribe"],
        "web": ["publish"],
    }


def test_a_manifest_gives_its_identity_exactly_its_declared_rights() -> None:
    m = parse(
        '[[publishes]]\nspec = "condition"\nparams = { source = "feeder_report" }\n'
        '[[subscribes]]\nspec = "state"\n'
        '[[serves]]\nspec = "history_query"\n'
        '[[kv]]\nbucket = "gp_leases"\naccess = ["write"]\nkeys = ["member.{service}.*"]\n'
    )
    perm = permissions.manifest_permissions(m)
    assert perm.allow_responses
    assert perm.subscribe == (
        "gp.*.state",
        "gp.*.request.history.query",
        "_INBOX_feeder_report.>",
    )
    assert "gp.*.condition.feeder_report" in perm.publish
    assert "$KV.gp_leases.member.feeder_report.*" in perm.publish
    assert "gp.svc.feeder_report.heartbeat" in perm.publish
    assert not any("gp_models" in s for s in perm.publish)  # not declared: not granted
    assert [s for s in perm.publish if s.startswith("gp.")] == [
        "gp.svc.feeder_report.heartbeat",
        "gp.*.condition.feeder_report",
    ]


def test_apps_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["apps", "list", "--json"]) == 0
    apps = {a["name"]: a for a in json.loads(capsys.readouterr().out)}
    assert list(apps) == list(catalog.SERVICES)
    se = apps["state_estimation"]
    assert se["identity"] == "state_estimation" and se["shares_grids"] is True
    assert se["publishes"] == ["gp.*.state", "gp.*.state.layout", "gp.*.condition.state_estimation"]
    assert se["subscribes"] == ["gp.*.meas.>", "gp.*.topology"]
    assert se["kv"] == {"gp_state": ["write"], "gp_leases": ["write", "read", "watch"]}
    assert apps["historian"]["serves"] == [
        "gp.*.request.history.series",
        "gp.*.request.history.query",
        "gp.*.request.history.events",
    ]
    assert "GRIDPILOT_HISTORIAN_RAW_DAYS" in apps["historian"]["config"]


def test_apps_list_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["apps", "list"]) == 0
    out = capsys.readouterr().out
    assert "state_estimation 1.0.0  identity state_estimation  shares grids" in out
    assert "  serves:     gp.*.request.alarm.ack" in out
