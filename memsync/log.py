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

import contextlib
import gc
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

import msgspec

from memsync.errors import CommandRefused, ConfigError, ConflictError, InputError, LogError
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
    checked_event,
    decode_payload,
    event_type,
    format_time,
    new_event_id,
    parse_time,
    payload_bytes,
    stored_time,
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
        """The record; raises :class:`~memsync.errors.TamperError` if the stored payload no longer decodes."""
        return RecordedEvent(
            seq=self.seq,
            event=decode_payload(self.payload, self.vector, seq=self.seq),
            event_id=self.event_id,
            version=self.version,
            recorded_at=stored_time(self.recorded_at, seq=self.seq),
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
    """Filters for :meth:`EventLog.query`; every given field must match.

    ``memory_id``: the memory's stream, the bulk events that ended a version of
    it included. ``user_id`` / ``agent_id`` / ``run_id``: the scope columns an
    event was recorded with (a memory's later events carry its scope), plus
    every reset. A ``memories.deleted`` given only an agent or a run is not
    listed under the users whose memories it removed.
    """

    memory_id: str | None = None
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("memory_id", "user_id", "agent_id", "run_id", "type"):
            value = getattr(self, name)
            if value is not None and not encodable(value):
                raise InputError(f"`{name}` is not valid text (a lone surrogate: undecodable bytes?)", field=name)


def query_filters(q: LogQuery) -> tuple[list[tuple[str, Any]], list[tuple[str, str]]]:
    """What the SQL backends filter on: (condition with one ``?`` placeholder, value) pairs for the
    memory, type and time filters, and the given scope fields as (column, value)."""
    conditions: list[tuple[str, Any]] = []
    if q.memory_id is not None:  # the memory's stream, bulk deletes included
        conditions.append(("seq IN (SELECT seq FROM streams WHERE memory_id = ?)", q.memory_id))
    if q.type is not None:
        conditions.append(("type = ?", q.type))
    if q.since is not None:
        conditions.append(("recorded_at >= ?", format_time(q.since)))
    if q.until is not None:
        conditions.append(("recorded_at <= ?", format_time(q.until)))
    scope = [(field, value) for field in SCOPE_FIELDS if (value := getattr(q, field)) is not None]
    return conditions, scope


def encodable(value: str) -> bool:
    """Whether ``value`` has a UTF-8 form (a str from undecodable argv bytes holds lone surrogates)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


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

    def replay(self, after: int = 0, limit: int | None = None, *, vectors: bool = True) -> Iterator[RecordedEvent]:
        """:meth:`read` for folding (projections, rebuilds): events carry no vector list.

        A vector is in the record's ``vector_f32`` bytes only — all
        :func:`memsync.fold.fold` uses — and not even there without ``vectors``
        (a graph needs none). Backends override this to skip decoding vectors at
        all; this default strips what :meth:`read` decoded.
        """
        for record in self.read(after, limit):
            yield _replayed(record, vectors)

    @abstractmethod
    def read_stream(self, memory_id: str, *, until_seq: int | None = None) -> list[RecordedEvent]:
        """Every event of one memory's stream (bulk deletes included), in order."""

    @abstractmethod
    def read_streams(self, memory_ids: Sequence[str], *, until_seq: int) -> Iterator[RecordedEvent]:
        """Events of several streams with ``seq <= until_seq``, in seq order, each once."""

    def replay_streams(
        self, memory_ids: Sequence[str], *, until_seq: int, vectors: bool = True
    ) -> Iterator[RecordedEvent]:
        """:meth:`read_streams` for folding: records as :meth:`replay` gives them."""
        for record in self.read_streams(memory_ids, until_seq=until_seq):
            yield _replayed(record, vectors)

    def memory_ids(self, until_seq: int) -> list[str]:
        """Ids of the memories that may be live at ``until_seq``, sorted: at least every one that is.

        Folding their streams up to ``until_seq`` gives exactly the live state then.
        This default collects every memory with an event up to ``until_seq``.
        """
        records = self.replay(limit=until_seq, vectors=False)
        return sorted({r.memory_id for r in records if r.memory_id is not None})

    @abstractmethod
    def query(
        self,
        q: LogQuery,
        *,
        after: int = 0,
        limit: int | None = None,
        descending: bool = False,
        vectors: bool = True,
    ) -> Iterator[RecordedEvent]:
        """Events matching ``q`` (served by indexes). Scope filters also match
        the resets that affected everyone.

        Without ``vectors`` an event's vector is not turned into a list (three
        quarters of decoding a record with 384 floats): it stays float32 bytes in
        the record's ``vector_f32``, as :meth:`replay` gives it — for readers that
        do not show vectors (``memsync log`` as text).
        """

    @abstractmethod
    def head(self) -> Head:
        """The last seq and its hash (``0`` and the genesis hash when empty)."""

    @abstractmethod
    def stats(self) -> LogStats:
        """Counts of live memories at the head."""

    @abstractmethod
    def dimension(self) -> int | None:
        """The dimension of the log's vectors: recorded with the first, else configured; None if neither."""

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


def _replayed(record: RecordedEvent, vectors: bool) -> RecordedEvent:
    """``record`` as :meth:`EventLog.replay` gives it."""
    if getattr(record.event, "vector", None) is not None:
        record = msgspec.structs.replace(record, event=msgspec.structs.replace(record.event, vector=None))
    if not vectors and record.vector_f32 is not None:
        record = msgspec.structs.replace(record, vector_f32=None)
    return record


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
    except LogError as e:
        return str(e)
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


class AppendBatch:
    """:class:`AppendTx` for all the calls of one group commit, over state read once.

    The backend, inside its write transaction and holding the append lock, reads
    what the calls will ask about and hands it to :meth:`prime` (the head, the
    dimension, the recorded events with the calls' event_ids, the memory rows
    of the calls' memories); ``load_live`` reads the live memory rows of a scope
    from the database. Each call then runs :func:`plan_append` between
    :meth:`begin` and, when refused, :meth:`discard`, against that state plus an
    overlay of what earlier calls recorded, so no savepoints are needed; the
    backend writes what :meth:`take` returns (between calls or at the end). This
    is exact because nobody else writes while the lock is held.
    """

    def __init__(self, load_live: Callable[[dict[str, str] | None], list[MemoryRow]]) -> None:
        self._load_live = load_live
        self._head = Head(0, GENESIS_HASH)
        self._dimension: int | None = None
        self._stored_events: dict[str, StoredRow] = {}
        self._stored_memories: dict[str, MemoryRow] = {}
        self._events: dict[str, StoredRow] = {}  # what this batch recorded
        self._memories: dict[str, MemoryRow] = {}
        self._rows: list[StoredRow] = []  # not yet taken
        self._touched: list[tuple[MemoryRow, int]] = []
        self._new_dimension: int | None = None
        self._undo: list[tuple[str, MemoryRow | None]] = []
        self._mark: tuple[int, int, Head, int | None, int | None] = (0, 0, self._head, None, None)

    def prime(
        self, head: Head, dimension: int | None, events: Iterable[StoredRow], memories: Iterable[MemoryRow]
    ) -> None:
        self._head, self._dimension = head, dimension
        self._stored_events = {row.event_id: row for row in events}
        self._stored_memories = {row.memory_id: row for row in memories}

    def begin(self) -> None:
        """A call starts: remember where to go back to if it is refused."""
        self._undo.clear()
        self._mark = (len(self._rows), len(self._touched), self._head, self._dimension, self._new_dimension)

    def discard(self) -> None:
        """Forget what the current call recorded: it was refused."""
        rows, touched, self._head, self._dimension, self._new_dimension = self._mark
        for row in self._rows[rows:]:
            del self._events[row.event_id]
        for memory_id, previous in reversed(self._undo):
            if previous is None:
                del self._memories[memory_id]
            else:
                self._memories[memory_id] = previous
        del self._rows[rows:], self._touched[touched:]
        self._undo.clear()

    @property
    def buffered(self) -> int:
        return len(self._rows)

    def take(self) -> tuple[list[StoredRow], list[tuple[MemoryRow, int]], int | None]:
        """The rows to write (event rows; memory rows with the seq that changed them; a new dimension)."""
        out = (self._rows, self._touched, self._new_dimension)
        self._rows, self._touched, self._new_dimension = [], [], None
        self._mark = (0, 0, self._head, self._dimension, None)
        return out

    # ---- AppendTx

    def head(self) -> Head:
        return self._head

    def find_event(self, event_id: str) -> RecordedEvent | None:
        row = self._events.get(event_id) or self._stored_events.get(event_id)
        return row.to_record() if row is not None else None

    def memory(self, memory_id: str) -> MemoryRow | None:
        found = self._memories.get(memory_id)
        return found if found is not None else self._stored_memories.get(memory_id)

    def live_memories(self, scope: dict[str, str] | None) -> list[MemoryRow]:
        merged = {row.memory_id: row for row in self._load_live(scope)}
        merged.update(self._memories)  # what the batch changed wins
        wanted = (scope or {}).items()
        in_scope = (r for r in merged.values() if r.live and all(getattr(r, k) == v for k, v in wanted))
        return sorted((msgspec.structs.replace(r) for r in in_scope), key=lambda r: r.memory_id)  # copies: changed

    def dimension(self) -> int | None:
        return self._dimension

    def set_dimension(self, dimension: int) -> None:
        self._dimension = self._new_dimension = dimension

    def insert(self, row: StoredRow, touched: list[MemoryRow]) -> None:
        self._rows.append(row)
        self._events[row.event_id] = row
        self._head = Head(row.seq, row.hash)
        for memory in touched:
            self._undo.append((memory.memory_id, self._memories.get(memory.memory_id)))
            self._memories[memory.memory_id] = memory = msgspec.structs.replace(memory)
            self._touched.append((memory, row.seq))


class Recorded(msgspec.Struct, frozen=True, kw_only=True):
    """Given fields of an imported record (``None`` when appending fresh)."""

    seq: int
    version: int | None
    recorded_at: str
    prev_hash: str | None
    hash: str


class Prepared(msgspec.Struct, frozen=True, kw_only=True):
    """A call's events checked and encoded once, by :func:`prepare`, before any lock is taken."""

    events: list[Event]  # checked, each with its event_id
    payloads: list[bytes]  # the stored payload of each
    vectors: list[bytes | None]  # float32 bytes of each vector
    fresh: list[bool]  # the event_id was made here, so the event cannot be recorded yet


def prepare(events: Sequence[Event]) -> Prepared:
    """Check and encode ``events`` (the costly part of an append, which needs no state).

    A backend calls it outside its write lock: PostgreSQL in each appending
    thread, SQLite in the leader of the next group commit while the current
    one waits for its fsync.
    Raises :class:`~memsync.errors.InputError` naming the event's index.
    """
    checked: list[Event] = []
    payloads: list[bytes] = []
    vectors: list[bytes | None] = []
    fresh: list[bool] = []
    for index, event in enumerate(events):
        try:
            event, packed = checked_event(event)
        except InputError as e:
            raise InputError(e.detail, index=index, field=e.field) from None
        fresh.append(event.event_id is None)
        if event.event_id is None:
            event = msgspec.structs.replace(event, event_id=new_event_id())
        checked.append(event)
        payloads.append(payload_bytes(event))
        vectors.append(packed)
    return Prepared(events=checked, payloads=payloads, vectors=vectors, fresh=fresh)


GC_PAUSE_EVENTS: Final = 64  # calls with at least this many events run with the garbage collector paused
_gc_lock = threading.Lock()
_gc_pausers = 0  # calls running with the collector paused; the last one out resumes it
_gc_resume = False  # the collector was enabled when the first one paused it


def gc_paused(events: int) -> contextlib.AbstractContextManager[None]:
    """Pause the garbage collector around a large append (``events >= GC_PAUSE_EVENTS``).

    A batch keeps several tracked objects per event alive until its commit (the
    checked events, their vectors, entities and metadata); they survive young
    collections and trigger full ones, which walk everything the process holds
    (20–30 µs per event in a batch of 1000). Nothing an append allocates forms a
    cycle, so there is nothing for the collector to find meanwhile. The collector
    runs again when the last paused call ends, and stays off if it was off. A
    small call gets a context that does nothing (no generator to run).
    """
    return _GC_PAUSE if events >= GC_PAUSE_EVENTS else _NO_PAUSE


class _GCPause:
    """The pause of :func:`gc_paused`: counted, so overlapping calls in several threads nest."""

    def __enter__(self) -> None:
        global _gc_pausers, _gc_resume
        with _gc_lock:
            if _gc_pausers == 0:
                _gc_resume = gc.isenabled()
                gc.disable()
            _gc_pausers += 1

    def __exit__(self, *exc: object) -> None:
        global _gc_pausers
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_resume:
                gc.enable()


_GC_PAUSE: Final = _GCPause()
_NO_PAUSE: Final = contextlib.nullcontext()


def plan_append(
    tx: AppendTx,
    events: Sequence[Event] | Prepared,
    *,
    expected_version: int | None = None,
    imported: Sequence[Recorded] | None = None,
    fixed_dimension: int | None = None,
) -> list[RecordedEvent]:
    """Validate ``events`` against the log's state and insert them in order.

    Runs inside the backend's transaction; raising aborts the whole call.
    ``events`` may come :func:`prepare`-d already.
    """
    call = events if isinstance(events, Prepared) else prepare(events)
    call_memory = _call_memory(call.events) if expected_version is not None else None
    head = tx.head()
    recorded_at = utcnow()
    now = format_time(recorded_at)  # microseconds, UTC: parses back to exactly `recorded_at`
    out: list[RecordedEvent] = []
    seen: dict[str, RecordedEvent] = {}
    pending: dict[str, MemoryRow] = {}
    for index, event in enumerate(call.events):
        given = imported[index] if imported is not None else None
        event_id = event.event_id or ""  # set by prepare()
        if not call.fresh[index]:
            original = seen.get(event_id) or tx.find_event(event_id)
            if original is not None and given is None:
                out.append(original)
                continue
            if original is not None:
                raise InputError(f"`event_id` {event_id} is already recorded", index=index, field="event_id")
        if call_memory is not None:
            # checked at the first event not yet recorded, so a retried call is idempotent
            _check_call_version(tx, call_memory, expected_version or 0)
            call_memory = None
        try:
            touched, version = _apply_rules(tx, event, pending, fixed_dimension)
            row = _stored_row(head, event, version, touched, now, given, call.payloads[index], call.vectors[index])
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
            recorded_at=recorded_at if given is None else parse_time(row.recorded_at),
            prev_hash=row.prev_hash,
            hash=row.hash,
            vector_f32=row.vector,
        )
        seen[event_id] = record
        out.append(record)
    return out


def record_payload(event: Event) -> bytes:
    return payload_bytes(event)


def _stored_row(
    head: Head,
    event: Event,
    version: int | None,
    touched: list[MemoryRow],
    now: str,
    given: Recorded | None,
    payload: bytes,
    packed: bytes | None,
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
    digest = chain_hash(head.hash, seq=seq, version=version, recorded_at=recorded_at, payload=payload, vector=packed)
    if given is not None and given.hash != digest:
        raise InputError(f"`hash` of seq {seq} does not match its content (tampered export?)", field="hash")
    scoped = _scoped(event, touched)
    return StoredRow(
        seq=seq,
        event_id=event.event_id or "",
        type=event_type(event),
        memory_id=getattr(event, "memory_id", None),
        version=version,
        user_id=getattr(scoped, "user_id", None),
        agent_id=getattr(scoped, "agent_id", None),
        run_id=getattr(scoped, "run_id", None),
        recorded_at=recorded_at,
        payload=payload,
        vector=packed,
        prev_hash=head.hash,
        hash=digest,
    )


def _call_memory(events: Sequence[Event]) -> str:
    """The one memory a call with a call-level ``expected_version`` touches."""
    ids = {e.memory_id for e in events if isinstance(e, _MEMORY_EVENTS)}
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
    if isinstance(event, _BULK_EVENTS):
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


def dimension_conflict(url: str, fixed: int, recorded: int) -> ConfigError:
    """The error for a configured dimension that the log's recorded vectors contradict."""
    return ConfigError(
        f"vector.dimension: configured as {fixed}, but the log {url} already holds vectors of dimension {recorded}"
    )


def _check_dimension(tx: AppendTx, dimension: int, fixed: int | None) -> None:
    known = tx.dimension() or fixed
    if known is None:
        tx.set_dimension(dimension)
    elif dimension != known:
        raise InputError(f"`vector` has dimension {dimension}, but this log's vectors have {known}", field="vector")
    elif tx.dimension() is None:
        tx.set_dimension(dimension)


def _scoped(event: Event, touched: list[MemoryRow]) -> Event | MemoryRow:
    """What carries the scope columns of ``event``'s row: the event, or for a memory's later event its row."""
    if touched and isinstance(event, _LATER_EVENTS):
        return touched[0]
    return event


# tuples, not `A | B` unions: a union is a new (garbage-collected) object at every call
_MEMORY_EVENTS: Final = (MemoryAdded, MemoryUpdated, MemoryDeleted)
_LATER_EVENTS: Final = (MemoryUpdated, MemoryDeleted)
_BULK_EVENTS: Final = (MemoriesDeleted, MemoriesReset)
