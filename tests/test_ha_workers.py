"""Highly available projector workers on the PostgreSQL log.

- the leadership lock itself: one holder per name, released by the server when the
  holder's session ends — ``kill -9`` of the holder, or the session being terminated;
- failover of ``memsync project graph --follow`` workers (real processes, the real CLI)
  projecting into one shared Neo4j: the active worker is ``kill -9``-ed twice while
  events stream in; a standby takes over within seconds, and at the end the graph is
  exactly ``fold(log)`` — every event applied, nothing twice, ``memsync verify`` clean.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from memsync.events import Entity, Event, MemoriesDeleted, MemoryAdded, MemoryDeleted, MemoryUpdated, Relation
from memsync.leader import Leadership
from memsync.postgres_log import PostgresEventLog, PostgresLeadership

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parent.parent
MEMSYNC = Path(sys.executable).with_name("memsync")  # the console script of this venv


class Lines:
    """A child process whose output lines are collected, with the time each arrived, by a thread."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, stream: str = "stdout") -> None:
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        out = subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL
        err = subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdout=out, stderr=err, text=True, env=env)
        pipe = self.proc.stdout if stream == "stdout" else self.proc.stderr
        assert pipe is not None
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: Any) -> None:
        for line in pipe:
            with self._changed:
                self.lines.append((time.monotonic(), line.strip()))
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 60.0, *, since: float = 0.0) -> float:
        """The arrival time of the first line containing ``text`` that came after ``since``."""

        def found() -> float | None:
            return next((t for t, line in self.lines if text in line and t >= since), None)

        with self._changed:
            assert self._changed.wait_for(lambda: found() is not None or self.proc.poll() is not None, timeout), (
                f"no {text!r} within {timeout}s: {self.lines}"
            )
        at = found()
        assert at is not None, f"exited ({self.proc.returncode}) before {text!r}: {self.lines}"
        return at

    def kill(self) -> float:
        self.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        self.proc.wait(timeout=30)
        return killed

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def children() -> Iterator[Callable[..., Lines]]:
    started: list[Lines] = []

    def start(args: list[str], **kwargs: Any) -> Lines:
        child = Lines(args, **kwargs)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


# ---------------------------------------------------------------- the lock itself

HOLDER = textwrap.dedent(
    """
    import sys, time
    from memsync.postgres_log import PostgresEventLog

    lead = PostgresEventLog(sys.argv[1]).leadership(sys.argv[2])
    print("started", flush=True)
    if not lead.try_acquire():
        print("standby", flush=True)
        while not lead.try_acquire():
            time.sleep(0.02)
    print("leader", flush=True)
    while lead.still_held():
        time.sleep(0.05)
    print("lost", flush=True)
    """
)


def _holder(start: Callable[..., Lines], url: str, name: str) -> Lines:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = start([sys.executable, "-c", HOLDER, url, name], env=env)
    child.wait_for("started")
    return child


def test_the_standby_acquires_within_a_second_of_kill_9(pg_database: str, children: Callable[..., Lines]) -> None:
    first = _holder(children, pg_database, "vector")
    first.wait_for("leader")
    second = _holder(children, pg_database, "vector")
    second.wait_for("standby")
    other = _holder(children, pg_database, "graph")  # another projection: its own lock
    other.wait_for("leader")
    time.sleep(0.3)
    assert not any("leader" in line for _, line in second.lines)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        held = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted").fetchone()
    assert held == (2,)  # vector (first) and graph (other)

    killed = first.kill()
    took = second.wait_for("leader", timeout=10) - killed
    assert took < 1.0, f"the standby took {took:.3f}s to take over"
    print(f"lock taken over {took:.3f}s after kill -9")
    assert not any("lost" in line for _, line in other.lines)


def test_leadership_is_lost_with_its_session(pg_database: str) -> None:
    one, two = PostgresEventLog(pg_database), PostgresEventLog(pg_database)
    lead, rival = one.leadership("vector"), two.leadership("vector")
    assert isinstance(lead, PostgresLeadership) and isinstance(lead, Leadership)
    assert lead.try_acquire() and lead.try_acquire()  # idempotent
    assert lead.still_held()
    assert not rival.try_acquire() and not rival.still_held()
    with psycopg.connect(pg_database, autocommit=True) as conn:  # an operator (or a network failure) ends the session
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = %s AND objid::bigint = %s",
            (lead.key >> 32, lead.key & 0xFFFFFFFF),
        )
    deadline = time.monotonic() + 5
    while lead.still_held():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert rival.try_acquire() and rival.still_held()
    assert not lead.try_acquire()
    rival.release()
    assert not rival.still_held()
    assert lead.try_acquire()
    one.close()  # closing the log releases what it holds
    assert two.leadership("vector").try_acquire()
    two.close()


def test_leadership_is_per_log(pg_schema: Callable[[str], str]) -> None:
    a, b = PostgresEventLog(pg_schema("a")), PostgresEventLog(pg_schema("b"))
    assert a.leadership("vector").try_acquire()
    assert b.leadership("vector").try_acquire()  # another log (schema) in the same database
    assert not PostgresEventLog(pg_schema("a")).leadership("vector").try_acquire()
    a.close()
    b.close()


# ---------------------------------------------------------------- failover of CLI workers


def _stream(seed: int, calls: int) -> Iterator[list[Event]]:
    """Calls of 1-3 events over 5 users: adds with entities and relations, updates, deletes, re-adds, bulk deletes."""
    rng = random.Random(seed)
    live: dict[str, str] = {}  # memory_id -> user
    names = ["Alice", "Bob", "Carol", "Paris", "Berlin", "tea", "coffee", "chess", "piano", "Acme"]
    relations = ["likes", "lives_in", "works_at", "plays"]
    counter = 0
    for call in range(calls):
        batch: list[Event] = []
        for _ in range(rng.randint(1, 3)):
            choice = rng.random()
            if call == calls // 2 and not batch:
                batch.append(MemoriesDeleted(user_id="u3"))
                live = {m: u for m, u in live.items() if u != "u3"}
            elif choice < 0.5 or len(live) < 20:
                counter += 1
                memory_id, user = f"m{counter}", f"u{rng.randrange(5)}"
                a, b = rng.sample(names, 2)
                batch.append(
                    MemoryAdded(
                        memory_id=memory_id,
                        text=f"{a} {rng.choice(relations)} {b}",
                        user_id=user,
                        entities=[Entity(name=a, type="thing")],
                        relations=[Relation(source=a, relation=rng.choice(relations), target=b)],
                    )
                )
                live[memory_id] = user
            elif choice < 0.85:
                memory_id = rng.choice(sorted(live))
                a, b = rng.sample(names, 2)
                batch.append(
                    MemoryUpdated(
                        memory_id=memory_id,
                        text=f"now {a} and {b}",
                        relations=[Relation(source=a, relation=rng.choice(relations), target=b)],
                    )
                )
            else:
                memory_id = rng.choice(sorted(live))
                batch.append(MemoryDeleted(memory_id=memory_id))
                del live[memory_id]
        yield batch


def _wait_checkpoint(store: Any, seq: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while store.checkpoint() < seq:
        assert time.monotonic() < deadline, f"the graph did not reach seq {seq} within {timeout}s"
        time.sleep(0.05)


@pytest.mark.neo4j
@pytest.mark.timeout(600)
def test_kill_9_the_active_worker_twice_while_events_stream_in(
    pg_database: str, neo4j_server: Any, tmp_path: Path, children: Callable[..., Lines]
) -> None:
    neo4j_server.clear()
    uri = neo4j_server.uri
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MEMSYNC_")},
        "MEMSYNC_GRAPH__BACKEND": "neo4j",
        "MEMSYNC_GRAPH__URI": uri,
        "MEMSYNC_PROJECTOR__BATCH_SIZE": "50",  # many batches, so kills land between and inside them
        "PYTHONUNBUFFERED": "1",
    }

    def worker(name: str) -> Lines:
        args = [str(MEMSYNC), "--log-url", pg_database, "--data-dir", str(tmp_path / name), "project", "graph"]
        return children([*args, "--follow"], env=env, stream="stderr")

    from projections.graph_neo4j import Neo4jGraphStore

    graph = Neo4jGraphStore(uri)  # only to watch the checkpoint
    log = PostgresEventLog(pg_database)
    first = worker("a")
    first.wait_for("graph: active")
    second = worker("b")
    second.wait_for("graph: standby")

    calls = 1500
    appended: list[int] = []
    writer = threading.Thread(target=lambda: appended.extend(r.seq for b in _stream(7, calls) for r in log.append(b)))
    writer.start()
    takeovers = []
    for victim, standby, at in ((first, second, 800), (second, None, 2000)):
        _wait_checkpoint(graph, at, timeout=300)
        assert log.head().seq < 3 * calls, "the stream ended before the kill"
        if standby is None:  # bring the killed worker back as the next standby
            standby = worker("a2")
            standby.wait_for("graph: standby")
        killed = victim.kill()
        takeovers.append(standby.wait_for("graph: active", timeout=30, since=killed) - killed)
        victim_active = [t for t, line in standby.lines if "graph: active" in line and t < killed]
        assert victim_active == [], "the standby was active while the leader lived"
    writer.join(timeout=300)
    head = log.head().seq
    assert appended == list(range(1, head + 1))
    _wait_checkpoint(graph, head, timeout=120)
    assert all(t < 5.0 for t in takeovers), takeovers

    # the graph is fold(log): nothing missing, extra, stale or orphaned
    result = subprocess.run(
        [str(MEMSYNC), "--log-url", pg_database, "--data-dir", str(tmp_path / "check"), "verify", "graph", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["projections"]["graph"] == {"missing": [], "extra": [], "stale": [], "orphans": []}
    # and nothing was applied twice in effect: no duplicated nodes or edges
    with neo4j_server.driver() as driver:
        duplicates, _, _ = driver.execute_query(
            "CALL () { MATCH (m:Memory) WITH m.memory_id AS k, count(*) AS c WHERE c > 1 RETURN count(*) AS d "
            "UNION ALL MATCH (e:Entity) WITH e.key AS k, count(*) AS c WHERE c > 1 RETURN count(*) AS d "
            "UNION ALL MATCH (m:Memory)-[r:MENTIONS]->(e) WITH m, e, count(r) AS c WHERE c > 1 RETURN count(*) AS d "
            "UNION ALL MATCH (a)-[r:RELATES]->(b) WITH a, b, r.relation AS t, r.memory_id AS m, count(r) AS c "
            "WHERE c > 1 RETURN count(*) AS d } RETURN sum(d) AS duplicates"
        )
    assert duplicates[0]["duplicates"] == 0
    graph.close()
    log.close()
    print(f"takeover after kill -9: {', '.join(f'{t:.2f}s' for t in takeovers)}; {head} events")
