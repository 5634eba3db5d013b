"""SQLiteEventLog: the contract, plus what only SQLite can show.

- the contract suite on a real file in ``tmp_path``;
- tampering with rows through ``sqlite3`` directly, then auditing;
- several processes appending to one file, and threads sharing one log (group commit);
- ``kill -9`` in the middle of a large atomic append.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from memsync.errors import CommandRefused, InputError, LogError
from memsync.events import MemoriesDeleted, MemoryAdded
from memsync.log import EventLog, Head
from memsync.sqlite_log import SQLiteEventLog
from tests.log_contract import EventLogContract, add, assert_undecodable_payload_names_its_seq, delete, update

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def make_log(tmp_path: Path) -> Iterator[Callable[..., EventLog]]:
    opened: list[SQLiteEventLog] = []

    def make(name: str = "main", **options: Any) -> EventLog:
        log = SQLiteEventLog(tmp_path / f"{name}.db", **options)
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


class TestSQLiteEventLog(EventLogContract):
    pass


# ---------------------------------------------------------------- plain SQLite facts


def test_file_layout_and_url(tmp_path: Path) -> None:
    path = tmp_path / "data" / "events.db"
    with SQLiteEventLog.from_url(f"sqlite:///{path}") as log:
        log.append([add("m1")])
        assert log.url == f"sqlite:///{path}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_not_a_log_is_a_log_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LogError, match=r"garbage\.db"):
        SQLiteEventLog(path)


def test_a_log_that_cannot_be_created_is_a_log_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(LogError, match=r"cannot create the SQLite log .*file/data/events\.db"):
        SQLiteEventLog(tmp_path / "file" / "data" / "events.db")


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE events SET payload = CAST('{\"type\":' AS BLOB) WHERE seq = 3",
        "UPDATE events SET recorded_at = 'garbage' WHERE seq = 3",
    ],
)
def test_a_row_that_no_longer_decodes_is_a_tamper_error_naming_its_seq(tmp_path: Path, change: str) -> None:
    path = tmp_path / "events.db"
    with SQLiteEventLog(path) as log:
        recorded = log.append([add(f"m{i}") for i in range(5)])
    with sqlite3.connect(path) as db:
        db.execute(change)
    with SQLiteEventLog(path) as log:
        assert_undecodable_payload_names_its_seq(log, recorded, 3)


def test_closed_log_raises_log_error(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "x.db")
    log.append([add("m1")])
    log.close()
    with pytest.raises(LogError):
        log.append([add("m2")])
    with pytest.raises(LogError):
        log.head()


def test_short_lived_threads_do_not_leak_connections(tmp_path: Path) -> None:
    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    with SQLiteEventLog(tmp_path / "x.db") as log:
        log.append([add("m1")])
        log.head()
        before = open_files()
        for _ in range(300):
            reader = threading.Thread(target=lambda: (log.head(), list(log.read())))
            reader.start()
            reader.join()
        assert open_files() - before < 20


# ---------------------------------------------------------------- tampering


def _tamper_log(path: Path) -> None:
    with SQLiteEventLog(path) as log:
        log.append([add("m1", vector=[0.1, 0.2]), add("m2", user="u2")])
        log.append([update("m1", vector=[0.3, 0.4]), add("m3")])
        log.append([delete("m2"), add("m4", vector=[0.5, 0.6])])
        log.append([MemoriesDeleted(user_id="u1"), add("m5"), update("m5"), add("m6")])
        assert log.head().seq == 10 and log.audit().ok


def _edit_payload_byte(db: sqlite3.Connection) -> None:
    payload = bytearray(db.execute("SELECT payload FROM events WHERE seq = 4").fetchone()[0])
    i = payload.index(b'"m3"')
    payload[i + 2] = ord("9")  # "m3" -> "m9": still valid JSON, another memory
    db.execute("UPDATE events SET payload = ? WHERE seq = 4", (bytes(payload),))


def _edit_vector_byte(db: sqlite3.Connection) -> None:
    vector = bytearray(db.execute("SELECT vector FROM events WHERE seq = 3").fetchone()[0])
    vector[0] ^= 1
    db.execute("UPDATE events SET vector = ? WHERE seq = 3", (bytes(vector),))


def _swap_rows(db: sqlite3.Connection) -> None:
    cols = "event_id, type, memory_id, version, user_id, agent_id, run_id, recorded_at, payload, vector, "
    cols += "prev_hash, hash"
    a = db.execute(f"SELECT {cols} FROM events WHERE seq = 4").fetchone()
    b = db.execute(f"SELECT {cols} FROM events WHERE seq = 7").fetchone()
    sets = ", ".join(f"{c.strip()} = ?" for c in cols.split(","))
    db.execute("UPDATE events SET event_id = 'tmp' WHERE seq = 7")
    db.execute(f"UPDATE events SET {sets} WHERE seq = 4", b)
    db.execute(f"UPDATE events SET {sets} WHERE seq = 7", a)


def _forge_tail(db: sqlite3.Connection) -> None:
    row = list(db.execute("SELECT * FROM events WHERE seq = 10").fetchone())
    row[0], row[1] = 11, str(uuid.uuid4())
    db.execute(f"INSERT INTO events VALUES ({','.join('?' * len(row))})", row)


TAMPERS: dict[str, tuple[Callable[[sqlite3.Connection], Any], int, str]] = {
    "payload byte": (_edit_payload_byte, 4, "content"),
    "vector byte": (_edit_vector_byte, 3, "content"),
    "delete row": (lambda db: db.execute("DELETE FROM events WHERE seq = 5"), 5, "missing"),
    "delete first row": (lambda db: db.execute("DELETE FROM events WHERE seq = 1"), 1, "missing"),
    "swap rows": (_swap_rows, 4, "prev_hash"),
    "recorded_at": (
        lambda db: db.execute("UPDATE events SET recorded_at = '2020-01-01T00:00:00.000000Z' WHERE seq = 6"),
        6,
        "content",
    ),
    "type column": (lambda db: db.execute("UPDATE events SET type = 'memory.updated' WHERE seq = 4"), 4, "type"),
    "memory_id column": (lambda db: db.execute("UPDATE events SET memory_id = 'mX' WHERE seq = 8"), 8, "memory_id"),
    "event_id column": (lambda db: db.execute("UPDATE events SET event_id = 'x' WHERE seq = 2"), 2, "event_id"),
    "version column": (lambda db: db.execute("UPDATE events SET version = 9 WHERE seq = 9"), 9, "content"),
    "prev_hash": (lambda db: db.execute("UPDATE events SET prev_hash = hash WHERE seq = 7"), 7, "prev_hash"),
    "hash": (lambda db: db.execute("UPDATE events SET hash = prev_hash WHERE seq = 10"), 10, "content"),
    "renumber": (lambda db: db.execute("UPDATE events SET seq = 50 WHERE seq = 6"), 6, "missing"),
    "forged tail": (_forge_tail, 11, "prev_hash"),
}


@pytest.mark.parametrize("name", list(TAMPERS))
def test_audit_finds_first_tampered_seq(tmp_path: Path, name: str) -> None:
    path = tmp_path / "events.db"
    _tamper_log(path)
    change, first_bad, problem = TAMPERS[name]
    with sqlite3.connect(path) as db:
        change(db)
    with SQLiteEventLog(path) as log:
        report = log.audit()
    assert not report.ok
    assert report.first_bad_seq == first_bad, report
    assert report.checked == first_bad - 1
    assert report.problem is not None and problem in report.problem


# ---------------------------------------------------------------- several processes

WORKER = textwrap.dedent(
    """
    import json, sys, time, uuid
    from memsync.errors import CommandRefused
    from memsync.events import MemoryAdded, MemoryUpdated
    from memsync.sqlite_log import SQLiteEventLog

    path, worker, singles, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ns = uuid.UUID(int=0)
    log = SQLiteEventLog(path)
    print("ready", flush=True)
    while not __import__("os").path.exists(go):
        time.sleep(0.002)
    recorded, refused = [], 0
    for i in range(singles):
        event_id = str(uuid.uuid5(ns, f"{worker}-{i}"))
        recorded += [r.event_id for r in log.append(
            [MemoryAdded(memory_id=f"w{worker}-{i}", text="x", user_id=f"u{worker}", event_id=event_id)]
        )]
        if i % 25 == 0:  # a multi-event call
            batch = [MemoryAdded(memory_id=f"w{worker}-b{i}-{k}", text="y", user_id=f"u{worker}") for k in range(4)]
            batch.append(MemoryUpdated(memory_id=f"w{worker}-{i}", text="z", expected_version=1))
            recorded += [r.event_id for r in log.append(batch)]
        if i % 10 == 0:  # every worker races to add the same memory: one wins
            try:
                recorded += [r.event_id for r in log.append(
                    [MemoryAdded(memory_id=f"shared-{i}", text="s", user_id="shared")]
                )]
            except CommandRefused:
                refused += 1
    print(json.dumps({"recorded": recorded, "refused": refused}), flush=True)
    """
)


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def test_four_processes_append_to_one_file(tmp_path: Path) -> None:
    path, go = tmp_path / "events.db", tmp_path / "go"
    workers, singles = 4, 250
    procs = [_spawn(WORKER, str(path), str(w), str(singles), str(go)) for w in range(workers)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr and p.stderr.read()
    # a reader in this process follows the log while they append (invariant 3)
    observed: list[int] = []
    stop = threading.Event()

    def follow() -> None:
        with SQLiteEventLog(path) as log:
            while True:
                finished = stop.is_set()
                after = observed[-1] if observed else 0
                observed.extend(r.seq for r in log.read(after=after))
                if finished:
                    return
                log.wait(observed[-1] if observed else 0, timeout=0.05)

    reader = threading.Thread(target=follow)
    reader.start()
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    stop.set()
    reader.join()

    with SQLiteEventLog(path) as log:
        records = list(log.read())
        report = log.audit()
    total = sum(len(r["recorded"]) for r in results)
    shared = singles // 10
    assert total == workers * (singles + 5 * (singles // 25)) + shared
    assert sum(r["refused"] for r in results) == (workers - 1) * shared
    assert [r.seq for r in records] == list(range(1, total + 1))
    assert observed == list(range(1, total + 1))
    by_id = [r.event_id for r in records]
    assert len(set(by_id)) == total
    assert sorted(by_id) == sorted(e for r in results for e in r["recorded"])
    ns = uuid.UUID(int=0)
    assert {str(uuid.uuid5(ns, f"{w}-{i}")) for w in range(workers) for i in range(singles)} <= set(by_id)
    assert sum(1 for r in records if r.memory_id and r.memory_id.startswith("shared-")) == shared
    owners = [r.memory_id.split("-")[0] for r in records if r.memory_id and r.memory_id.startswith("w")]
    switches = sum(a != b for a, b in itertools.pairwise(owners))
    assert switches > 4 * workers, "the workers did not really append at the same time"
    assert report.ok and report.checked == total


def _together(threads: int, work: Callable[[int], None], *, timeout: float = 60.0) -> None:
    """``work(0)`` … ``work(threads - 1)``, each in a thread of its own, released at once; all must end."""
    barrier = threading.Barrier(threads)

    def run(t: int) -> None:
        barrier.wait()
        work(t)

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=timeout)
    assert not any(th.is_alive() for th in pool), "a thread is still waiting for its append"


def test_threads_share_one_log_group_commit(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db")
    batch_sizes: list[int] = []
    commit = log._commit

    def counting_commit(batch: list[Any]) -> None:
        batch_sizes.append(len(batch))
        commit(batch)

    log._commit = counting_commit  # type: ignore[method-assign]
    threads, calls = 8, 60
    recorded: list[list[str]] = [[] for _ in range(threads)]
    refused = [0] * threads
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(calls):
                if i % 4 == 3:
                    try:  # a refused call: its first event must not be recorded either
                        log.append([add(f"t{t}-bad{i}"), update(f"t{t}-ghost{i}")])
                    except CommandRefused:
                        refused[t] += 1
                    continue
                events = [add(f"t{t}-{i}")] if i % 2 else [add(f"t{t}-{i}"), update(f"t{t}-{i}")]
                recorded[t] += [r.event_id for r in log.append(events)]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    _together(threads, work)
    assert errors == []
    records = list(log.read())
    assert refused == [calls // 4] * threads
    expected = sum(len(r) for r in recorded)
    assert [r.seq for r in records] == list(range(1, expected + 1))
    assert sorted(r.event_id for r in records) == sorted(e for r in recorded for e in r)
    assert not any("bad" in (r.memory_id or "") or "ghost" in (r.memory_id or "") for r in records)
    assert max(batch_sizes) > 1, "threads never shared a commit"
    assert log.audit().ok
    log.close()


def test_a_call_that_fails_its_checks_fails_alone_in_a_group_commit(tmp_path: Path) -> None:
    """The leader checks the queued calls; a bad one is raised in its own thread, naming its event."""
    log = SQLiteEventLog(tmp_path / "events.db")
    threads, calls = 6, 40
    outcomes: list[list[str]] = [[] for _ in range(threads)]

    def work(t: int) -> None:
        for i in range(calls):
            if i % 5 == 4:  # its second event has a NaN in its vector
                bad = [
                    add(f"t{t}-x{i}"),
                    MemoryAdded(memory_id=f"t{t}-y{i}", text="y", user_id="u", vector=[0.5, math.nan]),
                ]
                try:
                    log.append(bad)
                    outcomes[t].append("recorded")
                except InputError as e:
                    outcomes[t].append(f"{e.index}:{e.field}")
            else:
                outcomes[t].append(log.append([add(f"t{t}-{i}")])[0].memory_id or "")

    _together(threads, work)
    for t in range(threads):
        assert outcomes[t] == [("1:vector[1]" if i % 5 == 4 else f"t{t}-{i}") for i in range(calls)]
    records = list(log.read())
    assert len(records) == threads * calls * 4 // 5
    assert not any("-x" in (r.memory_id or "") or "-y" in (r.memory_id or "") for r in records)
    assert log.audit().ok
    log.close()


def test_an_interrupt_while_leading_fails_its_batch_and_nobody_waits_for_ever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt (say) in the thread checking a batch: that batch's calls fail, the rest go on."""
    import memsync.sqlite_log as sqlite_log

    log = SQLiteEventLog(tmp_path / "events.db")
    real = sqlite_log.prepare

    def interrupted(events: Any) -> Any:  # the injected fault: a signal arriving while the leader checks
        if events[0].memory_id == "t0-5":
            raise KeyboardInterrupt
        return real(events)

    monkeypatch.setattr(sqlite_log, "prepare", interrupted)
    threads, calls = 6, 30
    failed: list[tuple[int, int, str]] = []

    def work(t: int) -> None:
        for i in range(calls):
            try:
                log.append([add(f"t{t}-{i}")])
            except BaseException as e:  # whatever a call raises is kept, checked below
                failed.append((t, i, type(e).__name__))

    _together(threads, work)  # no thread waits for a batch that will never commit
    assert ("t0-5" not in {r.memory_id for r in log.read()}) and failed, failed
    assert {name for _, _, name in failed} == {"KeyboardInterrupt"}
    recorded = {r.memory_id for r in log.read()}
    assert recorded == {f"t{t}-{i}" for t in range(threads) for i in range(calls)} - {f"t{t}-{i}" for t, i, _ in failed}
    monkeypatch.setattr(sqlite_log, "prepare", real)
    [after] = log.append([add("after")])
    assert after.seq == len(recorded) + 1 and log.audit().ok
    log.close()


def test_a_signal_while_waiting_for_a_group_commit_leaves_the_log_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in a thread queued behind a leader: its call leaves the queue, and appends go on."""
    import memsync.sqlite_log as sqlite_log

    log = SQLiteEventLog(tmp_path / "events.db")
    real = sqlite_log.prepare
    leading = threading.Event()

    def slow(events: Any) -> Any:  # the leader is busy checking a batch while the main thread queues
        if events[0].memory_id == "slow":
            leading.set()
            time.sleep(0.5)
        return real(events)

    monkeypatch.setattr(sqlite_log, "prepare", slow)
    leader = threading.Thread(target=lambda: log.append([add("slow")]))
    leader.start()
    assert leading.wait(10)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt):
            log.append([add("interrupted")])  # queued behind the leader, interrupted while it waits
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    leader.join(timeout=10)
    assert not leader.is_alive()
    done: list[str] = []
    _together(4, lambda i: done.append(log.append([add(f"after-{i}")])[0].memory_id or ""), timeout=10)
    assert sorted(done) == [f"after-{i}" for i in range(4)], "appends after the interrupt never committed"
    assert {r.memory_id for r in log.read()} == {"slow", "after-0", "after-1", "after-2", "after-3"}
    log.close()


def test_a_large_append_runs_with_the_garbage_collector_paused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    import memsync.sqlite_log as sqlite_log

    seen: list[tuple[int, bool]] = []
    real = sqlite_log.prepare
    monkeypatch.setattr(
        sqlite_log, "prepare", lambda events: seen.append((len(events), gc.isenabled())) or real(events)
    )
    with SQLiteEventLog(tmp_path / "events.db") as log:
        log.append([add(f"small-{i}") for i in range(3)])
        log.append([add(f"large-{i}") for i in range(200)])
        gc.disable()
        try:  # a collector the application turned off stays off
            log.append([add(f"off-{i}") for i in range(200)])
            assert not gc.isenabled()
        finally:
            gc.enable()
    assert seen == [(3, True), (200, False), (200, False)]
    assert gc.isenabled()


# ---------------------------------------------------------------- kill -9

BIG_APPEND = textwrap.dedent(
    """
    import random, sys, time
    from memsync.events import MemoryAdded
    from memsync.sqlite_log import SQLiteEventLog

    path, n = sys.argv[1], int(sys.argv[2])
    rng = random.Random(n)
    events = [
        MemoryAdded(memory_id=f"big-{i}", text=f"memory number {i}", user_id=f"u{i % 50}",
                    vector=[rng.random() for _ in range(8)])
        for i in range(n)
    ]
    log = SQLiteEventLog(path)
    print("ready", flush=True)
    log.append(events)
    print("done", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("moment", ["early", "wal-1mb", "wal-6mb", "random", "after-commit"])
def test_kill_9_during_a_large_append(tmp_path: Path, moment: str) -> None:
    path, n = tmp_path / "events.db", 5_000 if moment == "after-commit" else 50_000
    wal = Path(f"{path}-wal")
    with SQLiteEventLog(path) as log:
        before = log.append([add("m1"), add("m2"), delete("m1")])
    proc = _spawn(BIG_APPEND, str(path), str(n))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    if moment == "early":
        time.sleep(0.02)
    elif moment == "random":
        time.sleep(random.uniform(0.05, 1.0))
    elif moment == "after-commit":
        assert proc.stdout.readline().strip() == "done"
    else:
        limit = {"wal-1mb": 1 << 20, "wal-6mb": 6 << 20}[moment]
        while (not wal.exists() or wal.stat().st_size < limit) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert time.monotonic() < deadline, "the append never wrote to the WAL"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with SQLiteEventLog(path) as log:
        head = log.head()
        if moment == "after-commit":
            assert head.seq == 3 + n
        elif moment.startswith("wal-"):
            assert head.seq == 3  # killed while the transaction was spilling to the WAL: none of it
        assert head.seq in (3, 3 + n), head
        assert list(log.read(limit=3)) == before
        report = log.audit()
        assert report.ok and report.checked == head.seq
        stats = log.stats()
        if head.seq == 3:
            assert (stats.live_memories, stats.with_vector, stats.dimension) == (1, 0, None)
            assert log.read_stream("big-0") == []
        else:
            assert (stats.live_memories, stats.with_vector, stats.dimension) == (1 + n, n, 8)
            assert sum(1 for _ in log.read(after=3)) == n
        # the log stays writable: the killed writer's lock is gone
        [nxt] = log.append([add("after-kill")])
        assert nxt.seq == head.seq + 1 and nxt.prev_hash == head.hash
        assert log.head() == Head(nxt.seq, nxt.hash)
