"""PostgreSQL for the suite: one real server per test session (per xdist worker), fresh storage per test.

The server comes from :mod:`tests.pg_server` (PostgreSQL 15 binaries, a private
data directory, 127.0.0.1 only, default durability). Nothing here skips: if the
server cannot start, the fixture errors with the reason (missing binaries, …).

* ``pg_database`` — the URL of a fresh database (``CREATE DATABASE`` costs
  0.2–0.6 s here), for tests of whole systems, CLI runs and other processes;
* ``pg_schema`` — ``pg_schema(name)`` is the URL of a fresh schema (its
  ``search_path``) in one database shared by the session, ~10 ms; the same
  name in one test gives the same schema. The contract suite runs on these.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from tests.pg_server import PostgresServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_database(pg_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


@pytest.fixture(scope="session")
def pg_shared_database(pg_server: PostgresServer) -> str:
    return pg_server.create_database("memsync_schemas")


@pytest.fixture
def pg_schema(pg_shared_database: str) -> Iterator[Callable[[str], str]]:
    """``pg_schema(name) -> url``: a fresh schema of the shared database; all dropped after the test."""
    made: dict[str, str] = {}
    prefix = f"s{uuid.uuid4().hex[:12]}"

    def schema_url(name: str) -> str:
        if name not in made:
            made[name] = f"{prefix}_{name}"
            with psycopg.connect(pg_shared_database, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(made[name])))
        return with_search_path(pg_shared_database, made[name])

    yield schema_url
    if made:
        with psycopg.connect(pg_shared_database, autocommit=True) as conn:
            for schema in made.values():
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def with_search_path(url: str, schema: str) -> str:
    """``url`` with its sessions' ``search_path`` set to ``schema``."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-c search_path={schema}', safe='')}"
