"""Session-wide real servers (Neo4j, PostgreSQL) started by the suite itself.

They never skip: a server that cannot start fails the tests that need it, loudly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def neo4j_server() -> Iterator[Any]:
    """One real Neo4j 5.26 for the session (tests/neo4j_server.py); tests clear it."""
    from tests.neo4j_server import Neo4jServer

    with Neo4jServer() as server:
        yield server
