"""Render a Kustomize directory: ``kubectl kustomize`` when kubectl is there, else a small
renderer for what deploy/k8s uses (resources, namespace, images, labels, strategic-merge
patches by file and JSON 6902 ``replace``/``add`` patches). Test helper only."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]


def render(path: Path) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run(
            [kubectl, "kustomize", str(path)], check=True, capture_output=True, text=True
        ).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    return render_fallback(path)


def render_fallback(path: Path) -> list[Doc]:
    kust = yaml.safe_load((path / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for res in kust.get("resources", []):
        target = path / res
        if target.is_dir():
            docs += render_fallback(target)
        else:
            docs += [d for d in yaml.safe_load_all(target.read_text()) if d]
    for entry in kust.get("labels", []):
        for d in docs:
            d.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    for d in docs:
        for container in _containers(d):
            for image in kust.get("images", []):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    new = image.get("newName", name)
                    container["image"] = f"{new}:{image.get('newTag', tag or 'latest')}"
    for patch in kust.get("patches", []):
        if "path" in patch:
            p = yaml.safe_load((path / patch["path"]).read_text())
            for d in docs:
                if (d["kind"], d["metadata"]["name"]) == (p["kind"], p["metadata"]["name"]):
                    _merge(d, p)
        else:
            t = patch["target"]
            for d in docs:
                if d["kind"] == t["kind"] and d["metadata"]["name"] == t["name"]:
                    for op in yaml.safe_load(patch["patch"]):
                        _json6902(d, op)
    if "namespace" in kust:
        for d in docs:
            if d["kind"] != "Namespace":
                d["metadata"]["namespace"] = kust["namespace"]
    return docs


def _containers(doc: Doc) -> list[Doc]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if "template" in spec else {}
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))


def _merge(dst: Doc, src: Doc) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        elif (
            isinstance(value, list)
            and isinstance(dst.get(key), list)
            and all(isinstance(v, dict) and "name" in v for v in value)
        ):
            by_name = {item.get("name"): item for item in dst[key]}
            for item in value:
                if item["name"] in by_name:
                    _merge(by_name[item["name"]], item)
                else:
                    dst[key].append(copy.deepcopy(item))
        else:
            dst[key] = copy.deepcopy(value)


def _json6902(doc: Doc, op: Doc) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node: Any = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if op["op"] not in ("replace", "add"):
        raise ValueError(f"k8s_render applies only add and replace patches, not {op['op']!r}")
    if isinstance(node, list):
        if last == "-":
            node.append(op["value"])
        else:
            node[int(last)] = op["value"]
    else:
        node[last] = op["value"]
