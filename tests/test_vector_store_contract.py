"""The VectorStore contract, run on every backend: Qdrant Edge and qdrant-client's local mode.

Real engines in tmp_path, no mocks. Backend-specific failure tests (the Edge
directory swap, a server that refuses connections) follow the shared suite.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memsync.config import MemsyncConfig, VectorConfig
from memsync.errors import InputError, StoreError, StoreLocked, StoreUnavailable
from memsync.events import pack_vector
from memsync.fold import MemoryState
from memsync.stores import Delete, DeleteScope, Op, Reset, Upsert, VectorStore, point_id, vector_payload
from projections.vector_edge import EdgeVectorStore, open_edge_store
from projections.vector_qdrant import QdrantVectorStore, open_qdrant_store

BACKENDS = ["edge", "qdrant-local"]
DIM = 4
T0 = datetime(2025, 1, 1, tzinfo=UTC)

Factory = Callable[..., Any]


def open_backend(backend: str, data_dir: Path, **vector: Any) -> Any:
    config = MemsyncConfig(data_dir=data_dir, vector=VectorConfig(**vector))
    return open_edge_store(config) if backend == "edge" else open_qdrant_store(config)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def make_store(backend: str, data_dir: Path) -> Iterator[Factory]:
    """Open the backend's store at ``data_dir`` (again: a reopen); everything opened is closed after."""
    opened: list[VectorStore] = []

    def make(**vector: Any) -> Any:
        store = open_backend(backend, data_dir, **vector)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Factory) -> Any:
    return make_store()


@pytest.fixture
def fast_store(backend: str, data_dir: Path) -> Iterator[Any]:
    """Like ``store``, but qdrant-client's local mode runs in memory.

    Local mode commits every point to SQLite on its own (an fsync each), which
    makes thousands of ops take tens of seconds; its in-memory mode runs the same
    collection code without that. Persistence is tested on disk elsewhere.
    """
    store = open_backend(backend, data_dir) if backend == "edge" else open_backend(backend, data_dir, path=":memory:")
    yield store
    store.close()


def memory(
    memory_id: str,
    vector: list[float] | None = None,
    *,
    user: str | None = "alice",
    agent: str | None = None,
    run: str | None = None,
    metadata: dict[str, Any] | None = None,
    seq: int = 1,
    dim: int = DIM,
) -> MemoryState:
    if vector is None:
        vector = [1.0] + [0.0] * (dim - 1)
    return MemoryState(
        memory_id=memory_id,
        text=f"text of {memory_id}",
        user_id=user,
        agent_id=agent,
        run_id=run,
        metadata=metadata or {},
        vector=pack_vector(vector) if vector else None,
        version=seq,
        seq=seq,
        created_at=T0,
        updated_at=T0 + timedelta(seconds=seq),
    )


def no_vector(memory_id: str, **kw: Any) -> MemoryState:
    return memory(memory_id, [], **kw)


def model_apply(model: dict[str, MemoryState], ops: list[Op]) -> None:
    """What a vector store must hold after ``ops``: live memories that have a vector."""
    for op in ops:
        if isinstance(op, Upsert):
            model.pop(op.memory.memory_id, None)
            if op.memory.vector is not None:
                model[op.memory.memory_id] = op.memory
        elif isinstance(op, Delete):
            model.pop(op.memory_id, None)
        elif isinstance(op, DeleteScope):
            for memory_id in [m for m, state in model.items() if state.matches(op.scope)]:
                del model[memory_id]
        else:
            model.clear()


def assert_holds(store: Any, expected: dict[str, MemoryState], *, exact: bool = False) -> None:
    """The store's points are exactly ``expected``: ids, payloads, vectors (exact bytes unless cosine)."""
    found = {p.memory_id: p for p in store.points()}
    assert sorted(found) == sorted(expected)
    for memory_id, state in expected.items():
        point = found[memory_id]
        assert point.payload == vector_payload(state), memory_id
        assert state.vector is not None
        if exact:
            assert point.vector == state.vector, memory_id
        assert store.same_vector(point.vector, state.vector), memory_id
    assert store.count() == len(expected)


def unit(vector: list[float]) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------- apply


def test_new_store_is_empty_at_zero(store: Any) -> None:
    assert store.checkpoint() == 0
    assert store.count() == 0
    assert list(store.points()) == []
    assert store.search([1.0, 0, 0, 0], scope={"user_id": "alice"}) == []
    assert store.ping()


def test_upserts_deletes_scope_deletes_and_reset(make_store: Factory) -> None:
    store = make_store(distance="dot")  # dot keeps vectors as given: bytes compare exactly
    a = memory("a", [0.1, 0.2, 0.3, 0.4], metadata={"topic": "x", "nested": {"k": [1, None]}})
    b = memory(str(uuid.uuid4()), [1.5, -2.0, 0.0, 3.25], user="bob", agent="a1")
    c = memory("c", [0.5, 0.5, 0.5, 0.5], user=None, agent="a1", run="r1")
    store.apply([Upsert(a), Upsert(b), Upsert(c), Upsert(no_vector("d"))], 4)
    assert_holds(store, {"a": a, b.memory_id: b, "c": c}, exact=True)
    assert store.checkpoint() == 4

    a2 = memory("a", [0.4, 0.3, 0.2, 0.1], metadata={"topic": "y"}, seq=5)
    store.apply([Upsert(a2), Delete("c"), Delete("never-existed")], 6)
    assert_holds(store, {"a": a2, b.memory_id: b}, exact=True)

    store.apply([Upsert(no_vector("a", seq=7))], 7)  # the vector is gone: so is the point
    assert_holds(store, {b.memory_id: b}, exact=True)

    x = memory("x", user="bob", agent="a2")
    y = memory("y", user="bob", agent="a1", run="r9")
    store.apply([Upsert(x), Upsert(y), DeleteScope({"user_id": "bob", "agent_id": "a1"})], 9)
    assert_holds(store, {"x": x}, exact=True)

    store.apply([Upsert(a), Reset(), Upsert(c)], 12)
    assert_holds(store, {"c": c}, exact=True)
    assert store.checkpoint() == 12


def test_cosine_store_keeps_unit_vectors(store: Any) -> None:
    a = memory("a", [3.0, 4.0, 0.0, 12.0])
    store.apply([Upsert(a)], 1)
    (point,) = store.points()
    stored = np.frombuffer(point.vector, dtype="<f4")
    assert np.allclose(stored, unit([3.0, 4.0, 0.0, 12.0]), atol=1e-6)
    assert store.same_vector(point.vector, a.vector)
    assert not store.same_vector(point.vector, pack_vector([3.0, 4.0, 0.0, 13.0]))


def test_random_stream_matches_model(fast_store: Any) -> None:
    store = fast_store
    rng = random.Random(20250101)
    model: dict[str, MemoryState] = {}
    ids = [f"m-{i}" for i in range(120)] + [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(40)]
    users, agents, runs = ["alice", "bob", "carol", None], ["a1", "a2", None], ["r1", "r2", None]
    seq = 0

    def random_memory() -> MemoryState:
        user, agent, run = rng.choice(users), rng.choice(agents), rng.choice(runs)
        if not (user or agent or run):
            user = "alice"
        metadata = {"topic": rng.choice("xyz"), "n": rng.randint(0, 3), "flag": rng.random() < 0.5}
        vector = [rng.uniform(-1, 1) for _ in range(DIM)] if rng.random() > 0.1 else []
        return memory(rng.choice(ids), vector, user=user, agent=agent, run=run, metadata=metadata, seq=seq)

    def random_scope() -> dict[str, str]:
        fields = {"user_id": users, "agent_id": agents, "run_id": runs}
        chosen = rng.sample(sorted(fields), rng.randint(1, 2))
        return {f: rng.choice([v for v in fields[f] if v]) for f in chosen}  # type: ignore[misc]

    total = 0
    while total < 3000:
        batch: list[Op] = []
        for _ in range(rng.choice([1, 5, 20, 60, 150])):
            seq += 1
            roll = rng.random()
            if roll < 0.70:
                batch.append(Upsert(random_memory()))
            elif roll < 0.95:
                batch.append(Delete(rng.choice(ids)))
            elif roll < 0.995:
                batch.append(DeleteScope(random_scope()))
            else:
                batch.append(Reset())
        store.apply(batch, seq)
        model_apply(model, batch)
        assert_holds(store, model)
        assert store.checkpoint() == seq
        total += len(batch)


def test_applying_a_batch_twice_is_idempotent(store: Any) -> None:
    batch: list[Op] = [
        Upsert(memory("a")),
        Upsert(memory("b", [0.0, 1.0, 0.0, 0.0], user="bob")),
        Delete("a"),
        Upsert(memory("c", user="bob", agent="a1")),
        DeleteScope({"user_id": "bob", "agent_id": "a1"}),
        Upsert(memory("a", [0.0, 0.0, 1.0, 0.0], seq=6)),
    ]
    store.apply(batch, 6)
    first = {p.memory_id: (p.payload, p.vector) for p in store.points()}
    store.apply(batch, 6)
    assert {p.memory_id: (p.payload, p.vector) for p in store.points()} == first
    assert sorted(first) == ["a", "b"]
    assert store.checkpoint() == 6


def test_bulk_load_into_an_empty_store(store: Any) -> None:
    memories = [memory(f"m{i}", [1.0, i / 600, 0.5, 0.25], seq=i + 1) for i in range(600)]
    memories[10] = no_vector("m10", seq=11)
    store.bulk_load(iter(memories), 600)
    assert_holds(store, {m.memory_id: m for m in memories if m.vector is not None})  # more than one scroll page
    assert store.checkpoint() == 600


# ---------------------------------------------------------------- checkpoint


def test_checkpoint_and_points_survive_close_and_reopen(make_store: Factory) -> None:
    store = make_store()
    a, b = memory("a"), memory("b", [0.0, 1.0, 0.0, 0.0])
    store.apply([Upsert(a), Upsert(b)], 7)
    store.close()
    again = make_store()
    assert again.checkpoint() == 7
    assert_holds(again, {"a": a, "b": b})


def test_checkpoint_of_a_batch_without_vectors_persists_when_the_dimension_is_configured(
    make_store: Factory,
) -> None:
    store = make_store(dimension=DIM)
    store.apply([Upsert(no_vector("a")), Delete("b")], 5)
    assert store.checkpoint() == 5
    store.close()
    assert make_store(dimension=DIM).checkpoint() == 5


def test_wipe_resets_points_and_checkpoint(make_store: Factory) -> None:
    store = make_store()
    store.apply([Upsert(memory("a"))], 3)
    store.wipe()
    assert store.checkpoint() == 0
    assert store.count() == 0
    store.apply([Upsert(memory("b", [1.0, 2.0]))], 4)  # a wiped store takes a new dimension
    assert_holds(store, {"b": memory("b", [1.0, 2.0])})
    store.wipe()
    store.close()
    again = make_store()
    assert again.checkpoint() == 0
    assert again.count() == 0


def test_dropping_the_data_outside_memsync_resets_the_checkpoint(make_store: Factory) -> None:
    store = make_store()
    store.apply([Upsert(memory("a"))], 3)
    if isinstance(store, EdgeVectorStore):
        store.close()
        shutil.rmtree(store.path)  # what an operator does to wipe the embedded store
    else:
        store._client.delete_collection(store._collection)
        store.close()
    again = make_store()
    assert again.checkpoint() == 0
    assert again.count() == 0


# ---------------------------------------------------------------- search


def test_search_is_isolated_by_scope(store: Any) -> None:
    v = [1.0, 0.0, 0.0, 0.0]
    store.apply(
        [
            Upsert(memory("alice-1", v)),
            Upsert(memory("bob-1", v, user="bob")),
            Upsert(memory("bob-a1", v, user="bob", agent="a1")),
            Upsert(memory("bob-a1-r1", v, user="bob", agent="a1", run="r1")),
        ],
        4,
    )

    def ids(scope: dict[str, str]) -> set[str]:
        return {h.memory_id for h in store.search(v, scope=scope)}

    assert ids({"user_id": "alice"}) == {"alice-1"}
    assert ids({"user_id": "bob"}) == {"bob-1", "bob-a1", "bob-a1-r1"}
    assert ids({"user_id": "bob", "agent_id": "a1"}) == {"bob-a1", "bob-a1-r1"}
    assert ids({"agent_id": "a1", "run_id": "r1"}) == {"bob-a1-r1"}
    assert ids({"user_id": "carol"}) == set()
    with pytest.raises(InputError):
        store.search(v, scope={"tenant": "x"})


def test_search_filters_on_metadata(store: Any) -> None:
    v = [1.0, 0.0, 0.0, 0.0]
    rows = {
        "s": {"topic": "food", "n": 1, "flag": True, "score": 0.5, "tags": ["a", "b"], "none": None, "a.b": "dot"},
        "t": {"topic": "food", "n": 2, "flag": False, "score": 1.5, "tags": ["a"]},
        "u": {"topic": "work", "n": 1, "flag": True},
    }
    store.apply([Upsert(memory(k, v, metadata=m)) for k, m in rows.items()], 3)

    def ids(**filters: Any) -> set[str]:
        return {h.memory_id for h in store.search(v, scope={"user_id": "alice"}, filters=filters)}

    assert ids(topic="food") == {"s", "t"}
    assert ids(topic="food", n=1) == {"s"}
    assert ids(flag=True) == {"s", "u"}
    assert ids(flag=False) == {"t"}
    assert ids(score=1.5) == {"t"}
    assert ids(tags=["a"]) == {"t"}
    assert ids(none=None) == {"s"}
    assert ids(**{"a.b": "dot"}) == {"s"}
    assert ids(topic="none-such") == set()


def test_search_orders_by_score_and_applies_threshold_and_limit(store: Any) -> None:
    rng = np.random.default_rng(7)
    vectors = {f"m{i}": rng.normal(size=DIM).astype(np.float32).tolist() for i in range(30)}
    store.apply([Upsert(memory(k, v, metadata={"even": int(k[1:]) % 2 == 0})) for k, v in vectors.items()], 30)
    query = [0.3, -0.2, 0.9, 0.1]
    cosine = {k: float(unit(v) @ unit(query)) for k, v in vectors.items()}
    ranked = sorted(cosine, key=lambda k: -cosine[k])

    hits = store.search(query, scope={"user_id": "alice"}, limit=5)
    assert [h.memory_id for h in hits] == ranked[:5]
    assert [h.score for h in hits] == pytest.approx([cosine[k] for k in ranked[:5]], abs=1e-5)
    assert hits[0].payload == vector_payload(
        memory(ranked[0], vectors[ranked[0]], metadata=hits[0].payload["metadata"])
    )

    above = store.search(query, scope={"user_id": "alice"}, limit=100, threshold=0.5)
    assert [h.memory_id for h in above] == [k for k in ranked if cosine[k] >= 0.5]

    # a filter checked on the hits (booleans on Edge) still gives the best ones, in order
    even = store.search(query, scope={"user_id": "alice"}, filters={"even": True}, limit=3)
    assert [h.memory_id for h in even] == [k for k in ranked if int(k[1:]) % 2 == 0][:3]


# ---------------------------------------------------------------- rebuild


def test_rebuild_commit_swaps_readers_to_the_fresh_store(make_store: Factory) -> None:
    store = make_store()
    a, b, c = memory("a"), memory("b", [0.0, 1.0, 0.0, 0.0]), memory("c", [0.0, 0.0, 1.0, 0.0])
    store.apply([Upsert(a), Upsert(b)], 5)
    fresh = store.begin_rebuild()
    assert fresh.checkpoint() == 0
    fresh.bulk_load(iter([c]), 9)
    assert_holds(store, {"a": a, "b": b})  # readers do not see the rebuild yet
    assert store.checkpoint() == 5
    store.commit_rebuild(fresh)
    assert_holds(store, {"c": c})
    assert store.checkpoint() == 9
    assert [h.memory_id for h in store.search([0.0, 0.0, 1.0, 0.0], scope={"user_id": "alice"})] == ["c"]
    store.apply([Upsert(a)], 10)
    store.close()
    again = make_store()
    assert again.checkpoint() == 10
    assert_holds(again, {"a": a, "c": c})
    assert leftovers(again) == []


def test_rebuild_abort_keeps_the_old_store(make_store: Factory) -> None:
    store = make_store()
    a = memory("a")
    store.apply([Upsert(a)], 5)
    fresh = store.begin_rebuild()
    fresh.apply([Upsert(memory("c", [1.0, 2.0, 3.0, 4.0]))], 9)
    store.abort_rebuild(fresh)
    assert_holds(store, {"a": a})
    assert store.checkpoint() == 5
    assert leftovers(store) == []
    store.close()
    assert_holds(make_store(), {"a": a})


def test_rebuild_may_change_the_dimension(make_store: Factory) -> None:
    store = make_store()
    store.apply([Upsert(memory("a"))], 1)
    fresh = store.begin_rebuild()
    wide = memory("a", [1.0, 0.0, 0.0, 0.0, 0.0, 1.0], dim=6)
    fresh.apply([Upsert(wide)], 1)
    store.commit_rebuild(fresh)
    assert_holds(store, {"a": wide})


def leftovers(store: Any) -> list[str]:
    """What a rebuild may leave behind: sibling directories (Edge), unreachable collections (local mode)."""
    if isinstance(store, EdgeVectorStore):
        siblings = store.path.parent.iterdir()
        return sorted(p.name for p in siblings if p.name.startswith(store.path.name + ".") and p.suffix != ".lock")
    assert isinstance(store, QdrantVectorStore)
    names = [c.name for c in store._client.get_collections().collections]
    return sorted(set(names) - {store._collection})


# ---------------------------------------------------------------- errors


def test_dimension_mismatch_is_a_store_error(make_store: Factory) -> None:
    store = make_store()
    store.apply([Upsert(memory("a"))], 1)
    with pytest.raises(StoreError, match=r"'b'.*dimension 3"):
        store.apply([Upsert(memory("b", [1.0, 2.0, 3.0]))], 2)
    with pytest.raises(StoreError, match="'d'"):
        store.apply([Upsert(memory("c")), Upsert(memory("d", [1.0, 2.0]))], 2)
    with pytest.raises(StoreError):
        store.search([1.0, 2.0, 3.0], scope={"user_id": "alice"})
    assert store.checkpoint() == 1


def test_configured_dimension_refuses_other_vectors(backend: str, tmp_path: Path) -> None:
    store = open_backend(backend, tmp_path / "other", dimension=8)
    try:
        with pytest.raises(StoreError, match=r"'a'.*dimension 4.*dimension 8"):
            store.apply([Upsert(memory("a"))], 1)
        assert store.checkpoint() == 0
    finally:
        store.close()


def test_ping_is_false_after_close_and_closed_store_raises(store: Any) -> None:
    store.close()
    assert store.ping() is False
    with pytest.raises(StoreError, match="closed"):
        store.apply([Upsert(memory("a"))], 1)


def test_second_opener_gets_store_locked_naming_the_holder(backend: str, data_dir: Path, store: Any) -> None:
    with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
        open_backend(backend, data_dir)


# ---------------------------------------------------------------- crashes (kill -9)

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from datetime import UTC, datetime
    from memsync.config import MemsyncConfig, VectorConfig
    from memsync.events import pack_vector
    from memsync.fold import MemoryState
    from memsync.stores import Upsert
    from projections.vector_edge import open_edge_store
    from projections.vector_qdrant import open_qdrant_store

    backend, data_dir, scenario, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    config = MemsyncConfig(data_dir=data_dir)
    store = (open_edge_store if backend == "edge" else open_qdrant_store)(config)
    t = datetime(2025, 1, 1, tzinfo=UTC)

    def memory(i):
        return MemoryState(memory_id=f"m{i}", text="t", user_id="u", vector=pack_vector([1.0, i, 0.5, 0.25]),
                           version=1, seq=i + 1, created_at=t, updated_at=t)

    store.apply([Upsert(memory(i)) for i in range(count)], 42)
    if scenario == "rebuild":
        fresh = store.begin_rebuild()
        fresh.apply([Upsert(memory(i)) for i in range(count, count + 5)], 99)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def run_until_killed(
    backend: str, data_dir: Path, scenario: str, count: int, while_alive: Callable[[int], None]
) -> None:
    """Run CHILD until it says ready, call ``while_alive(pid)``, then SIGKILL it."""
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, backend, str(data_dir), scenario, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "ready", child.stderr.read() if child.stderr else ""
        while_alive(child.pid)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


def test_kill_9_after_apply_keeps_points_and_checkpoint(backend: str, data_dir: Path) -> None:
    def second_opener_is_refused(pid: int) -> None:
        with pytest.raises(StoreLocked, match=f"pid {pid}"):
            open_backend(backend, data_dir)

    run_until_killed(backend, data_dir, "apply", 100, second_opener_is_refused)
    store = open_backend(backend, data_dir)
    try:
        assert store.checkpoint() == 42
        assert sorted(p.memory_id for p in store.points()) == sorted(f"m{i}" for i in range(100))
    finally:
        store.close()


def test_kill_9_mid_rebuild_leaves_the_old_store(backend: str, data_dir: Path) -> None:
    run_until_killed(backend, data_dir, "rebuild", 20, lambda pid: None)
    store = open_backend(backend, data_dir)
    try:
        assert store.checkpoint() == 42
        assert sorted(p.memory_id for p in store.points()) == sorted(f"m{i}" for i in range(20))
        assert leftovers(store) == []
    finally:
        store.close()


# ---------------------------------------------------------------- Edge only


def cut_swap(data_dir: Path, *, complete: bool) -> tuple[MemoryState, MemoryState]:
    """Leave an Edge store as a crash between the two renames of a swap would."""
    store = open_backend("edge", data_dir)
    old, new = memory("old"), memory("new")
    store.apply([Upsert(old)], 3)
    fresh = store.begin_rebuild()
    fresh.apply([Upsert(new)], 9)
    fresh.close()
    path = store.path
    store.close()
    if complete:
        (fresh.path / "REBUILD-COMPLETE").touch()
    path.rename(path.with_name(path.name + ".old"))  # the first rename happened, not the second
    return old, new


@pytest.mark.parametrize("complete", [True, False])
def test_edge_swap_cut_between_its_renames_is_finished_or_undone(data_dir: Path, complete: bool) -> None:
    old, new = cut_swap(data_dir, complete=complete)
    store = open_backend("edge", data_dir)
    try:
        if complete:  # the commit had begun: the rebuilt store is the store
            assert store.checkpoint() == 9
            assert_holds(store, {"new": new})
        else:
            assert store.checkpoint() == 3
            assert_holds(store, {"old": old})
        assert leftovers(store) == []
        assert sorted(p.name for p in store.path.iterdir()) == ["memsync.json", "shard"]
    finally:
        store.close()


def test_edge_one_rebuild_at_a_time(data_dir: Path) -> None:
    store = open_backend("edge", data_dir)
    try:
        fresh = store.begin_rebuild()
        with pytest.raises(StoreError, match="already under way"):
            store.begin_rebuild()
        store.abort_rebuild(fresh)
        store.abort_rebuild(store.begin_rebuild())
        assert leftovers(store) == []
    finally:
        store.close()


def test_edge_checkpoint_lives_in_the_store_directory(data_dir: Path) -> None:
    store = open_backend("edge", data_dir)
    store.apply([Upsert(no_vector("a"))], 8)  # no dimension yet: the checkpoint is recorded all the same
    path = store.path
    store.close()
    assert json.loads((path / "memsync.json").read_text())["checkpoint"] == 8
    again = open_backend("edge", data_dir)
    assert again.checkpoint() == 8
    again.close()


def test_edge_lost_meta_file_recovers_the_dimension_from_the_shard(data_dir: Path) -> None:
    store = open_backend("edge", data_dir)
    store.apply([Upsert(memory("a"))], 1)
    store.close()
    (store.path / "memsync.json").unlink()
    store = open_backend("edge", data_dir)
    try:
        assert store.checkpoint() == 1  # once the shard exists, the checkpoint is a point in it
        with pytest.raises(StoreError, match=r"'c'.*dimension 3"):
            store.apply([Upsert(memory("c", [1.0, 2.0, 3.0])), Upsert(memory("b"))], 2)
    finally:
        store.close()


def test_edge_rejected_payload_names_the_memory(data_dir: Path) -> None:
    store = open_backend("edge", data_dir)
    try:
        bad = memory("bad", metadata={"x": float("nan")})  # the bindings refuse NaN in a payload
        with pytest.raises(StoreError, match=r"(?s)memory 'bad'.*NaN"):
            store.apply([Upsert(memory("a")), Upsert(bad), Upsert(memory("b"))], 2)
        assert store.checkpoint() == 0
    finally:
        store.close()


# ---------------------------------------------------------------- Qdrant only


def test_qdrant_readers_use_an_alias_that_a_rebuild_swaps(data_dir: Path) -> None:
    store = open_backend("qdrant-local", data_dir)
    try:
        store.apply([Upsert(memory("a"))], 1)
        client = store._client
        (before,) = [a.collection_name for a in client.get_aliases().aliases if a.alias_name == "memsync_memories"]
        fresh = store.begin_rebuild()
        fresh.apply([Upsert(memory("b"))], 2)
        store.commit_rebuild(fresh)
        (after,) = [a.collection_name for a in client.get_aliases().aliases if a.alias_name == "memsync_memories"]
        assert before != after
        assert [c.name for c in client.get_collections().collections] == [after]
        assert client.get_collection(after).config.metadata == {"memsync_checkpoint": 2}
    finally:
        store.close()


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_qdrant_server_that_refuses_connections_is_unavailable(tmp_path: Path) -> None:
    config = MemsyncConfig(
        data_dir=tmp_path,
        vector=VectorConfig(backend="qdrant", url="http://user:pw@127.0.0.1:9", api_key="s3cret-key", timeout=2),
    )
    store = open_qdrant_store(config)
    try:
        assert "s3cret" not in store.describe() and "pw" not in store.describe()
        assert store.ping() is False
        with pytest.raises(StoreUnavailable) as raised:
            store.apply([Upsert(memory("a"))], 1)
        assert "s3cret" not in str(raised.value)
        with pytest.raises(StoreUnavailable):
            store.checkpoint()
    finally:
        store.close()


def test_point_ids_are_the_memory_uuid_or_uuid5() -> None:
    given = str(uuid.uuid4())
    assert point_id(given) == given
    assert uuid.UUID(point_id("m-1")).version == 5


# ---------------------------------------------------------------- exact metadata, ids, the Edge WAL checkpoint


def test_metadata_floats_and_hostile_filter_keys_round_trip(store: Any) -> None:
    floats = {"x": -0.10101787042252375, "l": [0.1, 1e-300, -2.5e300], "d": {"y": 0.30000000000000004}}
    odd = {'q"k': 1, "b\\s": "v", "a.b[0]": True}
    store.apply([Upsert(memory("f", metadata=floats)), Upsert(memory("o", [0.0, 1.0, 0.0, 0.0], metadata=odd))], 2)
    assert_holds(store, {"f": memory("f", metadata=floats), "o": memory("o", [0.0, 1.0, 0.0, 0.0], metadata=odd)})
    v = [1.0, 0.0, 0.0, 0.0]
    assert [h.memory_id for h in store.search(v, scope={"user_id": "alice"}, filters={"x": floats["x"]})] == ["f"]
    assert store.search(v, scope={"user_id": "alice"}, filters={"x": -0.10101787042252376}) == []
    for key, value in odd.items():
        hits = store.search(v, scope={"user_id": "alice"}, filters={key: value})
        assert [h.memory_id for h in hits] == ["o"], key
        assert hits[0].payload["metadata"] == odd


def test_point_id_is_uuid5_unless_a_uuid() -> None:
    """point_id computes UUIDv5 by hand for short ids: the same as the uuid module's."""
    namespace = uuid.UUID("6f1c2a4e-6d8b-5b8e-9a57-3c1f2d7e9b10")

    def reference(memory_id: str) -> str:
        try:
            return str(uuid.UUID(memory_id))
        except ValueError:
            return str(uuid.uuid5(namespace, memory_id))

    rng = random.Random(5)
    a_uuid = uuid.uuid4()
    ids = ["", "a", "名前\u200b🚀", "x" * 31, "x" * 32, str(a_uuid), a_uuid.hex, "{" + str(a_uuid) + "}"]
    ids += ["".join(rng.choice("ab-0f{}:") for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    for memory_id in ids:
        assert point_id(memory_id) == reference(memory_id), memory_id


KILLED_AFTER_APPLIES = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from memsync.config import MemsyncConfig
    from memsync.stores import Delete, Upsert
    from tests.test_vector_store_contract import memory, open_backend

    store = open_backend("edge", Path(sys.argv[1]))
    flushes = []
    store._flush = lambda: flushes.append(1)  # any flush from here on would show (and not happen)
    for batch in range(1, 41):
        ops = [Upsert(memory(f"m{batch}-{k}", [1.0, float(k), 0.0, 0.0], seq=batch)) for k in range(3)]
        store.apply(ops + [Delete(f"m{batch - 1}-0")], batch)
    assert not flushes
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_edge_apply_does_not_flush_and_a_killed_process_keeps_checkpoint_and_batches(data_dir: Path) -> None:
    store = open_backend("edge", data_dir)
    store.apply([Upsert(memory("m0-0"))], 0)  # the shard exists (and is flushed at close)
    store.close()
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_APPLIES, str(data_dir)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    store = open_backend("edge", data_dir)
    try:
        assert store.checkpoint() == 40
        expected = {f"m{b}-{k}" for b in range(1, 41) for k in range(3)} - {f"m{b}-0" for b in range(1, 40)}
        assert {p.memory_id for p in store.points()} == expected
    finally:
        store.close()


# ---------------------------------------------------------------- Edge bulk load: mapped pages


def _mapped_kb(path: Path) -> int:
    """Resident KB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, current = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields[0][0] in "0123456789abcdef" and "-" in fields[0]:
                current = fields[-1] == str(path)
            elif current and fields[0] == "Rss:":
                total += int(fields[1])
    return total


@pytest.mark.skipif(sys.platform != "linux", reason="release_mapped is Linux only (a no-op elsewhere)")
def test_release_mapped_pages_out_shared_mappings_and_keeps_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmap

    from projections.vector_edge import release_mapped

    size = 8 * 2**20
    shared, private = tmp_path / "shared.bin", tmp_path / "private.bin"
    for path in (shared, private):
        path.write_bytes(b"\0" * size)
    with open(shared, "r+b") as f, open(private, "r+b") as g:
        written = mmap.mmap(f.fileno(), size)  # MAP_SHARED, written through: every page dirty
        kept = mmap.mmap(g.fileno(), size, access=mmap.ACCESS_COPY)  # MAP_PRIVATE: its writes exist only here
        data = random.Random(3).randbytes(size)
        written[:], kept[:] = data, data
        assert _mapped_kb(shared) >= size // 1024 * 0.9 and _mapped_kb(private) >= size // 1024 * 0.9
        monkeypatch.chdir(tmp_path.parent)  # a relative path names the same mappings
        release_mapped(Path(tmp_path.name))
        assert _mapped_kb(shared) < size // 1024 * 0.1  # paged out
        assert _mapped_kb(private) >= size // 1024 * 0.9  # left alone
        assert written[:] == data and kept[:] == data  # read back through the mappings
        written.close()
        kept.close()
    assert shared.read_bytes() == data and private.read_bytes() == b"\0" * size


def test_edge_bulk_load_releasing_and_recycling_keeps_every_point(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from projections import vector_edge

    monkeypatch.setattr(vector_edge, "BULK_BATCH", 40)
    monkeypatch.setattr(vector_edge, "RECYCLE_POINTS", 200)  # released after most writes, recycled after some
    memories = [memory(f"m{i}", [1.0, i / 600, 0.5, 0.25], seq=i + 1) for i in range(600)]
    store = open_backend("edge", data_dir)
    try:
        store.bulk_load(iter(memories), 600)
        assert_holds(store, {m.memory_id: m for m in memories})
        assert store.checkpoint() == 600
    finally:
        store.close()
    again = open_backend("edge", data_dir)
    try:
        assert_holds(again, {m.memory_id: m for m in memories})
    finally:
        again.close()
