"""fold: recorded events -> live state, deterministically and streaming."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memsync.errors import CommandRefused
from memsync.events import (
    Entity,
    Event,
    MemoriesDeleted,
    MemoriesReset,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    RecordedEvent,
    Relation,
    pack_vector,
)
from memsync.fold import State, entity_key, fold, graph_view
from memsync.sqlite_log import SQLiteEventLog
from tests.log_contract import add, delete, export_lines, import_lines, update


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SQLiteEventLog]:
    with SQLiteEventLog(tmp_path / "events.db") as log:
        yield log


def rel(source: str, relation: str, target: str) -> Relation:
    return Relation(source=source, relation=relation, target=target)


def test_fold_builds_live_memories(log: SQLiteEventLog) -> None:
    [a, _] = log.append(
        [
            add("m1", metadata={"k": 1}, vector=[1.0, 2.0], entities=[Entity(name="Alice")]),
            add("m2", user=None, agent_id="a1"),
        ]
    )
    [u] = log.append([update("m1", text="new", metadata={"k": 2})])
    log.append([delete("m2")])
    state = fold(log.read())
    assert list(state.memories) == ["m1"] and state.seq == 4
    m1 = state.memories["m1"]
    assert (m1.text, m1.metadata, m1.version, m1.seq) == ("new", {"k": 2}, 2, 3)
    assert m1.vector == pack_vector([1.0, 2.0])  # kept: the update did not touch it
    assert m1.entities == (("alice", None),)
    assert (m1.created_at, m1.updated_at) == (a.recorded_at, u.recorded_at)
    assert (m1.user_id, m1.agent_id, m1.run_id) == ("u1", None, None)


def test_fold_is_deterministic_and_resumable(log: SQLiteEventLog, tmp_path: Path) -> None:
    _random_history(log, random.Random(7), steps=400)
    records = list(log.read())
    first, second = fold(records), fold(iter(records))
    assert first.memories == second.memories and first.seq == second.seq == len(records)
    assert graph_view(first) == graph_view(second)
    for cut in (0, 1, 137, len(records)):
        resumed = fold(log.read(after=cut), fold(log.read(limit=cut)))
        assert resumed.memories == first.memories
    # a copy of the log (export/import) folds to the same state
    with SQLiteEventLog(tmp_path / "copy.db") as copy:
        copy.import_records(import_lines(export_lines(log)))
        assert fold(copy.read()).memories == first.memories
    assert len(first) == log.stats().live_memories


def test_fold_streams_and_holds_only_live_memories(log: SQLiteEventLog) -> None:
    for i in range(300):
        log.append([add(f"m{i}", vector=[float(i)]), update(f"m{i}"), delete(f"m{i}")])
    log.append([add("last")])
    state = State()
    sizes: list[int] = []

    def watched() -> Iterator[RecordedEvent]:
        for record in log.read():
            sizes.append(len(state))
            yield record

    assert fold(watched(), state) is state
    assert len(sizes) == 901 and max(sizes) == 1  # never more than the one live memory
    assert list(state.memories) == ["last"]


def test_entities_are_normalized(log: SQLiteEventLog) -> None:
    log.append(
        [
            add(
                "m1",
                entities=[Entity(name="  Alice   SMITH ", type="person"), Entity(name="alice smith", type="agent")],
                relations=[
                    rel(" ALICE\tsmith", "Works  At", "Acme  Corp"),
                    rel("alice smith", "works at", "acme corp"),
                ],
            )
        ]
    )
    m1 = fold(log.read()).memories["m1"]
    assert m1.entities == (("alice smith", "agent"),)  # deduplicated; the smallest type wins
    assert m1.relations == (("alice smith", "works at", "acme corp"),)
    assert m1.mentions == {"alice smith": "agent", "acme corp": None}


def test_relation_endpoints_are_mentions_and_updates_replace_them(log: SQLiteEventLog) -> None:
    log.append([add("m1", entities=[Entity(name="Alice")], relations=[rel("Alice", "knows", "Bob")])])
    assert set(fold(log.read()).memories["m1"].mentions) == {"alice", "bob"}
    # relations alone: the old endpoint bob goes, alice stays (she is an entity)
    log.append([update("m1", relations=[rel("Alice", "likes", "Carol")])])
    m1 = fold(log.read()).memories["m1"]
    assert set(m1.mentions) == {"alice", "carol"} and m1.relations == (("alice", "likes", "carol"),)
    # entities alone: relation endpoints are still mentioned
    log.append([update("m1", entities=[Entity(name="Dave")])])
    assert set(fold(log.read()).memories["m1"].mentions) == {"dave", "alice", "carol"}
    # both emptied: nothing mentioned
    log.append([update("m1", entities=[], relations=[])])
    assert fold(log.read()).memories["m1"].mentions == {}
    view = graph_view(fold(log.read()))
    assert view.entities == {} and view.mentions == set() and view.relates == set()


def test_graph_view_scopes_entities(log: SQLiteEventLog) -> None:
    log.append(
        [
            add("m1", relations=[rel("Alice", "knows", "Bob")]),
            add("m2", entities=[Entity(name="alice", type="person")]),
            add("m3", user=None, agent_id="a1", entities=[Entity(name="Alice")]),
            add("m4", user="u2", relations=[rel("Alice", "knows", "Bob")]),
        ]
    )
    view = graph_view(fold(log.read()))
    alice_u1 = entity_key("user_id", "u1", "alice")
    assert view.entities[alice_u1] == ("alice", "person", "user_id", "u1")  # typed by any live mention
    assert set(view.entities) == {
        alice_u1,
        entity_key("user_id", "u1", "bob"),
        entity_key("agent_id", "a1", "alice"),
        entity_key("user_id", "u2", "alice"),
        entity_key("user_id", "u2", "bob"),
    }
    assert ("m1", alice_u1) in view.mentions and ("m2", alice_u1) in view.mentions
    assert view.relates == {
        (alice_u1, "knows", entity_key("user_id", "u1", "bob"), "m1"),
        (entity_key("user_id", "u2", "alice"), "knows", entity_key("user_id", "u2", "bob"), "m4"),
    }
    # no orphans: deleting m2 keeps alice (m1 still mentions her) but loses her type
    log.append([delete("m2")])
    view = graph_view(fold(log.read()))
    assert view.entities[alice_u1] == ("alice", None, "user_id", "u1")
    log.append([delete("m1")])
    assert alice_u1 not in graph_view(fold(log.read())).entities


def test_scoped_delete_all(log: SQLiteEventLog) -> None:
    log.append(
        [
            add("m1", agent_id="a1", relations=[rel("x", "r", "y")]),
            add("m2", agent_id="a2"),
            add("m3", user="u2", agent_id="a1"),
            add("m4", user=None, agent_id="a1", run_id="r1"),
        ]
    )
    log.append([MemoriesDeleted(user_id="u1", agent_id="a1")])
    assert sorted(fold(log.read()).memories) == ["m2", "m3", "m4"]
    log.append([MemoriesDeleted(agent_id="a1")])
    state = fold(log.read())
    assert sorted(state.memories) == ["m2"]
    assert graph_view(state).entities == {}


def test_bulk_delete_returns_the_ids_it_removed(log: SQLiteEventLog) -> None:
    log.append([add("m1"), add("m2", user="u2"), add("m3")])
    [bulk] = log.append([MemoriesDeleted(user_id="u1")])
    state = fold(log.read(limit=3))
    assert sorted(state.apply(bulk)) == ["m1", "m3"]
    [reset] = log.append([MemoriesReset()])
    assert state.apply(reset) == ["m2"] and len(state) == 0


def test_reset_then_re_add(log: SQLiteEventLog) -> None:
    [first] = log.append([add("m1", metadata={"old": True}, vector=[1.0])])
    log.append([add("m2"), MemoriesReset()])
    assert len(fold(log.read())) == 0
    [again] = log.append([add("m1", text="back")])
    m1 = fold(log.read()).memories["m1"]
    assert (m1.text, m1.metadata, m1.vector, m1.version) == ("back", {}, None, 3)
    assert m1.created_at == again.recorded_at != first.recorded_at
    log.append([delete("m1"), add("m1", user="u9")])
    m1 = fold(log.read()).memories["m1"]
    assert (m1.user_id, m1.version) == ("u9", 5)


def test_fold_equals_a_naive_model_on_random_histories(log: SQLiteEventLog) -> None:
    model = _random_history(log, random.Random(11), steps=600)
    state = fold(log.read())
    assert {m.memory_id: (m.text, m.user_id, m.agent_id) for m in state} == model


# ---------------------------------------------------------------- a random history


def _random_history(log: SQLiteEventLog, rng: random.Random, *, steps: int) -> dict[str, tuple[str, Any, Any]]:
    """Append random commands (some refused); return the expected live memories."""
    live: dict[str, tuple[str, Any, Any]] = {}
    names = ["Alice", "bob", " Carol ", "DAVE", "eve"]
    for step in range(steps):
        memory_id = f"m{rng.randrange(40)}"
        roll = rng.random()
        text = f"text {step}"
        event: Event
        if roll < 0.4:
            user, agent = rng.choice(["u1", "u2", None]), rng.choice(["a1", None])
            user = user if user or agent else "u1"
            entities = [Entity(name=n) for n in rng.sample(names, 2)]
            relations = [rel(rng.choice(names), "knows", rng.choice(names))]
            event = MemoryAdded(
                memory_id=memory_id,
                text=text,
                user_id=user,
                agent_id=agent,
                vector=[rng.random(), rng.random()],
                entities=entities,
                relations=relations,
            )
            effect = {memory_id: (text, user, agent)}
        elif roll < 0.7:
            event = MemoryUpdated(memory_id=memory_id, text=text, relations=[rel("x", "r", rng.choice(names))])
            effect = {memory_id: (text, *live[memory_id][1:])} if memory_id in live else {}
        elif roll < 0.9:
            event = MemoryDeleted(memory_id=memory_id)
        elif roll < 0.98:
            event = MemoriesDeleted(user_id=rng.choice(["u1", "u2"]))
        else:
            event = MemoriesReset()
        try:
            log.append([event])
        except CommandRefused:
            continue
        if isinstance(event, MemoryAdded | MemoryUpdated):
            live.update(effect)
        elif isinstance(event, MemoryDeleted):
            live.pop(memory_id)
        elif isinstance(event, MemoriesDeleted):
            live = {k: v for k, v in live.items() if v[1] != event.user_id}
        else:
            live = {}
    return live
