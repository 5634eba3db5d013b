"""The event log port, and the append rules every backend shares.

A backend (:class:`~memsync.sqlite_log.SQLiteEventLog`,
:class:`~memsync.postgres_log.PostgresEventLog`) stores bytes: rows of
``(seq, event_id, type, memory_id, version, scope, recorded_at, payload,
vector, prev_hash, hash)`` plus a small per-memory state table. The rules —
versions, optimistic concurrency, idempotency, validation against state (invariant
5) and the hash chain (invariant 10) — live once, here, in :func:`plan_append`,
which a backend runs inside its write transaction through the :class:`AppendTx`
primitives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol

import msgspec

from memsync.errors import CommandRefused, ConflictError, InputError
from memsync.events import (
    GENESIS_HASH,
    SCOPE_FIELDS,
    Event,
    MemoriesDeleted,
    MemoriesReset,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    RecordedEvent,
    chain_hash,
    check_event,
    decode_payload,
    event_type,
    format_time,
    new_event_id,
    pack_vector,
    parse_time,
    payload_bytes,
    utcnow,
)


class Head(msgspec.Struct, frozen=True):
    seq: int
    hash: str


class MemoryRow(msgspec.Struct, kw_only=True):
    """The log's own per-memory state: enough to validate commands."""

    memory_id: str
    version: int
    live: bool
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None
    has_vector: bool = False


class StoredRow(msgspec.Struct, frozen=True, kw_only=True):
    """One event as a backend stores it."""

    seq: int
    event_id: str
    type: str
    memory_id: str | None
    version: int | None
    user_id: str | None
    agent_id: str | None
    run_id: str | None
    recorded_at: str
    payload: bytes
    vector: bytes | None
    prev_hash: str
    hash: str

    def to_record(self) -> RecordedEvent:
        return RecordedEvent(
            seq=self.seq,
            event=decode_payload(self.payload, self.vector),
            event_id=self.event_id,
            version=self.version,
            recorded_at=datetime.fromisoformat(self.recorded_at),
            prev_hash=self.prev_hash,
            hash=self.hash,
            vector_f32=self.vector,
        )


class AuditReport(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    checked: int
    head: Head
    first_bad_seq: int | None = None
    problem: str | None = None


class ParkedEvent(msgspec.Struct, frozen=True, kw_only=True):
    projection: str
    seq: int
    error: str
    attempts: int
    parked_at: str


class LogStats(msgspec.Struct, frozen=True, kw_only=True):
    live_memories: int
    with_vector: int
    dimension: int | None


class LogQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Filters for :meth:`EventLog.query`; every given field must match."""

    memory_id: str | None = None
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class EventLog(ABC):
    """The ordered, immutable, tamper-evident log: the only source of truth."""

    url: str

    @abstractmethod
    def append(self, events: Sequence[Event], *, expected_version: int | None = None) -> list[RecordedEvent]:
        """Record ``events`` atomically and durably; return their records in order.

        All or nothing: a refused or malformed event records none of the call.
        An event whose ``event_id`` is already recorded returns the original
        record. ``expected_version`` (all memory events of the call must share
        one memory) is checked against that memory's version before the first
        event of the call that is not already recorded (so a retried call is
        idempotent); per-event ``expected_version`` is checked at that event. Raises
        :class:`~memsync.errors.InputError`, :class:`~memsync.errors.CommandRefused`
        or :class:`~memsync.errors.ConflictError`.
        """

    @abstractmethod
    def read(self, after: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
        """Events with ``seq > after`` in seq order, streamed in pages."""

    @abstractmethod
    def read_stream(self, memory_id: str, *, until_seq: int | None = None) -> list[RecordedEvent]:
        """Every event of one memory's stream (bulk deletes included), in order."""

    @abstractmethod
    def read_streams(self, memory_ids: Sequence[str], *, until_seq: int) -> Iterator[RecordedEvent]:
        """Events of several streams with ``seq <= until_seq``, in seq order, each once."""

    @abstractmethod
    def query(
        self, q: LogQuery, *, after: int = 0, limit: int | None = None, descending: bool = False
    ) -> Iterator[RecordedEvent]:
        """Events matching ``q`` (served by indexes). Scope filters also match
        the resets that affected everyone."""

    @abstractmethod
    def head(self) -> Head:
        """The last seq and its hash (``0`` and the genesis hash when empty)."""

    @abstractmethod
    def stats(self) -> LogStats:
        """Counts of live memories at the head."""

    @abstractmethod
    def wait(self, after: int, timeout: float) -> int:
        """Block until the head passes ``after`` or ``timeout`` elapses; return the head seq."""

    @abstractmethod
    def seq_at(self, when: datetime) -> int:
        """The last seq recorded at or before ``when`` (0 if none)."""

    @abstractmethod
    def import_records(self, records: Iterable[tuple[Event, dict[str, Any]]]) -> int:
        """Append exported records verbatim (seq, event_id, recorded_at, hash kept).

        The records must continue this log's chain; each hash is recomputed and
        must match. All or nothing. Returns the number imported.
        """

    @abstractmethod
    def stored_rows(self, after: int = 0) -> Iterator[StoredRow]:
        """Raw rows in seq order, for audit."""

    # parked events: poison events a projection set aside

    @abstractmethod
    def park(self, projection: str, seq: int, error: str, attempts: int) -> None: ...

    @abstractmethod
    def parked(self, projection: str | None = None) -> list[ParkedEvent]: ...

    @abstractmethod
    def unpark(self, projection: str, seq: int) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def audit(self) -> AuditReport:
        """Recompute the hash chain; report the first seq where it breaks."""
        return audit_rows(self.stored_rows(), self.head())

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def audit_rows(rows: Iterable[StoredRow], head: Head) -> AuditReport:
    expected_seq, prev = 1, GENESIS_HASH
    checked = 0
    for row in rows:
        problem = _row_problem(row, expected_seq, prev)
        if problem is not None:
            bad = min(row.seq, expected_seq)
            return AuditReport(ok=False, checked=checked, head=head, first_bad_seq=bad, problem=problem)
        expected_seq, prev = row.seq + 1, row.hash
        checked += 1
    return AuditReport(ok=True, checked=checked, head=head)


def _row_problem(row: StoredRow, expected_seq: int, prev: str) -> str | None:
    if row.seq != expected_seq:
        return f"expected seq {expected_seq}, found {row.seq} (an event is missing or moved)"
    if row.prev_hash != prev:
        return "prev_hash does not match the previous event's hash"
    computed = chain_hash(
        prev, seq=row.seq, version=row.version, recorded_at=row.recorded_at, payload=row.payload, vector=row.vector
    )
    if computed != row.hash:
        return "content does not match its hash (payload, vector, version or time changed)"
    try:
        event = decode_payload(row.payload, None)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return f"payload does not decode: {e}"
    if event_type(event) != row.type or getattr(event, "memory_id", None) != row.memory_id:
        return "indexed columns (type, memory_id) do not match the payload"
    if event.event_id != row.event_id:
        return "event_id column does not match the payload"
    return None


# ---------------------------------------------------------------- append rules


class AppendTx(Protocol):
    """What :func:`plan_append` needs from a backend, inside its write transaction."""

    def head(self) -> Head: ...
    def find_event(self, event_id: str) -> RecordedEvent | None: ...
    def memory(self, memory_id: str) -> MemoryRow | None: ...
    def live_memories(self, scope: dict[str, str] | None) -> list[MemoryRow]: ...
    def dimension(self) -> int | None: ...
    def set_dimension(self, dimension: int) -> None: ...
    def insert(self, row: StoredRow, touched: list[MemoryRow]) -> None:
        """Insert the event row, upsert each touched memory row and index it in its stream."""
        ...


class Recorded(msgspec.Struct, frozen=True, kw_only=True):
    """Given fields of an imported record (``None`` when appending fresh)."""

    seq: int
    version: int | None
    recorded_at: str
    prev_hash: str | None
    hash: str


def plan_append(
    tx: AppendTx,
    events: Sequence[Event],
    *,
    expected_version: int | None = None,
    imported: Sequence[Recorded] | None = None,
    fixed_dimension: int | None = None,
) -> list[RecordedEvent]:
    """Validate ``events`` against the log's state and insert them in order.

    Runs inside the backend's transaction; raising aborts the whole call.
    """
    events = [_checked(index, event) for index, event in enumerate(events)]
    call_memory = _call_memory(events) if expected_version is not None else None
    head = tx.head()
    now = format_time(utcnow())
    out: list[RecordedEvent] = []
    seen: dict[str, RecordedEvent] = {}
    pending: dict[str, MemoryRow] = {}
    for index, event in enumerate(events):
        given = imported[index] if imported is not None else None
        if event.event_id is not None:
            original = seen.get(event.event_id) or tx.find_event(event.event_id)
            if original is not None and given is None:
                out.append(original)
                continue
            if original is not None:
                raise InputError(f"`event_id` {event.event_id} is already recorded", index=index, field="event_id")
        if call_memory is not None:
            # checked at the first event not yet recorded, so a retried call is idempotent
            _check_call_version(tx, call_memory, expected_version or 0)
            call_memory = None
        event_id = event.event_id or new_event_id()
        if event.event_id is None:
            event = msgspec.structs.replace(event, event_id=event_id)
        try:
            touched, version = _apply_rules(tx, event, pending, fixed_dimension)
            row = _stored_row(head, event, version, touched, now, given)
        except ConflictError as e:
            raise ConflictError(e.memory_id or "", e.expected, e.actual, index=index) from None
        except CommandRefused as e:
            raise CommandRefused(e.detail, index=index, memory_id=e.memory_id) from None
        except InputError as e:
            raise InputError(e.detail, index=index, field=e.field) from None
        tx.insert(row, touched)
        for memory in touched:
            pending[memory.memory_id] = memory
        head = Head(row.seq, row.hash)
        record = RecordedEvent(
            seq=row.seq,
            event=event,
            event_id=event_id,
            version=version,
            recorded_at=parse_time(row.recorded_at),
            prev_hash=row.prev_hash,
            hash=row.hash,
            vector_f32=row.vector,
        )
        seen[event_id] = record
        out.append(record)
    return out


def record_payload(event: Event) -> bytes:
    return payload_bytes(event)


def _checked(index: int, event: Event) -> Event:
    try:
        return check_event(event)
    except InputError as e:
        raise InputError(e.detail, index=index, field=e.field) from None


def _stored_row(
    head: Head, event: Event, version: int | None, touched: list[MemoryRow], now: str, given: Recorded | None
) -> StoredRow:
    """The row to store for ``event``; for an imported record, check it continues the chain."""
    seq = head.seq + 1
    recorded_at = now
    if given is not None:
        recorded_at = given.recorded_at
        if given.seq != seq:
            raise InputError(f"`seq` {given.seq} does not continue the log (expected {seq})", field="seq")
        if given.version != version:
            raise InputError(f"`version` {given.version} does not match the log's version {version}", field="version")
        if given.prev_hash is not None and given.prev_hash != head.hash:
            raise InputError("`prev_hash` does not match the previous event's hash", field="prev_hash")
    vector = getattr(event, "vector", None)
    packed = None if vector is None else pack_vector(vector)
    payload = record_payload(event)
    digest = chain_hash(head.hash, seq=seq, version=version, recorded_at=recorded_at, payload=payload, vector=packed)
    if given is not None and given.hash != digest:
        raise InputError(f"`hash` of seq {seq} does not match its content (tampered export?)", field="hash")
    return StoredRow(
        seq=seq,
        event_id=event.event_id or "",
        type=event_type(event),
        memory_id=getattr(event, "memory_id", None),
        version=version,
        user_id=_scope_value(event, touched, "user_id"),
        agent_id=_scope_value(event, touched, "agent_id"),
        run_id=_scope_value(event, touched, "run_id"),
        recorded_at=recorded_at,
        payload=payload,
        vector=packed,
        prev_hash=head.hash,
        hash=digest,
    )


def _call_memory(events: Sequence[Event]) -> str:
    """The one memory a call with a call-level ``expected_version`` touches."""
    ids = {e.memory_id for e in events if isinstance(e, MemoryAdded | MemoryUpdated | MemoryDeleted)}
    if len(ids) != 1:
        raise InputError(
            "`expected_version` applies to a call whose events all touch one memory", field="expected_version"
        )
    return ids.pop()


def _check_call_version(tx: AppendTx, memory_id: str, expected: int) -> None:
    row = tx.memory(memory_id)
    actual = row.version if row is not None else 0
    if actual != expected:
        raise ConflictError(memory_id, expected, actual)


def _apply_rules(
    tx: AppendTx, event: Event, pending: dict[str, MemoryRow], fixed_dimension: int | None
) -> tuple[list[MemoryRow], int | None]:
    """Check one event against state; return the memory rows it changes and its version."""
    if isinstance(event, MemoriesDeleted | MemoriesReset):
        scope = None if isinstance(event, MemoriesReset) else {k: v for k in SCOPE_FIELDS if (v := getattr(event, k))}
        rows = tx.live_memories(scope)
        for gone in rows:
            gone.version += 1
            gone.live = False
        return rows, None
    memory_id = event.memory_id
    row = pending.get(memory_id) or tx.memory(memory_id)
    current = row.version if row is not None else 0
    if event.expected_version is not None and event.expected_version != current:
        raise ConflictError(memory_id, event.expected_version, current)
    vector = getattr(event, "vector", None)
    if vector is not None:
        _check_dimension(tx, len(vector), fixed_dimension)
    if isinstance(event, MemoryAdded):
        if row is not None and row.live:
            raise CommandRefused(f"memory {memory_id!r} already exists (live, version {current})", memory_id=memory_id)
        new = MemoryRow(
            memory_id=memory_id,
            version=current + 1,
            live=True,
            user_id=event.user_id,
            agent_id=event.agent_id,
            run_id=event.run_id,
            has_vector=vector is not None,
        )
        return [new], new.version
    if row is None or not row.live:
        state = "does not exist" if row is None else "is deleted"
        raise CommandRefused(f"memory {memory_id!r} {state}; cannot apply {event_type(event)}", memory_id=memory_id)
    changed = msgspec.structs.replace(row, version=current + 1)
    if isinstance(event, MemoryDeleted):
        changed.live = False
    elif vector is not None:
        changed.has_vector = True
    return [changed], changed.version


def _check_dimension(tx: AppendTx, dimension: int, fixed: int | None) -> None:
    known = tx.dimension() or fixed
    if known is None:
        tx.set_dimension(dimension)
    elif dimension != known:
        raise InputError(f"`vector` has dimension {dimension}, but this log's vectors have {known}", field="vector")
    elif tx.dimension() is None:
        tx.set_dimension(dimension)


def _scope_value(event: Event, touched: list[MemoryRow], name: str) -> str | None:
    value = getattr(event, name, None)
    if value is None and isinstance(event, MemoryUpdated | MemoryDeleted) and touched:
        value = getattr(touched[0], name)
    return value
