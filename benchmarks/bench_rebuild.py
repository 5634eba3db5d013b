"""Rebuilds from a cached mixed log against raw writes of the result into the same engine.

* vector: ``rebuild(log, Qdrant Edge store)`` against raw Edge upserts of the
  resulting points (same shard config and payload indexes as the store, 4096
  points per update, one flush);
* LadybugDB: ``rebuild(log, LadybugDB store)`` against raw batched Cypher writes of
  the same graph: per 1000 memories, MERGE the nodes, then MATCH … MERGE the
  relationships (the form the engine needs);
* Neo4j: ``rebuild(log, Neo4j store)`` against raw ``UNWIND`` batches of 10 000
  memories into the same constraints.

Both sides are reported in *log events per second*: the rebuild reads and folds
every event, the raw side only writes what the fold left (the live memories),
so it is a ceiling the rebuild could reach only if reading and folding were free.
Raw inputs (points, rows) are prepared before the clock starts.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.common import Figure, Result, Settings, Skipped, interleave, median, ratio
from benchmarks.workload import cached_log
from memsync.config import GraphConfig, MemsyncConfig
from memsync.fold import MemoryState, entity_key, fold
from memsync.projector import rebuild
from memsync.sqlite_log import SQLiteEventLog
from memsync.stores import open_store, point_id, vector_payload
from projections._graph_common import memory_row

Row = dict[str, Any]


@cache
def _folded(path: Path) -> tuple[int, tuple[MemoryState, ...]]:
    with SQLiteEventLog(path) as log:
        state = fold(log.read())
        return state.seq, tuple(state)


def _rebuild_rate(log_path: Path, events: int, config: MemsyncConfig, kind: str, backend: str) -> tuple[float, int]:
    """Rebuild one store from the log the way ``memsync rebuild`` does; events/s and the checkpoint."""
    with SQLiteEventLog(log_path) as log:
        store = open_store(kind, backend, config)
        try:
            started = time.perf_counter()
            checkpoint = rebuild(log, store)
            elapsed = time.perf_counter() - started
        finally:
            store.close()
    return events / elapsed, checkpoint


# ---------------------------------------------------------------- Qdrant Edge


def _raw_edge(path: Path, points: list[tuple[str, list[float], Row]], dim: int) -> float:
    from qdrant_edge import (
        Distance,
        EdgeConfig,
        EdgeShard,
        EdgeVectorParams,
        Memory,
        PayloadSchemaType,
        Point,
        UpdateOperation,
    )

    from projections._vector_common import SCOPE_INDEXES

    started = time.perf_counter()
    params = EdgeVectorParams(size=dim, distance=Distance.Cosine, memory=Memory.Cold)  # as the store creates it
    shard = EdgeShard.create(str(path), EdgeConfig(vectors=params))
    for field in SCOPE_INDEXES:  # the store's payload indexes
        shard.update(UpdateOperation.create_field_index(field, PayloadSchemaType.Keyword))
    for start in range(0, len(points), 4096):
        chunk = [Point(id=i, vector=v, payload=p) for i, v, p in points[start : start + 4096]]
        shard.update(UpdateOperation.upsert_points(chunk))
    shard.flush()
    elapsed = time.perf_counter() - started
    shard.close()
    return elapsed


def vector(settings: Settings) -> list[Result]:
    import numpy as np

    log_path = cached_log(settings.events)
    events, memories = _folded(log_path)
    with_vector = [m for m in memories if m.vector is not None]
    dim = len(with_vector[0].vector or b"") // 4
    points = [
        (point_id(m.memory_id), np.frombuffer(m.vector or b"", dtype="<f4").tolist(), vector_payload(m))
        for m in with_vector
    ]
    work = settings.workdir / "rebuild-vector"
    work.mkdir()

    def run_memsync(r: int) -> float:
        config = MemsyncConfig(data_dir=work / f"memsync-{r}")
        rate, checkpoint = _rebuild_rate(log_path, events, config, "vector", "edge")
        assert checkpoint == events, (checkpoint, events)
        shutil.rmtree(config.data_dir)
        return rate

    def run_raw(r: int) -> float:
        path = work / f"raw-{r}"
        elapsed = _raw_edge(path, points, dim)
        shutil.rmtree(path)
        return events / elapsed

    rates = interleave({"memsync": run_memsync, "raw": run_raw}, settings.rounds_or(3))
    return [
        Figure(
            "rebuild_vector",
            f"rebuild vector, {events:,} events -> Qdrant Edge",
            median(rates["memsync"]),
            "events/s",
            anchor=f"raw Edge upsert of the {len(points):,} points",
            anchor_value=median(rates["raw"]),
            ratio=ratio(rates["memsync"], rates["raw"]),
            detail={"rounds": rates, "points": len(points), "live_memories": len(memories)},
        ).check(min_ratio=0.7)
    ]


# ---------------------------------------------------------------- graph rows


class GraphInput:
    """The final graph of the live memories as rows (entity types already the smallest)."""

    def __init__(self, memories: tuple[MemoryState, ...]) -> None:
        self.memories: list[Row] = []
        self.entities: dict[str, Row] = {}
        self.mentions: list[Row] = []
        self.relates: list[Row] = []
        for m in memories:
            self.memories.append(memory_row(m))
            field, value = m.scope
            for name, typ in m.mentions.items():
                key = entity_key(field, value, name)
                self.mentions.append({"memory_id": m.memory_id, "key": key, "type": typ})
                old = self.entities.get(key)
                if old is None:
                    scope = {f: (value if f == field else None) for f in ("user_id", "agent_id", "run_id")}
                    self.entities[key] = {"key": key, "name": name, "type": typ, **scope}
                elif typ is not None and (old["type"] is None or typ < old["type"]):
                    old["type"] = typ
            for source, relation, target in m.relations:
                self.relates.append(
                    {
                        "source": entity_key(field, value, source),
                        "target": entity_key(field, value, target),
                        "relation": relation,
                        "memory_id": m.memory_id,
                    }
                )

    def chunks(self, size: int) -> Iterator[tuple[list[Row], list[Row], list[Row], list[Row]]]:
        """Per ``size`` memories: their rows, the entities first mentioned there, their mentions and relations."""
        mentions: dict[str, list[Row]] = {}
        relates: dict[str, list[Row]] = {}
        for row in self.mentions:
            mentions.setdefault(row["memory_id"], []).append(row)
        for row in self.relates:
            relates.setdefault(row["memory_id"], []).append(row)
        seen: set[str] = set()
        for start in range(0, len(self.memories), size):
            rows = self.memories[start : start + size]
            ids = [r["memory_id"] for r in rows]
            chunk_mentions = [x for i in ids for x in mentions.get(i, ())]
            fresh = {x["key"]: None for x in chunk_mentions if x["key"] not in seen}  # first seen here, in order
            seen.update(fresh)
            new = [self.entities[key] for key in fresh]
            yield rows, new, chunk_mentions, [x for i in ids for x in relates.get(i, ())]


# ---------------------------------------------------------------- LadybugDB

LADYBUG_MERGE = (
    "UNWIND $rows AS x WITH x.memory_id AS id, x MERGE (m:Memory {memory_id: id}) "
    "SET m.text = x.text, m.user_id = x.user_id, m.agent_id = x.agent_id, m.run_id = x.run_id, "
    "m.version = x.version, m.seq = x.seq",
    "UNWIND $rows AS x WITH x.key AS k, x MERGE (e:Entity {key: k}) "
    "SET e.name = x.name, e.type = x.type, e.user_id = x.user_id, e.agent_id = x.agent_id, e.run_id = x.run_id",
    "UNWIND $rows AS x WITH x.memory_id AS id, x MATCH (m:Memory {memory_id: id}) "
    "WITH m, x.key AS k, x MATCH (e:Entity {key: k}) MERGE (m)-[:MENTIONS {type: x.type}]->(e)",
    "UNWIND $rows AS x WITH x.source AS s, x MATCH (a:Entity {key: s}) "
    "WITH a, x.target AS t, x MATCH (b:Entity {key: t}) "
    "MERGE (a)-[:RELATES {relation: x.relation, memory_id: x.memory_id}]->(b)",
)


def _raw_ladybug(path: Path, graph: GraphInput) -> float:
    import ladybug

    from projections.graph_ladybug import SCHEMA  # the store's DDL: the same tables

    path.mkdir()
    db = ladybug.Database(str(path / "raw.lbug"))
    conn = ladybug.Connection(db)
    started = time.perf_counter()
    for statement in SCHEMA:
        conn.execute(statement)
    for parts in graph.chunks(1000):
        conn.execute("BEGIN TRANSACTION")
        for statement, rows in zip(LADYBUG_MERGE, parts, strict=True):
            if rows:
                conn.execute(statement, {"rows": rows})
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    db.close()
    return elapsed


def ladybug(settings: Settings) -> list[Result]:
    log_path = cached_log(settings.events)
    events, memories = _folded(log_path)
    graph = GraphInput(memories)
    work = settings.workdir / "rebuild-ladybug"
    work.mkdir()

    def run_memsync(r: int) -> float:
        config = MemsyncConfig(data_dir=work / f"memsync-{r}")
        rate, _ = _rebuild_rate(log_path, events, config, "graph", "ladybug")
        shutil.rmtree(config.data_dir)
        return rate

    def run_raw(r: int) -> float:
        path = work / f"raw-{r}"
        elapsed = _raw_ladybug(path, graph)
        shutil.rmtree(path)
        return events / elapsed

    rates = interleave({"memsync": run_memsync, "raw": run_raw}, settings.rounds_or(3))
    return [
        Figure(
            "rebuild_ladybug",
            f"rebuild graph, {events:,} events -> LadybugDB",
            median(rates["memsync"]),
            "events/s",
            anchor=f"raw batched MERGE of the {len(graph.memories):,} memories",
            anchor_value=median(rates["raw"]),
            ratio=ratio(rates["memsync"], rates["raw"]),
            detail={"rounds": rates, **_sizes(graph)},
        ).check(min_ratio=3.0)
    ]


def _sizes(graph: GraphInput) -> dict[str, int]:
    return {
        "memories": len(graph.memories),
        "entities": len(graph.entities),
        "mentions": len(graph.mentions),
        "relates": len(graph.relates),
    }


# ---------------------------------------------------------------- Neo4j

NEO4J_CONSTRAINTS = (
    "CREATE CONSTRAINT memsync_memory_id IF NOT EXISTS FOR (m:Memory) REQUIRE m.memory_id IS UNIQUE",
    "CREATE CONSTRAINT memsync_entity_key IF NOT EXISTS FOR (e:Entity) REQUIRE e.key IS UNIQUE",
)
NEO4J_CREATE = (
    "UNWIND $rows AS x CREATE (m:Memory) SET m = x",
    "UNWIND $rows AS x CREATE (e:Entity) SET e = x",
    "UNWIND $rows AS x MATCH (m:Memory {memory_id: x.memory_id}) MATCH (e:Entity {key: x.key}) "
    "CREATE (m)-[:MENTIONS {type: x.type}]->(e)",
    "UNWIND $rows AS x MATCH (a:Entity {key: x.source}) MATCH (b:Entity {key: x.target}) "
    "CREATE (a)-[:RELATES {relation: x.relation, memory_id: x.memory_id}]->(b)",
)


@contextmanager
def neo4j_server(settings: Settings) -> Iterator[str]:
    """The URI of ``--neo4j-uri``, or of a server started for the block (the test suite's)."""
    if settings.neo4j_uri:
        yield settings.neo4j_uri
        return
    from tests.neo4j_server import Neo4jServer

    with Neo4jServer(pagecache="512m") as server:
        yield server.uri


def enter_neo4j(stack: ExitStack, settings: Settings, benchmark: str) -> str | Skipped:
    """The URI of a Neo4j (see :func:`neo4j_server`) held until ``stack`` closes, or why there is none:
    no Java, no Maven cache, ... are said in the benchmark's row instead of failing the whole run."""
    try:
        return stack.enter_context(neo4j_server(settings))
    except Exception as e:
        return Skipped(benchmark, f"no Neo4j server: {type(e).__name__}: {e}")


def clear_neo4j(uri: str) -> None:
    """Delete everything in the Neo4j at ``uri``, constraints included."""
    import neo4j as driver_module

    with driver_module.GraphDatabase.driver(uri, auth=None) as driver:
        _clear(driver)


def _clear(driver: Any) -> None:
    with driver.session() as s:
        s.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS").consume()
        for record in list(s.run("SHOW CONSTRAINTS YIELD name")):
            s.run(f"DROP CONSTRAINT `{record['name']}` IF EXISTS").consume()


def _raw_neo4j(driver: Any, graph: GraphInput) -> float:
    started = time.perf_counter()
    with driver.session() as s:
        for statement in NEO4J_CONSTRAINTS:
            s.run(statement).consume()
        for parts in graph.chunks(10_000):
            with s.begin_transaction() as tx:
                for statement, rows in zip(NEO4J_CREATE, parts, strict=True):
                    if rows:
                        tx.run(statement, {"rows": rows}).consume()
                tx.commit()
    return time.perf_counter() - started


def neo4j(settings: Settings) -> list[Result]:
    try:
        import neo4j as driver_module
    except ImportError as e:  # pragma: no cover - the neo4j driver is a dependency
        return [Skipped("rebuild_neo4j", f"no neo4j driver: {e}")]
    log_path = cached_log(settings.events)
    events, memories = _folded(log_path)
    graph = GraphInput(memories)
    stack = ExitStack()
    uri = enter_neo4j(stack, settings, "rebuild_neo4j")
    if isinstance(uri, Skipped):
        return [uri]
    with stack:
        driver = driver_module.GraphDatabase.driver(uri, auth=None)
        config = MemsyncConfig(data_dir=settings.workdir / "neo4j", graph=GraphConfig(backend="neo4j", uri=uri))

        def run_memsync(r: int) -> float:
            _clear(driver)
            rate, _ = _rebuild_rate(log_path, events, config, "graph", "neo4j")
            return rate

        def run_raw(r: int) -> float:
            _clear(driver)
            return events / _raw_neo4j(driver, graph)

        rates = interleave({"memsync": run_memsync, "raw": run_raw}, settings.rounds_or(3))
        _clear(driver)
        driver.close()
    return [
        Figure(
            "rebuild_neo4j",
            f"rebuild graph, {events:,} events -> Neo4j",
            median(rates["memsync"]),
            "events/s",
            anchor=f"raw UNWIND batches of the {len(graph.memories):,} memories",
            anchor_value=median(rates["raw"]),
            ratio=ratio(rates["memsync"], rates["raw"]),
            detail={"rounds": rates, **_sizes(graph)},
        ).check(min_ratio=0.7)
    ]
