"""The projector drives both stores to fold(log): batches, coalescing, retries, parking, rebuild, verify."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from memsync.errors import StoreError, StoreUnavailable
from memsync.events import (
    Entity,
    MemoriesDeleted,
    MemoriesReset,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    Relation,
    utcnow,
)
from memsync.fold import fold
from memsync.hooks import Hooks
from memsync.projector import ProjectionRunner, plan_batch
from memsync.stores import Delete, DeleteScope, Op, Projection, Reset, Upsert
from memsync.system import MemSync
from memsync.verify import verify_store
from tests.fixtures_system import ALL_PAIRS
from tests.streams import random_stream

MakeSystem = Callable[..., MemSync]


def append_all(system: MemSync, events: Sequence[object], *, chunk: int = 1) -> None:
    items = list(events)
    for start in range(0, len(items), chunk):
        system.log.append(items[start : start + chunk])  # type: ignore[arg-type]


def assert_in_sync(system: MemSync) -> None:
    for kind, drift in system.verify().items():
        assert drift.ok, (kind, drift)
        assert drift.checkpoint == system.log.head().seq, kind


# ---------------------------------------------------------------- coalescing


def test_plan_batch_coalesces_each_memory_to_its_net_effect(make_system: MakeSystem) -> None:
    system = make_system("memory")
    append_all(
        system,
        [
            MemoryAdded(memory_id="a", text="one", user_id="u"),
            MemoryUpdated(memory_id="a", text="two"),
            MemoryAdded(memory_id="b", text="b", user_id="u"),
            MemoryUpdated(memory_id="a", text="three"),
            MemoryDeleted(memory_id="b"),
        ],
    )
    ops = plan_batch(system.log, list(system.log.read()))
    assert [type(op).__name__ for op in ops] == ["Upsert", "Delete"]
    upsert = ops[0]
    assert isinstance(upsert, Upsert)
    assert (upsert.memory.text, upsert.memory.version, upsert.memory.seq) == ("three", 3, 4)


def test_plan_batch_splits_at_bulk_events_and_loads_prior_state(make_system: MakeSystem) -> None:
    system = make_system("memory")
    append_all(
        system,
        [
            MemoryAdded(
                memory_id="a", text="one", user_id="u", relations=[Relation(source="A", relation="r", target="B")]
            ),
            MemoryAdded(memory_id="b", text="b", user_id="v"),
        ],
    )
    append_all(
        system,
        [
            MemoryUpdated(memory_id="a", text="two"),  # prior state comes from the log
            MemoriesDeleted(user_id="u"),
            MemoryAdded(memory_id="a", text="again", user_id="u"),
            MemoriesReset(),
            MemoryAdded(memory_id="c", text="c", user_id="u"),
        ],
    )
    ops = plan_batch(system.log, list(system.log.read(after=2)))
    assert [type(op) for op in ops] == [Upsert, DeleteScope, Upsert, Reset, Upsert]
    first = ops[0]
    assert isinstance(first, Upsert)
    assert first.memory.text == "two" and first.memory.relations == (("a", "r", "b"),)
    assert ops[1] == DeleteScope({"user_id": "u"})
    again = ops[2]
    assert isinstance(again, Upsert) and again.memory.version == 4
    assert all(op.before is None for op in ops if isinstance(op, Upsert))  # a bulk event: no store state vouched


def test_plan_batch_vouches_for_the_state_before_the_batch(make_system: MakeSystem) -> None:
    system = make_system("memory")
    append_all(
        system,
        [
            MemoryAdded(memory_id="a", text="one", user_id="u", entities=[Entity(name="Ann")]),
            MemoryAdded(memory_id="b", text="b", user_id="u"),
            MemoryAdded(memory_id="c", text="c", user_id="u"),
        ],
    )
    append_all(
        system,
        [
            MemoryUpdated(memory_id="a", text="two"),
            MemoryUpdated(memory_id="a", text="three"),
            MemoryUpdated(memory_id="b", text="b2"),
            MemoryAdded(memory_id="d", text="d", user_id="u"),
            MemoryDeleted(memory_id="c"),
        ],
    )
    ops = plan_batch(system.log, list(system.log.read(after=3)))
    upserts = {op.memory.memory_id: op for op in ops if isinstance(op, Upsert)}
    a = upserts["a"]
    assert a.memory.text == "three" and a.before is not None
    assert (a.before.text, a.before.version, a.before.seq, a.before.entities) == ("one", 1, 1, (("ann", None),))
    assert upserts["b"].before is not None and upserts["d"].before is None  # an add: nothing to vouch for
    [deleted] = [op for op in ops if isinstance(op, Delete)]
    assert deleted.memory_id == "c" and deleted.before is not None and deleted.before.text == "c"
    ops = plan_batch(system.log, list(system.log.read(after=3)), unsure={"a"})  # e.g. a parked event of "a"
    assert [op.before is None for op in ops if isinstance(op, Upsert)] == [True, False, True]


def test_an_update_after_a_parked_event_still_rewrites_the_memory(make_system: MakeSystem) -> None:
    """The store lacks a parked event's effect: a later update that keeps the memory's entities must
    still rewrite its edges (the store may write only what changed where the projector vouches for
    the state before, and it never does for a memory with a parked event)."""
    system = make_system("embedded")
    flaky = Flaky(system.store("graph"))
    runner = ProjectionRunner(system.log, flaky, system.config.projector, Hooks())
    system.log.append([MemoryAdded(memory_id="m", text="one", user_id="u", entities=[Entity(name="Ann")])])
    runner.catch_up()
    system.log.append([MemoryUpdated(memory_id="m", text="two", entities=[Entity(name="Bob")])])
    flaky.poison = "m"
    runner.catch_up()
    assert [p.seq for p in system.log.parked("graph")] == [2]
    assert not verify_store(system.log, flaky.inner).ok  # the store still says Ann
    flaky.poison = None
    system.log.append([MemoryUpdated(memory_id="m", text="three")])  # keeps Bob
    ProjectionRunner(system.log, flaky, system.config.projector, Hooks()).catch_up()  # a new runner reads the parked
    assert verify_store(system.log, flaky.inner).ok


# ---------------------------------------------------------------- random streams on every backend


@pytest.mark.parametrize("pair", ALL_PAIRS)
def test_random_stream_in_varying_batches_equals_fold(make_system: MakeSystem, pair: str) -> None:
    system = make_system(pair)
    rng = random.Random(7)
    events = list(random_stream(2500, seed=11))
    position = 0
    while position < len(events):
        size = rng.choice([1, 3, 17, 120, 400])
        append_all(system, events[position : position + size], chunk=rng.choice([1, size]))
        position += size
        for kind in system.kinds:
            runner = system.runner(kind)
            runner.config = runner.config.model_copy(update={"batch_size": rng.choice([1, 5, 64, 1000])})
            runner.catch_up()
        if rng.random() < 0.2:
            assert_in_sync(system)
    assert_in_sync(system)
    state = fold(system.log.read())
    assert len(state) > 50


# ---------------------------------------------------------------- failures


class Flaky(Projection):
    """Failure injection around a real store (the store cannot fail on cue by itself)."""

    def __init__(self, inner: Projection, *, down_for: int = 0, poison: str | None = None) -> None:
        self.inner = inner
        self.kind = inner.kind  # type: ignore[misc]
        self.down_for = down_for
        self.poison = poison
        self.calls = 0

    def checkpoint(self) -> int:
        return self.inner.checkpoint()

    def apply(self, ops: Sequence[Op], checkpoint: int) -> None:
        self.calls += 1
        if self.down_for > 0:
            self.down_for -= 1
            raise StoreUnavailable("injected outage")
        if self.poison and any(isinstance(op, Upsert) and op.memory.memory_id == self.poison for op in ops):
            raise StoreError(f"injected rejection of {self.poison}")
        self.inner.apply(ops, checkpoint)

    def ping(self) -> bool:
        return self.down_for == 0

    def wipe(self) -> None:
        self.inner.wipe()


@pytest.mark.parametrize("pair", ["memory", "embedded"])
def test_poison_event_is_parked_and_retried_once_fixed(make_system: MakeSystem, pair: str) -> None:
    system = make_system(pair)
    hooks = Hooks()
    parked: list[int] = []
    hooks.on("parked", lambda projection, seq, error: parked.append(seq))
    flaky = Flaky(system.store("vector"), poison="bad")
    runner = ProjectionRunner(system.log, flaky, system.config.projector, hooks)
    append_all(
        system,
        [
            MemoryAdded(memory_id="ok1", text="fine", user_id="u", vector=[1, 0]),
            MemoryAdded(memory_id="bad", text="poison", user_id="u", vector=[0, 1]),
            MemoryAdded(memory_id="ok2", text="fine", user_id="u", vector=[1, 1]),
        ],
        chunk=3,
    )
    runner.catch_up()
    assert parked == [2]
    assert flaky.checkpoint() == 3  # the stream went on past the poison event
    assert [p.seq for p in system.log.parked("vector")] == [2]
    assert "injected rejection" in system.log.parked("vector")[0].error
    drift = verify_store(system.log, flaky.inner)
    assert drift.missing == ["bad"]
    system.log.append([MemoryUpdated(memory_id="bad", text="poison, edited")])
    runner.catch_up()  # still rejected: parked again, stream goes on
    assert [p.seq for p in system.log.parked("vector")] == [2, 4]
    flaky.poison = None  # the cause is fixed
    runner.retry_parked(2)
    runner.retry_parked(4)
    assert system.log.parked("vector") == []
    assert verify_store(system.log, flaky.inner).ok


def test_unavailable_store_is_retried_with_backoff_then_catches_up(make_system: MakeSystem) -> None:
    system = make_system("memory")
    hooks = Hooks()
    retries: list[tuple[int, float]] = []
    hooks.on("retry", lambda projection, attempt, error, delay: retries.append((attempt, delay)))
    flaky = Flaky(system.store("graph"), down_for=2)
    runner = ProjectionRunner(system.log, flaky, system.config.projector, hooks)
    system.log.append([MemoryAdded(memory_id="a", text="x", user_id="u")])
    assert runner.catch_up() == 1
    assert [a for a, _ in retries] == [1, 2]
    assert all(d >= 0 for _, d in retries)
    assert system.log.parked() == []  # an outage is never the event's fault
    flaky.down_for = 10**6
    system.log.append([MemoryAdded(memory_id="b", text="y", user_id="u")])
    with pytest.raises(StoreUnavailable):
        runner.catch_up()
    assert flaky.checkpoint() == 1 and system.log.parked() == []


def test_one_failing_projection_does_not_stop_the_other(make_system: MakeSystem) -> None:
    system = make_system("memory")
    system._stores["graph"] = Flaky(system.store("graph"), down_for=10**6)
    system.log.append([MemoryAdded(memory_id="a", text="x", user_id="u", vector=[1.0, 0.0])])
    result = system.project()
    assert result["vector"] == {"applied": 1, "checkpoint": 1}
    assert "injected outage" in result["graph"]["error"]
    status = system.status()["projections"]
    assert status["graph"]["lag"] == 1 and status["graph"]["reachable"] is False
    assert status["vector"]["lag"] == 0


# ---------------------------------------------------------------- rebuild and verify


@pytest.mark.parametrize("pair", ALL_PAIRS)
def test_rebuild_fresh_in_place_to_seq_and_as_of(make_system: MakeSystem, pair: str) -> None:
    system = make_system(pair)
    events = list(random_stream(700, seed=3))
    append_all(system, events[:400], chunk=40)
    cut = system.log.head().seq
    time.sleep(0.02)
    as_of = utcnow()
    time.sleep(0.02)
    append_all(system, events[400:], chunk=30)
    system.project()
    assert_in_sync(system)
    head = system.log.head().seq

    assert system.rebuild() == {k: head for k in system.kinds}
    assert_in_sync(system)
    system.rebuild(in_place=True)
    assert_in_sync(system)

    system.rebuild(to_seq=123)
    for kind, drift in system.verify().items():
        assert drift.ok and drift.checkpoint == 123, kind
    expected = fold(system.log.read(limit=123))
    graph_ids = set(system.store("graph").snapshot().memories)  # type: ignore[attr-defined]
    assert graph_ids == set(expected.memories)

    system.rebuild(as_of=as_of)
    for kind, drift in system.verify().items():
        assert drift.ok and drift.checkpoint == cut, kind
    system.project()
    assert_in_sync(system)


@pytest.mark.parametrize("pair", ALL_PAIRS)
def test_verify_detects_each_kind_of_drift_and_repair_fixes_it(make_system: MakeSystem, pair: str) -> None:
    system = make_system(pair)
    append_all(
        system,
        [
            MemoryAdded(
                memory_id="keep",
                text="keep me",
                user_id="u",
                vector=[1, 0, 0],
                relations=[Relation(source="Ann", relation="knows", target="Bo")],
            ),
            MemoryAdded(memory_id="lose", text="lose me", user_id="u", vector=[0, 1, 0]),
            MemoryAdded(memory_id="edit", text="original", user_id="u", vector=[0, 0, 1]),
        ],
    )
    system.project()
    assert_in_sync(system)
    state = fold(system.log.read())
    vector, graph = system.store("vector"), system.store("graph")
    checkpoint = vector.checkpoint()
    ghost = state.memories["keep"].__class__(
        **{
            **{f: getattr(state.memories["keep"], f) for f in state.memories["keep"].__struct_fields__},
            "memory_id": "ghost",
            "text": "never added",
        }
    )
    stale = state.memories["edit"].__class__(
        **{
            **{f: getattr(state.memories["edit"], f) for f in state.memories["edit"].__struct_fields__},
            "text": "edited behind memsync's back",
        }
    )
    for store in (vector, graph):  # drift made behind memsync's back, checkpoint untouched
        store.apply([Delete("lose"), Upsert(ghost), Upsert(stale)], checkpoint)
    report = system.verify()
    for kind in ("vector", "graph"):
        assert report[kind].missing == ["lose"], kind
        assert report[kind].extra == ["ghost"], kind
        assert report[kind].stale == ["edit"], kind
    system.verify(repair=True)
    assert_in_sync(system)


@pytest.mark.parametrize("chunk", [1, 7, 5000])
def test_final_states_in_chunks_are_the_fold_of_the_log(tmp_path: Path, chunk: int) -> None:
    from memsync.projector import final_states
    from memsync.sqlite_log import SQLiteEventLog

    log = SQLiteEventLog(tmp_path / "events.db", synchronous="OFF")
    events = list(random_stream(400, seed=17))
    for start in range(0, len(events), 40):
        log.append(events[start : start + 40])
    for seq in (log.head().seq, 250):  # the head (the log's own table) and a seq before it (the streams)
        steps: list[int] = []
        got = {m.memory_id: m for m in final_states(log, seq, chunk=chunk, progress=steps.append)}
        want = {m.memory_id: m for m in fold(log.read(limit=seq))}
        assert got == want and len(got) > 20
        assert sum(steps) == seq and all(step >= 0 for step in steps)
    log.close()
