"""Historian fixtures: every store test runs on SQLite and on a real PostgreSQL server.

Each PostgreSQL test gets a fresh schema, so tests never see each other's rows. When no server
answers, the PostgreSQL half is skipped, unless GRIDPILOT_REQUIRE_POSTGRES=1 (as in CI).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import pytest

from gridpilot.services.historian.backends import open_store, redact, sqlite_path
from gridpilot.services.historian.store import Store

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"

RunSql = Callable[[str], None]


@pytest.fixture(scope="session")
def _postgres_server() -> str | BaseException:
    """The server's URL, or why it cannot be reached (asked once, not per test)."""
    url = os.environ.get("GRIDPILOT_TEST_POSTGRES", DEFAULT_POSTGRES)
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as e:
        return e
    return url


@pytest.fixture
def pg_url(_postgres_server: str | BaseException) -> Iterator[str]:
    """A URL whose search_path is a new, empty schema, dropped after the test."""
    if isinstance(_postgres_server, BaseException):
        url = os.environ.get("GRIDPILOT_TEST_POSTGRES", DEFAULT_POSTGRES)
        why = " ".join(str(_postgres_server).split())
        reason = f"PostgreSQL not reachable at {redact(url)}: {why}; set GRIDPILOT_TEST_POSTGRES"
        if os.environ.get("GRIDPILOT_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    schema = f"hist_{secrets.token_hex(6)}"
    with psycopg.connect(_postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield _with_search_path(_postgres_server, schema)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def _with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("options", f"-c search_path={schema}")]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store of each backend lives."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'historian.sqlite'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open, migrated store of each backend."""
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def run_sql(store_url: str) -> RunSql:
    """Run a statement on the store's database through a connection of its own (to set up a
    state the store's API cannot make, such as a future schema version)."""

    def run(statement: str) -> None:
        if store_url.startswith("sqlite://"):
            with closing(sqlite3.connect(sqlite_path(store_url))) as db, db:
                db.execute(statement)
        else:
            with psycopg.connect(store_url, autocommit=True) as conn:
                conn.execute(statement)

    return run
