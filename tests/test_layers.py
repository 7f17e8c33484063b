"""Layering: a lower layer of ``gridpilot`` never imports a higher one (nor a sibling).

The layers, lowest first: ``core`` < ``protocols`` < ``model`` < ``gateways`` | ``simulator`` |
``services`` (siblings: none imports another) < ``platform`` < the command line (``cli``,
``*_cli``, ``cli_common``, ``docs``, ``__main__``), where only ``__main__`` imports ``cli``
(which imports the ``*_cli`` modules: what they share is in ``cli_common``). Every import
counts, at module level or inside a function, since a deferred import is a dependency all
the same. The known exceptions are listed in
``ALLOWED``, each with the reason it is still there; a new one fails this test, and an entry
that no longer matches an import fails it too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gridpilot

ROOT = Path(gridpilot.__file__).parent

RANK = {
    "core": 0,
    "protocols": 1,
    "model": 2,
    "gateways": 3,
    "simulator": 3,
    "services": 3,
    "platform": 4,
    "cli": 5,
}

# (importer, imported) → why it is allowed for now. Both are dotted module names; the imported
# side is the name as written in the import statement.
ALLOWED: dict[tuple[str, str], str] = {
    ("gridpilot.simulator.mqtt_meters", "gridpilot.platform.permissions"): (
        "device_logins (the meters' credentials) lives in platform/permissions.py, which "
        "another part of issue 13 rewrites; move it to core with that rewrite"
    ),
}


def _layer(module: str) -> str:
    """The layer of a dotted module name inside gridpilot."""
    parts = module.split(".")
    if len(parts) == 1:  # the package itself
        return "core"
    top = parts[1]
    if top in RANK:
        return top
    if top in {"docs", "__main__", "cli_common"} or top.endswith("_cli"):
        return "cli"
    raise AssertionError(f"{module}: no layer for {top!r}; add it to RANK in {__file__}")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """The gridpilot modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "gridpilot")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.split(".")[0] != "gridpilot":
                continue
            if name == "gridpilot":  # from gridpilot import history_cli, ...
                found.update(f"gridpilot.{a.name}" for a in node.names)
            else:
                found.add(name)
    return found


def _edges() -> set[tuple[str, str]]:
    edges = set()
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        for imported in _imports(path, module):
            edges.add((module, imported))
    return edges


def _violates(importer: str, imported: str) -> bool:
    a, b = _layer(importer), _layer(imported)
    return RANK[a] < RANK[b] or (RANK[a] == RANK[b] and a != b)


def test_no_lower_layer_imports_a_higher_one() -> None:
    edges = _edges()
    assert len(edges) > 100, "the import scan found too little: is ROOT right?"
    bad = sorted(e for e in edges if _violates(*e) and e not in ALLOWED)
    assert not bad, "imports against the layering (move the shared part down):\n" + "\n".join(
        f"  {a} ({_layer(a)}) imports {b} ({_layer(b)})" for a, b in bad
    )


def test_allow_list_has_no_stale_entries() -> None:
    edges = _edges()
    stale = sorted(e for e in ALLOWED if e not in edges or not _violates(*e))
    assert not stale, f"remove these from ALLOWED, they are fixed: {stale}"


def test_only_main_imports_the_cli() -> None:
    importers = sorted(a for a, b in _edges() if b == "gridpilot.cli")
    assert importers == ["gridpilot.__main__"], (
        f"{importers} import gridpilot.cli, which imports the sub-command modules: a cycle; "
        "put what they share in gridpilot.cli_common"
    )


def test_the_check_sees_a_violation() -> None:
    assert _violates("gridpilot.core.bus", "gridpilot.platform.broker")
    assert _violates("gridpilot.simulator.rtu_server", "gridpilot.gateways.iec104.master")
    assert _violates("gridpilot.history_cli", "gridpilot.cli") is False  # same layer, same part
    assert not _violates("gridpilot.platform.supervisor", "gridpilot.core.config")
