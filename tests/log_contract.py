"""The EventLog contract: what every backend must do, written once.

A backend's test module subclasses :class:`EventLogContract` and provides one
fixture, ``make_log``: ``make_log(name="main", **options) -> EventLog`` returns
a log on fresh storage the first time a ``name`` is used and *reopens the same
storage* when the name is used again (for durability tests). Options the
contract uses: ``fixed_dimension``. The factory closes what it opened at
teardown. Everything else goes through the port API only, so the same suite
runs on SQLite and PostgreSQL. Tests that tamper with stored rows are
backend-specific and live beside the backend's module.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from memsync.errors import CommandRefused, ConfigError, ConflictError, InputError, TamperError
from memsync.events import (
    GENESIS_HASH,
    Entity,
    Event,
    MemoriesDeleted,
    MemoriesReset,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    RecordedEvent,
    Relation,
    chain_hash,
    encode_json,
    payload_bytes,
    read_jsonl,
    recorded_from_dict,
)
from memsync.fold import fold
from memsync.log import EventLog, Head, LogQuery

MakeLog = Callable[..., EventLog]
CORPUS = Path(__file__).parent / "corpus" / "bad"


# ---------------------------------------------------------------- helpers


def add(memory_id: str, text: str | None = None, *, user: str | None = "u1", **fields: Any) -> MemoryAdded:
    text = f"text of {memory_id}" if text is None else text
    return MemoryAdded(memory_id=memory_id, text=text, user_id=user, **fields)


def update(memory_id: str, text: str | None = None, **fields: Any) -> MemoryUpdated:
    if text is None and not {"vector", "metadata", "entities", "relations"} & fields.keys():
        text = f"new text of {memory_id}"
    return MemoryUpdated(memory_id=memory_id, text=text, **fields)


def delete(memory_id: str, **fields: Any) -> MemoryDeleted:
    return MemoryDeleted(memory_id=memory_id, **fields)


def rel_(source: str, relation: str, target: str) -> Relation:
    return Relation(source=source, relation=relation, target=target)


def timezone_plus(hours: int) -> timezone:
    return timezone(timedelta(hours=hours))


def eid() -> str:
    return str(uuid.uuid4())


def seqs(records: Iterator[RecordedEvent] | list[RecordedEvent]) -> list[int]:
    return [r.seq for r in records]


def export_lines(log: EventLog) -> list[bytes]:
    """The log as ``memsync export`` writes it: one JSON record per line."""
    return [encode_json(r.to_dict()) for r in log.read()]


def import_lines(lines: list[bytes]) -> list[tuple[Event, dict[str, Any]]]:
    return [recorded_from_dict(json.loads(line), line=n) for n, line in enumerate(lines, start=1)]


def assert_refused_nothing_recorded(
    log: EventLog, events: list[Event], error: type[Exception], *, event: int, says: tuple[str, ...] = (), **kw: Any
) -> Exception:
    """Append ``events``; expect ``error`` naming event number ``event`` (1-based), and no change."""
    before = log.head()
    before_stats = log.stats()
    with pytest.raises(error) as info:
        log.append(events, **kw)
    message = str(info.value)
    assert message.startswith(f"event {event}: "), message
    assert getattr(info.value, "index", None) == event - 1
    for text in says:
        assert text in message, (text, message)
    assert log.head() == before
    assert log.stats() == before_stats
    assert list(log.read(after=before.seq)) == []
    return info.value


def assert_undecodable_payload_names_its_seq(log: EventLog, recorded: list[RecordedEvent], seq: int) -> None:
    """A stored column of ``seq`` was overwritten with bytes that do not decode: every reader says so, naming it."""
    with pytest.raises(TamperError) as info:
        list(log.read())
    assert info.value.seq == seq
    with pytest.raises(TamperError) as info:  # a retried append looks the recorded event up
        log.append([recorded[seq - 1].event])
    assert info.value.seq == seq
    report = log.audit()
    assert not report.ok and report.first_bad_seq == seq


def parse_corpus(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """A corpus file: ``# key: value`` header lines (blanked, so line numbers hold) and JSON lines."""
    lines: list[str] = []
    expect: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        if raw.startswith("#"):
            key, _, value = raw[1:].partition(":")
            expect.setdefault(key.strip(), []).append(value.strip())
            lines.append("")
        else:
            lines.append(raw)
    return lines, expect


CORPUS_FILES = sorted(CORPUS.glob("*.jsonl"))

# events built in Python (no JSON decoder in the way): each is refused naming its field
BAD_PYTHON_EVENTS = [
    pytest.param(event, field, id=name)
    for name, event, field in [
        ("empty text", add("m", text=""), "text"),
        ("whitespace text", add("m", text=" \t\n"), "text"),
        ("no scope", add("m", user=None), "user_id"),
        ("NaN", add("m", vector=[1.0, float("nan")]), "vector[1]"),
        ("infinity", add("m", vector=[float("inf")]), "vector[0]"),
        ("float32 overflow", add("m", vector=[1e39]), "vector[0]"),  # a finite double
        ("empty vector", add("m", vector=[]), "vector"),
        ("string in vector", add("m", vector=["1.0"]), "vector[0]"),
        ("bool in vector", add("m", vector=[True]), "vector[0]"),
        ("NaN in metadata", add("m", metadata={"score": float("nan")}), "metadata.score"),
        ("int text", MemoryAdded(memory_id="m", text=5, user_id="u"), "text"),  # type: ignore[arg-type]
        ("int memory_id", MemoryAdded(memory_id=7, text="t", user_id="u"), "memory_id"),  # type: ignore[arg-type]
        ("event_id not a UUID", add("m", event_id="not-a-uuid"), "event_id"),
        ("empty entity", add("m", entities=[Entity(name="  ")]), "entities[0].name"),
        ("blank relation", add("m", relations=[rel_("a", " ", "b")]), "relations[0].relation"),
        ("negative expected_version", add("m", expected_version=-1), "expected_version"),
        ("update without fields", MemoryUpdated(memory_id="m"), "text"),
        ("bulk delete without scope", MemoriesDeleted(), "user_id"),
        ("blank memory_id", MemoryDeleted(memory_id=" "), "memory_id"),
        ("unencodable metadata", add("m", metadata={"x": object()}), "metadata"),
        ("NUL in text", add("m", text="a\x00b"), "text"),
        ("NUL in a scope", add("m", user="u\x00"), "user_id"),
        ("lone surrogate in memory_id", add("m\ud800"), "memory_id"),
        ("lone surrogate in a metadata value", add("m", metadata={"k": ["\udfff"]}), "metadata.k[0]"),
        ("integer beyond 64 bits in metadata", add("m", metadata={"n": 2**63}), "metadata.n"),
        (
            "metadata nested too deep",
            add("m", metadata={"a": json.loads("[" * 32 + "]" * 32)}),
            "metadata.a" + "[0]" * 31,
        ),
    ]
]


# ---------------------------------------------------------------- the contract


class EventLogContract:
    """Behaviour every :class:`~memsync.log.EventLog` backend must show."""

    @pytest.fixture
    def log(self, make_log: MakeLog) -> EventLog:
        return make_log()

    # ------------------------------------------------------------ basics

    def test_empty_log(self, log: EventLog) -> None:
        assert log.head() == Head(0, GENESIS_HASH)
        assert list(log.read()) == []
        report = log.audit()
        assert report.ok and report.checked == 0
        stats = log.stats()
        assert (stats.live_memories, stats.with_vector, stats.dimension) == (0, 0, None)
        assert log.append([]) == []

    def test_append_read_head(self, log: EventLog) -> None:
        before = datetime.now(UTC)
        out = log.append([add("m1", metadata={"k": [1, "x"]}), add("m2", user=None, agent_id="a1"), update("m1")])
        after = datetime.now(UTC)
        assert seqs(out) == [1, 2, 3]
        assert [r.version for r in out] == [1, 1, 2]
        assert [r.type for r in out] == ["memory.added", "memory.added", "memory.updated"]
        for r in out:
            uuid.UUID(r.event_id)
            assert r.event.event_id == r.event_id
            assert r.recorded_at.tzinfo is not None and before <= r.recorded_at <= after
        assert list(log.read()) == out
        assert log.head() == Head(3, out[-1].hash)
        more = log.append([delete("m2", actor="tester", reason="obsolete")])
        assert seqs(more) == [4] and more[0].version == 2
        [stored] = log.read(after=3)
        assert stored.event == more[0].event
        assert (stored.event.actor, stored.event.reason) == ("tester", "obsolete")
        d = stored.to_dict()
        assert d["type"] == "memory.deleted" and d["seq"] == 4 and d["version"] == 2
        assert {"recorded_at", "event_id", "prev_hash", "hash"} <= d.keys()
        assert d["recorded_at"].endswith("Z")

    def test_recorded_time_and_occurred_at(self, log: EventLog) -> None:
        occurred = datetime(2024, 5, 1, 12, 30, 0, 123456, tzinfo=timezone_plus(2))
        [r] = log.append([add("m1", occurred_at=occurred)])
        [back] = log.read()
        assert back.event.occurred_at == occurred
        assert back.recorded_at == r.recorded_at

    # ------------------------------------------------------------ atomicity

    def test_refused_third_event_records_none(self, log: EventLog) -> None:
        log.append([add("m0")])
        assert_refused_nothing_recorded(
            log, [add("m1"), add("m2"), update("missing")], CommandRefused, event=3, says=("'missing'",)
        )
        # the first two really are absent: adding them again is allowed
        assert seqs(log.append([add("m1"), add("m2")])) == [2, 3]

    def test_malformed_third_event_records_none(self, log: EventLog) -> None:
        events: list[Event] = [add("m1", vector=[1.0, 2.0]), add("m2"), add("m3", text=" ")]
        assert_refused_nothing_recorded(log, events, InputError, event=3, says=("text",))
        # nor did the refused call fix the vector dimension
        assert log.stats().dimension is None
        log.append([add("m4", vector=[1.0, 2.0, 3.0])])
        assert log.stats().dimension == 3

    @pytest.mark.parametrize(("event", "field"), BAD_PYTHON_EVENTS)
    def test_python_api_input_refused_with_index(self, log: EventLog, event: Event, field: str) -> None:
        log.append([add("seed")])
        error = assert_refused_nothing_recorded(log, [add("ok"), event], InputError, event=2, says=(field,))
        assert isinstance(error, InputError) and error.field == field

    # ------------------------------------------------------------ idempotency

    def test_idempotent_event_id(self, log: EventLog) -> None:
        first_id, second_id = eid(), eid()
        [original] = log.append([add("m1", event_id=first_id)])
        assert original.event_id == first_id
        head = log.head()
        assert log.append([add("m1", event_id=first_id)]) == [original]
        assert log.head() == head
        # a call mixing a recorded event and a new one records only the new one
        again, new = log.append([add("m1", event_id=first_id), update("m1", event_id=second_id)])
        assert again == original and new.seq == 2 and new.version == 2
        # the same event twice in one call is recorded once
        third = eid()
        a, b = log.append([update("m1", event_id=third), update("m1", event_id=third)])
        assert a == b and a.seq == 3
        assert seqs(log.read()) == [1, 2, 3]

    def test_idempotency_is_durable_across_reopen(self, make_log: MakeLog) -> None:
        event_id = eid()
        log = make_log("durable")
        [original] = log.append([add("m1", event_id=event_id), add("m2")])[:1]
        head = log.head()
        log.close()
        reopened = make_log("durable")
        assert reopened.head() == head
        assert reopened.append([add("m1", event_id=event_id)]) == [original]
        assert reopened.head() == head
        assert list(reopened.read()) == list(reopened.read(limit=2))
        assert reopened.audit().ok

    def test_idempotent_retry_with_call_expected_version(self, log: EventLog) -> None:
        """A retried call (same event_ids) returns the originals even though the version moved."""
        call = [add("m1", event_id=eid()), update("m1", event_id=eid())]
        first = log.append(call, expected_version=0)
        assert log.append(call, expected_version=0) == first
        assert log.head().seq == 2

    # ------------------------------------------------------------ optimistic concurrency

    def test_expected_version_per_event(self, log: EventLog) -> None:
        log.append([add("m1", expected_version=0)])
        log.append([update("m1", expected_version=1)])
        error = assert_refused_nothing_recorded(
            log, [add("m2"), update("m1", expected_version=1)], ConflictError, event=2, says=("'m1'",)
        )
        assert isinstance(error, ConflictError)
        assert (error.memory_id, error.expected, error.actual) == ("m1", 1, 2)
        # an add expecting an existing stream conflicts too, before it is refused as a duplicate
        assert_refused_nothing_recorded(log, [add("m3", expected_version=1)], ConflictError, event=1)
        # expected versions inside one call see the call's earlier events
        out = log.append([update("m1", expected_version=2), delete("m1", expected_version=3)])
        assert [r.version for r in out] == [3, 4]

    def test_expected_version_call_kwarg(self, log: EventLog) -> None:
        assert log.append([add("m1")], expected_version=0)[0].version == 1
        assert [r.version for r in log.append([update("m1"), update("m1")], expected_version=1)] == [2, 3]
        before = log.head()
        with pytest.raises(ConflictError) as info:
            log.append([update("m1"), delete("m1")], expected_version=2)
        assert (info.value.expected, info.value.actual) == (2, 3)
        assert log.head() == before
        with pytest.raises(InputError, match="expected_version"):
            log.append([update("m1"), add("m2")], expected_version=3)
        with pytest.raises(InputError, match="expected_version"):
            log.append([MemoriesReset()], expected_version=0)
        assert log.head() == before

    # ------------------------------------------------------------ invariant 5

    def test_commands_validated_against_state(self, log: EventLog) -> None:
        assert_refused_nothing_recorded(log, [update("ghost")], CommandRefused, event=1, says=("does not exist",))
        assert_refused_nothing_recorded(log, [delete("ghost")], CommandRefused, event=1, says=("does not exist",))
        log.append([add("m1")])
        assert_refused_nothing_recorded(log, [add("m1")], CommandRefused, event=1, says=("already exists",))
        assert_refused_nothing_recorded(log, [add("m2"), add("m2")], CommandRefused, event=2)
        log.append([delete("m1")])
        assert_refused_nothing_recorded(log, [update("m1")], CommandRefused, event=1, says=("is deleted",))
        assert_refused_nothing_recorded(log, [delete("m1")], CommandRefused, event=1, says=("is deleted",))
        [again] = log.append([add("m1", text="reborn", user="u2")])
        assert again.version == 3
        assert [r.version for r in log.read_stream("m1")] == [1, 2, 3]
        assert log.append([update("m1")])[0].version == 4
        # add then delete then update inside one call
        assert_refused_nothing_recorded(log, [add("m5"), delete("m5"), update("m5")], CommandRefused, event=3)

    # ------------------------------------------------------------ bulk deletes

    def test_memories_deleted_by_scope(self, log: EventLog) -> None:
        log.append(
            [
                add("m1", agent_id="a1"),
                add("m2", agent_id="a2"),
                add("m3", user="u2", agent_id="a1"),
                add("m4"),
                add("m5", user=None, agent_id="a1", run_id="r1"),
            ]
        )
        [bulk] = log.append([MemoriesDeleted(user_id="u1", agent_id="a1")])
        assert bulk.version is None and bulk.seq == 6
        assert [r.seq for r in log.read_stream("m1")] == [1, 6]
        # a bulk event has no version of its own (None); its place in the stream is the version it gave m1
        assert [r.version for r in log.read_stream("m1")] == [1, None]
        assert [r.seq for r in log.read_stream("m3")] == [3]  # other user: untouched
        assert log.stats().live_memories == 4
        log.append([MemoriesDeleted(user_id="u1")])
        assert log.stats().live_memories == 2
        assert [r.type for r in log.read_stream("m2")] == ["memory.added", "memories.deleted"]
        assert [r.seq for r in log.read_stream("m4")] == [4, 7]
        assert_refused_nothing_recorded(log, [update("m2")], CommandRefused, event=1, says=("is deleted",))
        log.append([MemoriesDeleted(agent_id="a1", run_id="r1")])
        assert [r.type for r in log.read_stream("m5")] == ["memory.added", "memories.deleted"]
        assert [m.memory_id for m in fold(log.read())] == ["m3"]
        # re-add after a bulk delete continues the version the bulk delete bumped
        assert log.append([add("m1")])[0].version == 3
        assert log.append([add("m5", user=None, agent_id="a1", expected_version=2)])[0].version == 3
        assert_refused_nothing_recorded(log, [add("m2", expected_version=1)], ConflictError, event=1)

    def test_memories_reset(self, log: EventLog) -> None:
        log.append([add("m1"), add("m2", user="u2"), delete("m2"), add("m3", run_id="r1", user=None)])
        [reset] = log.append([MemoriesReset(reason="wipe")])
        assert log.stats().live_memories == 0
        assert [r.seq for r in log.read_stream("m1")] == [1, reset.seq]
        assert [r.version for r in log.read_stream("m1")] == [1, None]
        assert [r.seq for r in log.read_stream("m2")] == [2, 3]  # already deleted: not affected
        assert [r.type for r in log.read_stream("m3")] == ["memory.added", "memories.reset"]
        streams = list(log.read_streams(["m1", "m2", "m3"], until_seq=reset.seq))
        assert seqs(streams) == [1, 2, 3, 4, 5]
        assert log.append([add("m2", user="u2")])[0].version == 3
        assert log.append([add("m3", run_id="r1", user=None)])[0].version == 3
        # within one call, a reset sees the call's earlier events
        out = log.append([add("m9"), MemoriesReset(), add("m9")])
        assert [r.version for r in out] == [1, None, 3]
        assert log.audit().ok

    # ------------------------------------------------------------ order and chain

    def test_gapless_seq_and_hash_chain(self, log: EventLog) -> None:
        for i in range(30):
            log.append([add(f"m{i}"), update(f"m{i}")] if i % 3 else [add(f"m{i}")])
            with pytest.raises(CommandRefused):
                log.append([add(f"x{i}"), update(f"ghost{i}")])
        records = list(log.read())
        assert seqs(records) == list(range(1, len(records) + 1))
        assert len(records) == 30 + 20
        prev = GENESIS_HASH
        for r in records:
            assert r.prev_hash == prev
            assert len(r.hash) == 64 and r.hash != prev
            prev = r.hash
        assert log.head() == Head(len(records), prev)
        report = log.audit()
        assert report.ok and report.checked == len(records) and report.first_bad_seq is None
        assert report.head == log.head()

    # ------------------------------------------------------------ reads

    def test_read_pages_across_many_events(self, log: EventLog) -> None:
        for start in range(0, 2600, 650):
            log.append([add(f"m{i}") for i in range(start, start + 650)])
        assert seqs(log.read()) == list(range(1, 2601))
        assert seqs(log.read(after=1200, limit=1100)) == list(range(1201, 2301))
        assert seqs(log.read(after=999, limit=1001)) == list(range(1000, 2001))
        assert seqs(log.read(after=2590, limit=100)) == list(range(2591, 2601))
        assert seqs(log.read(after=2600)) == []
        assert seqs(log.read(limit=0)) == []
        assert [r.memory_id for r in log.read(after=2000, limit=3)] == ["m2000", "m2001", "m2002"]
        # a reader in the middle of a page sees events appended meanwhile, in order
        reader = log.read(after=2590)
        assert next(reader).seq == 2591
        log.append([add("late")])
        assert seqs(log.read(after=2599)) == [2600, 2601]

    def test_read_stream_until_seq(self, log: EventLog) -> None:
        log.append([add("m1"), add("m2")])
        log.append([update("m1"), update("m2")])
        log.append([delete("m1")])
        assert seqs(log.read_stream("m1")) == [1, 3, 5]
        assert seqs(log.read_stream("m1", until_seq=4)) == [1, 3]
        assert seqs(log.read_stream("m1", until_seq=0)) == []
        assert log.read_stream("nobody") == []
        assert [r.version for r in log.read_stream("m1", until_seq=3)] == [1, 2]

    def test_read_streams(self, log: EventLog) -> None:
        log.append([add("m1"), add("m2"), add("m3", user="u2")])
        log.append([update("m2"), MemoriesDeleted(user_id="u1"), add("m1")])
        got = list(log.read_streams(["m2", "m1", "m1", "ghost"], until_seq=6))
        assert seqs(got) == [1, 2, 4, 5, 6]  # the bulk delete touches both, listed once
        assert seqs(log.read_streams(["m1", "m2"], until_seq=4)) == [1, 2, 4]
        assert seqs(log.read_streams(["m3"], until_seq=100)) == [3]
        assert list(log.read_streams([], until_seq=100)) == []
        many = [f"x{i}" for i in range(1200)]
        log.append([add(m) for m in many])
        assert len(list(log.read_streams([*many, "m1"], until_seq=10**9))) == 1200 + 3

    def test_query(self, log: EventLog) -> None:
        log.append([add("m1", agent_id="a1"), add("m2", user="u2", run_id="r1"), add("m3", user=None, agent_id="a1")])
        time.sleep(0.01)
        middle = datetime.now(UTC)
        time.sleep(0.01)
        log.append([update("m1"), update("m2"), delete("m3")])
        log.append([MemoriesDeleted(user_id="u2"), MemoriesReset(), add("m1", user="u3")])

        def q(**kw: Any) -> list[int]:
            opts = {k: kw.pop(k) for k in ("after", "limit", "descending") if k in kw}
            return seqs(log.query(LogQuery(**kw), **opts))

        assert q() == list(range(1, 10))
        assert q(memory_id="m1") == [1, 4, 8, 9]
        assert q(memory_id="m2") == [2, 5, 7]
        assert q(memory_id="m1", type="memory.updated") == [4]
        assert q(memory_id="m1", user_id="u3") == [8, 9]  # the reset matches every scope
        assert q(memory_id="m1", user_id="u1") == [1, 4, 8]
        assert q(memory_id="m1", descending=True, limit=2) == [9, 8]
        assert q(memory_id="m1", after=1, limit=2) == [4, 8]
        # scope filters: the event's own scope, the memory's for updates/deletes, plus resets
        assert q(user_id="u1") == [1, 4, 8]
        assert q(user_id="u2") == [2, 5, 7, 8]
        assert q(agent_id="a1") == [1, 3, 4, 6, 8]
        assert q(run_id="r1") == [2, 5, 8]
        assert q(user_id="u2", run_id="r1") == [2, 5, 8]
        assert q(user_id="u1", agent_id="a1") == [1, 4, 8]
        assert q(type="memory.added") == [1, 2, 3, 9]
        assert q(type="memories.reset") == [8]
        assert q(until=middle) == [1, 2, 3]
        assert q(since=middle) == [4, 5, 6, 7, 8, 9]
        assert q(since=middle, type="memory.updated") == [4, 5]
        assert q(descending=True) == list(range(9, 0, -1))
        assert q(descending=True, limit=3) == [9, 8, 7]
        assert q(descending=True, after=6) == [9, 8, 7]
        assert q(type="memory.added", descending=True, limit=2) == [9, 3]
        assert q(after=5, limit=2) == [6, 7]
        assert q(user_id="nobody", type="memory.added") == []

    def test_query_pages(self, log: EventLog) -> None:
        log.append([add(f"m{i}", user=f"u{i % 2}") for i in range(2500)])
        got = seqs(log.query(LogQuery(user_id="u1")))
        assert got == list(range(2, 2501, 2))
        assert seqs(log.query(LogQuery(user_id="u0"), descending=True, limit=1100))[-1] == 2499 - 2 * 1099

    def test_stats(self, log: EventLog) -> None:
        log.append([add("m1", vector=[0.5, 0.25]), add("m2"), add("m3", user="u2")])
        stats = log.stats()
        assert (stats.live_memories, stats.with_vector, stats.dimension) == (3, 1, 2)
        log.append([update("m2", vector=[1.0, 2.0]), delete("m1")])
        stats = log.stats()
        assert (stats.live_memories, stats.with_vector, stats.dimension) == (2, 1, 2)
        log.append([MemoriesReset()])
        assert log.stats().live_memories == 0 and log.stats().with_vector == 0

    def test_seq_at(self, log: EventLog) -> None:
        start = datetime.now(UTC) - timedelta(seconds=1)
        assert log.seq_at(datetime.now(UTC)) == 0
        [a] = log.append([add("m1")])
        time.sleep(0.01)
        [b, c] = log.append([add("m2"), add("m3")])
        assert log.seq_at(start) == 0
        assert log.seq_at(a.recorded_at) == 1
        assert log.seq_at(a.recorded_at + (b.recorded_at - a.recorded_at) / 2) == 1
        assert log.seq_at(c.recorded_at) == 3
        assert log.seq_at(datetime.now(UTC) + timedelta(days=1)) == 3

    def test_wait_wakes_on_append_from_another_thread(self, log: EventLog) -> None:
        log.append([add("m0")])
        started = time.monotonic()
        assert log.wait(after=0, timeout=5) == 1  # already past
        assert time.monotonic() - started < 1
        started = time.monotonic()
        assert log.wait(after=1, timeout=0.2) == 1  # nothing comes: times out
        assert 0.15 <= time.monotonic() - started < 2
        timer = threading.Timer(0.3, lambda: log.append([add("m1")]))
        timer.start()
        try:
            started = time.monotonic()
            assert log.wait(after=1, timeout=10) == 2
            assert 0.25 <= time.monotonic() - started < 5
        finally:
            timer.join()

    def test_park_unpark(self, log: EventLog) -> None:
        log.append([add("m1"), add("m2")])
        assert log.parked() == []
        log.park("vector", 2, "boom", 3)
        log.park("graph", 1, "bad entity", 1)
        log.park("vector", 1, "x" * 10_000, 5)
        assert [(p.projection, p.seq) for p in log.parked()] == [("graph", 1), ("vector", 1), ("vector", 2)]
        [second] = [p for p in log.parked("vector") if p.seq == 2]
        assert (second.error, second.attempts) == ("boom", 3)
        assert second.parked_at
        log.park("vector", 2, "boom again", 4)  # parking again replaces
        assert [(p.seq, p.attempts) for p in log.parked("vector")] == [(1, 5), (2, 4)]
        log.unpark("vector", 2)
        assert [(p.projection, p.seq) for p in log.parked()] == [("graph", 1), ("vector", 1)]
        log.unpark("vector", 99)  # not parked: no error
        assert log.head().seq == 2 and log.audit().ok  # parking is not an event

    # ------------------------------------------------------------ vectors

    def test_first_vector_fixes_dimension(self, make_log: MakeLog) -> None:
        log = make_log("dims")
        other = make_log("dims")  # a second instance on the same log (another process, say)
        log.append([add("m1")])
        assert log.dimension() is None and other.dimension() is None
        log.append([add("m2", vector=[0.1, 0.2, 0.3])])
        assert log.dimension() == 3 and other.dimension() == 3
        assert_refused_nothing_recorded(log, [add("m3", vector=[0.1, 0.2])], InputError, event=1, says=("vector",))
        assert_refused_nothing_recorded(
            log, [add("m3"), update("m1", vector=[1.0] * 4)], InputError, event=2, says=("vector", "dimension")
        )
        log.append([update("m1", vector=[1.0, 2.0, 3.0])])
        log.close()
        reopened = make_log("dims")
        assert reopened.stats().dimension == 3 and reopened.dimension() == 3
        assert_refused_nothing_recorded(reopened, [add("m4", vector=[1.0])], InputError, event=1)

    def test_fixed_dimension(self, make_log: MakeLog) -> None:
        log = make_log("fixed", fixed_dimension=4)
        assert log.stats().dimension == 4 and log.dimension() == 4
        assert_refused_nothing_recorded(log, [add("m1", vector=[0.1, 0.2])], InputError, event=1, says=("vector",))
        log.append([add("m1", vector=[0.1, 0.2, 0.3, 0.4])])
        assert log.stats().dimension == 4
        assert_refused_nothing_recorded(log, [add("m2", vector=[0.1] * 3)], InputError, event=1)

    def test_a_fixed_dimension_the_log_contradicts_is_refused_at_open(self, make_log: MakeLog) -> None:
        log = make_log("dims-fixed")
        log.append([add("m1", vector=[0.1, 0.2, 0.3])])
        log.close()
        with pytest.raises(ConfigError, match=r"vector\.dimension: configured as 4, .* dimension 3"):
            make_log("dims-fixed", fixed_dimension=4)
        reopened = make_log("dims-fixed", fixed_dimension=3)  # the same dimension is fine
        assert reopened.stats().dimension == 3

    def test_vectors_round_trip_as_float32(self, log: EventLog) -> None:
        vector = [0.1, 1 / 3, -2.5, 1e-8, 3.4e38, 0.0]
        as_f32 = array("f", vector)
        [r] = log.append([add("m1", vector=vector)])
        [back] = log.read()
        assert back.event.vector == as_f32.tolist()  # float32 values, not the float64 inputs
        assert back.vector_f32 == as_f32.tobytes() == r.vector_f32
        assert back.hash == r.hash
        assert fold(log.read()).memories["m1"].vector == as_f32.tobytes()
        [u] = log.append([update("m1", vector=[1, 2, 3, 4, 5, 6])])  # ints are floats
        [back] = log.read(after=1)
        assert back.event.vector == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        assert u.vector_f32 == array("f", [1, 2, 3, 4, 5, 6]).tobytes()

    # ------------------------------------------------------------ export / import

    def _rich_history(self, log: EventLog) -> None:
        log.append(
            [
                add(
                    "m1",
                    vector=[0.1, 0.2, 0.3],
                    metadata={"b": 1.5, "a": {"z": [1, 2], "y": None}, "ü": "ünïcode"},
                    entities=[Entity(name="Alice", type="person"), Entity(name="Paris")],
                    relations=[Relation(source="Alice", relation="lives_in", target="Paris")],
                    actor="agent-7",
                    reason="user said so",
                    occurred_at=datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=timezone_plus(-5)),
                ),
                add("m2", user=None, agent_id="a1", vector=[1.0, 2.0, 3.0]),
            ]
        )
        log.append([update("m1", text="changed", vector=[3.0, 2.0, 1.0]), add("m3", run_id="r1")])
        log.append([delete("m2"), MemoriesDeleted(user_id="u1", run_id="r1"), MemoriesReset()])
        log.append([add("m2", user=None, agent_id="a1")])

    def test_export_import_reproduces_everything(self, make_log: MakeLog) -> None:
        source = make_log("source")
        self._rich_history(source)
        lines = export_lines(source)
        target = make_log("target")
        assert target.import_records(import_lines(lines)) == len(lines)
        original, copy = list(source.read()), list(target.read())
        assert [(r.seq, r.event_id, r.recorded_at, r.version, r.prev_hash, r.hash) for r in copy] == [
            (r.seq, r.event_id, r.recorded_at, r.version, r.prev_hash, r.hash) for r in original
        ]
        assert copy == original
        assert export_lines(target) == lines
        assert target.head() == source.head()
        assert target.audit().ok
        assert target.stats() == source.stats()
        for memory_id in ("m1", "m2", "m3"):
            assert target.read_stream(memory_id) == source.read_stream(memory_id)
        # the copy is a working log: rules and chain continue
        with pytest.raises(CommandRefused):
            target.append([update("m1")])
        [nxt] = target.append([add("m1")])
        assert nxt.seq == len(lines) + 1 and nxt.version == 4 and nxt.prev_hash == source.head().hash
        # importing an export continues a log only where it fits
        more = make_log("continued")
        more.import_records(import_lines(lines[:3]))
        more.import_records(import_lines(lines[3:]))
        assert list(more.read()) == original
        with pytest.raises(InputError, match="already recorded"):
            more.import_records(import_lines(lines[-1:]))

    @pytest.mark.parametrize(
        "tamper",
        ["text", "recorded_at", "hash", "vector", "drop_line", "swap_lines", "event_id", "version", "prev_hash"],
    )
    def test_tampered_export_is_refused(self, make_log: MakeLog, tamper: str) -> None:
        source = make_log("source")
        self._rich_history(source)
        records = [json.loads(line) for line in export_lines(source)]
        victim = records[2]
        if tamper == "text":
            victim["text"] = "forged"
        elif tamper == "recorded_at":
            victim["recorded_at"] = "2020-01-01T00:00:00.000000Z"
        elif tamper == "hash":
            victim["hash"] = "f" * 64
        elif tamper == "vector":
            victim["vector"][0] = 0.5
        elif tamper == "drop_line":
            del records[2]
        elif tamper == "swap_lines":
            records[2], records[3] = records[3], records[2]
        elif tamper == "event_id":
            victim["event_id"] = str(uuid.uuid4())
        elif tamper == "version":
            victim["version"] = 7
        elif tamper == "prev_hash":
            victim["prev_hash"] = "0" * 64
        lines = [encode_json(r) for r in records]
        target = make_log("target")
        with pytest.raises(InputError) as info:
            target.import_records(import_lines(lines))
        assert str(info.value).startswith("event 3: ")
        assert target.head() == Head(0, GENESIS_HASH)
        assert list(target.read()) == []
        assert target.stats().dimension is None
        assert target.import_records(import_lines(export_lines(source))) == len(records) + (tamper == "drop_line")

    def test_import_refuses_an_event_id_already_recorded(self, make_log: MakeLog) -> None:
        target = make_log("target")
        [first] = target.append([add("m1")])
        # a forged record that continues the chain correctly but reuses a recorded event_id
        event = add("m2", event_id=first.event_id)
        recorded_at = "2030-01-01T00:00:00.000000Z"
        digest = chain_hash(
            first.hash, seq=2, version=1, recorded_at=recorded_at, payload=payload_bytes(event), vector=None
        )
        record = {"seq": 2, "version": 1, "recorded_at": recorded_at, "prev_hash": first.hash, "hash": digest}
        with pytest.raises(InputError, match="event_id") as info:
            target.import_records([(event, record)])
        assert str(info.value).startswith("event 1: ")
        assert target.head() == Head(1, first.hash)
        # the same record with a fresh event_id is accepted: only the event_id was wrong
        event = add("m2", event_id=eid())
        record["hash"] = chain_hash(
            first.hash, seq=2, version=1, recorded_at=recorded_at, payload=payload_bytes(event), vector=None
        )
        assert target.import_records([(event, record)]) == 1
        assert target.audit().ok

    # ------------------------------------------------------------ bad-input corpus

    @pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
    def test_bad_input_corpus(self, make_log: MakeLog, path: Path) -> None:
        """Each corpus file names its error in ``# error / where / names`` header lines."""
        lines, expect = parse_corpus(path)
        [error_name], [where] = expect["error"], expect["where"]
        kind, _, number = where.partition(" ")
        error_type = {"InputError": InputError, "CommandRefused": CommandRefused, "ConflictError": ConflictError}
        log = make_log("corpus")
        log.append([add("seed")])
        for setup in expect.get("setup", []):
            log.append(list(read_jsonl([setup])))
        before = log.head()
        with pytest.raises(error_type[error_name]) as info:
            log.append(list(read_jsonl(lines)))
        error = info.value
        assert type(error) is error_type[error_name]
        message = str(error)
        assert message.startswith(f"{kind} {number}: "), message
        if kind == "line":
            assert getattr(error, "line", None) == int(number)
        else:
            assert getattr(error, "index", None) == int(number) - 1
        for name in expect.get("names", []):
            assert name in message, (name, message)
        for field in expect.get("field", []):
            assert getattr(error, "field", None) == field
        assert log.head() == before
