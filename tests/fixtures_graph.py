"""Graph store fixtures and the reference model the contract suite compares stores with.

``graph_store`` is parametrized over the real engines: ``ladybug`` (an embedded
database in ``tmp_path``) and ``neo4j`` (the session's Neo4j 5.26 server, the
``neo4j_server`` fixture of :mod:`tests.fixtures_servers`, cleared between tests). ``open_graph_store()``
opens another store object on the same data (for close/reopen tests).

:class:`GraphModel` is the specification: live memories by id, whose expected
graph is :func:`memsync.stores.expected_graph` (``graph_view`` plus the memory nodes).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from memsync.config import GraphConfig, MemsyncConfig
from memsync.events import Entity, Relation
from memsync.fold import MemoryState, normalize_entities, normalize_relations
from memsync.stores import Delete, DeleteScope, GraphSnapshot, GraphStore, Op, Reset, Upsert, expected_graph

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GRAPH_BACKENDS = ("ladybug", "neo4j")


# ---------------------------------------------------------------- model


def memory(
    memory_id: str,
    *,
    user: str | None = None,
    agent: str | None = None,
    run: str | None = None,
    text: str | None = None,
    entities: Sequence[str | tuple[str, str | None]] = (),
    relations: Sequence[tuple[str, str, str]] = (),
    version: int = 1,
    seq: int = 1,
) -> MemoryState:
    """A live memory as the fold would produce it (names normalized like events are)."""
    if not (user or agent or run):
        user = "alice"
    pairs = [(e, None) if isinstance(e, str) else e for e in entities]
    return MemoryState(
        memory_id=memory_id,
        text=text if text is not None else f"memory {memory_id}",
        user_id=user,
        agent_id=agent,
        run_id=run,
        entities=normalize_entities(Entity(name=n, type=t) for n, t in pairs),
        relations=normalize_relations(Relation(source=s, relation=r, target=t) for s, r, t in relations),
        version=version,
        seq=seq,
        created_at=NOW,
        updated_at=NOW,
    )


class GraphModel:
    """Live memories by id: what every graph store must hold."""

    def __init__(self) -> None:
        self.memories: dict[str, MemoryState] = {}

    def apply(self, ops: Sequence[Op]) -> None:
        for op in ops:
            if isinstance(op, Upsert):
                self.memories[op.memory.memory_id] = op.memory
            elif isinstance(op, Delete):
                self.memories.pop(op.memory_id, None)
            elif isinstance(op, DeleteScope):
                self.memories = {k: m for k, m in self.memories.items() if not m.matches(op.scope)}
            else:
                assert isinstance(op, Reset)
                self.memories.clear()

    def snapshot(self) -> GraphSnapshot:
        return expected_graph(self.memories.values())


def assert_graph(store: GraphStore, expected: GraphSnapshot) -> None:
    """The store holds exactly ``expected``: no missing, extra, stale or duplicate nodes and edges."""
    got = store.snapshot()
    assert got.memories == expected.memories
    assert got.entities == expected.entities
    assert got.mentions == expected.mentions
    assert got.relates == expected.relates
    assert store.counts() == expected.sizes(), "duplicate nodes or edges"  # the sets above hide them
    totals = graph_totals(store)  # and nothing else: no stray node or edge of another kind
    nodes = len(expected.memories) + len(expected.entities)
    assert totals["nodes"] in (nodes, nodes + 1), "stray nodes (beyond the checkpoint)"
    assert totals["edges"] == len(expected.mentions) + len(expected.relates), "stray edges"


def graph_totals(store: GraphStore) -> dict[str, int]:
    """All nodes (the checkpoint included) and all edges, whatever their label."""
    nodes, edges = (cypher(store, q)[0][0] for q in ("MATCH (n) RETURN count(n)", "MATCH ()-[r]->() RETURN count(r)"))
    return {"nodes": int(nodes), "edges": int(edges)}


def cypher(
    store: GraphStore, query: str, params: dict[str, Any] | None = None, *, write: bool = False
) -> list[list[Any]]:
    """Raw Cypher in one transaction of the store's engine: to look past the port, or to corrupt the graph."""
    from projections._graph_common import CypherGraphStore

    assert isinstance(store, CypherGraphStore)
    with (store._write if write else store._read)("a test's statement") as tx:
        return tx.run(query, params)


# ---------------------------------------------------------------- random streams

NAMES = (
    "Alice", "alice", "  Bob ", "bob", "CAROL", "dave smith", "Dave   Smith", "paris", "Paris",
    "acme corp", "ünïcødé", "x", "y", "zed", "berlin", "the moon",
)  # fmt: skip
TYPES = (None, None, None, "person", "place", "org", "Person")
RELATIONS = ("knows", "lives in", "works at", "Knows", "likes")
USERS = ("u1", "u2", "u3", None, None)
AGENTS = ("a1", "a2", None)
RUNS = ("r1", "r2", None)


class RandomStream:
    """A seeded stream of valid op batches: several scopes, shared names, stray relation endpoints."""

    def __init__(self, seed: int, ids: int = 150, *, same_edges: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.same_edges = same_edges  # how often an update keeps the memory's entities and relations
        self.ids = [f"m{i}" for i in range(ids)]
        self.live: dict[str, MemoryState] = {}
        self.seq = 0

    def batches(self, ops: int, sizes: Sequence[int] = (1, 2, 3, 5, 8, 13, 40, 100)) -> Iterator[list[Op]]:
        while ops > 0:
            size = min(ops, self.rng.choice(sizes))
            ops -= size
            yield [self.op() for _ in range(size)]

    def op(self) -> Op:
        self.seq += 1
        roll = self.rng.random()
        if roll < 0.002:
            self.live.clear()
            return Reset()
        if roll < 0.03:
            scope = self.scope()
            self.live = {k: m for k, m in self.live.items() if not m.matches(scope)}
            return DeleteScope(scope)
        if roll < 0.18:
            memory_id = self.rng.choice(self.ids)  # sometimes not live: a net Delete of an add
            self.live.pop(memory_id, None)
            return Delete(memory_id)
        memory_id = self.rng.choice(self.ids)
        old = self.live.get(memory_id)
        picked = self.picked() if old is None else {"user": old.user_id, "agent": old.agent_id, "run": old.run_id}
        new = memory(
            memory_id,
            user=picked["user"],
            agent=picked["agent"],
            run=picked["run"],
            text=f"text {self.seq}",
            entities=[(self.rng.choice(NAMES), self.rng.choice(TYPES)) for _ in range(self.rng.randint(0, 4))],
            relations=[
                (self.rng.choice(NAMES), self.rng.choice(RELATIONS), self.rng.choice(NAMES))
                for _ in range(self.rng.randint(0, 3))
            ],
            version=old.version + 1 if old else 1,
            seq=self.seq,
        )
        if old is not None and self.rng.random() < self.same_edges:
            new = msgspec.structs.replace(new, entities=old.entities, relations=old.relations)
        self.live[memory_id] = new
        return Upsert(new)

    def picked(self) -> dict[str, str | None]:
        """A memory's scope: at least one of user, agent, run."""
        while True:
            picked = {"user": self.rng.choice(USERS), "agent": self.rng.choice(AGENTS), "run": self.rng.choice(RUNS)}
            if any(picked.values()):
                return picked

    def scope(self) -> dict[str, str]:
        """A DeleteScope: one to three scope fields."""
        fields = {"user": "user_id", "agent": "agent_id", "run": "run_id"}
        while True:
            scope = {fields[k]: v for k, v in self.picked().items() if v is not None}
            if scope:
                return scope


# ---------------------------------------------------------------- fixtures


@pytest.fixture(params=GRAPH_BACKENDS)
def graph_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def graph_config(graph_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> MemsyncConfig:
    if graph_backend == "neo4j":
        server = request.getfixturevalue("neo4j_server")  # tests/fixtures_servers.py
        server.clear()
        return MemsyncConfig(data_dir=tmp_path, graph=GraphConfig(backend="neo4j", uri=server.uri))
    return MemsyncConfig(data_dir=tmp_path, graph=GraphConfig(backend="ladybug"))


@pytest.fixture
def open_graph_store(graph_backend: str, graph_config: MemsyncConfig) -> Iterator[Callable[[], GraphStore]]:
    """Opens store objects on this test's data; all are closed at teardown."""
    opened: list[GraphStore] = []

    def open_store() -> GraphStore:
        if graph_backend == "neo4j":
            from projections.graph_neo4j import open_neo4j_store

            store: GraphStore = open_neo4j_store(graph_config)
        else:
            from projections.graph_ladybug import open_ladybug_store

            store = open_ladybug_store(graph_config)
        opened.append(store)
        return store

    yield open_store
    for store in reversed(opened):
        store.close()


@pytest.fixture
def graph_store(open_graph_store: Callable[[], GraphStore]) -> GraphStore:
    return open_graph_store()
