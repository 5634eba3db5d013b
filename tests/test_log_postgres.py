"""PostgresEventLog: the contract on a real PostgreSQL 15, plus what only PostgreSQL can show.

- the contract suite, each log in a fresh schema (``search_path``) of a shared database;
- the schema, the database's own uniqueness, durable commits, passwords kept out of messages;
- tampering with rows through psycopg, then auditing;
- ordering: a stalled commit, 16 processes and a follower, threads sharing one log
  (group commit), and racing writers with the append lock bypassed;
- a server restart and crash, ``kill -9`` of a writer in a large append;
- LISTEN/NOTIFY wake-ups and the polling fallback;
- migration SQLite -> PostgreSQL -> SQLite through the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from cli import main as cli_main
from memsync import postgres_log
from memsync.errors import CommandRefused, ConfigError, InputError, LogError
from memsync.events import MemoriesDeleted, RecordedEvent
from memsync.log import EventLog, Head
from memsync.postgres_log import PostgresEventLog
from memsync.sqlite_log import SCHEMA as SQLITE_SCHEMA
from memsync.sqlite_log import SQLiteEventLog
from tests.log_contract import (
    EventLogContract,
    add,
    assert_undecodable_payload_names_its_seq,
    delete,
    export_lines,
    import_lines,
    seqs,
    update,
)
from tests.pg_server import PostgresServer

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Pa55word"


def _db(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def run_together(count: int, work: Callable[[int], None]) -> None:
    """``work(0) … work(count - 1)`` in threads released at once; re-raises the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


pytestmark = pytest.mark.postgres


@pytest.fixture
def make_log(pg_schema: Callable[[str], str]) -> Iterator[Callable[..., EventLog]]:
    """Each name is a fresh schema (its own tables); the same name reopens it."""
    opened: list[PostgresEventLog] = []

    def make(name: str = "main", **options: Any) -> EventLog:
        log = PostgresEventLog(pg_schema(name), **options)
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


class TestPostgresEventLog(EventLogContract):
    pass


# ---------------------------------------------------------------- plain PostgreSQL facts


def _one(url: str, query: str, params: Sequence[Any] = ()) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]


def test_schema_shape_matches_sqlite(pg_database: str) -> None:
    with PostgresEventLog(pg_database) as log:
        log.append([add("m1")])
    with psycopg.connect(pg_database, autocommit=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
        unique = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE contype IN ('p', 'u') AND connamespace = 'public'::regnamespace"
            )
        }
    assert tables == {"events", "memories", "streams", "meta", "parked"}
    sqlite_indexes = {line.split()[5] for line in SQLITE_SCHEMA.splitlines() if line.startswith("CREATE INDEX")}
    assert sqlite_indexes <= indexes
    assert unique["events.events_event_id_key"] == "UNIQUE (event_id)"
    assert unique["events.events_pkey"] == "PRIMARY KEY (seq)"
    assert unique["streams.streams_pkey"] == "PRIMARY KEY (memory_id, version)"


def test_the_database_refuses_duplicates_itself(pg_database: str) -> None:
    """event_id and (memory_id, version) are unique in the database, not only by a read-then-write check."""
    with PostgresEventLog(pg_database) as log:
        [first] = log.append([add("m1")])
    with psycopg.connect(pg_database, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO events SELECT seq + 1, event_id, type, memory_id, version, user_id, agent_id, run_id, "
                "recorded_at, payload, vector, hash, hash FROM events WHERE seq = 1"
            )
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO streams (memory_id, version, seq) VALUES ('m1', 1, 2)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO events SELECT seq, %s, type, memory_id, version, user_id, agent_id, run_id, "
                "recorded_at, payload, vector, prev_hash, hash FROM events WHERE seq = 1",
                (str(uuid.uuid4()),),
            )
    assert first.seq == 1


def test_url_and_errors_never_show_the_password(pg_server: PostgresServer) -> None:
    base = f"postgresql://postgres:{SECRET}@127.0.0.1:{pg_server.port}"
    with pytest.raises(LogError) as info:
        PostgresEventLog(f"{base}/no_such_database")
    message = str(info.value)
    assert "no_such_database" in message and "postgres:***@127.0.0.1" in message
    assert SECRET not in message and SECRET not in repr(info.value)
    with pytest.raises(LogError) as info:  # nothing listens on port 1
        PostgresEventLog(f"postgresql://postgres@127.0.0.1:1/x?password={SECRET}&connect_timeout=2")
    assert SECRET not in str(info.value)
    with PostgresEventLog(f"{base}/postgres?options=-c%20search_path%3Dpg_temp") as log:
        assert SECRET not in log.url and SECRET not in repr(log)
    with pytest.raises(ConfigError) as bad:
        PostgresEventLog(f"postgresql://postgres:{SECRET}@127.0.0.1:{pg_server.port}/x?nonsense=1")
    assert SECRET not in str(bad.value)


def test_closed_log_raises_log_error(pg_database: str) -> None:
    log = PostgresEventLog(pg_database)
    log.append([add("m1")])
    log.wait(0, timeout=0.01)
    log.close()
    with pytest.raises(LogError, match="closed"):
        log.append([add("m2")])
    with pytest.raises(LogError, match="closed"):
        log.head()
    with pytest.raises(LogError, match="closed"):
        log.wait(1, timeout=0.01)


def test_foreign_events_table_is_not_taken_for_a_log(pg_schema: Callable[[str], str]) -> None:
    url = pg_schema("foreign")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id serial PRIMARY KEY, what text)")
    with pytest.raises(LogError, match="not a memsync log"):
        PostgresEventLog(url)


def test_many_processes_may_open_a_new_log_at_once(pg_schema: Callable[[str], str]) -> None:
    url = pg_schema("race")

    def open_and_append(i: int) -> None:
        with PostgresEventLog(url) as log:
            log.append([add(f"m{i}")])

    run_together(8, open_and_append)
    with PostgresEventLog(url) as log:
        assert log.head().seq == 8 and log.audit().ok


def test_commits_are_durable_whatever_the_database_default(pg_database: str) -> None:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(sql.Identifier(_db(pg_database))))
    assert _one(pg_database, "SHOW synchronous_commit") == "off"
    with PostgresEventLog(pg_database) as log:
        log.append([add("m1")])
        with log._pool.connection() as conn:
            row = conn.execute("SHOW synchronous_commit").fetchone()
        assert row == ("on",)
        assert log._writer is not None
        row = log._writer.execute("SHOW synchronous_commit").fetchone()
        assert row == ("on",)


@pytest.mark.parametrize(
    ("field", "value"),
    [("memory_id", "m\x00"), ("user_id", "u\x00"), ("event_id", "\x00"), ("memory_id", "\ud800")],
)
def test_what_postgres_text_cannot_hold_is_refused(pg_database: str, field: str, value: str) -> None:
    with PostgresEventLog(pg_database) as log:
        log.append([add("m0")])
        bad = {"memory_id": add(value), "user_id": add("m1", user=value), "event_id": add("m1", event_id=value)}[field]
        with pytest.raises(InputError) as info:
            log.append([add("m2"), bad])
        assert str(info.value).startswith("event 2: ") and info.value.field == field
        assert log.head().seq == 1


def test_an_unexpected_error_in_a_shared_batch_reaches_every_caller(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread waits forever for a batch that failed in a way nobody planned for."""
    log = PostgresEventLog(pg_database)
    real_prime = postgres_log._prime
    entered, go = threading.Event(), threading.Event()

    def failing_prime(*args: Any) -> Any:
        entered.set()
        assert go.wait(10)  # meanwhile, the other threads queue behind this batch
        raise RuntimeError("boom")

    monkeypatch.setattr(postgres_log, "_prime", failing_prime)
    errors: list[BaseException] = []

    def append(i: int) -> None:
        try:
            log.append([add(f"m{i}")])
        except BaseException as e:
            errors.append(e)

    first = threading.Thread(target=append, args=(0,))
    first.start()
    assert entered.wait(10)
    others = [threading.Thread(target=append, args=(i,)) for i in range(1, 5)]
    for t in others:
        t.start()
    time.sleep(0.2)
    monkeypatch.setattr(postgres_log, "_prime", real_prime)  # the queued batch works again
    go.set()
    for t in [first, *others]:
        t.join(10)
        assert not t.is_alive(), "a caller hangs"
    assert [str(e) for e in errors] == ["boom"]
    assert log.head().seq == 4
    log.close()


def test_a_commit_whose_answer_is_lost_is_not_recorded_twice(
    pg_schema: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server commits, then the connection drops before the client hears it: outcome unknown.

    An append is retried, finds its events (their event_ids were given before the
    first attempt) and returns the original records; an import is not retried.
    """
    real_flush = postgres_log._flush
    lost = [0]

    def commit_then_lose_the_answer(conn: Any, tx: Any, after: Sequence[Any] = ()) -> None:
        real_flush(conn, tx, after=after)
        if after and not lost[0]:
            lost[0] += 1
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(postgres_log, "_flush", commit_then_lose_the_answer)
    source = PostgresEventLog(pg_schema("source"))
    records = source.append([add("m1"), add("m2", event_id=str(uuid.uuid4())), update("m1")])
    assert lost == [1] and seqs(records) == [1, 2, 3]
    assert list(source.read()) == records and source.audit().ok

    lost[0] = 0
    target = PostgresEventLog(pg_schema("target"))
    with pytest.raises(LogError, match=r"OperationalError.*may be recorded"):
        target.import_records(import_lines(export_lines(source)))
    assert target.head() == source.head()  # it did commit: the error says the outcome is unknown
    source.close()
    target.close()


# ---------------------------------------------------------------- tampering


def _tamper_log(url: str) -> None:
    with PostgresEventLog(url) as log:
        log.append([add("m1", vector=[0.1, 0.2]), add("m2", user="u2")])
        log.append([update("m1", vector=[0.3, 0.4]), add("m3")])
        log.append([delete("m2"), add("m4", vector=[0.5, 0.6])])
        log.append([MemoriesDeleted(user_id="u1"), add("m5"), update("m5"), add("m6")])
        assert log.head().seq == 10 and log.audit().ok


TAMPERS: dict[str, tuple[str, int, str]] = {
    "payload byte": (
        "UPDATE events SET payload = convert_to(replace(convert_from(payload, 'UTF8'), '\"m3\"', '\"m9\"'), 'UTF8') "
        "WHERE seq = 4",
        4,
        "content",
    ),
    "vector byte": (
        "UPDATE events SET vector = set_byte(vector, 0, get_byte(vector, 0) # 1) WHERE seq = 3",
        3,
        "content",
    ),
    "delete row": ("DELETE FROM events WHERE seq = 5", 5, "missing"),
    "delete first row": ("DELETE FROM events WHERE seq = 1", 1, "missing"),
    "recorded_at": ("UPDATE events SET recorded_at = '2020-01-01T00:00:00.000000Z' WHERE seq = 6", 6, "content"),
    "type column": ("UPDATE events SET type = 'memory.updated' WHERE seq = 4", 4, "type"),
    "version column": ("UPDATE events SET version = 9 WHERE seq = 9", 9, "content"),
    "prev_hash": ("UPDATE events SET prev_hash = hash WHERE seq = 7", 7, "prev_hash"),
    "renumber": ("UPDATE events SET seq = 50 WHERE seq = 6", 6, "missing"),
}


@pytest.mark.parametrize("name", list(TAMPERS))
def test_audit_finds_first_tampered_seq(pg_schema: Callable[[str], str], name: str) -> None:
    url = pg_schema("tamper")
    _tamper_log(url)
    change, first_bad, problem = TAMPERS[name]
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute(change).rowcount == 1
    with PostgresEventLog(url) as log:
        report = log.audit()
    assert not report.ok
    assert report.first_bad_seq == first_bad, report
    assert report.checked == first_bad - 1
    assert report.problem is not None and problem in report.problem


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE events SET payload = '\\x7b'::bytea WHERE seq = 3",
        "UPDATE events SET recorded_at = 'garbage' WHERE seq = 3",
    ],
)
def test_a_row_that_no_longer_decodes_is_a_tamper_error_naming_its_seq(pg_database: str, change: str) -> None:
    with PostgresEventLog(pg_database) as log:
        recorded = log.append([add(f"m{i}") for i in range(5)])
    with psycopg.connect(pg_database, autocommit=True) as conn:
        assert conn.execute(change).rowcount == 1
    with PostgresEventLog(pg_database) as log:
        assert_undecodable_payload_names_its_seq(log, recorded, 3)


# ---------------------------------------------------------------- ordering under concurrency


def test_a_late_commit_is_never_skipped(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writer A has inserted seq 2 but not committed: writer B waits for it, readers see neither until A commits.

    The database's default isolation is REPEATABLE READ here: the append must
    not depend on it (a snapshot taken before the lock would see a stale head).
    """
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'").format(
                sql.Identifier(_db(pg_database))
            )
        )
    a, b, reader = PostgresEventLog(pg_database), PostgresEventLog(pg_database), PostgresEventLog(pg_database)
    a.append([add("m0")])
    inserted, release = threading.Event(), threading.Event()
    real_flush = postgres_log._flush

    def flush_then_stall(conn: Any, tx: Any, after: Sequence[Any] = ()) -> None:
        real_flush(conn, tx)  # the rows are inserted ...
        if threading.current_thread().name == "late-writer" and after:
            inserted.set()
            assert release.wait(30)
        real_flush(conn, tx, after=after)  # ... and committed much later

    monkeypatch.setattr(postgres_log, "_flush", flush_then_stall)
    results: dict[str, list[RecordedEvent]] = {}
    late = threading.Thread(target=lambda: results.update(a=a.append([add("late")])), name="late-writer")
    late.start()
    assert inserted.wait(10)
    follower = threading.Thread(target=lambda: results.update(b=b.append([add("after")])))
    follower.start()
    started = time.monotonic()
    assert reader.wait(1, timeout=0.5) == 1  # seq 2 is not visible, nor is anything after it
    assert time.monotonic() - started >= 0.45
    assert seqs(reader.read()) == [1] and reader.head().seq == 1
    assert follower.is_alive(), "B recorded while A held the lock"
    release.set()
    late.join(10)
    follower.join(10)
    assert seqs(results["a"]) == [2] and seqs(results["b"]) == [3]
    assert results["b"][0].prev_hash == results["a"][0].hash
    assert seqs(reader.read()) == [1, 2, 3] and reader.audit().ok
    for log in (a, b, reader):
        log.close()


WORKER = textwrap.dedent(
    """
    import json, sys, time, uuid
    from memsync.errors import CommandRefused, ConflictError
    from memsync.events import MemoryAdded, MemoryUpdated
    from memsync.postgres_log import PostgresEventLog

    url, worker, rounds, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    log = PostgresEventLog(url)
    print("ready", flush=True)
    while not __import__("os").path.exists(go):
        time.sleep(0.002)
    recorded, refused, conflicts, bumps, version = [], 0, 0, 0, 1
    def keep(records):
        recorded.extend(r.event_id for r in records)
    for i in range(rounds):
        event_id = str(uuid.uuid5(uuid.UUID(int=worker), str(i)))
        keep(log.append([MemoryAdded(memory_id=f"w{worker}-{i}", text="x", user_id=f"u{worker}", event_id=event_id)]))
        keep(log.append([MemoryAdded(memory_id=f"w{worker}-{i}", text="x", user_id=f"u{worker}", event_id=event_id)]))
        if i % 10 == 0:  # a multi-event call
            batch = [MemoryAdded(memory_id=f"w{worker}-b{i}-{k}", text="y", user_id=f"u{worker}") for k in range(3)]
            batch.append(MemoryUpdated(memory_id=f"w{worker}-{i}", text="z", expected_version=1))
            keep(log.append(batch))
        if i % 5 == 0:  # every worker races to add the same memory: exactly one wins
            try:
                keep(log.append([MemoryAdded(memory_id=f"shared-{i}", text="s", user_id="shared")]))
            except CommandRefused:
                refused += 1
        while i % 3 == 0:  # optimistic concurrency on one hot memory, across processes
            try:
                keep(log.append([MemoryUpdated(memory_id="hot", text=f"{worker}-{i}", expected_version=version)]))
                version += 1
                bumps += 1
                break
            except ConflictError as e:
                conflicts += 1
                version = e.actual
    print(json.dumps({"recorded": recorded, "refused": refused, "conflicts": conflicts, "bumps": bumps}), flush=True)
    """
)


@contextlib.contextmanager
def following(open_log: Callable[[], EventLog]) -> Iterator[list[int]]:
    """Follow a log in a thread while the block runs; yields the seqs seen, in the order seen.

    Each read continues exactly where the last one ended, and waits in between,
    so an event committed late but numbered early would be skipped (invariant 3).
    Backend-neutral: any log factory.
    """
    observed: list[int] = []
    stop = threading.Event()

    def follow() -> None:
        with open_log() as log:
            while True:
                finished = stop.is_set()
                observed.extend(r.seq for r in log.read(after=observed[-1] if observed else 0))
                if finished:
                    return
                log.wait(observed[-1] if observed else 0, timeout=0.2)

    reader = threading.Thread(target=follow)
    reader.start()
    try:
        yield observed
    finally:
        stop.set()
        reader.join()


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def test_sixteen_processes_append_and_a_follower_sees_no_gap(pg_database: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    workers, rounds = 16, 30
    with PostgresEventLog(pg_database) as log:
        log.append([add("hot")])
    procs = [_spawn(WORKER, pg_database, str(w), str(rounds), str(go)) for w in range(workers)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr and p.stderr.read()
    with following(lambda: PostgresEventLog(pg_database)) as observed:
        go.touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))

    with PostgresEventLog(pg_database) as log:
        records = list(log.read())
        report = log.audit()
        hot = log.read_stream("hot")
    ids = [r.event_id for r in records]
    total = len(records)
    assert [r.seq for r in records] == list(range(1, total + 1))
    assert observed == list(range(1, total + 1))
    assert len(set(ids)) == total  # none duplicated, even by the retried (idempotent) appends
    assert set(ids) == {e for r in results for e in r["recorded"]} | {records[0].event_id}  # none lost
    shared = len(range(0, rounds, 5))
    assert sum(r["refused"] for r in results) == (workers - 1) * shared
    assert sum(1 for r in records if (r.memory_id or "").startswith("shared-")) == shared
    bumps = workers * len(range(0, rounds, 3))
    assert [r.version for r in hot] == list(range(1, bumps + 2))  # every bump exactly once, in order
    assert sum(r["bumps"] for r in results) == bumps and sum(r["conflicts"] for r in results) > 0
    assert report.ok and report.checked == total


def test_threads_share_one_log_group_commit(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    log = PostgresEventLog(pg_database)
    batch_sizes: list[int] = []
    commit = log._commit

    def counting_commit(batch: list[Any]) -> None:
        batch_sizes.append(len(batch))
        commit(batch)

    monkeypatch.setattr(log, "_commit", counting_commit)
    threads, calls = 16, 30
    recorded: list[list[str]] = [[] for _ in range(threads)]
    refused = [0] * threads

    def work(t: int) -> None:
        for i in range(calls):
            if i % 4 == 3:
                try:  # a refused call in a shared batch: none of its events is recorded, the others are
                    log.append([add(f"t{t}-bad{i}"), update(f"t{t}-ghost{i}")])
                except CommandRefused:
                    refused[t] += 1
                continue
            events = [add(f"t{t}-{i}")] if i % 2 else [add(f"t{t}-{i}"), update(f"t{t}-{i}")]
            recorded[t] += [r.event_id for r in log.append(events)]

    run_together(threads, work)
    records = list(log.read())
    assert refused == [calls // 4] * threads
    expected = sum(len(r) for r in recorded)
    assert [r.seq for r in records] == list(range(1, expected + 1))
    assert sorted(r.event_id for r in records) == sorted(e for r in recorded for e in r)
    assert not any("bad" in (r.memory_id or "") or "ghost" in (r.memory_id or "") for r in records)
    assert max(batch_sizes) > 1, "threads never shared a commit"
    assert log.audit().ok
    log.close()


def test_the_constraints_alone_keep_the_log_exact(pg_database: str) -> None:
    """With the append lock bypassed (each writer locks a key of its own), appends race for real.

    seq PRIMARY KEY, event_id UNIQUE and streams (memory_id, version) turn every
    lost race into a rollback; the backend retries, and a call that still fails
    recorded nothing, so retrying it (same event_ids) is exact.
    """
    writers, calls = 4, 25
    logs = [PostgresEventLog(pg_database) for _ in range(writers)]
    for i, log in enumerate(logs):
        log._append_key += i + 1  # no two writers exclude each other any more

    def work(w: int) -> None:
        for i in range(calls):
            events = [add(f"w{w}-{i}", event_id=str(uuid.uuid4())), update(f"w{w}-{i}", event_id=str(uuid.uuid4()))]
            deadline = time.monotonic() + 30
            while True:
                try:
                    logs[w].append(events)
                    break
                except LogError as e:  # the backend gave up after its retries: nothing was recorded, try again
                    if time.monotonic() > deadline:  # a writer that can never append again is a bug, not a race
                        raise AssertionError(f"writer {w} stuck on call {i}: {e}") from e
                    time.sleep(random.uniform(0, 0.02))  # break the symmetry of writers that keep colliding

    run_together(writers, work)
    records = list(logs[0].read())
    assert [r.seq for r in records] == list(range(1, writers * calls * 2 + 1))
    assert len({r.event_id for r in records}) == len(records)
    assert all(
        [r.version for r in logs[0].read_stream(f"w{w}-{i}")] == [1, 2] for w in range(writers) for i in range(calls)
    )
    assert logs[0].audit().ok
    for log in logs:
        log.close()


# ---------------------------------------------------------------- failures


# raise_exception is given up at once; unique_violation only after ~2.5 s of retries, so it fails once
@pytest.mark.parametrize(("code", "rounds"), [("raise_exception", 8), ("unique_violation", 1)])
def test_a_failed_write_leaves_the_writer_usable(pg_database: str, code: str, rounds: int) -> None:
    """A server error inside the write pipeline, again and again: each failing call records
    nothing and the next call still appends (psycopg's prepared-statement cache once went out
    of step with the server after such an error, and every later append on the connection failed)."""
    log = PostgresEventLog(pg_database)
    log.append([add("m0")])  # creates the schema
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" RAISE EXCEPTION 'refused %', NEW.memory_id USING ERRCODE = '{code}'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW"
            " WHEN (NEW.memory_id LIKE 'bad%') EXECUTE FUNCTION refuse()"
        )
    for i in range(1, rounds + 1):  # past psycopg's prepare threshold, failing 1, 2, 3 times in a row
        for j in range(i % 3 + 1 if rounds > 1 else 1):
            with pytest.raises(LogError, match="refused bad"):
                log.append([add(f"bad{i}-{j}"), update(f"bad{i}-{j}")])
        log.append([add(f"m{i}"), update(f"m{i}")])
    assert [r.memory_id for r in log.read()] == ["m0"] + [f"m{i}" for i in range(1, rounds + 1) for _ in range(2)]
    assert log.audit().ok
    log.close()


def test_survives_a_server_restart_and_a_crash(tmp_path: Path) -> None:
    with PostgresServer() as server:
        url = server.create_database("restart")
        log, other = PostgresEventLog(url), PostgresEventLog(url)
        log.append([add("m1")])
        assert log.wait(0, timeout=1) == 1  # starts the listener
        server.restart()
        [r] = log.append([add("m2")])  # the writer reconnects: the call is retried
        assert r.seq == 2 and log.head().seq == 2  # so does the reader pool
        server.kill()  # every server process SIGKILLed: crash recovery on start
        server.start()
        assert log.head() == Head(2, r.hash)  # what append returned survived the crash
        timer = threading.Timer(0.3, lambda: other.append([add("m3")]))
        timer.start()
        assert log.wait(2, timeout=10) == 3
        timer.join()
        assert log.audit().ok
        log.close()
        other.close()


# any log URL: the log is opened the way the CLI opens it
BIG_APPEND = textwrap.dedent(
    """
    import random, sys, time
    from memsync.config import MemsyncConfig
    from memsync.events import MemoryAdded
    from memsync.system import open_log

    log, n = open_log(MemsyncConfig(log_url=sys.argv[1])), int(sys.argv[2])
    rng = random.Random(n)
    vectors = [[rng.random() for _ in range(8)] for _ in range(n)]
    print("ready", type(log).__name__, flush=True)
    log.append([MemoryAdded(memory_id=f"big-{i}", text=f"memory {i}", user_id=f"u{i % 50}", vector=v)
                for i, v in enumerate(vectors)])
    print("done", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("moment", ["early", "midway", "after-commit"])
def test_kill_9_during_a_large_append(pg_database: str, moment: str) -> None:
    n = 20_000
    with PostgresEventLog(pg_database) as log:
        before = log.append([add("m1"), add("m2"), delete("m1")])
    proc = _spawn(BIG_APPEND, pg_database, str(n))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready PostgresEventLog"
    if moment == "early":
        time.sleep(0.05)
    elif moment == "midway":  # rows of the open transaction are in the table, invisible
        deadline = time.monotonic() + 60
        while _one(pg_database, "SELECT pg_relation_size('events')") < 2 << 20:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    else:
        assert proc.stdout.readline().strip() == "done"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with PostgresEventLog(pg_database) as log:
        head = log.head()
        assert head.seq == (3 + n if moment == "after-commit" else 3)
        assert list(log.read(limit=3)) == before
        assert log.audit().ok and log.audit().checked == head.seq
        [nxt] = log.append([add("after-kill")])  # the killed writer's lock went with its connection
        assert nxt.seq == head.seq + 1 and nxt.prev_hash == head.hash


# ---------------------------------------------------------------- LISTEN / NOTIFY


def test_wait_is_woken_by_notify_from_another_connection(pg_database: str) -> None:
    writer, waiter = PostgresEventLog(pg_database), PostgresEventLog(pg_database)
    latencies = []

    def wait_past(seq: int, woke: list[float]) -> None:
        waiter.wait(seq, timeout=10)
        woke.append(time.monotonic())

    for i in range(10):
        woke: list[float] = []
        thread = threading.Thread(target=wait_past, args=(waiter.head().seq, woke))
        thread.start()
        time.sleep(0.05)
        writer.append([add(f"m{i}")])
        returned = time.monotonic()
        thread.join()
        latencies.append(woke[0] - returned)
    # without NOTIFY a waiter would only look again after its 1 s safety timeout
    assert sorted(latencies)[len(latencies) // 2] < 0.1, latencies
    assert max(latencies) < 0.5, latencies
    writer.close()
    waiter.close()


def test_wait_polls_while_listen_is_down_and_listens_again(pg_database: str) -> None:
    writer, waiter = PostgresEventLog(pg_database), PostgresEventLog(pg_database)
    waiter.wait(0, timeout=0.01)
    listener = waiter._listener
    assert listener is not None and listener.healthy
    killed = _one(
        pg_database,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = %s AND pid <> pg_backend_pid()",
        (f"LISTEN {postgres_log.CHANNEL}",),
    )
    assert killed >= 1
    deadline = time.monotonic() + 5
    while listener.healthy and time.monotonic() < deadline:
        time.sleep(0.005)
    timer = threading.Timer(0.2, lambda: writer.append([add("m1")]))
    timer.start()
    started = time.monotonic()
    assert waiter.wait(0, timeout=10) == 1
    assert time.monotonic() - started < 1.0
    timer.join()
    deadline = time.monotonic() + 10
    while not listener.healthy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert listener.healthy
    writer.close()
    waiter.close()


# ---------------------------------------------------------------- migration through the CLI


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli_main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_migration_sqlite_to_postgres_and_back(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """export (SQLite) -> import (PostgreSQL) -> export -> import (SQLite): every byte of every record kept."""
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("MEMSYNC_")]:
        monkeypatch.delenv(key)
    first, back = f"sqlite:///{tmp_path / 'first.db'}", f"sqlite:///{tmp_path / 'back.db'}"
    events = tmp_path / "events.jsonl"
    events.write_text(RICH_HISTORY)
    _cli("--log-url", first, "append", str(events))
    with SQLiteEventLog(tmp_path / "first.db") as log:  # enough to page through several reads
        for start in range(0, 2400, 600):
            log.append(
                [add(f"bulk-{i}", user=f"u{i % 7}", vector=[float(i), 1.0, 0.5]) for i in range(start, start + 600)]
            )
        log.append([MemoriesDeleted(user_id="u3"), update("bulk-1", text="changed")])
    _cli("--log-url", first, "export", "first.jsonl")
    imported = json.loads(_cli("--log-url", pg_database, "import", "first.jsonl", "--json"))
    _cli("--log-url", pg_database, "export", "pg.jsonl")
    _cli("--log-url", back, "import", "pg.jsonl")
    _cli("--log-url", back, "export", "back.jsonl")
    exported = (tmp_path / "first.jsonl").read_bytes()
    assert (tmp_path / "pg.jsonl").read_bytes() == exported
    assert (tmp_path / "back.jsonl").read_bytes() == exported
    lines = [json.loads(line) for line in exported.splitlines()]
    assert imported["imported"] == len(lines) > 2400 and [r["seq"] for r in lines] == list(range(1, len(lines) + 1))
    audits = [json.loads(_cli("--log-url", url, "audit", "--json")) for url in (first, pg_database, back)]
    assert all(a["ok"] and a["checked"] == len(lines) for a in audits)
    assert audits[0]["head"] == audits[1]["head"] == audits[2]["head"] == {"seq": len(lines), "hash": lines[-1]["hash"]}
    assert json.loads(_cli("--log-url", pg_database, "status", "--json"))["head"] == audits[0]["head"]
    # the imported log goes on with the same rules and chain
    more = {"type": "memory.added", "memory_id": "after", "text": "more", "user_id": "u1"}
    (tmp_path / "more.jsonl").write_text(json.dumps(more))
    out = json.loads(_cli("--log-url", pg_database, "append", "more.jsonl", "--json"))
    assert out["seqs"] == [len(lines) + 1] and out["records"][0]["prev_hash"] == lines[-1]["hash"]
    history = json.loads(_cli("--log-url", pg_database, "history", "m1", "--json"))
    assert [h["seq"] for h in history] == [r["seq"] for r in lines if r.get("memory_id") == "m1" or r["seq"] in RESETS]


RICH_HISTORY = "\n".join(
    json.dumps(e, ensure_ascii=False)
    for e in [
        {
            "type": "memory.added",
            "memory_id": "m1",
            "text": "Alice lives in Paris",
            "user_id": "u1",
            "vector": [0.1, 0.2, 0.3],
            "metadata": {"b": 1.5, "a": {"z": [1, 2], "y": None}, "ü": "ünïcode"},
            "entities": [{"name": "Alice", "type": "person"}, {"name": "Paris"}],
            "relations": [{"source": "Alice", "relation": "lives_in", "target": "Paris"}],
            "actor": "agent-7",
            "reason": "user said so",
            "occurred_at": "2024-01-02T03:04:05.678901-05:00",
        },
        {"type": "memory.added", "memory_id": "m2", "text": "an agent note", "agent_id": "a1", "vector": [1, 2, 3]},
        {"type": "memory.updated", "memory_id": "m1", "text": "Alice moved", "vector": [3.0, 2.0, 1.0]},
        {"type": "memory.added", "memory_id": "m3", "text": "a run note", "run_id": "r1", "user_id": "u1"},
        {"type": "memory.deleted", "memory_id": "m2", "reason": "obsolete"},
        {"type": "memories.deleted", "user_id": "u1", "run_id": "r1"},
        {"type": "memories.reset", "actor": "ops"},
        {"type": "memory.added", "memory_id": "m1", "text": "Alice is back", "user_id": "u1", "expected_version": 3},
    ]
)
RESETS = {7}
