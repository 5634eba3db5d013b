"""The GraphStore contract, run on every backend (LadybugDB embedded, Neo4j server).

Every test compares the store with :class:`tests.fixtures_graph.GraphModel`:
``snapshot()`` must equal ``expected_graph(live memories)``, ``counts()`` its
sizes (no duplicates), and there is nothing else in the graph. Backend-specific
failure tests (rebuild swaps and crashes, locking, server outages) follow the contract.
"""

# ruff: noqa: F811  (fixtures imported from tests.fixtures_graph are redefined as parameters)
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from memsync.config import GraphConfig, MemsyncConfig
from memsync.errors import ConfigError, StoreError, StoreLocked, StoreUnavailable
from memsync.events import Entity, MemoryAdded, Relation, normalize_name
from memsync.fold import fold
from memsync.sqlite_log import SQLiteEventLog
from memsync.stores import Delete, DeleteScope, GraphStore, Op, Reset, Upsert, expected_graph
from memsync.verify import verify_store
from tests.fixtures_graph import (  # noqa: F401  (fixtures: see the module docstring)
    GraphModel,
    RandomStream,
    assert_graph,
    cypher,
    graph_backend,
    graph_config,
    graph_store,
    graph_totals,
    memory,
    open_graph_store,
)

REPO = Path(__file__).resolve().parents[1]


def apply(store: GraphStore, model: GraphModel, ops: list[Op], checkpoint: int) -> None:
    store.apply(ops, checkpoint)
    model.apply(ops)
    assert_graph(store, model.snapshot())
    assert store.checkpoint() == checkpoint


# ---------------------------------------------------------------- contract


def test_empty_store(graph_store: GraphStore) -> None:
    assert graph_store.checkpoint() == 0
    assert graph_store.ping() is True
    assert graph_store.relations(["bob"], scope=("user_id", "alice")) == []
    assert_graph(graph_store, GraphModel().snapshot())


def test_upserts_updates_deletes_scopes_and_reset(graph_store: GraphStore) -> None:
    model = GraphModel()
    m1 = memory(
        "m1",
        entities=[("Bob", "person"), "Paris"],
        relations=[("bob", "lives in", "paris"), ("bob", "knows", "Carol")],  # carol: an endpoint only
    )
    m2 = memory("m2", entities=[("bob", "agent")], relations=[("Bob", "likes", "Bob")])
    m3 = memory("m3", agent="helper", entities=["bob"])  # no user: scoped by agent, another bob
    m4 = memory("m4", user="zoe", run="r1", entities=["bob"], relations=[("bob", "knows", "ann")])
    apply(graph_store, model, [Upsert(m1), Upsert(m2), Upsert(m3), Upsert(m4)], 4)
    bob = model.snapshot().entities['["user_id","alice","bob"]']
    assert bob.type == "agent"  # the smallest type among live mentions

    # an update replaces entities and relations: carol and paris go, bob stays (still mentioned)
    m1b = memory("m1", text="moved", entities=["Berlin"], relations=[("bob", "lives in", "berlin")], version=2, seq=5)
    apply(graph_store, model, [Upsert(m1b)], 5)
    assert '["user_id","alice","carol"]' not in graph_store.snapshot().entities

    apply(graph_store, model, [Delete("m2")], 6)
    assert graph_store.snapshot().entities['["user_id","alice","bob"]'].type is None  # only untyped mentions left

    apply(graph_store, model, [DeleteScope({"user_id": "zoe", "run_id": "r1"})], 7)
    apply(graph_store, model, [DeleteScope({"user_id": "nobody"})], 8)
    apply(graph_store, model, [Upsert(m4), Reset(), Upsert(m2)], 9)  # ops apply in order
    assert set(graph_store.snapshot().memories) == {"m2"}
    apply(graph_store, model, [Reset()], 10)


def test_ops_in_one_batch_apply_in_order(graph_store: GraphStore) -> None:
    model = GraphModel()
    a = memory("a", entities=["x"])
    b = memory("b", user="bob", entities=["x"])
    apply(graph_store, model, [Upsert(a), Upsert(b)], 2)
    a2 = memory("a", entities=["y"], version=2, seq=3)
    ops: list[Op] = [Upsert(a2), Delete("b"), Upsert(b), DeleteScope({"user_id": "alice"}), Upsert(a2)]
    apply(graph_store, model, ops, 7)
    apply(graph_store, model, [Delete("a"), Upsert(a), Delete("a"), Delete("never-added")], 11)


def test_entity_type_is_the_smallest_by_code_point(graph_store: GraphStore) -> None:
    """As in graph_view (Python's str order), whatever order the engine sorts strings in."""
    model = GraphModel()
    bmp, astral = "\uff01 fullwidth", "\U0001f600 emoji"  # UTF-16 code units sort these the other way
    ops: list[Op] = [Upsert(memory("a", entities=[("x", astral)])), Upsert(memory("b", entities=[("x", bmp)]))]
    apply(graph_store, model, ops, 2)
    assert graph_store.snapshot().entities['["user_id","alice","x"]'].type == bmp
    apply(graph_store, model, [Delete("b")], 3)
    assert graph_store.snapshot().entities['["user_id","alice","x"]'].type == astral


def test_no_orphans(graph_store: GraphStore) -> None:
    model = GraphModel()
    shared = memory("s1", entities=["Bob", "Paris"], relations=[("bob", "visited", "paris")])
    other = memory("s2", entities=["bob"], relations=[("bob", "knows", "eve")])
    apply(graph_store, model, [Upsert(shared), Upsert(other)], 2)
    apply(graph_store, model, [Delete("s2")], 3)  # eve goes, bob stays: s1 mentions it
    keys = set(graph_store.snapshot().entities)
    assert keys == {'["user_id","alice","bob"]', '["user_id","alice","paris"]'}
    apply(graph_store, model, [Upsert(memory("s1", entities=["dan"], version=2, seq=4))], 4)
    assert set(graph_store.snapshot().entities) == {'["user_id","alice","dan"]'}
    apply(graph_store, model, [Delete("s1")], 5)
    assert graph_totals(graph_store) == {"nodes": 1, "edges": 0}  # just the checkpoint


def test_random_stream_matches_model_after_every_batch(graph_store: GraphStore) -> None:
    stream, model = RandomStream(seed=20260101), GraphModel()
    for batch in stream.batches(2000, sizes=(1, 2, 5, 13, 30, 60, 120)):
        apply(graph_store, model, batch, stream.seq)
    assert len(model.memories) > 20 and model.snapshot().relates  # the stream kept a real graph


def test_upserts_with_the_state_before_match_the_model(graph_store: GraphStore) -> None:
    """Upserts carrying ``before`` as the projector sends them (one op per memory, no bulk op in
    the batch, ``before`` the memory's state at the batch's start): the store may write only what
    changed, and must end up exactly where the plain upserts take it."""
    stream, model = RandomStream(seed=20261206, same_edges=0.5), GraphModel()
    vouched = same = deletes = 0
    for batch in stream.batches(2000, sizes=(1, 2, 5, 13, 30)):
        if not any(isinstance(op, Reset | DeleteScope) for op in batch):
            last: dict[str, Op] = {}
            for op in batch:
                last[op.memory.memory_id if isinstance(op, Upsert) else op.memory_id] = op  # type: ignore[union-attr]
            batch = [
                Upsert(op.memory, model.memories.get(memory_id))
                if isinstance(op, Upsert)
                else Delete(memory_id, model.memories.get(memory_id))
                for memory_id, op in last.items()
            ]
            for op in batch:
                if isinstance(op, Delete):
                    deletes += op.before is not None
                elif isinstance(op, Upsert) and op.before is not None:
                    vouched += 1
                    same += (op.before.entities, op.before.relations) == (op.memory.entities, op.memory.relations)
        apply(graph_store, model, batch, stream.seq)
        if stream.seq % 7 == 0:  # applied again (a follower that lost its lease mid-batch): ``before`` is stale
            apply(graph_store, model, batch, stream.seq)
    assert vouched > 300 and 0 < same < vouched and deletes > 50  # every path ran, many times


def test_same_batch_twice_is_idempotent(graph_store: GraphStore) -> None:
    stream, model = RandomStream(seed=7), GraphModel()
    for batch in stream.batches(300, sizes=(50,)):
        apply(graph_store, model, batch, stream.seq)
        apply(graph_store, model, batch, stream.seq)


def test_checkpoint_persists_and_wipe_resets(open_graph_store: Callable[[], GraphStore]) -> None:
    store = open_graph_store()
    model = GraphModel()
    apply(store, model, [Upsert(memory("m1", entities=["bob"]))], 41)
    store.close()
    reopened = open_graph_store()
    assert reopened.checkpoint() == 41
    assert_graph(reopened, model.snapshot())
    reopened.wipe()
    assert reopened.checkpoint() == 0
    assert_graph(reopened, GraphModel().snapshot())
    assert graph_totals(reopened)["nodes"] == 0


class Boom(Exception):
    pass


@pytest.mark.parametrize("failing", ["_set_checkpoint", "_replace"])
def test_failed_batch_leaves_data_and_checkpoint(
    graph_store: GraphStore, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    model = GraphModel()
    apply(graph_store, model, [Upsert(memory("m1", entities=["bob"]))], 1)
    original = getattr(graph_store, failing)

    def run_then_fail(*args: object) -> None:
        original(*args)  # the effects happen inside the transaction ...
        raise Boom  # ... which then fails

    monkeypatch.setattr(graph_store, failing, run_then_fail)
    with pytest.raises(Boom):
        graph_store.apply([Upsert(memory("m2", entities=["eve"])), Delete("m1")], 2)
    monkeypatch.undo()
    assert graph_store.checkpoint() == 1
    assert_graph(graph_store, model.snapshot())
    apply(graph_store, model, [Upsert(memory("m2", entities=["eve"])), Delete("m1")], 2)


HOSTILE = (
    "O'Brien",
    'say "hi"',
    "back`tick`",
    "}) DETACH DELETE n //",
    "'}) MATCH (n) DETACH DELETE n //",
    "line one\nline two",
    "ünïcødé 名前 🚀",
    "$param",
    "{rows}",
    "back\\slash",
    "-[:RELATES]->",
    "nul\x00char",
)


def test_hostile_names_are_data(graph_store: GraphStore) -> None:
    model = GraphModel()
    bystander = memory("plain", entities=["bob"], relations=[("bob", "knows", "eve")])
    apply(graph_store, model, [Upsert(bystander)], 1)
    hostile = [
        memory(
            f"id {name}",
            user=f"user {name}",
            text=f"text {name}",
            entities=[(name, f"type {name}"), "bob"],
            relations=[(name, name, "bob"), ("bob", f"rel {name}", name)],
            seq=i + 2,
        )
        for i, name in enumerate(HOSTILE)
    ]
    apply(graph_store, model, [Upsert(m) for m in hostile], 20)
    names = {e.name for e in graph_store.snapshot().entities.values()}
    assert {normalize_name(n) for n in HOSTILE} <= names
    assert "line one line two" in names  # normalized, otherwise verbatim
    facts = graph_store.relations([HOSTILE[3]], scope=("user_id", f"user {HOSTILE[3]}"))
    assert facts == [
        ("bob", normalize_name(f"rel {HOSTILE[3]}"), normalize_name(HOSTILE[3])),
        (normalize_name(HOSTILE[3]), normalize_name(HOSTILE[3]), "bob"),
    ]
    apply(graph_store, model, [Delete(m.memory_id) for m in hostile], 21)
    apply(graph_store, model, [DeleteScope({"user_id": "user " + HOSTILE[4]})], 22)
    assert_graph(graph_store, expected_graph([bystander]))


def test_relations_within_scope(graph_store: GraphStore) -> None:
    model = GraphModel()
    ops: list[Op] = [
        Upsert(memory("a", relations=[("Bob", "knows", "eve"), ("eve", "likes", "bob")])),
        Upsert(memory("b", relations=[("bob", "knows", "eve"), ("dan", "knows", "eve")])),  # a fact twice
        Upsert(memory("c", user="zoe", relations=[("bob", "hates", "eve")])),  # another scope
    ]
    apply(graph_store, model, ops, 3)
    assert graph_store.relations(["  BOB "], scope=("user_id", "alice")) == [
        ("bob", "knows", "eve"),
        ("eve", "likes", "bob"),
    ]
    assert graph_store.relations(["eve", "dan"], scope=("user_id", "alice"), limit=2) == [
        ("bob", "knows", "eve"),
        ("dan", "knows", "eve"),
    ]
    assert graph_store.relations(["bob"], scope=("user_id", "zoe")) == [("bob", "hates", "eve")]
    assert graph_store.relations(["bob"], scope=("agent_id", "alice")) == []
    with pytest.raises(StoreError):
        graph_store.relations(["bob"], scope=("user_id) DETACH DELETE (n", "x"))


def test_drop_entities(graph_store: GraphStore) -> None:
    model = GraphModel()
    apply(graph_store, model, [Upsert(memory("a", entities=["bob", "eve"], relations=[("bob", "knows", "eve")]))], 1)
    graph_store.drop_entities(['["user_id","alice","eve"]', "no such key"])
    snapshot = graph_store.snapshot()
    assert set(snapshot.entities) == {'["user_id","alice","bob"]'}
    assert snapshot.relates == set()
    assert graph_store.checkpoint() == 1


@pytest.mark.parametrize("chunk", [None, 7])
def test_bulk_load_equals_applying_upserts(
    graph_store: GraphStore, graph_backend: str, monkeypatch: pytest.MonkeyPatch, chunk: int | None
) -> None:
    if chunk is not None:  # small chunks: entity types must come out right across chunks
        module = "projections.graph_neo4j" if graph_backend == "neo4j" else "projections.graph_ladybug"
        monkeypatch.setattr(f"{module}.BULK_CHUNK", chunk)
    stream = RandomStream(seed=99)
    for _ in stream.batches(600):
        pass
    memories = list(stream.live.values())
    graph_store.bulk_load(iter(memories), 600)
    assert graph_store.checkpoint() == 600
    assert_graph(graph_store, expected_graph(memories))
    with pytest.raises(StoreError, match="empty"):
        graph_store.bulk_load(iter(memories[:1]), 601)
    model = GraphModel()
    model.apply([Upsert(m) for m in memories])
    apply(graph_store, model, [Delete(memories[0].memory_id)], 601)  # and apply goes on from there


def test_bulk_load_of_nothing_sets_checkpoint(graph_store: GraphStore) -> None:
    graph_store.bulk_load(iter(()), 5)
    assert graph_store.checkpoint() == 5
    assert_graph(graph_store, GraphModel().snapshot())


def test_default_rebuild_protocol(graph_store: GraphStore) -> None:
    """begin_rebuild/commit_rebuild work on every backend (in place or beside)."""
    model = GraphModel()
    apply(graph_store, model, [Upsert(memory("old", entities=["x"]))], 3)
    fresh = graph_store.begin_rebuild()
    new = [memory("new", entities=["y"], relations=[("y", "is", "z")])]
    fresh.bulk_load(iter(new), 9)
    graph_store.commit_rebuild(fresh)
    assert graph_store.checkpoint() == 9
    assert_graph(graph_store, expected_graph(new))


DUPLICATE_MENTION = (
    "MATCH (m:Memory {memory_id: $id}) WITH m MATCH (e:Entity {key: $key}) CREATE (m)-[:MENTIONS {type: $type}]->(e)"
)


def test_verify_catches_and_repairs_a_duplicate_edge(graph_store: GraphStore, tmp_path: Path) -> None:
    """A second MENTIONS edge looks like one in the snapshot: counts() shows it, verify reports it, repair drops it."""
    with SQLiteEventLog(tmp_path / "events.db") as log:
        log.append(
            [
                MemoryAdded(
                    memory_id="m1",
                    text="bob likes eve",
                    user_id="alice",
                    entities=[Entity(name="Bob", type="person")],
                    relations=[Relation(source="bob", relation="likes", target="eve")],
                ),
                MemoryAdded(memory_id="m2", text="bob again", user_id="alice", entities=[Entity(name="bob")]),
                MemoryAdded(memory_id="m3", text="no entities", user_id="alice"),
            ]
        )
        graph_store.bulk_load(iter(fold(log.read())), 3)
        assert verify_store(log, graph_store).ok
        before = graph_store.snapshot()
        bob = '["user_id","alice","bob"]'
        cypher(graph_store, DUPLICATE_MENTION, {"id": "m1", "key": bob, "type": "person"}, write=True)
        assert graph_store.snapshot() == before  # the sets hide it
        assert graph_store.counts() == {**before.sizes(), "mentions": len(before.mentions) + 1}

        drift = verify_store(log, graph_store, repair=True)
        # counts() cannot say which memory holds it: every memory with MENTIONS is stale (not m3)
        assert drift.to_dict() == {"missing": [], "extra": [], "stale": ["m1", "m2"], "orphans": []}
        assert verify_store(log, graph_store).ok
        assert_graph(graph_store, expected_graph(fold(log.read())))
        assert graph_store.checkpoint() == 3


def test_describe_names_the_store(graph_store: GraphStore, graph_backend: str) -> None:
    assert ("Neo4j" if graph_backend == "neo4j" else "LadybugDB") in graph_store.describe()


# ---------------------------------------------------------------- LadybugDB


@pytest.fixture
def ladybug_config(tmp_path: Path) -> MemsyncConfig:
    return MemsyncConfig(data_dir=tmp_path / "data")


@pytest.fixture
def no_lock_wait() -> Iterator[None]:
    """A held store fails at once instead of after the default wait for a brief holder."""
    from memsync.locks import LOCK_WAIT

    token = LOCK_WAIT.set(0.0)
    yield
    LOCK_WAIT.reset(token)


def _ladybug(config: MemsyncConfig) -> GraphStore:
    from projections.graph_ladybug import open_ladybug_store

    return open_ladybug_store(config)


def test_ladybug_loads_pyarrow_only_for_a_bulk_load(tmp_path: Path) -> None:
    """pyarrow's libraries are ~45 MB resident: a follower never needs them, nor a rebuild's vector phase."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from memsync.stores import Upsert
        from projections.graph_ladybug import LadybugGraphStore
        from tests.fixtures_graph import RandomStream
        stream = RandomStream(seed=5)
        for _ in stream.batches(20):
            pass
        memories = list(stream.live.values())
        store = LadybugGraphStore(Path({str(tmp_path / "graph")!r}))
        store.apply([Upsert(m) for m in memories], 20)
        print("apply", "pyarrow" in sys.modules)
        store.close()
        fresh = LadybugGraphStore(Path({str(tmp_path / "fresh")!r}))
        fresh.bulk_load(iter(memories), 20)
        print("bulk_load", "pyarrow" in sys.modules)
        fresh.close()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["apply", "False", "bulk_load", "True"]


def test_ladybug_bulk_load_without_pyarrow(ladybug_config: MemsyncConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    from projections import graph_ladybug

    monkeypatch.setattr(graph_ladybug, "pyarrow", None)  # COPY FROM a subquery over $rows instead
    monkeypatch.setattr(graph_ladybug, "BULK_CHUNK", 9)  # several COPYs into each table
    monkeypatch.setattr(graph_ladybug, "RECYCLE_EVERY", 2)
    stream = RandomStream(seed=3)
    for _ in stream.batches(200):
        pass
    memories = list(stream.live.values())
    store = _ladybug(ladybug_config)
    try:
        store.bulk_load(iter(memories), 200)
        assert_graph(store, expected_graph(memories))
        model = GraphModel()
        model.apply([Upsert(m) for m in memories])
        for i, batch in enumerate(stream.batches(100, sizes=(10,)), start=201):
            apply(store, model, batch, i)  # recycled writer connections carry on
    finally:
        store.close()


def test_ladybug_bulk_load_copies_spilled_parts_and_removes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from projections import graph_ladybug

    monkeypatch.setattr(graph_ladybug, "BULK_CHUNK", 7)
    monkeypatch.setattr(graph_ladybug, "COPY_PART", 10)  # several files per table
    copied: list[tuple[str, Path]] = []
    parts = graph_ladybug._Spill.parts
    monkeypatch.setattr(graph_ladybug._Spill, "parts", lambda self: copied.extend(parts(self)) or copied)
    stream = RandomStream(seed=5)
    for _ in stream.batches(300):
        pass
    memories = list(stream.live.values())
    path = tmp_path / "it's \\ here" / "graph"  # a quote and a backslash in the COPY's file path
    (path / graph_ladybug.SPILL_DIR).mkdir(parents=True)  # as a killed bulk load leaves it
    (path / graph_ladybug.SPILL_DIR / "Memory-0.parquet").write_bytes(b"torn")
    store = graph_ladybug.LadybugGraphStore(path)
    try:
        assert not (path / graph_ladybug.SPILL_DIR).exists()  # the open removed the leftovers
        store.bulk_load(iter(memories), 300)
        assert_graph(store, expected_graph(memories))
        assert [t for t, _ in copied][:2] == ["Memory", "Memory"] and {t for t, _ in copied} == {
            "Memory",
            "Entity",
            "MENTIONS",
            "RELATES",
        }
        assert not (path / graph_ladybug.SPILL_DIR).exists()
    finally:
        store.close()


def test_ladybug_bulk_load_that_cannot_spill_is_a_store_error_over_an_empty_store(tmp_path: Path) -> None:
    from projections import graph_ladybug

    stream = RandomStream(seed=2)
    for _ in stream.batches(100):
        pass
    store = graph_ladybug.LadybugGraphStore(tmp_path / "graph")
    try:
        (tmp_path / "graph" / graph_ladybug.SPILL_DIR).write_text("a file where the directory goes")
        with pytest.raises(StoreError, match="bulk loading up to seq 100 failed"):
            store.bulk_load(iter(stream.live.values()), 100)
        assert store.checkpoint() == 0 and store.counts()["memories"] == 0
    finally:
        store.close()


def test_ladybug_layout_and_lock(ladybug_config: MemsyncConfig, no_lock_wait: None) -> None:
    store = _ladybug(ladybug_config)
    try:
        assert (ladybug_config.data_dir / "graph" / "memsync.lbug").exists()
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
            _ladybug(ladybug_config)
    finally:
        store.close()
    assert store.ping() is False
    with pytest.raises(StoreError, match="closed"):
        store.apply([], 1)
    _ladybug(ladybug_config).close()  # the lock went with close()


def test_ladybug_lock_names_another_process(ladybug_config: MemsyncConfig, no_lock_wait: None) -> None:
    holder = _child(
        f"""
        import sys, time
        from pathlib import Path
        from memsync.config import MemsyncConfig
        from projections.graph_ladybug import open_ladybug_store
        store = open_ladybug_store(MemsyncConfig(data_dir=Path({str(ladybug_config.data_dir)!r})))
        print("ready", flush=True)
        sys.stdin.read()
        """,
        wait=False,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLocked, match=f"pid {holder.pid}"):
            _ladybug(ladybug_config)
    finally:
        holder.communicate("")


def test_ladybug_rebuild_swaps_and_aborts(ladybug_config: MemsyncConfig) -> None:
    graph = ladybug_config.graph_path()
    store = _ladybug(ladybug_config)
    try:
        old = [memory("old", entities=["x"])]
        store.bulk_load(iter(old), 1)
        fresh = store.begin_rebuild()
        assert fresh is not store and graph.with_name("graph.rebuild").is_dir()
        fresh.bulk_load(iter([memory("new", entities=["y"])]), 2)
        assert_graph(store, expected_graph(old))  # readers see the old store meanwhile
        store.abort_rebuild(fresh)
        assert not graph.with_name("graph.rebuild").exists()
        assert_graph(store, expected_graph(old))

        fresh = store.begin_rebuild()
        new = [memory("new", entities=["y"])]
        fresh.bulk_load(iter(new), 2)
        store.commit_rebuild(fresh)
        assert store.checkpoint() == 2
        assert_graph(store, expected_graph(new))
        store.apply([Upsert(memory("more"))], 3)  # the swapped-in store is the live one
        assert sorted(p.name for p in graph.parent.iterdir()) == ["graph", "graph.lock"]
    finally:
        store.close()
    reopened = _ladybug(ladybug_config)
    try:
        assert reopened.checkpoint() == 3 and set(reopened.snapshot().memories) == {"new", "more"}
    finally:
        reopened.close()


@pytest.mark.parametrize("crash_at", ["building", "swapping"])
def test_ladybug_crash_mid_rebuild(ladybug_config: MemsyncConfig, crash_at: str) -> None:
    store = _ladybug(ladybug_config)
    store.bulk_load(iter([memory("old", entities=["x"])]), 1)
    store.close()
    crash = _child(
        f"""
        import os
        from pathlib import Path
        from memsync.config import MemsyncConfig
        from projections import _dirswap, graph_ladybug
        from tests.fixtures_graph import memory
        store = graph_ladybug.open_ladybug_store(MemsyncConfig(data_dir=Path({str(ladybug_config.data_dir)!r})))
        fresh = store.begin_rebuild()
        fresh.bulk_load(iter([memory("new", entities=["y"])]), 2)
        if {crash_at!r} == "building":
            os._exit(9)
        renames = []
        def rename_then_crash(src, dst):
            renames.append(src)
            if len(renames) == 2:  # between moving the old store away and the fresh one in
                os._exit(9)
            src.rename(dst)
        _dirswap.rename_durably = rename_then_crash
        store.commit_rebuild(fresh)
        """
    )
    assert crash.returncode == 9
    reopened = _ladybug(ladybug_config)
    try:
        expected = "old" if crash_at == "building" else "new"
        assert set(reopened.snapshot().memories) == {expected}
        assert reopened.checkpoint() == (1 if crash_at == "building" else 2)
        leftovers = sorted(p.name for p in ladybug_config.data_dir.iterdir())
        assert leftovers == ["graph", "graph.lock"]
    finally:
        reopened.close()


def _child(script: str, wait: bool = True) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if wait:
        proc.communicate(timeout=120)
    return proc


# ---------------------------------------------------------------- Neo4j


@pytest.fixture
def neo4j_store(neo4j_server: Any) -> Iterator[GraphStore]:
    from projections.graph_neo4j import open_neo4j_store

    server = neo4j_server
    if not server.is_running():  # a failed outage test may have left it down
        server.start()
    server.clear()
    store = open_neo4j_store(MemsyncConfig(graph=GraphConfig(backend="neo4j", uri=server.uri)))
    yield store
    store.close()


@pytest.mark.neo4j
def test_neo4j_outage_mid_batch_leaves_nothing_and_store_recovers(
    neo4j_store: GraphStore, neo4j_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from projections import graph_neo4j

    server = neo4j_server
    stream, model = RandomStream(seed=5), GraphModel()
    batches = list(stream.batches(400, sizes=(40,)))
    for i, batch in enumerate(batches[:5], start=1):
        apply(neo4j_store, model, batch, 40 * i)

    statements = 0
    original_run = graph_neo4j._Tx.run

    def kill_server_mid_transaction(
        self: graph_neo4j._Tx, query: str, params: dict[str, Any] | None = None
    ) -> list[list[Any]]:
        nonlocal statements
        statements += 1
        if statements == 4:  # DELETE statements already ran in this transaction
            server.kill()
        return original_run(self, query, params)

    monkeypatch.setattr(graph_neo4j._Tx, "run", kill_server_mid_transaction)
    with pytest.raises(StoreUnavailable, match="Neo4j graph store"):
        neo4j_store.apply(batches[5], 240)
    monkeypatch.undo()
    assert neo4j_store.ping() is False
    with pytest.raises(StoreUnavailable):
        neo4j_store.apply(batches[5], 240)  # connection refused while it is down

    server.start()
    assert neo4j_store.checkpoint() == 200  # nothing of the failed batch
    assert_graph(neo4j_store, model.snapshot())
    for i, batch in enumerate(batches[5:], start=6):  # the same store object carries on
        apply(neo4j_store, model, batch, 40 * i)


@pytest.mark.neo4j
def test_neo4j_errors_and_describe_keep_secrets() -> None:
    from projections.graph_neo4j import open_neo4j_store

    with pytest.raises(ConfigError, match=r"graph\.uri") as caught:
        open_neo4j_store(MemsyncConfig(graph=GraphConfig(backend="neo4j", uri="bolt://neo:hunter2@127.0.0.1:9")))
    assert "hunter2" not in str(caught.value)
    config = MemsyncConfig(
        graph=GraphConfig(backend="neo4j", uri="bolt://127.0.0.1:9", password=SecretStr("s3cret-pw"), timeout=1.0)
    )
    store = open_neo4j_store(config)
    try:
        assert "s3cret-pw" not in store.describe()
        assert store.ping() is False  # nothing listens on port 9: False, not an exception
        with pytest.raises(StoreUnavailable) as unavailable:
            store.apply([Upsert(memory("m"))], 1)
        assert "s3cret-pw" not in str(unavailable.value)
    finally:
        store.close()


def test_neo4j_needs_a_uri() -> None:
    from projections.graph_neo4j import open_neo4j_store

    with pytest.raises(ConfigError, match=r"graph\.uri"):
        open_neo4j_store(MemsyncConfig(graph=GraphConfig(backend="neo4j")))


@pytest.mark.neo4j
def test_neo4j_rejected_statement_is_a_store_error(neo4j_store: GraphStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from projections import _graph_common

    monkeypatch.setattr(_graph_common.Q, "SET_CHECKPOINT", "THIS IS NOT CYPHER")
    with pytest.raises(StoreError, match="up to seq 1") as caught:
        neo4j_store.apply([Upsert(memory("m"))], 1)
    assert not isinstance(caught.value, StoreUnavailable)
    monkeypatch.undo()
    assert neo4j_store.checkpoint() == 0 and neo4j_store.snapshot().memories == {}


def test_ladybug_full_buffer_pool_is_unavailable_not_poison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full buffer pool fails any batch: the runner retries it and parks nothing (parking skips events)."""
    from memsync.config import ProjectorConfig
    from memsync.projector import ProjectionRunner
    from projections import graph_ladybug

    monkeypatch.setattr(graph_ladybug, "WAL_CHECKPOINT", 64 * 2**20)  # the WAL's pages stay in the 16 MB pool
    log = SQLiteEventLog(tmp_path / "events.db", synchronous="OFF")
    text = "x" * 1000  # rows this size fill the pool at ~3,000 events (2,000 characters crash the engine)
    for start in range(0, 4000, 500):
        log.append(
            [
                MemoryAdded(
                    memory_id=f"m{i}",
                    text=f"{i} {text}",
                    user_id=f"u{i % 50}",
                    entities=[Entity(name=f"e{i % 997}"), Entity(name=f"f{i % 31}")],
                    relations=[Relation(source=f"e{i % 997}", relation="knows", target=f"f{i % 31}")],
                )
                for i in range(start, start + 500)
            ]
        )
    store = graph_ladybug.LadybugGraphStore(tmp_path / "graph", buffer_pool=16 * 2**20)
    config = ProjectorConfig(batch_size=100, max_attempts=2, backoff_initial=0.0, backoff_max=0.0)
    runner = ProjectionRunner(log, store, config)
    try:
        with pytest.raises(StoreUnavailable, match=graph_ladybug.POOL_FULL):
            runner.catch_up()
        assert runner.parked_count == 0 and not log.parked("graph")
        assert 0 < store.checkpoint() < log.head().seq  # what was applied stays; the rest waits for a retry
    finally:
        store.close()
        log.close()
