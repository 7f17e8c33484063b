"""Names declared once: bus bucket and stream names in core/subjects, environment variables in
core/config (declared and read there), so that a rename is one edit and nothing reads the
environment behind the configuration's back.

``ALLOWED_*`` list the modules that still do it otherwise, each with why; a stale entry fails.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import gridpilot
from gridpilot.core import subjects

ROOT = Path(gridpilot.__file__).parent

BUS_NAMES = {b.name for b in (*subjects.BUCKETS, *subjects.OBJECT_STORES)} | {
    s.name for s in subjects.STREAMS
}
ENV_NAME = re.compile(r"^(GRIDPILOT_[A-Z0-9_]+|XDG_[A-Z_]+)$")

REWRITTEN = "rewritten by another part of issue 13 at the time; move it with that rewrite"
ALLOWED_BUS_NAMES: dict[str, str] = {}
ALLOWED_ENV = {
    "platform/supervisor.py": REWRITTEN + " (it also copies the environment to its children)",
}


def _modules() -> dict[str, ast.Module]:
    return {
        str(p.relative_to(ROOT)): ast.parse(p.read_text(), filename=str(p))
        for p in sorted(ROOT.rglob("*.py"))
    }


def _literals(tree: ast.Module) -> set[str]:
    return {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def _reads_environment(tree: ast.Module) -> bool:
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and n.attr in {"environ", "getenv", "environb"}:
            return True
        if (
            isinstance(n, ast.ImportFrom)
            and n.module == "os"
            and any(a.name in {"environ", "getenv"} for a in n.names)
        ):
            return True
    return False


def test_bus_names_only_in_subjects() -> None:
    assert {"gp_state", "gp_models", "GP_MEAS"} <= BUS_NAMES
    found = {
        path: sorted(_literals(tree) & BUS_NAMES)
        for path, tree in _modules().items()
        if path != "core/subjects.py" and _literals(tree) & BUS_NAMES
    }
    bad = {p: names for p, names in found.items() if p not in ALLOWED_BUS_NAMES}
    assert not bad, f"use the names in gridpilot.core.subjects instead of literals: {bad}"
    stale = sorted(set(ALLOWED_BUS_NAMES) - set(found))
    assert not stale, f"remove from ALLOWED_BUS_NAMES, they are fixed: {stale}"


def test_environment_only_in_config() -> None:
    modules = _modules()
    reads = {p for p, tree in modules.items() if _reads_environment(tree)}
    names = {
        p: sorted(n for n in _literals(tree) if ENV_NAME.match(n))
        for p, tree in modules.items()
        if any(ENV_NAME.match(n) for n in _literals(tree))
    }
    assert "core/config.py" in reads and "core/config.py" in names, "the scan sees nothing"
    bad = sorted((reads | set(names)) - {"core/config.py"} - set(ALLOWED_ENV))
    assert not bad, (
        f"{bad} read the environment or spell a variable's name: declare it in "
        "gridpilot.core.config (ENV_*) and read it through env()/env_text()/a reader there"
    )
    stale = sorted(set(ALLOWED_ENV) - reads - set(names))
    assert not stale, f"remove from ALLOWED_ENV, they are fixed: {stale}"
