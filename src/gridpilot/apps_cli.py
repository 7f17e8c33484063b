"""``gridpilot apps``: the services of the platform, as their manifests declare them."""

from __future__ import annotations

import argparse
import json

from gridpilot.core.manifest import Manifest, SubjectRef


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``apps`` and its subcommands to the CLI's subparsers."""
    p = sub.add_parser("apps", help="the services and what their manifests allow them")
    asub = p.add_subparsers(dest="apps_command", required=True)
    ls = asub.add_parser(
        "list", help="every service: version, NATS identity, what it publishes and subscribes to"
    )
    ls.add_argument("--json", action="store_true", help="one JSON list, for scripts")


def _subjects(refs: tuple[SubjectRef, ...]) -> list[str]:
    return [ref.subject() for ref in refs]


def app_summary(m: Manifest) -> dict[str, object]:
    """What ``apps list --json`` prints for one service."""
    return {
        "name": m.name,
        "version": m.version,
        "identity": m.identity,
        "entry_point": m.entry_point,
        "description": m.description,
        "shares_grids": m.shares_grids,
        "publishes": _subjects(m.publishes),
        "subscribes": _subjects(m.subscribes),
        "serves": _subjects(m.serves),
        "kv": _merged_kv(m),
        "streams": [s.name for s in m.streams],
        "object_stores": list(m.object_stores),
        "config": [o.env for o in m.config],
    }


def _merged_kv(m: Manifest) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ref in m.kv:
        out.setdefault(ref.bucket, [])
        out[ref.bucket] += [a for a in ref.access if a not in out[ref.bucket]]
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``gridpilot apps ...``."""
    from gridpilot.platform.catalog import builtin_manifests

    manifests = list(builtin_manifests().values())
    if args.json:
        print(json.dumps([app_summary(m) for m in manifests], indent=2))
        return 0
    for m in manifests:
        grids = "shares grids" if m.shares_grids else "one grid per instance"
        print(f"{m.name} {m.version}  identity {m.identity}  {grids}")
        if m.description:
            print(f"  {m.description}")
        for label, refs in (
            ("publishes", m.publishes),
            ("subscribes", m.subscribes),
            ("serves", m.serves),
        ):
            if refs:
                print(f"  {label + ':':12s}{' '.join(_subjects(refs))}")
    return 0
