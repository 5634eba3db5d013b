"""A whole memsync system (log + both stores) on named backends, for end-to-end tests.

Backend pairs: ``memory`` (in-memory stores), ``embedded`` (Qdrant Edge + LadybugDB,
the defaults) and ``servers`` (qdrant-client local mode + a real Neo4j server).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from memsync.config import MemsyncConfig
from memsync.system import MemSync

PAIRS = {
    "memory": ("memory", "memory"),
    "embedded": ("edge", "ladybug"),
    "servers": ("qdrant", "neo4j"),
}
ALL_PAIRS = [
    pytest.param("memory", id="memory"),
    pytest.param("embedded", id="embedded"),
    pytest.param("servers", id="servers", marks=pytest.mark.neo4j),
]
REAL_PAIRS = ALL_PAIRS[1:]


def system_config(pair: str, data_dir: Path, request: pytest.FixtureRequest, **overrides: Any) -> MemsyncConfig:
    vector, graph = PAIRS[pair]
    data: dict[str, Any] = {
        "data_dir": str(data_dir),
        "sqlite_synchronous": "NORMAL",
        "vector": {"backend": vector},
        "graph": {"backend": graph},
        "projector": {"backoff_initial": 0.001, "backoff_max": 0.01, "max_attempts": 3},
        "facade": {"embedder": "lexical"},
    }
    if graph == "neo4j":
        server = request.getfixturevalue("neo4j_server")
        data["graph"]["uri"] = server.uri
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[key] = value
    return MemsyncConfig.model_validate(data)


@pytest.fixture
def make_system(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., MemSync]]:
    """``make_system(pair, **overrides)`` -> an open MemSync; all closed at teardown."""
    made: list[MemSync] = []
    cleared = False

    def make(pair: str, *, data_dir: Path | None = None, **overrides: Any) -> MemSync:
        nonlocal cleared
        config = system_config(pair, data_dir or tmp_path / "data", request, **overrides)
        if PAIRS[pair][1] == "neo4j" and not cleared:
            request.getfixturevalue("neo4j_server").clear()
            cleared = True
        system = MemSync(config)
        made.append(system)
        return system

    yield make
    for system in made:
        system.close()
