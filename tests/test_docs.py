"""The generated reference in docs/ is current, complete, and a coherent AsyncAPI 3.0.0 document."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import gridpilot
from gridpilot.core.subjects import BUCKETS, CATALOGUE, OBJECT_STORES, STREAMS, Pattern
from gridpilot.docs import (
    IDENTITY_ROLES,
    SECURITY_DOC,
    identities_markdown,
    markdown,
    message_types,
    schema_components,
    stream_for,
    with_identities,
    write_docs,
)
from gridpilot.platform.permissions import PERMISSIONS

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The AsyncAPI document as written to disk and read back."""
    out = tmp_path_factory.mktemp("docs")
    write_docs(out)
    result: dict[str, Any] = json.loads((out / "asyncapi.json").read_text(encoding="utf-8"))
    return result


def test_checked_in_docs_are_current(tmp_path: Path) -> None:
    written = write_docs(tmp_path)
    assert sorted(p.name for p in written) == ["asyncapi.json", "subjects.md"]
    for path in written:
        committed = DOCS / path.name
        assert committed.is_file(), f"docs/{path.name} is missing: run `gridpilot docs`"
        assert committed.read_bytes() == path.read_bytes(), (
            f"docs/{path.name} is stale (the subject catalogue or the schemas changed): "
            "run `gridpilot docs` and commit the result"
        )


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = [p.read_bytes() for p in write_docs(tmp_path / "a")]
    second = [p.read_bytes() for p in write_docs(tmp_path / "b")]
    assert first == second


def test_every_subject_is_a_channel_with_a_publishing_operation(doc: dict[str, Any]) -> None:
    assert len({spec.name for spec in CATALOGUE}) == len(CATALOGUE), "subject names must be unique"
    for spec in CATALOGUE:
        channel = doc["channels"][spec.name]
        assert channel["address"] == spec.template
        assert channel["description"] == spec.description
        assert channel["x-gridpilot"]["publishers"] == list(spec.publishers)
        assert channel["x-gridpilot"]["subscribers"] == list(spec.subscribers)
        operation = doc["operations"][spec.name]
        assert operation["action"] == "send"
        assert operation["channel"] == {"$ref": f"#/channels/{spec.name}"}
        assert ("reply" in operation) == (spec.reply is not None)
        assert (spec.pattern is Pattern.REQUEST) == (spec.reply is not None)


def test_every_payload_and_reply_type_is_a_component(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    messages = doc["components"]["messages"]
    for spec in CATALOGUE:
        for t in (spec.payload, spec.reply):
            if t is None:
                continue
            assert t.__name__ in schemas
            assert messages[t.__name__]["payload"] == {"$ref": f"#/components/schemas/{t.__name__}"}
    assert {t.__name__ for t in message_types()} == set(messages)


def test_stream_subjects_are_captured_by_a_stream() -> None:
    for spec in CATALOGUE:
        captured = stream_for(spec) is not None
        assert captured == (spec.pattern is Pattern.STREAM), (spec.name, stream_for(spec))


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} points outside the document"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def test_asyncapi_structure(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "GridPilot"
    assert doc["info"]["version"] == gridpilot.__version__
    assert doc["info"]["description"]
    assert doc["servers"]["nats"]["protocol"] == "nats"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", doc["servers"]["nats"]["host"])
    refs = list(_refs(doc))
    assert refs
    for ref in refs:
        _resolve(doc, ref)
    for name, channel in doc["channels"].items():
        address = channel["address"]
        names = set(re.findall(r"\{(\w+)\}", address)) if address is not None else set()
        parameters = channel.get("parameters", {})
        assert set(parameters) == names, name
        assert all(p["description"] for p in parameters.values()), name
        assert channel["messages"], name
    for name, operation in doc["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        for part in (operation, operation.get("reply")):
            if part is None:
                continue
            channel = part["channel"]["$ref"]
            for message in part["messages"]:
                assert message["$ref"].startswith(channel + "/messages/"), name
    extension = doc["x-gridpilot"]
    assert [s["name"] for s in extension["streams"]] == [s.name for s in STREAMS]
    assert [b["name"] for b in extension["kv_buckets"]] == [b.name for b in BUCKETS]
    assert [o["name"] for o in extension["object_stores"]] == [o.name for o in OBJECT_STORES]


def test_markdown_lists_every_subject_and_type() -> None:
    text = markdown()
    assert "do not edit it by hand" in text.split("\n## ")[0]
    for spec in CATALOGUE:
        assert f"`{spec.template}`" in text
    for t in message_types():
        assert f"\n### {t.__name__}\n" in text


def _without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_without_descriptions(v) for v in node]
    return node


def test_payload_schemas_agree_with_msgspecs_own(doc: dict[str, Any]) -> None:
    """An independent reference: msgspec's JSON Schema of the same types, descriptions aside
    (they are what differs between msgspec and Python versions, and why docs.py writes its
    own)."""
    _, reference = msgspec.json.schema_components(
        message_types(), ref_template="#/components/schemas/{name}"
    )
    ours = doc["components"]["schemas"]
    assert set(ours) == set(reference)
    for name in reference:
        assert _without_descriptions(ours[name]) == _without_descriptions(reference[name]), name


class _Indented(msgspec.Struct):
    """First line.

        An indented continuation, as Python before 3.13 keeps it
    and a line at the margin.
    """

    x_pu: float = 1.0


class _AtTheMargin(msgspec.Struct):
    """First line.

    An indented continuation, as Python before 3.13 keeps it
    and a line at the margin."""

    x_pu: float = 1.0


def test_descriptions_do_not_depend_on_docstring_indentation() -> None:
    a = schema_components([_Indented])["_Indented"]
    b = schema_components([_AtTheMargin])["_AtTheMargin"]
    assert a["description"] == b["description"]
    assert a["description"] == (
        "First line.\n\nAn indented continuation, as Python before 3.13 keeps it and a line at "
        "the margin."
    )


def test_security_identities_table_is_current(tmp_path: Path) -> None:
    """docs/security.md's identities table is what `gridpilot docs` makes from PERMISSIONS."""
    committed = (DOCS / SECURITY_DOC).read_bytes()
    (tmp_path / SECURITY_DOC).write_bytes(committed)
    written = write_docs(tmp_path)
    assert tmp_path / SECURITY_DOC in written
    assert (tmp_path / SECURITY_DOC).read_bytes() == committed, (
        "the identities table in docs/security.md is stale (permissions.PERMISSIONS changed): "
        "run `gridpilot docs` and commit the result"
    )


def test_security_identities_table_lists_every_identity_with_its_role() -> None:
    table = identities_markdown()
    for name, perm in PERMISSIONS.items():
        assert f"| `{name}` |" in table, name
        assert name in IDENTITY_ROLES, f"say who connects as {name} in docs.IDENTITY_ROLES"
        for subject in (*perm.publish, *perm.subscribe):
            assert f"`{subject}`" in table, (name, subject)
    assert table == identities_markdown()  # deterministic


def test_security_doc_without_markers_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="identities:begin"):
        with_identities("# Security\n\nno table here\n")
