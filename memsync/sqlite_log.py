"""The SQLite event log: the embedded default (``sqlite:///path``, WAL).

Ordering across processes: every append runs in ``BEGIN IMMEDIATE``, which
takes SQLite's single write lock before reading the head, so seqs are assigned
in commit order with no gaps, whichever process appends.

Group commit within a process: threads that append at the same time queue
their calls; one of them (the leader) commits the whole queue in one
transaction with one fsync, each call in its own savepoint so a refused call
does not take the others down.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from memsync.errors import InputError, LogError, MemsyncError
from memsync.events import GENESIS_HASH, Event, RecordedEvent, format_time, utcnow
from memsync.log import (
    EventLog,
    Head,
    LogQuery,
    LogStats,
    MemoryRow,
    ParkedEvent,
    Recorded,
    StoredRow,
    plan_append,
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
CREATE INDEX IF NOT EXISTS memories_user ON memories (user_id) WHERE live = 1;
CREATE INDEX IF NOT EXISTS memories_agent ON memories (agent_id) WHERE live = 1;
CREATE INDEX IF NOT EXISTS memories_run ON memories (run_id) WHERE live = 1;
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
_PAGE: Final = 1000
_PAGE_SQL: Final = f"SELECT {_ROW_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"


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


class _Call:
    __slots__ = ("done", "error", "events", "expected_version", "imported", "result")

    def __init__(
        self, events: Sequence[Event], expected_version: int | None, imported: Sequence[Recorded] | None
    ) -> None:
        self.events = events
        self.expected_version = expected_version
        self.imported = imported
        self.result: list[RecordedEvent] = []
        self.error: BaseException | None = None
        self.done = False


class _Tx:
    """:class:`memsync.log.AppendTx` over one SQLite connection in a write transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self._dimension: int | None = None

    def head(self) -> Head:
        row = self.db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return Head(row[0], row[1]) if row else Head(0, GENESIS_HASH)

    def find_event(self, event_id: str) -> RecordedEvent | None:
        row = self.db.execute(f"SELECT {_ROW_COLUMNS} FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return _row(row).to_record() if row else None

    def memory(self, memory_id: str) -> MemoryRow | None:
        row = self.db.execute(
            "SELECT memory_id, version, live, user_id, agent_id, run_id, has_vector FROM memories WHERE memory_id = ?",
            (memory_id,),
        ).fetchone()
        return _memory_row(row) if row else None

    def live_memories(self, scope: dict[str, str] | None) -> list[MemoryRow]:
        where, params = _scope_sql(scope)
        rows = self.db.execute(
            "SELECT memory_id, version, live, user_id, agent_id, run_id, has_vector FROM memories "
            f"WHERE live = 1{where}",
            params,
        ).fetchall()
        return [_memory_row(r) for r in rows]

    def dimension(self) -> int | None:
        if self._dimension is None:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'dimension'").fetchone()
            self._dimension = int(row[0]) if row else None
        return self._dimension

    def set_dimension(self, dimension: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dimension', ?)", (str(dimension),))
        self._dimension = dimension

    def insert(self, row: StoredRow, touched: list[MemoryRow]) -> None:
        self.db.execute(
            f"INSERT INTO events ({_ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.seq,
                row.event_id,
                row.type,
                row.memory_id,
                row.version,
                row.user_id,
                row.agent_id,
                row.run_id,
                row.recorded_at,
                row.payload,
                row.vector,
                row.prev_hash,
                row.hash,
            ),
        )
        if touched:
            self.db.executemany(
                "INSERT OR REPLACE INTO memories (memory_id, version, live, user_id, agent_id, run_id, has_vector) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(m.memory_id, m.version, m.live, m.user_id, m.agent_id, m.run_id, m.has_vector) for m in touched],
            )
            self.db.executemany(
                "INSERT INTO streams (memory_id, version, seq) VALUES (?, ?, ?)",
                [(m.memory_id, m.version, row.seq) for m in touched],
            )


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


class SQLiteEventLog(EventLog):
    """Event log in one SQLite file; safe for many threads and processes."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", fixed_dimension: int | None = None) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.synchronous = synchronous
        self.fixed_dimension = fixed_dimension
        self._idle: list[sqlite3.Connection] = []  # reader connections not in use
        self._leader = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Call] = []
        self._appended = threading.Condition()
        self._closed = False
        self._connections: list[sqlite3.Connection] = []
        self._writer = self._connect(create=True)
        self._writer.execute("PRAGMA busy_timeout = 0")  # the writer waits in _begin_immediate

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SQLiteEventLog:
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url.removeprefix("sqlite:")
        return cls(path, **kwargs)

    # ------------------------------------------------------------ connections

    def _connect(self, *, create: bool = False) -> sqlite3.Connection:
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
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
        return self._submit(_Call(list(events), expected_version, None))

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
        with self._queue_lock:
            self._queue.append(call)
        with self._leader:
            if not call.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if call.error is not None:
            raise call.error
        return call.result

    def _commit(self, batch: list[_Call]) -> None:
        db = self._writer
        try:
            _begin_immediate(db)
            try:
                for call in batch:
                    self._apply_call(db, call)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except BaseException as e:
            # nothing of the batch was committed: no call may return records
            error = LogError(f"appending to the SQLite log {self.path} failed: {e!r}")
            error.__cause__ = e
            for call in batch:
                call.error, call.result = call.error or error, []
            if not isinstance(e, sqlite3.DatabaseError):
                raise
        finally:
            for call in batch:
                call.done = True
            with self._appended:
                self._appended.notify_all()

    def _apply_call(self, db: sqlite3.Connection, call: _Call) -> None:
        db.execute("SAVEPOINT call")
        try:
            call.result = plan_append(
                _Tx(db),
                call.events,
                expected_version=call.expected_version,
                imported=call.imported,
                fixed_dimension=self.fixed_dimension,
            )
        except MemsyncError as e:
            db.execute("ROLLBACK TO call")
            call.error = e
        except sqlite3.DatabaseError:
            raise
        except Exception as e:
            db.execute("ROLLBACK TO call")
            call.error = e
        db.execute("RELEASE call")

    # ------------------------------------------------------------ reads

    def head(self) -> Head:
        rows = self._execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        return Head(rows[0][0], rows[0][1]) if rows else Head(0, GENESIS_HASH)

    def stored_rows(self, after: int = 0) -> Iterator[StoredRow]:
        while True:
            rows = self._execute(
                f"SELECT {_ROW_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, _PAGE)
            )
            for r in rows:
                yield _row(r)
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
        remaining = limit
        while remaining is None or remaining > 0:
            page = _PAGE if remaining is None else min(_PAGE, remaining)
            rows = self._execute(_PAGE_SQL, (after, page))
            for r in rows:
                yield _row(r).to_record()
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < page:
                return
            after = rows[-1][0]

    def read_stream(self, memory_id: str, *, until_seq: int | None = None) -> list[RecordedEvent]:
        rows = self._execute(
            f"SELECT {_prefixed('e')} FROM streams s JOIN events e ON e.seq = s.seq "
            "WHERE s.memory_id = ? AND s.seq <= ? ORDER BY s.version",
            (memory_id, until_seq if until_seq is not None else 2**62),
        )
        return [_row(r).to_record() for r in rows]

    def read_streams(self, memory_ids: Sequence[str], *, until_seq: int) -> Iterator[RecordedEvent]:
        ids = list(dict.fromkeys(memory_ids))
        seqs: set[int] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._execute(
                f"SELECT seq FROM streams WHERE memory_id IN ({marks}) AND seq <= ?", (*chunk, until_seq)
            )
            seqs.update(r[0] for r in rows)
        ordered = sorted(seqs)
        for start in range(0, len(ordered), 500):
            chunk_seqs = ordered[start : start + 500]
            marks = ",".join("?" * len(chunk_seqs))
            rows = self._execute(f"SELECT {_ROW_COLUMNS} FROM events WHERE seq IN ({marks}) ORDER BY seq", chunk_seqs)
            for r in rows:
                yield _row(r).to_record()

    def query(
        self, q: LogQuery, *, after: int = 0, limit: int | None = None, descending: bool = False
    ) -> Iterator[RecordedEvent]:
        where, params = _query_sql(q)
        order = "DESC" if descending else "ASC"
        cursor = 2**62 if descending else after
        remaining = limit
        while remaining is None or remaining > 0:
            page = _PAGE if remaining is None else min(_PAGE, remaining)
            op = "<" if descending else ">"
            floor = f" AND seq > {int(after)}" if descending else ""
            rows = self._execute(
                f"SELECT {_ROW_COLUMNS} FROM events WHERE seq {op} ?{floor}{where} ORDER BY seq {order} LIMIT ?",
                (cursor, *params, page),
            )
            for r in rows:
                yield _row(r).to_record()
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < page:
                return
            cursor = rows[-1][0]

    def stats(self) -> LogStats:
        rows = self._execute("SELECT COUNT(*), COALESCE(SUM(has_vector), 0) FROM memories WHERE live = 1")
        dim = self._execute("SELECT value FROM meta WHERE key = 'dimension'")
        dimension = int(dim[0][0]) if dim else self.fixed_dimension
        return LogStats(live_memories=rows[0][0], with_vector=rows[0][1], dimension=dimension)

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
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as e:
                raise LogError(f"writing to the SQLite log {self.path} failed: {e}") from e

    def close(self) -> None:
        self._closed = True
        for db in self._connections:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._connections.clear()


_LOCK_WAIT: Final = 60.0


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


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in _ROW_COLUMNS.split(","))


def _query_sql(q: LogQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if q.memory_id is not None:  # the memory's stream, bulk deletes included
        clauses.append("seq IN (SELECT seq FROM streams WHERE memory_id = ?)")
        params.append(q.memory_id)
    scope = [(k, getattr(q, k)) for k in ("user_id", "agent_id", "run_id") if getattr(q, k) is not None]
    if scope:
        match = " AND ".join(f"{k} = ?" for k, _ in scope)
        clauses.append(f"(({match}) OR type = 'memories.reset')")
        params.extend(v for _, v in scope)
    if q.type is not None:
        clauses.append("type = ?")
        params.append(q.type)
    if q.since is not None:
        clauses.append("recorded_at >= ?")
        params.append(format_time(q.since))
    if q.until is not None:
        clauses.append("recorded_at <= ?")
        params.append(format_time(q.until))
    return "".join(f" AND {c}" for c in clauses), params


def _canonical_time(value: Any, line: int) -> str:
    if not isinstance(value, str):
        raise InputError("`recorded_at` must be an RFC 3339 string", line=line, field="recorded_at")
    try:
        return format_time(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise InputError(f"`recorded_at` is not an RFC 3339 time: {value!r}", line=line, field="recorded_at") from None
