"""The SQLite event log: the embedded default (``sqlite:///path``, WAL).

Ordering across processes: every append runs in ``BEGIN IMMEDIATE``, which
takes SQLite's single write lock before reading the head, so seqs are assigned
in commit order with no gaps, whichever process appends.

Group commit within a process: threads that append at the same time queue
their calls; one of them (the leader) commits the whole queue in one
transaction with one fsync. The leader checks and encodes the calls' events
(:func:`~memsync.log.prepare`, before it takes the write lock), reads what the
calls ask about in a few statements, runs their rules against that state plus
what the earlier calls recorded (:class:`~memsync.log.AppendBatch`: a refused
call is dropped in memory, so it does not take the others down), and writes
the rows with one ``executemany`` per table. The other threads sleep, each on
its own lock, so the leader's Python never waits for theirs (one interpreter
lock); once the leader reaches its ``COMMIT``, the first queued call leads the
next batch and checks it while the fsync runs.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any, Final

import msgspec

from memsync.errors import InputError, LogError
from memsync.events import GENESIS_HASH, Event, RecordedEvent, decode_payload, format_time, stored_time, utcnow
from memsync.log import (
    AppendBatch,
    AuditReport,
    EventLog,
    Head,
    LogQuery,
    LogStats,
    MemoryRow,
    ParkedEvent,
    Prepared,
    Recorded,
    StoredRow,
    dimension_conflict,
    encodable,
    gc_paused,
    plan_append,
    prepare,
    query_filters,
)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    memory_id TEXT,
    version INTEGER,
    user_id TEXT,
    agent_id TEXT,
    run_id TEXT,
    recorded_at TEXT NOT NULL,
    payload BLOB NOT NULL,
    vector BLOB,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, seq) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_agent ON events (agent_id, seq) WHERE agent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, seq) WHERE run_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_type ON events (type, seq);
CREATE INDEX IF NOT EXISTS events_time ON events (recorded_at);
CREATE TABLE IF NOT EXISTS memories (
    memory_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    live INTEGER NOT NULL,
    user_id TEXT,
    agent_id TEXT,
    run_id TEXT,
    has_vector INTEGER NOT NULL
) WITHOUT ROWID;
DROP INDEX IF EXISTS memories_user;
DROP INDEX IF EXISTS memories_agent;
DROP INDEX IF EXISTS memories_run;
CREATE TABLE IF NOT EXISTS streams (
    memory_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (memory_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parked (
    projection TEXT NOT NULL,
    seq INTEGER NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    parked_at TEXT NOT NULL,
    PRIMARY KEY (projection, seq)
);
"""

_ROW_COLUMNS: Final = (
    "seq, event_id, type, memory_id, version, user_id, agent_id, run_id, recorded_at, payload, vector, prev_hash, hash"
)
_RECORD_COLUMNS: Final = "seq, event_id, version, recorded_at, payload, vector, prev_hash, hash"
_MEMORY_COLUMNS: Final = "memory_id, version, live, user_id, agent_id, run_id, has_vector"
_HEAD_SQL: Final = "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
_INSERT_EVENT: Final = f"INSERT INTO events ({_ROW_COLUMNS}) VALUES ({', '.join('?' * 13)})"
_UPSERT_MEMORY: Final = f"INSERT OR REPLACE INTO memories ({_MEMORY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_INSERT_STREAM: Final = "INSERT INTO streams (memory_id, version, seq) VALUES (?, ?, ?)"
_PAGE: Final = 1000
_IN_CHUNK: Final = 500  # ids per `IN (...)` lookup
_FLUSH_ROWS: Final = 5000  # buffered rows written between the calls of a group commit
_CHECK_PROBLEMS: Final = 10  # most problems PRAGMA quick_check lists in an audit

Page = Callable[[int, int], list[tuple[Any, ...]]]  # (cursor, page size) -> the page's rows


def _row(values: tuple[Any, ...]) -> StoredRow:
    return StoredRow(
        seq=values[0],
        event_id=values[1],
        type=values[2],
        memory_id=values[3],
        version=values[4],
        user_id=values[5],
        agent_id=values[6],
        run_id=values[7],
        recorded_at=values[8],
        payload=values[9],
        vector=values[10],
        prev_hash=values[11],
        hash=values[12],
    )


def _record(values: tuple[Any, ...]) -> RecordedEvent:
    """A record from the columns of ``_RECORD_COLUMNS`` (the read path: no intermediate row)."""
    return _from_columns(values, unpack=True)


def _replay_row(values: tuple[Any, ...]) -> RecordedEvent:
    """A record as :meth:`EventLog.replay` gives it: the vector stays float32 bytes."""
    return _from_columns(values, unpack=False)


def _from_columns(values: tuple[Any, ...], *, unpack: bool) -> RecordedEvent:
    seq, event_id, version, recorded_at, payload, vector, prev_hash, hash_ = values
    return RecordedEvent(
        seq=seq,
        event=decode_payload(payload, vector if unpack else None, seq=seq),
        event_id=event_id,
        version=version,
        recorded_at=stored_time(recorded_at, seq=seq),
        prev_hash=prev_hash,
        hash=hash_,
        vector_f32=vector,
    )


class _Call:
    """One append call in the queue: its events until the leader prepares them, then its outcome."""

    __slots__ = ("done", "error", "events", "expected_version", "imported", "prepared", "result", "wake")

    def __init__(self, events: Sequence[Event], expected_version: int | None, imported: Sequence[Recorded] | None):
        self.events = events
        self.expected_version = expected_version
        self.imported = imported
        self.prepared: Prepared | None = None
        self.result: list[RecordedEvent] = []
        self.error: BaseException | None = None
        self.done = False
        self.wake = threading.Lock()  # held until the call is done or its thread is to lead
        self.wake.acquire()


def _prepared(call: _Call) -> bool:
    """Check and encode a call's events (:func:`~memsync.log.prepare`); a refusal is the call's outcome."""
    try:
        call.prepared = prepare(call.events)
    except Exception as e:
        call.error = e
        return False
    return True


def _memory_row(r: tuple[Any, ...]) -> MemoryRow:
    return MemoryRow(
        memory_id=r[0],
        version=r[1],
        live=bool(r[2]),
        user_id=r[3],
        agent_id=r[4],
        run_id=r[5],
        has_vector=bool(r[6]),
    )


def _scope_sql(scope: dict[str, str] | None) -> tuple[str, list[str]]:
    if not scope:
        return "", []
    return "".join(f" AND {k} = ?" for k in scope), list(scope.values())


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def _select_in(db: sqlite3.Connection, sql: str, items: list[str]) -> Iterator[tuple[Any, ...]]:
    """Rows of ``sql`` (ending in ``IN``) for every chunk of ``items``."""
    for chunk in _chunks(items):
        yield from db.execute(f"{sql} ({','.join('?' * len(chunk))})", chunk)


def _live_rows(db: sqlite3.Connection, scope: dict[str, str] | None) -> list[MemoryRow]:
    """Live memory rows of a scope (of all memories without one).

    ``memories`` has no index by scope: three more b-trees to update in every
    append's transaction (one WAL page each) for the rare bulk delete. A scope's
    memories are found through the events' own scope index instead (each memory's
    ``memory.added`` carries its scope; ``+type`` keeps SQLite on that index).
    """
    where, params = _scope_sql(scope)
    sql = f"SELECT {_MEMORY_COLUMNS} FROM memories WHERE live = 1{where}"
    if scope:
        first = next(iter(scope))
        sql += f" AND memory_id IN (SELECT memory_id FROM events WHERE {first} = ? AND +type = 'memory.added')"
        params.append(scope[first])
    return [_memory_row(r) for r in db.execute(sql, params)]


def _flush(db: sqlite3.Connection, tx: AppendBatch) -> None:
    """Write what the batch recorded so far: three ``executemany``, whatever the number of events."""
    rows, touched, dimension = tx.take()
    if dimension is not None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dimension', ?)", (str(dimension),))
    if rows:
        _insert(db, _INSERT_EVENT, [msgspec.structs.astuple(r) for r in rows])
    if touched:
        latest = {m.memory_id: m for m, _ in touched}  # a memory changed twice is written once
        _insert(db, _UPSERT_MEMORY, [msgspec.structs.astuple(m) for m in latest.values()])
        _insert(db, _INSERT_STREAM, [(m.memory_id, m.version, seq) for m, seq in touched])


def _insert(db: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """``executemany``, or for one row (a lone append) the cheaper ``execute``."""
    if len(rows) == 1:
        db.execute(sql, rows[0])
    else:
        db.executemany(sql, rows)


class SQLiteEventLog(EventLog):
    """Event log in one SQLite file; safe for many threads and processes."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", fixed_dimension: int | None = None) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.synchronous = synchronous
        self.fixed_dimension = fixed_dimension
        self._idle: list[sqlite3.Connection] = []  # reader connections not in use
        self._leader = threading.Lock()  # the write lock: one batch (or other write) at a time
        self._mutex = threading.Lock()  # guards the queue, `_gathering` and `_committing`
        self._queue: list[_Call] = []
        self._gathering = False  # a thread leads the next batch and has not taken the write lock yet
        self._committing = False  # the write lock's holder has statements to run before its COMMIT
        self._appended = threading.Condition()
        self._closed = False
        self._dimension: int | None = None  # once set in a log it never changes: cached after a commit
        self._connections: list[sqlite3.Connection] = []
        self._writer = self._connect(create=True)
        self._writer.execute("PRAGMA busy_timeout = 0")  # the writer waits in _begin_immediate
        if fixed_dimension is not None:
            recorded = self._writer.execute("SELECT value FROM meta WHERE key = 'dimension'").fetchall()
            if recorded and int(recorded[0][0]) != fixed_dimension:
                self.close()
                raise dimension_conflict(self.url, fixed_dimension, int(recorded[0][0]))

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SQLiteEventLog:
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url.removeprefix("sqlite:")
        return cls(path, **kwargs)

    # ------------------------------------------------------------ connections

    def _connect(self, *, create: bool = False) -> sqlite3.Connection:
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not self.path.exists():
                    os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as e:  # a read-only or forbidden parent directory, a full disk
                raise LogError(f"cannot create the SQLite log {self.path}: {e}") from e
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60.0)
            db.execute("PRAGMA busy_timeout = 60000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self.synchronous}")
            if create:
                db.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
            else:
                db.execute("SELECT 1 FROM events LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise LogError(f"cannot open the SQLite log {self.path}: {e}") from e
        self._connections.append(db)
        return db

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        # Reader connections are pooled, not per thread: short-lived threads must not leak them.
        if self._closed:
            raise LogError("the event log is closed")
        try:
            db = self._idle.pop()
        except IndexError:
            db = self._connect()
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as e:
            raise LogError(f"reading the SQLite log {self.path} failed: {e}") from e
        finally:
            self._idle.append(db)

    # ------------------------------------------------------------ append

    def append(self, events: Sequence[Event], *, expected_version: int | None = None) -> list[RecordedEvent]:
        if not events:
            return []
        return self._submit(_Call(events, expected_version, None))

    def import_records(self, records: Iterable[tuple[Event, dict[str, Any]]]) -> int:
        events: list[Event] = []
        given: list[Recorded] = []
        for event, recorded in records:
            events.append(event)
            given.append(
                Recorded(
                    seq=int(recorded["seq"]),
                    version=recorded.get("version"),
                    recorded_at=_canonical_time(recorded["recorded_at"], len(given) + 1),
                    prev_hash=recorded.get("prev_hash"),
                    hash=str(recorded["hash"]),
                )
            )
        if events:
            self._submit(_Call(events, None, given))
        return len(events)

    def _submit(self, call: _Call) -> list[RecordedEvent]:
        """Queue ``call`` and wait until a leader has committed it, or lead a batch.

        A thread leads when no one is gathering a batch and no leader is busy
        before its ``COMMIT``; otherwise it sleeps on its own lock until its
        call is committed or it is made the next leader. So only the leader runs
        Python while a batch is checked and written, and the next batch is
        checked while this one's ``COMMIT`` waits for its fsync.
        """
        with self._mutex:
            self._queue.append(call)
            lead = not self._gathering and not self._committing
            self._gathering = self._gathering or lead
        if not lead:
            try:
                call.wake.acquire()  # released when the call is done, or when it is to lead
            except BaseException:  # a signal's exception (KeyboardInterrupt) while waiting
                self._abandon(call)
                raise
        if not call.done:
            self._lead()
        if call.error is not None:
            raise call.error
        return call.result

    def _lead(self) -> None:
        """Check and encode the queued calls, then commit them once the write lock is free."""
        with self._mutex:
            batch, self._queue = self._queue, []
        gathering = True
        try:
            with gc_paused(sum(len(call.events) for call in batch)):
                ready = [call for call in batch if _prepared(call)]
                with self._leader:
                    with self._mutex:
                        self._gathering = gathering = False
                        self._committing = True
                    try:
                        if ready:
                            self._commit(ready)
                    finally:
                        self._open(committer=True)
        except BaseException as e:  # an interrupt: no call of the batch may wait for ever
            for call in batch:
                if not call.done:
                    call.error, call.result = call.error or e, []
            raise
        finally:
            if gathering:  # failed before it took the write lock
                self._open(gatherer=True)
            for call in batch:
                call.done = True
                call.wake.release()
            with self._appended:
                self._appended.notify_all()

    def _abandon(self, call: _Call) -> None:
        """A waiting call's thread is leaving (interrupted): take the call out of the queue, hand on the lead.

        A call a leader has taken already is committed (or refused) without anyone to return to.
        """
        with self._mutex:
            if call.done or call not in self._queue:
                return
            self._queue.remove(call)
            appointed = not call.wake.locked()  # only an appointment releases a queued call's lock
        if appointed:
            self._open(gatherer=True)

    def _open(self, *, committer: bool = False, gatherer: bool = False) -> None:
        """This thread gives up its role (the committer past its last statement before ``COMMIT``, or gone;
        a gatherer that will not take the write lock): the first queued call leads next."""
        with self._mutex:
            if committer:
                self._committing = False
            if gatherer:
                self._gathering = False
            if self._queue and not self._gathering and not self._committing:
                self._gathering = True
                self._queue[0].wake.release()

    def _commit(self, batch: list[_Call]) -> None:
        """One transaction, one fsync, for every queued call (see :class:`~memsync.log.AppendBatch`)."""
        db = self._writer
        try:
            _begin_immediate(db)
            try:
                tx = self._prime(db, batch)
                for call in batch:
                    self._apply_call(tx, call)
                    if tx.buffered >= _FLUSH_ROWS:  # between calls: a refused call never has to undo a write
                        _flush(db, tx)
                _flush(db, tx)
                self._open(committer=True)  # the next batch is checked while this one waits for its fsync
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            self._dimension = tx.dimension()
        except BaseException as e:
            # nothing of the batch was committed: no call may return records
            error = LogError(f"appending to the SQLite log {self.path} failed: {_cause(e)}")
            error.__cause__ = e
            for call in batch:
                call.error, call.result = call.error or error, []
            if not isinstance(e, sqlite3.DatabaseError):
                raise

    def _prime(self, db: sqlite3.Connection, batch: list[_Call]) -> AppendBatch:
        """Read, under the write lock, what the calls will ask about: a few statements per batch."""
        ids: dict[str, None] = {}
        memory_ids: dict[str, None] = {}
        for call in batch:
            assert call.prepared is not None  # only checked calls are committed
            for event, fresh in zip(call.prepared.events, call.prepared.fresh, strict=True):
                if not fresh:
                    ids[event.event_id or ""] = None
                memory_id = getattr(event, "memory_id", None)
                if memory_id is not None:
                    memory_ids[memory_id] = None
        top = db.execute(_HEAD_SQL).fetchone()
        dimension = self._dimension
        if dimension is None:
            found = db.execute("SELECT value FROM meta WHERE key = 'dimension'").fetchone()
            dimension = int(found[0]) if found else None
        recorded = _select_in(db, f"SELECT {_ROW_COLUMNS} FROM events WHERE event_id IN", list(ids))
        memories = _select_in(db, f"SELECT {_MEMORY_COLUMNS} FROM memories WHERE memory_id IN", list(memory_ids))
        tx = AppendBatch(lambda scope: _live_rows(db, scope))
        tx.prime(
            Head(top[0], top[1]) if top else Head(0, GENESIS_HASH),
            dimension,
            map(_row, recorded),
            map(_memory_row, memories),
        )
        return tx

    def _apply_call(self, tx: AppendBatch, call: _Call) -> None:
        assert call.prepared is not None
        tx.begin()
        try:
            call.result = plan_append(
                tx,
                call.prepared,
                expected_version=call.expected_version,
                imported=call.imported,
                fixed_dimension=self.fixed_dimension,
            )
        except sqlite3.DatabaseError:
            raise
        except Exception as e:  # a refusal (or a bug) is this call's outcome only
            tx.discard()
            call.error = e

    # ------------------------------------------------------------ reads

    def head(self) -> Head:
        rows = self._execute(_HEAD_SQL)
        return Head(rows[0][0], rows[0][1]) if rows else Head(0, GENESIS_HASH)

    def _pages(self, page: Page, cursor: int, limit: int | None) -> Iterator[tuple[Any, ...]]:
        """Rows page by page: ``page(cursor, size)`` reads one, the cursor is each page's last seq."""
        remaining = limit
        while remaining is None or remaining > 0:
            size = _PAGE if remaining is None else min(_PAGE, remaining)
            rows = page(cursor, size)
            yield from rows
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < size:
                return
            cursor = rows[-1][0]

    def _after(self, columns: str) -> Page:
        sql = f"SELECT {columns} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
        return lambda cursor, size: self._execute(sql, (cursor, size))

    def stored_rows(self, after: int = 0) -> Iterator[StoredRow]:
        return map(_row, self._pages(self._after(_ROW_COLUMNS), after, None))

    def audit(self) -> AuditReport:
        """The hash chain, then SQLite's own check of every page of the file.

        The chain covers the events table only; the memories and streams tables
        and the indexes, which drive command validation and queries, are checked
        by ``PRAGMA quick_check`` (the structure of every b-tree, not whether each
        index entry matches its row: ``integrity_check`` would, at a higher cost).
        """
        report = super().audit()
        if not report.ok:
            return report
        found = [str(row[0]) for row in self._execute(f"PRAGMA quick_check({_CHECK_PROBLEMS})")]
        if found == ["ok"]:
            return report
        problem = f"the SQLite file {self.path} fails its integrity check (PRAGMA quick_check): {'; '.join(found)}"
        return msgspec.structs.replace(report, ok=False, problem=problem)

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
        return map(_record, self._pages(self._after(_RECORD_COLUMNS), after, limit))

    def replay(self, after: int = 0, limit: int | None = None, *, vectors: bool = True) -> Iterator[RecordedEvent]:
        columns = _RECORD_COLUMNS if vectors else _RECORD_COLUMNS.replace("vector", "NULL")
        return map(_replay_row, self._pages(self._after(columns), after, limit))

    def read_stream(self, memory_id: str, *, until_seq: int | None = None) -> list[RecordedEvent]:
        if not encodable(memory_id):  # no recorded id is: nothing to find
            return []
        rows = self._execute(
            f"SELECT {_prefixed('e', _RECORD_COLUMNS)} FROM streams s JOIN events e ON e.seq = s.seq "
            "WHERE s.memory_id = ? AND s.seq <= ? ORDER BY s.version",
            (memory_id, until_seq if until_seq is not None else 2**62),
        )
        return [_record(r) for r in rows]

    def read_streams(self, memory_ids: Sequence[str], *, until_seq: int) -> Iterator[RecordedEvent]:
        return map(_record, self._streams(memory_ids, until_seq, _RECORD_COLUMNS))

    def replay_streams(
        self, memory_ids: Sequence[str], *, until_seq: int, vectors: bool = True
    ) -> Iterator[RecordedEvent]:
        columns = _RECORD_COLUMNS if vectors else _RECORD_COLUMNS.replace("vector", "NULL")
        return map(_replay_row, self._streams(memory_ids, until_seq, columns))

    def _streams(self, memory_ids: Sequence[str], until_seq: int, columns: str) -> Iterator[tuple[Any, ...]]:
        seqs: set[int] = set()
        for chunk in _chunks(list(dict.fromkeys(memory_ids))):
            marks = ",".join("?" * len(chunk))
            rows = self._execute(
                f"SELECT seq FROM streams WHERE memory_id IN ({marks}) AND seq <= ?", (*chunk, until_seq)
            )
            seqs.update(r[0] for r in rows)
        ordered = sorted(seqs)
        for start in range(0, len(ordered), _IN_CHUNK):
            seq_chunk = ordered[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(seq_chunk))
            yield from self._execute(f"SELECT {columns} FROM events WHERE seq IN ({marks}) ORDER BY seq", seq_chunk)

    def memory_ids(self, until_seq: int) -> list[str]:
        # one statement, so one snapshot: at the head the log's own table says which memories are live
        rows = self._execute(
            "SELECT memory_id FROM memories WHERE live = 1 AND (SELECT MAX(seq) FROM events) <= ?1 "
            "UNION SELECT memory_id FROM streams WHERE seq <= ?1 AND (SELECT MAX(seq) FROM events) > ?1 "
            "ORDER BY memory_id",
            (until_seq,),
        )
        return [r[0] for r in rows]

    def query(
        self,
        q: LogQuery,
        *,
        after: int = 0,
        limit: int | None = None,
        descending: bool = False,
        vectors: bool = True,
    ) -> Iterator[RecordedEvent]:
        branches = _query_branches(q)
        order, op = ("DESC", "<") if descending else ("ASC", ">")
        floor = f" AND seq > {int(after)}" if descending else ""
        selects = [
            (f"SELECT {_RECORD_COLUMNS} FROM events WHERE seq {op} ?{floor}{where} ORDER BY seq {order} LIMIT ?", given)
            for where, given in branches
        ]

        def page(cursor: int, size: int) -> list[tuple[Any, ...]]:
            # with a scope, its rows and the resets each walk their own index in seq order and only a page of
            # each is merged here (an OR in one WHERE collects and sorts every row of the scope)
            parts = [self._execute(sql, (cursor, *given, size)) for sql, given in selects]
            if len(parts) == 1:
                return parts[0]
            return list(islice(heapq.merge(*parts, key=itemgetter(0), reverse=descending), size))

        return map(_record if vectors else _replay_row, self._pages(page, 2**62 if descending else after, limit))

    def stats(self) -> LogStats:
        rows = self._execute("SELECT COUNT(*), COALESCE(SUM(has_vector), 0) FROM memories WHERE live = 1")
        return LogStats(live_memories=rows[0][0], with_vector=rows[0][1], dimension=self.dimension())

    def dimension(self) -> int | None:
        if self._dimension is None:  # once recorded it never changes: read until then
            found = self._execute("SELECT value FROM meta WHERE key = 'dimension'")
            self._dimension = int(found[0][0]) if found else None
        return self.fixed_dimension if self._dimension is None else self._dimension

    def wait(self, after: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        poll = 0.002
        while True:
            seq = self.head().seq
            remaining = deadline - time.monotonic()
            if seq > after or remaining <= 0:
                return seq
            with self._appended:  # in-process appends wake us at once; other processes are polled
                self._appended.wait(min(poll, remaining))
            poll = min(poll * 2, 0.02)

    def seq_at(self, when: datetime) -> int:
        rows = self._execute("SELECT MAX(seq) FROM events WHERE recorded_at <= ?", (format_time(when),))
        return int(rows[0][0] or 0)

    # ------------------------------------------------------------ parked

    def park(self, projection: str, seq: int, error: str, attempts: int) -> None:
        self._write(
            "INSERT OR REPLACE INTO parked (projection, seq, error, attempts, parked_at) VALUES (?, ?, ?, ?, ?)",
            (projection, seq, error[:2000], attempts, format_time(utcnow())),
        )

    def parked(self, projection: str | None = None) -> list[ParkedEvent]:
        where, params = ("WHERE projection = ?", [projection]) if projection else ("", [])
        rows = self._execute(
            f"SELECT projection, seq, error, attempts, parked_at FROM parked {where} ORDER BY projection, seq", params
        )
        return [ParkedEvent(projection=r[0], seq=r[1], error=r[2], attempts=r[3], parked_at=r[4]) for r in rows]

    def unpark(self, projection: str, seq: int) -> None:
        self._write("DELETE FROM parked WHERE projection = ? AND seq = ?", (projection, seq))

    def _write(self, sql: str, params: Sequence[Any]) -> None:
        """One statement outside the event tables, in its own write transaction."""
        with self._leader:
            db = self._writer
            try:
                _begin_immediate(db)
                try:
                    db.execute(sql, params)
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
            except sqlite3.DatabaseError as e:
                raise LogError(f"writing to the SQLite log {self.path} failed: {_cause(e)}") from e

    def close(self) -> None:
        self._closed = True
        for db in self._connections:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._connections.clear()


_LOCK_WAIT: Final = 60.0


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any: after an I/O error or a full disk SQLite has rolled
    it back already, and a failing ROLLBACK must not hide the error that caused it."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def _cause(e: BaseException) -> str:
    """An error as a failed append names it: with SQLite's own code where there is one (``SQLITE_IOERR_WRITE``)."""
    name = getattr(e, "sqlite_errorname", None)
    return f"{e} ({name})" if name else repr(e)


def _begin_immediate(db: sqlite3.Connection) -> None:
    """Take SQLite's write lock, waiting up to ``_LOCK_WAIT`` seconds.

    SQLite's own busy handler sleeps up to 100 ms between tries, so a waiting
    process misses the short gaps between another process's commits and
    appends from several processes crawl; polling every fraction of a
    millisecond keeps them flowing.
    """
    deadline = time.monotonic() + _LOCK_WAIT
    delay = 0.0001
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            code = getattr(e, "sqlite_errorcode", sqlite3.SQLITE_BUSY) & 0xFF  # primary code
            if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or time.monotonic() > deadline:
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 1.5, 0.002)


def _prefixed(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def _query_branches(q: LogQuery) -> list[tuple[str, list[Any]]]:
    """The WHERE conditions of a query: one branch, or with a scope two (its events; the resets)."""
    conditions, scope = query_filters(q)
    where = "".join(f" AND {condition}" for condition, _ in conditions)
    params = [value for _, value in conditions]
    if not scope:
        return [(where, params)]
    match = "".join(f" AND {k} = ?" for k, _ in scope)
    return [(match + where, [v for _, v in scope] + params), (" AND type = 'memories.reset'" + where, params)]


def _canonical_time(value: Any, line: int) -> str:
    if not isinstance(value, str):
        raise InputError("`recorded_at` must be an RFC 3339 string", line=line, field="recorded_at")
    try:
        return format_time(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise InputError(f"`recorded_at` is not an RFC 3339 time: {value!r}", line=line, field="recorded_at") from None
