"""The PostgreSQL event log: one log shared by processes on many hosts (``postgresql://…``).

Ordering across processes and hosts (invariant 3). An append runs in one
``READ COMMITTED`` transaction whose first statement takes a transaction-scoped
advisory lock keyed by the ``events`` table (``pg_advisory_xact_lock``). Only
then, in later statements — each with a fresh snapshot — does it read the head
and insert ``head + 1, head + 2, …``. The lock is released by ``COMMIT`` after
the commit is flushed and visible, so whoever writes seq ``n + 1`` has seen seq
``n`` committed: no reader can see ``n + 1`` before ``n``, and an append that
fails leaves no hole. The constraints are the proof, the lock the fast path:
``seq`` is the primary key and every append inserts ``head + 1``, so two
overlapping appends that bypassed the lock would collide on it; ``event_id`` is
``UNIQUE`` and ``streams`` has ``PRIMARY KEY (memory_id, version)``. A writer
that loses such a race is rolled back by the server and its call is retried.

Group commit within a process: as in :mod:`memsync.sqlite_log`, threads that
append at the same time queue their calls and one of them commits the queue in
one transaction (one WAL flush). The lock is held for round trips, so a batch
makes two, whatever its size: one pipeline takes the lock and reads what every
call needs, the rules run in memory (a refused call's rows are simply dropped),
one pipeline writes the rows, ``NOTIFY`` and ``COMMIT`` (:func:`_prime`, :func:`_flush`, and the
shared :class:`~memsync.log.AppendBatch`).
Every event gets its ``event_id`` before the first attempt, so a batch whose
``COMMIT`` was lost with the connection is retried safely: what it recorded is
found and returned, not recorded twice.

:meth:`PostgresEventLog.wait` sleeps on ``LISTEN memsync_events`` (each append
sends ``pg_notify('memsync_events', <last seq>)`` in its transaction) and polls
while that connection is down. :meth:`PostgresEventLog.leadership` is a
session-level advisory lock on a dedicated connection: the server drops it
when the holder's connection closes, which ``kill -9`` does.

Errors: every psycopg error becomes a :class:`~memsync.errors.LogError` in
:meth:`PostgresEventLog._error` (``raise … from e``); messages name the log by
its URL with the password replaced by ``***``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any, Final, NamedTuple, Protocol, TypeAlias, TypeVar
from urllib.parse import quote

import msgspec
import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import RowFactory, class_row, tuple_row

from memsync.errors import ConfigError, InputError, LogError, MemsyncError
from memsync.events import (
    GENESIS_HASH,
    SCOPE_FIELDS,
    Event,
    RecordedEvent,
    decode_payload,
    format_time,
    stored_time,
    utcnow,
)
from memsync.leader import Leadership
from memsync.log import (
    AppendBatch,
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
from memsync.system import redact_url

logger = logging.getLogger("memsync.postgres_log")

Conn: TypeAlias = psycopg.Connection[tuple[Any, ...]]
Statement: TypeAlias = tuple[str, Sequence[Any] | None]
R = TypeVar("R")


class _HasSeq(Protocol):
    @property
    def seq(self) -> int: ...


S = TypeVar("S", bound=_HasSeq)

CHANNEL: Final = "memsync_events"
SCHEMA_FORMAT: Final = "memsync-log-1"

# Advisory lock keys are bigints: a memsync class in the high 32 bits, the
# ``events`` table's oid (or a hash of it and a name) in the low 32 bits, so
# logs in different schemas of one database never share a lock.
_APPEND_CLASS: Final = 0x6D530001
_LEADER_CLASS: Final = 0x6D530002
_SCHEMA_CLASS: Final = 0x6D530003

SCHEMA: Final = """
CREATE TABLE events (
    seq BIGINT PRIMARY KEY CHECK (seq > 0),
    event_id TEXT COLLATE "C" NOT NULL UNIQUE,
    type TEXT COLLATE "C" NOT NULL,
    memory_id TEXT COLLATE "C",
    version INTEGER,
    user_id TEXT COLLATE "C",
    agent_id TEXT COLLATE "C",
    run_id TEXT COLLATE "C",
    recorded_at TEXT COLLATE "C" NOT NULL,
    payload BYTEA NOT NULL,
    vector BYTEA,
    prev_hash TEXT COLLATE "C" NOT NULL,
    hash TEXT COLLATE "C" NOT NULL
);
CREATE INDEX events_user ON events (user_id, seq) WHERE user_id IS NOT NULL;
CREATE INDEX events_agent ON events (agent_id, seq) WHERE agent_id IS NOT NULL;
CREATE INDEX events_run ON events (run_id, seq) WHERE run_id IS NOT NULL;
CREATE INDEX events_type ON events (type, seq);
CREATE INDEX events_time ON events (recorded_at);
CREATE TABLE memories (
    memory_id TEXT COLLATE "C" PRIMARY KEY,
    version INTEGER NOT NULL,
    live BOOLEAN NOT NULL,
    user_id TEXT COLLATE "C",
    agent_id TEXT COLLATE "C",
    run_id TEXT COLLATE "C",
    has_vector BOOLEAN NOT NULL
);
CREATE INDEX memories_user ON memories (user_id) WHERE live;
CREATE INDEX memories_agent ON memories (agent_id) WHERE live;
CREATE INDEX memories_run ON memories (run_id) WHERE live;
CREATE TABLE streams (
    memory_id TEXT COLLATE "C" NOT NULL,
    version INTEGER NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (memory_id, version)
);
CREATE TABLE meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE parked (
    projection TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    parked_at TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (projection, seq)
);
"""

_ROW_COLUMNS: Final = (
    "seq, event_id, type, memory_id, version, user_id, agent_id, run_id, recorded_at, payload, vector, prev_hash, hash"
)
_MEMORY_SQL: Final = "SELECT memory_id, version, live, user_id, agent_id, run_id, has_vector FROM memories"
_HEAD_SQL: Final = "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
_INSERT_EVENT: Final = f"INSERT INTO events ({_ROW_COLUMNS}) VALUES ({', '.join(['%s'] * 13)})"
_UPSERT_MEMORY: Final = (
    "INSERT INTO memories (memory_id, version, live, user_id, agent_id, run_id, has_vector) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (memory_id) DO UPDATE SET version = EXCLUDED.version, "
    "live = EXCLUDED.live, user_id = EXCLUDED.user_id, agent_id = EXCLUDED.agent_id, run_id = EXCLUDED.run_id, "
    "has_vector = EXCLUDED.has_vector"
)
_INSERT_STREAM: Final = "INSERT INTO streams (memory_id, version, seq) VALUES (%s, %s, %s)"
_LOCK_SQL: Final = "SELECT pg_advisory_xact_lock(%s)"
_PAGE: Final = 1000
_FLUSH_ROWS: Final = 5000  # buffered event rows written at once, between calls
_ATTEMPTS: Final = 6  # per group-commit batch, for errors after which a retry is safe (~2.5 s in all)
_RECORD_COLUMNS: Final = "seq, event_id, version, recorded_at, payload, vector, prev_hash, hash"
_STORED = class_row(StoredRow)
# client (libpq) and server settings of the sessions that sit idle on purpose
_KEEPALIVE: Final[dict[str, Any]] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
_IDLE_SETTINGS: Final = {
    "idle_session_timeout": "0",
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "15000",
}
_MEMORY = class_row(MemoryRow)


def _records(*, vectors: str) -> RowFactory[RecordedEvent]:
    """Rows of ``_RECORD_COLUMNS`` as records. ``vectors``: ``"decoded"`` (the event's vector list too,
    as :meth:`EventLog.read` gives), ``"bytes"`` (float32 bytes only) or ``"none"``, for replays."""

    def factory(cursor: Any) -> Callable[[Sequence[Any]], RecordedEvent]:
        def make(values: Sequence[Any]) -> RecordedEvent:
            seq, event_id, version, recorded_at, payload, vector, prev_hash, hash_ = values
            return RecordedEvent(
                seq=seq,
                event=decode_payload(payload, vector if vectors == "decoded" else None, seq=seq),
                event_id=event_id,
                version=version,
                recorded_at=stored_time(recorded_at, seq=seq),
                prev_hash=prev_hash,
                hash=hash_,
                vector_f32=None if vectors == "none" else vector,
            )

        return make

    return factory


_READ = _records(vectors="decoded")
_BYTES = _records(vectors="bytes")


def _key(kind: int, value: int) -> int:
    return (kind << 32) | (value & 0xFFFFFFFF)


def _describe(e: psycopg.Error) -> str:
    text = "; ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
    return f"{type(e).__name__}: {text or 'no details'}"


class _Call(NamedTuple):
    prepared: Prepared
    expected_version: int | None
    imported: list[Recorded] | None
    outcome: Future[list[RecordedEvent]]


class _Failed(Exception):
    """A batch's transaction failed; ``committing``: the error came from COMMIT (outcome unknown)."""

    def __init__(self, error: psycopg.Error, committing: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.committing = committing


def _prime(conn: Conn, batch: Sequence[_Call], before: Sequence[Statement]) -> AppendBatch:
    """Run ``before`` (``BEGIN``, the lock) and read what the calls will ask about, in one round trip."""
    ids, memory_ids = [], []
    for call in batch:
        events = call.prepared.events
        ids += [e.event_id for e, fresh in zip(events, call.prepared.fresh, strict=True) if not fresh]
        memory_ids += [m for e in events if (m := getattr(e, "memory_id", None)) is not None]
    with conn.pipeline():
        for statement in before:
            conn.execute(*statement)
        head = conn.execute(_HEAD_SQL)
        dimension = conn.execute("SELECT value FROM meta WHERE key = 'dimension'")
        found = conn.cursor(row_factory=_STORED).execute(
            f"SELECT {_ROW_COLUMNS} FROM events WHERE event_id = ANY(%s)", (ids,)
        )
        memories = conn.cursor(row_factory=_MEMORY).execute(f"{_MEMORY_SQL} WHERE memory_id = ANY(%s)", (memory_ids,))
    top, value = head.fetchone(), dimension.fetchone()
    tx = AppendBatch(lambda scope: _live_rows(conn, scope))
    tx.prime(
        Head(top[0], top[1]) if top else Head(0, GENESIS_HASH),
        int(value[0]) if value else None,
        found.fetchall(),
        memories.fetchall(),
    )
    return tx


def _live_rows(conn: Conn, scope: dict[str, str] | None) -> list[MemoryRow]:
    where, params = _scope_sql(scope)
    return conn.cursor(row_factory=_MEMORY).execute(f"{_MEMORY_SQL} WHERE live{where}", params).fetchall()


def _flush(conn: Conn, tx: AppendBatch, after: Sequence[Statement] = ()) -> None:
    """Write what the batch recorded so far, then run ``after``, in one round trip."""
    rows, touched, dimension = tx.take()
    latest = {m.memory_id: m for m, _ in touched}  # a memory changed twice is written once
    with conn.pipeline(), conn.cursor() as cur:
        if dimension is not None:
            cur.execute(
                "INSERT INTO meta (key, value) VALUES ('dimension', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(dimension),),
            )
        if rows:
            cur.executemany(_INSERT_EVENT, [msgspec.structs.astuple(r) for r in rows])
        if touched:
            cur.executemany(_UPSERT_MEMORY, [msgspec.structs.astuple(m) for m in latest.values()])
            cur.executemany(_INSERT_STREAM, [(m.memory_id, m.version, seq) for m, seq in touched])
        for statement in after:
            cur.execute(*statement)


def _scope_sql(scope: dict[str, str] | None) -> tuple[str, list[str]]:
    if not scope:
        return "", []
    return "".join(f" AND {k} = %s" for k in scope), list(scope.values())


class _Pool:
    """A few idle connections shared by the threads that read.

    A connection serves one query at a time; a reader borrows one for a query
    (one page), so generators never hold a connection between pages.
    """

    def __init__(self, connect: Callable[[], Conn], keep: int) -> None:
        self._connect = connect
        self._keep = keep
        self._idle: list[Conn] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[Conn]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            self._give_back(conn)

    def _give_back(self, conn: Conn) -> None:
        healthy = not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE
        with self._lock:
            if healthy and not self._closed and len(self._idle) < self._keep:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Listener:
    """``LISTEN memsync_events`` on its own connection, in a daemon thread.

    Waiters remember :attr:`generation`, check the head, and sleep until the
    generation moves (a NOTIFY arrived, this process appended, or the
    connection came back and notifications may have been missed).
    """

    def __init__(self, connect: Callable[[], Conn]) -> None:
        self._connect = connect
        self.generation = 0
        self.healthy = False
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memsync-pg-listen", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10.0)

    def bump(self) -> None:
        with self._changed:
            self.generation += 1
            self._changed.notify_all()

    def wait_past(self, generation: int, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.generation != generation or self._stop.is_set(), timeout)

    def _run(self) -> None:
        delay = 0.05
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.healthy, delay = True, 0.05
                    self.bump()  # anything sent while we were not listening: waiters re-check the head
                    self._ready.set()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.25):
                            self.bump()
            except (psycopg.Error, MemsyncError) as e:
                if not self._stop.is_set():
                    logger.warning("LISTEN %s: connection lost, polling until it is back: %s", CHANNEL, e)
            self.healthy = False
            self._ready.set()
            self._stop.wait(delay)
            delay = min(delay * 2, 2.0)

    def close(self) -> None:
        self._stop.set()
        self.bump()
        self._thread.join(timeout=2.0)


class PostgresEventLog(EventLog):
    """Event log in a PostgreSQL database (the schema of ``search_path``); safe for many threads,
    processes and hosts."""

    def __init__(self, url: str, *, fixed_dimension: int | None = None, keep_connections: int = 4) -> None:
        self.fixed_dimension = fixed_dimension
        self._dimension: int | None = None  # the recorded one, once read
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error:
            raise ConfigError(f"log_url: not a valid PostgreSQL URL: {redact_url(url)}") from None
        secret = str(params.get("password") or "")
        self._secrets = [s for s in dict.fromkeys((secret, quote(secret, safe=""), quote(secret))) if s]
        self.url = self._scrub(redact_url(url))  # also a password given as ?password=
        self._conninfo = url
        self._defaults: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._defaults["connect_timeout"] = 10
        if "application_name" not in params:
            self._defaults["application_name"] = "memsync"
        self._closed = False
        self._pool = _Pool(self._open, keep_connections)
        self._write_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Call] = []
        self._writer: Conn | None = None
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        self._leaderships: list[PostgresLeadership] = []
        with self._translated("opening"), self._open() as conn:
            self._events_oid = self._ensure_schema(conn)
            recorded = conn.execute("SELECT value FROM meta WHERE key = 'dimension'").fetchone()
        if fixed_dimension is not None and recorded and int(recorded[0]) != fixed_dimension:
            self.close()
            raise dimension_conflict(self.url, fixed_dimension, int(recorded[0]))
        self._append_key = _key(_APPEND_CLASS, self._events_oid)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> PostgresEventLog:
        return cls(url, **kwargs)

    def __repr__(self) -> str:
        return f"PostgresEventLog({self.url!r})"

    # ------------------------------------------------------------ connections and errors

    def _open(self, *, idle: bool = False) -> Conn:
        """A new autocommit connection with durable commits; raises psycopg errors (callers translate).

        ``idle``: a session that waits on purpose (LISTEN, leadership). It is
        exempt from a server-wide ``idle_session_timeout``, and keepalives on both
        ends notice a vanished peer within seconds (the server default: hours).
        """
        if self._closed:
            raise LogError("the event log is closed")
        conn = psycopg.connect(self._conninfo, autocommit=True, **self._defaults, **(_KEEPALIVE if idle else {}))
        settings = {"synchronous_commit": "on", **(_IDLE_SETTINGS if idle else {})}
        if conn.info.server_version < 140000:
            settings.pop("idle_session_timeout", None)
        try:
            conn.execute(
                "SELECT " + ", ".join(["set_config(%s, %s, false)"] * len(settings)),
                [item for pair in settings.items() for item in pair],
            )
        except BaseException:
            conn.close()
            raise
        return conn

    def _error(self, what: str, e: psycopg.Error) -> LogError:
        """The one place a psycopg error becomes a memsync error."""
        return LogError(self._scrub(f"{what} the PostgreSQL log {self.url} failed: {_describe(e)}"))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as e:
            raise self._error(what, e) from e

    def _ensure_schema(self, conn: Conn) -> int:
        """Create the tables once (under a lock, so concurrent first opens do not race); the oid of ``events``."""
        with conn.transaction():
            row = conn.execute("SELECT current_schema()").fetchone()
            schema = row[0] if row else None
            if schema is None:
                raise LogError(f"the PostgreSQL log {self.url}: no schema of its search_path exists")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_key(_SCHEMA_CLASS, zlib.crc32(schema.encode())),))
            oid = _regclass(conn, "events")
            if oid is None:
                conn.execute(SCHEMA)
                conn.execute("INSERT INTO meta (key, value) VALUES ('format', %s)", (SCHEMA_FORMAT,))
                oid = _regclass(conn, "events")
            elif _regclass(conn, "meta") is None or conn.execute(
                "SELECT value FROM meta WHERE key = 'format'"
            ).fetchone() != (SCHEMA_FORMAT,):
                raise LogError(f"{self.url}: schema {schema!r} has an `events` table that is not a memsync log")
        assert oid is not None
        return oid

    def _fetch(self, sql: str, params: Sequence[Any], factory: RowFactory[R]) -> list[R]:
        """Rows of one query on a pooled connection; once more on a new one if it had died (server restart)."""
        with self._translated("reading"):
            for attempt in (1, 2):
                try:
                    with self._pool.connection() as conn:
                        return conn.cursor(row_factory=factory).execute(sql, params).fetchall()
                except psycopg.OperationalError:
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def _tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._fetch(sql, params, tuple_row)

    def _execute(self, what: str, sql: str, params: Sequence[Any]) -> None:
        with self._translated(what), self._pool.connection() as conn:
            conn.execute(sql, params)

    # ------------------------------------------------------------ append

    def append(self, events: Sequence[Event], *, expected_version: int | None = None) -> list[RecordedEvent]:
        if not events:
            return []
        with gc_paused(len(events)):  # checked outside the lock
            return self._submit(_Call(_prepared(events), expected_version, None, Future()))

    def import_records(self, records: Iterable[tuple[Event, dict[str, Any]]]) -> int:
        events: list[Event] = []
        given: list[Recorded] = []
        for line, (event, recorded) in enumerate(records, start=1):
            events.append(event)
            given.append(_recorded(recorded, line))
        if events:
            with gc_paused(len(events)):
                self._submit(_Call(_prepared(events), None, given, Future()))
        return len(events)

    def _submit(self, call: _Call) -> list[RecordedEvent]:
        with self._queue_lock:
            self._queue.append(call)
        with self._write_lock:
            if not call.outcome.done():
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        return call.outcome.result()

    def _commit(self, batch: list[_Call]) -> None:
        """Commit ``batch`` in one transaction, retrying when the server rolled it back (or lost it).

        Every call's outcome is settled whatever happens, so no thread waits forever.
        """
        try:
            _settle(batch, self._attempts(batch))
        except BaseException as e:
            _settle(batch, [e] * len(batch))
            raise
        if self._listener is not None:
            self._listener.bump()

    def _attempts(self, batch: list[_Call]) -> Sequence[list[RecordedEvent] | BaseException]:
        delay = 0.02
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return self._write(batch)
            except _Failed as failed:
                if attempt < _ATTEMPTS and _retry_safe(failed, batch):
                    logger.info("append retried after %s", _describe(failed.error))
                    time.sleep(delay * random.uniform(0.5, 1.5))
                    delay *= 3
                    # the attempt may have committed: from now on every event_id is looked up
                    batch = [call._replace(prepared=_looked_up(call.prepared)) for call in batch]
                    continue
                error = self._error("appending to", failed.error)
                if failed.committing:
                    error = LogError(f"{error} (during COMMIT: the events may be recorded; check the log's head)")
                error.__cause__ = failed.error
                return [error] * len(batch)
            except MemsyncError as e:  # e.g. the log was closed
                return [e] * len(batch)
        raise AssertionError("unreachable")

    def _write(self, batch: list[_Call]) -> list[list[RecordedEvent] | BaseException]:
        """One transaction for the batch: the lock and the reads, the rules in memory, one write and COMMIT."""
        committing = False
        conn: Conn | None = None
        try:
            conn = self._writer if self._writer is not None and not self._writer.broken else self._open()
            self._writer = conn
            # READ COMMITTED whatever the database's default: each statement after the lock sees every earlier commit
            tx = _prime(conn, batch, [("BEGIN ISOLATION LEVEL READ COMMITTED", None), (_LOCK_SQL, (self._append_key,))])
            outcomes = [self._plan(conn, tx, call) for call in batch]
            recorded = [r for r in outcomes if not isinstance(r, BaseException)]
            if recorded:
                committing = True
                last = max(r[-1].seq for r in recorded)
                _flush(conn, tx, after=[("SELECT pg_notify(%s, %s)", (CHANNEL, str(last))), ("COMMIT", None)])
            else:
                conn.execute("ROLLBACK")
            return outcomes
        except psycopg.Error as e:
            # a new connection for the next attempt: an error inside a pipeline can leave psycopg's
            # cache of prepared statements out of step with the server's (it names statements the
            # aborted transaction never prepared), and every later append on it would fail
            self._writer = None
            if conn is not None:
                conn.close()  # the server rolls back whatever the transaction had done
            raise _Failed(e, committing) from e

    def _plan(self, conn: Conn, tx: AppendBatch, call: _Call) -> list[RecordedEvent] | BaseException:
        """The append rules for one call of the batch; a refusal (or a bug) is its outcome, a database error raises."""
        tx.begin()
        try:
            result = plan_append(
                tx,
                call.prepared,
                expected_version=call.expected_version,
                imported=call.imported,
                fixed_dimension=self.fixed_dimension,
            )
        except psycopg.Error:
            raise
        except Exception as e:
            tx.discard()
            return e
        if tx.buffered >= _FLUSH_ROWS:  # between calls, so a refusal never has to undo a write
            _flush(conn, tx)
        return result

    # ------------------------------------------------------------ reads

    def head(self) -> Head:
        rows = self._tuples(_HEAD_SQL)
        return Head(rows[0][0], rows[0][1]) if rows else Head(0, GENESIS_HASH)

    def _pages(
        self, sql: str, params: Sequence[Any], cursor: int, limit: int | None, factory: RowFactory[S]
    ) -> Iterator[S]:
        """Rows of ``sql`` (taking ``cursor, *params, page size``) page by page; the cursor is the last seq."""
        remaining = limit
        while remaining is None or remaining > 0:
            size = _PAGE if remaining is None else min(_PAGE, remaining)
            rows = self._fetch(sql, (cursor, *params, size), factory)
            yield from rows
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < size:
                return
            cursor = rows[-1].seq

    def stored_rows(self, after: int = 0) -> Iterator[StoredRow]:
        return self._pages(_after(_ROW_COLUMNS), (), after, None, _STORED)

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
        return self._pages(_after(_RECORD_COLUMNS), (), after, limit, _READ)

    def replay(self, after: int = 0, limit: int | None = None, *, vectors: bool = True) -> Iterator[RecordedEvent]:
        columns = _RECORD_COLUMNS if vectors else _RECORD_COLUMNS.replace("vector", "NULL::bytea")
        return self._pages(_after(columns), (), after, limit, _records(vectors="bytes" if vectors else "none"))

    def read_stream(self, memory_id: str, *, until_seq: int | None = None) -> list[RecordedEvent]:
        if not encodable(memory_id):  # no recorded id is: nothing to find
            return []
        return self._fetch(
            f"SELECT {_prefixed('e', _RECORD_COLUMNS)} FROM streams s JOIN events e ON e.seq = s.seq "
            "WHERE s.memory_id = %s AND s.seq <= %s ORDER BY s.version",
            (memory_id, until_seq if until_seq is not None else 2**62),
            _READ,
        )

    def read_streams(self, memory_ids: Sequence[str], *, until_seq: int) -> Iterator[RecordedEvent]:
        ids = list(dict.fromkeys(memory_ids))
        if not ids:
            return
        found = self._tuples(
            "SELECT DISTINCT seq FROM streams WHERE memory_id = ANY(%s) AND seq <= %s ORDER BY seq", (ids, until_seq)
        )
        seqs = [r[0] for r in found]
        for start in range(0, len(seqs), _PAGE):
            chunk = seqs[start : start + _PAGE]
            yield from self._fetch(
                f"SELECT {_RECORD_COLUMNS} FROM events WHERE seq = ANY(%s) ORDER BY seq", (chunk,), _READ
            )

    def query(
        self,
        q: LogQuery,
        *,
        after: int = 0,
        limit: int | None = None,
        descending: bool = False,
        vectors: bool = True,
    ) -> Iterator[RecordedEvent]:
        where, params = _query_sql(q)
        make = _READ if vectors else _BYTES
        if descending:
            sql = f"SELECT {_RECORD_COLUMNS} FROM events WHERE seq < %s AND seq > %s{where} ORDER BY seq DESC LIMIT %s"
            return self._pages(sql, (after, *params), 2**62, limit, make)
        sql = f"SELECT {_RECORD_COLUMNS} FROM events WHERE seq > %s{where} ORDER BY seq LIMIT %s"
        return self._pages(sql, params, after, limit, make)

    def stats(self) -> LogStats:
        counts = self._tuples("SELECT COUNT(*), COUNT(*) FILTER (WHERE has_vector) FROM memories WHERE live")
        return LogStats(live_memories=counts[0][0], with_vector=counts[0][1], dimension=self.dimension())

    def dimension(self) -> int | None:
        if self._dimension is None:  # once recorded it never changes: read until then
            found = self._tuples("SELECT value FROM meta WHERE key = 'dimension'")
            self._dimension = int(found[0][0]) if found else None
        return self.fixed_dimension if self._dimension is None else self._dimension

    def seq_at(self, when: datetime) -> int:
        rows = self._tuples("SELECT MAX(seq) FROM events WHERE recorded_at <= %s", (format_time(when),))
        return int(rows[0][0] or 0)

    def wait(self, after: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        seq = self.head().seq
        if seq > after or timeout <= 0:
            return seq
        listener = self._ensure_listener()
        poll = 0.005
        while True:
            generation = listener.generation
            seq = self.head().seq
            remaining = deadline - time.monotonic()
            if seq > after or remaining <= 0:
                return seq
            # LISTEN wakes us; the timeout is only a safety net, or the poll while it is down
            listener.wait_past(generation, min(remaining, 1.0 if listener.healthy else poll))
            poll = min(poll * 2, 0.05)

    def _ensure_listener(self) -> _Listener:
        with self._listener_lock:
            if self._listener is None:
                if self._closed:
                    raise LogError("the event log is closed")
                self._listener = _Listener(lambda: self._open(idle=True))
            return self._listener

    # ------------------------------------------------------------ leadership

    def leadership(self, name: str) -> Leadership:
        """A lock that exactly one follower of projection ``name`` holds (see :mod:`memsync.leader`)."""
        key = _key(_LEADER_CLASS, zlib.crc32(f"{self._events_oid}:{name}".encode()))
        lead = PostgresLeadership(lambda: self._open(idle=True), key, f"{name} on {self.url}")
        self._leaderships.append(lead)
        return lead

    # ------------------------------------------------------------ parked

    def park(self, projection: str, seq: int, error: str, attempts: int) -> None:
        self._execute(
            "parking an event in",
            "INSERT INTO parked (projection, seq, error, attempts, parked_at) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (projection, seq) DO UPDATE SET error = EXCLUDED.error, attempts = EXCLUDED.attempts, "
            "parked_at = EXCLUDED.parked_at",
            (projection, seq, error[:2000], attempts, format_time(utcnow())),
        )

    def parked(self, projection: str | None = None) -> list[ParkedEvent]:
        where, params = ("WHERE projection = %s", [projection]) if projection else ("", [])
        rows = self._tuples(
            f"SELECT projection, seq, error, attempts, parked_at FROM parked {where} ORDER BY projection, seq", params
        )
        return [ParkedEvent(projection=r[0], seq=r[1], error=r[2], attempts=r[3], parked_at=r[4]) for r in rows]

    def unpark(self, projection: str, seq: int) -> None:
        self._execute(
            "unparking an event in", "DELETE FROM parked WHERE projection = %s AND seq = %s", (projection, seq)
        )

    def close(self) -> None:
        self._closed = True
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        for lead in self._leaderships:
            lead.release()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self._pool.close()


class PostgresLeadership(Leadership):
    """A session-level advisory lock held on a dedicated connection.

    The server releases it when that connection ends — a clean release, the
    process dying (``kill -9`` closes the socket), or keepalives finding the
    client gone. :meth:`still_held` asks the server whether this session still
    holds it. A standby keeps its session and asks for the lock on it again.
    """

    def __init__(self, connect: Callable[[], Conn], key: int, what: str) -> None:
        self._connect = connect
        self.key = key
        self.what = what
        self._conn: Conn | None = None
        self._held = False
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self._held and self._conn is not None and not self._conn.broken:
                return True
            try:
                if self._conn is None or self._conn.broken:
                    self._drop()
                    self._conn = self._connect()
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            except (psycopg.Error, MemsyncError) as e:
                logger.warning("leadership of %s: cannot reach the database: %s", self.what, e)
                self._drop()
                return False
            self._held = bool(row and row[0])
            return self._held

    def still_held(self) -> bool:
        with self._lock:
            if not self._held or self._conn is None:
                return False
            try:
                row = self._conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1)",
                    (self.key >> 32, self.key & 0xFFFFFFFF),
                ).fetchone()
                self._held = bool(row and row[0])
            except psycopg.Error as e:
                logger.warning("leadership of %s lost: %s", self.what, _describe(e))
                self._drop()
            return self._held

    def release(self) -> None:
        with self._lock:
            if self._held and self._conn is not None and not self._conn.broken:
                with contextlib.suppress(psycopg.Error):
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            self._drop()

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# ---------------------------------------------------------------- helpers


def _prepared(events: Sequence[Event]) -> Prepared:
    """:func:`~memsync.log.prepare` (checked, encoded, event_ids given), plus what PostgreSQL needs.

    The ids and scope values go into ``text`` columns (and are looked up before
    the rules run), so one that PostgreSQL cannot store — with a NUL character,
    or not UTF-8 — is refused here, naming the event; SQLite would store it.
    """
    for index, event in enumerate(events):
        for field in ("event_id", "memory_id", *SCOPE_FIELDS):
            value = getattr(event, field, None)
            if isinstance(value, str) and not _storable(value):
                raise InputError(f"`{field}` contains a NUL character or is not UTF-8", index=index, field=field)
    return prepare(events)


def _looked_up(prepared: Prepared) -> Prepared:
    """The same call, but every event_id is looked up (a retry may find what the lost attempt recorded)."""
    return msgspec.structs.replace(prepared, fresh=[False] * len(prepared.events))


def _storable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _recorded(recorded: dict[str, Any], line: int) -> Recorded:
    """The recorded fields of an exported record, ``recorded_at`` in the canonical form that is hashed."""
    value = recorded["recorded_at"]
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        recorded_at = format_time(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise InputError(f"`recorded_at` is not an RFC 3339 time: {value!r}", line=line, field="recorded_at") from None
    return Recorded(
        seq=int(recorded["seq"]),
        version=recorded.get("version"),
        recorded_at=recorded_at,
        prev_hash=recorded.get("prev_hash"),
        hash=str(recorded["hash"]),
    )


def _retry_safe(failed: _Failed, batch: list[_Call]) -> bool:
    """Whether running ``batch`` again cannot record anything twice."""
    error = failed.error
    if isinstance(error, pg_errors.TransactionRollback | pg_errors.UniqueViolation):
        return True  # the server rolled the transaction back (a race with a writer that bypassed the lock)
    if not isinstance(error, psycopg.OperationalError):
        return False
    # the connection failed: before COMMIT nothing was recorded; during COMMIT maybe, and a
    # plain append (event_ids assigned up front) then finds and returns what it recorded
    return not failed.committing or all(call.imported is None for call in batch)


def _settle(batch: list[_Call], outcomes: Sequence[list[RecordedEvent] | BaseException]) -> None:
    for call, outcome in zip(batch, outcomes, strict=True):
        if call.outcome.done():
            continue
        if isinstance(outcome, BaseException):
            call.outcome.set_exception(outcome)
        else:
            call.outcome.set_result(outcome)


def _regclass(conn: Conn, table: str) -> int | None:
    """The oid of ``table`` in the first schema of search_path (not a later one), or None."""
    row = conn.execute("SELECT to_regclass(quote_ident(current_schema()) || '.' || %s)::oid", (table,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _after(columns: str) -> str:
    return f"SELECT {columns} FROM events WHERE seq > %s ORDER BY seq LIMIT %s"


def _prefixed(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def _query_sql(q: LogQuery) -> tuple[str, list[Any]]:
    """``AND …`` clauses for :meth:`PostgresEventLog.query`; scope filters also match resets."""
    conditions, scope = query_filters(q)
    clauses = [condition.replace("?", "%s") for condition, _ in conditions]
    params = [value for _, value in conditions]
    if scope:
        clauses.append("((" + " AND ".join(f"{k} = %s" for k, _ in scope) + ") OR type = 'memories.reset')")
        params.extend(v for _, v in scope)
    return "".join(f" AND {c}" for c in clauses), params
