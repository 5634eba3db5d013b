"""Appends: one event per call against eventsourcing and raw sqlite3, 8 threads against 1, batches against raw.

Durability is the same on every side: SQLite in WAL mode with ``synchronous =
FULL`` (memsync's default; eventsourcing sets WAL and leaves ``synchronous`` at
SQLite's default, which is FULL in this build; the raw connections set it). The
values each contender's connection reports are recorded in the figure's detail.

The raw rows are the rows memsync itself stores for the same events (taken from
a scratch log), inserted with plain ``sqlite3`` into a table with memsync's
``events`` schema and indexes: the ceiling for writing those bytes durably.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from benchmarks.common import Figure, Result, Settings, interleave, median, ratio
from benchmarks.workload import added_events
from memsync.events import Event, MemoryAdded
from memsync.sqlite_log import SCHEMA, SQLiteEventLog

Row = tuple[Any, ...]
INSERT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
COLUMNS = (
    "seq",
    "event_id",
    "type",
    "memory_id",
    "version",
    "user_id",
    "agent_id",
    "run_id",
    "recorded_at",
    "payload",
    "vector",
    "prev_hash",
    "hash",
)


class MemoryAggregate(Aggregate):
    """eventsourcing's side: one aggregate per memory, created by one event of the same fields."""

    @event("Added")
    def __init__(
        self,
        memory_id: str,
        text: str,
        user_id: str | None,
        agent_id: str | None,
        metadata: dict[str, Any] | None,
        vector: list[float] | None,
        entities: list[dict[str, Any]],
        relations: list[dict[str, Any]],
    ) -> None:
        self.memory_id = memory_id
        self.text = text
        self.user_id = user_id
        self.agent_id = agent_id
        self.metadata = metadata
        self.vector = vector
        self.entities = entities
        self.relations = relations


def _aggregate_args(e: MemoryAdded) -> dict[str, Any]:
    return {
        "memory_id": e.memory_id,
        "text": e.text,
        "user_id": e.user_id,
        "agent_id": e.agent_id,
        "metadata": e.metadata,
        "vector": e.vector,
        "entities": [{"name": x.name, "type": x.type} for x in e.entities or ()],
        "relations": [{"source": x.source, "relation": x.relation, "target": x.target} for x in e.relations or ()],
    }


def eventsourcing_app(path: Path) -> Application:
    return Application(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)})


def _es_pragmas(app: Application) -> dict[str, Any]:
    datastore: Any = app.recorder.datastore  # type: ignore[attr-defined]
    with datastore.transaction(commit=False) as c:
        c.execute("PRAGMA synchronous")
        synchronous = c.fetchone()[0]
        c.execute("PRAGMA journal_mode")
        journal = c.fetchone()[0]
    return {"synchronous": synchronous, "journal_mode": journal}


def _pragmas(db: sqlite3.Connection) -> dict[str, Any]:
    return {
        "synchronous": db.execute("PRAGMA synchronous").fetchone()[0],
        "journal_mode": db.execute("PRAGMA journal_mode").fetchone()[0],
    }


def raw_connection(path: Path) -> sqlite3.Connection:
    """Plain sqlite3 with memsync's events schema, WAL and synchronous = FULL (nothing else tuned)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.executescript(SCHEMA)
    return db


def stored_rows(events: Sequence[Event], path: Path) -> list[Row]:
    """The rows memsync stores for ``events`` (written to a scratch log at ``path``)."""
    log = SQLiteEventLog(path, synchronous="OFF")
    try:
        for start in range(0, len(events), 1000):
            log.append(events[start : start + 1000])
        return [tuple(getattr(r, c) for c in COLUMNS) for r in log.stored_rows()]
    finally:
        log.close()


# ---------------------------------------------------------------- 1 event per call


def single(settings: Settings) -> list[Result]:
    per_round = settings.pick(200, 10)
    rounds = settings.rounds_or(7)
    work = settings.workdir / "append-single"
    work.mkdir()
    events = added_events(per_round * rounds, seed=1)
    rows = stored_rows(events, work / "scratch.db")
    args = [_aggregate_args(e) for e in events]

    log = SQLiteEventLog(work / "memsync.db")
    app = eventsourcing_app(work / "eventsourcing.db")
    raw = raw_connection(work / "raw.db")

    def run_memsync(r: int) -> float:
        chunk = events[r * per_round : (r + 1) * per_round]
        started = time.perf_counter()
        for e in chunk:
            log.append([e])
        return len(chunk) / (time.perf_counter() - started)

    def run_eventsourcing(r: int) -> float:
        chunk = args[r * per_round : (r + 1) * per_round]
        started = time.perf_counter()
        for a in chunk:
            app.save(MemoryAggregate(**a))
        return len(chunk) / (time.perf_counter() - started)

    def run_raw(r: int) -> float:
        chunk = rows[r * per_round : (r + 1) * per_round]
        started = time.perf_counter()
        for row in chunk:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute(INSERT, row)
            raw.execute("COMMIT")
        return len(chunk) / (time.perf_counter() - started)

    try:
        rates = interleave({"memsync": run_memsync, "eventsourcing": run_eventsourcing, "raw": run_raw}, rounds)
        durability = {
            "memsync": _pragmas(log._writer),
            "eventsourcing": _es_pragmas(app),
            "raw": _pragmas(raw),
        }
    finally:
        log.close()
        app.close()
        raw.close()
    detail = {"appends_per_round": per_round, "rounds": rates, "durability": durability}
    mine = median(rates["memsync"])
    return [
        Figure(
            "append_single",
            "append, 1 event per call (FULL)",
            mine,
            "events/s",
            anchor="eventsourcing save(), 1 aggregate",
            anchor_value=median(rates["eventsourcing"]),
            ratio=ratio(rates["memsync"], rates["eventsourcing"]),
            detail=detail,
        ).check(min_ratio=1.75),
        Figure(
            "append_single",
            "append, 1 event per call (FULL)",
            mine,
            "events/s",
            anchor="raw sqlite3, 1 row per transaction",
            anchor_value=median(rates["raw"]),
            ratio=ratio(rates["memsync"], rates["raw"]),
        ).check(min_ratio=0.8),
    ]


# ---------------------------------------------------------------- 8 threads


def _threaded(log: SQLiteEventLog, batches: list[list[Event]]) -> float:
    """Each list appended by its own thread, one event per call; all start together."""
    gate = threading.Barrier(len(batches) + 1)
    errors: list[BaseException] = []

    def work(chunk: list[Event]) -> None:
        gate.wait()
        try:
            for e in chunk:
                log.append([e])
        except BaseException as e:  # surfaced below: a benchmark must not hide a failure
            errors.append(e)

    threads = [threading.Thread(target=work, args=(chunk,)) for chunk in batches]
    for t in threads:
        t.start()
    gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return sum(map(len, batches)) / elapsed


def threads(settings: Settings) -> list[Result]:
    one, each, n = settings.pick(200, 10), settings.pick(100, 5), 8
    rounds = settings.rounds_or(5)
    work = settings.workdir / "append-threads"
    work.mkdir()
    singles = [added_events(one, seed=100 + r, prefix="one") for r in range(rounds)]
    many = [[added_events(each, seed=1000 * r + t, prefix=f"t{t}") for t in range(n)] for r in range(rounds)]
    grouped = [added_events(each * n, seed=7000 + r, prefix="grouped") for r in range(rounds)]
    log_one = SQLiteEventLog(work / "one.db")
    log_many = SQLiteEventLog(work / "many.db")
    log_grouped = SQLiteEventLog(work / "grouped.db")

    def run_grouped(r: int) -> float:
        # What a group commit of n calls could do at best: one thread, n events per call.
        chunk = grouped[r]
        started = time.perf_counter()
        for start in range(0, len(chunk), n):
            log_grouped.append(chunk[start : start + n])
        return len(chunk) / (time.perf_counter() - started)

    try:
        rates = interleave(
            {
                "1 thread": lambda r: _threaded(log_one, [list(singles[r])]),
                f"{n} threads": lambda r: _threaded(log_many, [list(c) for c in many[r]]),
                f"1 thread, {n} per call": run_grouped,
            },
            rounds,
        )
        audit_ok = log_many.audit().ok
    finally:
        log_one.close()
        log_many.close()
        log_grouped.close()
    return [
        Figure(
            "append_threads",
            f"append, {n} threads x 1 event per call (FULL)",
            median(rates[f"{n} threads"]),
            "events/s",
            anchor="1 thread",
            anchor_value=median(rates["1 thread"]),
            ratio=ratio(rates[f"{n} threads"], rates["1 thread"]),
            detail={"rounds": rates, "audit_ok": audit_ok, "per_thread": each, "one_thread": one},
        ).check(min_ratio=3.0),
        # No target: how close the group commit comes to its own ceiling, batches of n from one thread.
        Figure(
            "append_threads",
            f"append, {n} threads x 1 event per call (FULL)",
            median(rates[f"{n} threads"]),
            "events/s",
            anchor=f"1 thread, {n} events per call",
            anchor_value=median(rates[f"1 thread, {n} per call"]),
            ratio=ratio(rates[f"{n} threads"], rates[f"1 thread, {n} per call"]),
        ),
    ]


# ---------------------------------------------------------------- batches of 1000


def batches(settings: Settings) -> list[Result]:
    size, per_round = 1000, settings.pick(5, 1)
    rounds = settings.rounds_or(5)
    work = settings.workdir / "append-batch"
    work.mkdir()
    events = added_events(size * per_round * rounds, seed=7)
    rows = stored_rows(events, work / "scratch.db")
    log = SQLiteEventLog(work / "memsync.db")
    raw = raw_connection(work / "raw.db")

    def run_memsync(r: int) -> float:
        base = r * per_round * size
        started = time.perf_counter()
        for b in range(per_round):
            log.append(events[base + b * size : base + (b + 1) * size])
        return per_round * size / (time.perf_counter() - started)

    def run_raw(r: int) -> float:
        base = r * per_round * size
        started = time.perf_counter()
        for b in range(per_round):
            raw.execute("BEGIN IMMEDIATE")
            raw.executemany(INSERT, rows[base + b * size : base + (b + 1) * size])
            raw.execute("COMMIT")
        return per_round * size / (time.perf_counter() - started)

    try:
        rates = interleave({"memsync": run_memsync, "raw": run_raw}, rounds)
    finally:
        log.close()
        raw.close()
    return [
        Figure(
            "append_batch",
            f"append, batches of {size} events, {len(events[0].vector or ())}-d vectors (FULL)",
            median(rates["memsync"]),
            "events/s",
            anchor="raw sqlite3 executemany, same rows",
            anchor_value=median(rates["raw"]),
            ratio=ratio(rates["memsync"], rates["raw"]),
            detail={"rounds": rates, "batches_per_round": per_round},
        ).check(min_ratio=0.7)
    ]
