"""Service manifests: what one service is and what it may do on the bus, declared once.

A manifest is a TOML file (``manifest.toml`` in the service's package folder for the built-in
ones). It names the service, its entry point and NATS identity, the subjects it publishes and
subscribes to (by the names of :mod:`gridpilot.core.subjects`' specs), the KV buckets, streams
and object stores it uses, the request endpoints it serves, its configuration options, whether
its instances share the grids, and its health probe. The NATS permissions of its identity are
generated from it (:mod:`gridpilot.platform.permissions`).

Example::

    name = "monitoring"
    version = "1.0.0"
    entry_point = "gridpilot.services.monitoring.service:main"
    identity = "monitoring"
    description = "the alarms service"

    [[publishes]]
    spec = "alarm"

    [[subscribes]]
    spec = "meas"
    subtree = true          # gp.*.meas.> instead of gp.*.meas.*

    [[serves]]
    spec = "alarm_ack"      # a request/reply spec: subscribe + may reply

    [[kv]]
    bucket = "gp_alarms"
    access = ["read", "write"]

    [[config]]
    name = "retention_days"
    type = "float"
    default = 7
    env = "GRIDPILOT_X_RETENTION_DAYS"
    description = "..."
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from gridpilot.core import subjects as sj
from gridpilot.core.errors import ConfigError

MANIFEST_FILE = "manifest.toml"

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_ENV = re.compile(r"^[A-Z][A-Z0-9_]*$")
_VERSION = re.compile(r"^\d+(\.\d+){0,2}([.-]?[A-Za-z0-9.]+)?$")
# a subject token or key pattern: letters, digits, _ - and the NATS wildcards, dot-separated
_KEY = re.compile(r"^([\w-]+|\*|\{service\})(\.([\w-]+|\*|>|\{service\}))*$")

KvAccessKind = Literal["read", "write", "watch"]
StreamAccessKind = Literal["durable", "last"]
OptionType = Literal["str", "int", "float", "bool", "path"]


class SubjectRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A subject of the catalogue by its spec's name, with placeholders fixed by ``params``
    (the others become ``*``); ``subtree`` opens its last token (``>``)."""

    spec: str
    params: dict[str, str] = {}
    subtree: bool = False

    def subject_spec(self) -> sj.SubjectSpec:
        """The catalogue's spec this names (the manifest was validated: it exists)."""
        return SPECS[self.spec]

    def subject(self) -> str:
        """The NATS subject (with wildcards) this reference stands for."""
        wildcard = self.subject_spec().wildcard(**self.params)
        return wildcard.rsplit(".", 1)[0] + ".>" if self.subtree else wildcard


class KvRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Access to keys of one KV bucket: read (get), write (put/delete), watch (the whole
    bucket). ``{service}`` in a key stands for the service's name."""

    bucket: str
    access: tuple[KvAccessKind, ...]
    keys: tuple[str, ...] = ("*",)


class StreamRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A JetStream stream used: ``durable`` consumers of it, or the ``last`` message of a
    subject (``js.get_last_msg``)."""

    name: str
    access: tuple[StreamAccessKind, ...] = ("durable",)


class ConfigOption(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One setting the service reads from its environment."""

    name: str
    type: OptionType
    env: str
    description: str
    default: str | int | float | bool | None = None


class Health(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the platform tells the service is alive: its heartbeat (``gp.svc.<name>.heartbeat``
    and KV gp_services), stale after ``max_age_s``."""

    kind: Literal["heartbeat"] = "heartbeat"
    max_age_s: float = 5.0


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One service's declaration (see the module's docstring for the TOML form)."""

    name: str
    version: str
    entry_point: str
    identity: str
    description: str = ""
    shares_grids: bool = False
    publishes: tuple[SubjectRef, ...] = ()
    subscribes: tuple[SubjectRef, ...] = ()
    serves: tuple[SubjectRef, ...] = ()
    kv: tuple[KvRef, ...] = ()
    streams: tuple[StreamRef, ...] = ()
    object_stores: tuple[str, ...] = ()
    config: tuple[ConfigOption, ...] = ()
    health: Health = Health()

    @property
    def module(self) -> str:
        """The entry point's module."""
        return self.entry_point.split(":", 1)[0]

    @property
    def function(self) -> str:
        """The entry point's function (called with the grid, returns an exit code)."""
        return self.entry_point.split(":", 1)[1]


SPECS: dict[str, sj.SubjectSpec] = {spec.name: spec for spec in sj.CATALOGUE}
BUCKETS: frozenset[str] = frozenset(b.name for b in sj.BUCKETS)
STREAMS: frozenset[str] = frozenset(s.name for s in sj.STREAMS)
OBJECT_STORES: frozenset[str] = frozenset(b.name for b in sj.OBJECT_STORES)


def _one_of(names: frozenset[str] | Mapping[str, object]) -> str:
    return ", ".join(sorted(names))


def _placeholders(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def _check_subjects(
    where: str, field: str, refs: tuple[SubjectRef, ...], *, requests_only: bool = False
) -> None:
    for i, ref in enumerate(refs):
        at = f"{where}: {field}[{i}]"
        spec = SPECS.get(ref.spec)
        if spec is None:
            raise ConfigError(
                f"{at}.spec: unknown subject spec {ref.spec!r}; use one of {_one_of(SPECS)} "
                "(gridpilot.core.subjects)"
            )
        allowed = _placeholders(spec.template) - {"grid"}
        for param, value in ref.params.items():
            if param not in allowed:
                raise ConfigError(
                    f"{at}.params: {spec.name!r} ({spec.template}) has no parameter {param!r}; "
                    f"it takes {_one_of(frozenset(allowed)) or 'none'}"
                )
            if not _KEY.match(value) or "." in value:
                raise ConfigError(
                    f"{at}.params.{param}: {value!r} is not one subject token "
                    "(letters, digits, '_', '-' or '*')"
                )
        if requests_only and spec.pattern is not sj.Pattern.REQUEST:
            raise ConfigError(
                f"{at}.spec: {spec.name!r} is {spec.pattern.value}, not request/reply: "
                "list it under subscribes"
            )


def validate(manifest: Manifest, where: str) -> Manifest:
    """``manifest`` if every name in it exists and every value makes sense; else a ConfigError
    saying ``where`` (the file) and which field is wrong."""
    if not _NAME.match(manifest.name):
        raise ConfigError(
            f"{where}: name {manifest.name!r}: use up to 64 lowercase letters, digits or '_', "
            "starting with a letter"
        )
    if not _NAME.match(manifest.identity):
        raise ConfigError(
            f"{where}: identity {manifest.identity!r}: use up to 64 lowercase letters, digits "
            "or '_', starting with a letter"
        )
    if not _VERSION.match(manifest.version):
        raise ConfigError(f"{where}: version {manifest.version!r} is not a version like 1.2.0")
    if not _ENTRY_POINT.match(manifest.entry_point):
        raise ConfigError(
            f"{where}: entry_point {manifest.entry_point!r}: write it as package.module:function"
        )
    _check_subjects(where, "publishes", manifest.publishes)
    _check_subjects(where, "subscribes", manifest.subscribes)
    _check_subjects(where, "serves", manifest.serves, requests_only=True)
    for i, kv in enumerate(manifest.kv):
        if kv.bucket not in BUCKETS:
            raise ConfigError(
                f"{where}: kv[{i}].bucket: unknown KV bucket {kv.bucket!r}; use one of "
                f"{_one_of(BUCKETS)}"
            )
        if not kv.access:
            raise ConfigError(f"{where}: kv[{i}].access: name at least one of read, write, watch")
        for key in kv.keys:
            if not _KEY.match(key):
                raise ConfigError(
                    f"{where}: kv[{i}].keys: {key!r} is not a key pattern (dot-separated "
                    "tokens of letters, digits, '_', '-', '*', '>' or {service})"
                )
    for i, stream in enumerate(manifest.streams):
        if stream.name not in STREAMS:
            raise ConfigError(
                f"{where}: streams[{i}].name: unknown stream {stream.name!r}; use one of "
                f"{_one_of(STREAMS)}"
            )
    for i, store in enumerate(manifest.object_stores):
        if store not in OBJECT_STORES:
            raise ConfigError(
                f"{where}: object_stores[{i}]: unknown object store {store!r}; use one of "
                f"{_one_of(OBJECT_STORES)}"
            )
    seen: set[str] = set()
    for i, option in enumerate(manifest.config):
        at = f"{where}: config[{i}]"
        if option.name in seen:
            raise ConfigError(f"{at}.name: {option.name!r} is declared twice")
        seen.add(option.name)
        if not _ENV.match(option.env):
            raise ConfigError(f"{at}.env: {option.env!r} is not an environment variable name")
        _check_default(at, option)
    return manifest


_DEFAULT_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "path": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
}


def _check_default(at: str, option: ConfigOption) -> None:
    value = option.default
    if value is None:
        return
    ok = isinstance(value, _DEFAULT_TYPES[option.type])
    if option.type in ("int", "float") and isinstance(value, bool):
        ok = False
    if not ok:
        raise ConfigError(
            f"{at}.default: {value!r} is not of type {option.type} (option {option.name!r})"
        )


def parse(text: str, where: str) -> Manifest:
    """The manifest in TOML ``text``; ``where`` names its file in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from None
    try:
        manifest = msgspec.convert(data, Manifest)
    except msgspec.ValidationError as e:
        # msgspec says what and where: "Expected `bool`, got `str` - at `$.shares_grids`"
        raise ConfigError(f"{where}: {e}".replace("`$.", "`")) from None
    return validate(manifest, where)


def load(path: Path) -> Manifest:
    """The manifest in the TOML file ``path``, validated."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the manifest {path}: {e}") from None
    return parse(text, str(path))


def to_dict(manifest: Manifest) -> dict[str, object]:
    """The manifest as plain JSON-able data."""
    data: dict[str, object] = msgspec.to_builtins(manifest)
    return data
