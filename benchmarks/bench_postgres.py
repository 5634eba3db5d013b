"""Append throughput of the PostgreSQL log: 1, 4 and 16 concurrent writers, durable single-event appends.

    python -m benchmarks.bench_postgres [--seconds 3] [--rounds 3] [--dim 384] [--url postgresql://…]

Without ``--url`` a private PostgreSQL 15 is started (tests/pg_server.py: fsync,
synchronous_commit and full_page_writes on). Three scenarios, each for 1, 4
and 16 writers, every append a one-event call that returns only once committed:

* ``memsync, processes``  — each writer a process with its own PostgresEventLog
  (its own connection), like workers on several hosts;
* ``memsync, threads``    — threads sharing one PostgresEventLog (group commit);
* ``raw INSERT``          — the ceiling: each writer a process inserting the same
  rows (payload, float32 vector, hashes) with plain psycopg, one per
  transaction, seq from a sequence: no lock, no chain, no state.

Each memsync run is checked afterwards: seqs 1..N without a gap, audit ok. The
cells run ``--rounds`` times, interleaved; the table shows each cell's median
run (and the range), with ratios to 1 writer and to the raw ceiling.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psycopg

from memsync.events import MemoryAdded, chain_hash, pack_vector, payload_bytes
from memsync.postgres_log import PostgresEventLog

WRITERS = (1, 4, 16)
Result = tuple[int, list[float]]  # appends done, latencies in seconds


def _event(writer: int, i: int, dim: int) -> MemoryAdded:
    vector = [((writer * 7919 + i * 104729 + k) % 1000) / 1000.0 for k in range(dim)] if dim else None
    return MemoryAdded(
        memory_id=f"w{writer}-{i}-{uuid.uuid4().hex[:8]}",
        text=f"writer {writer} remembers fact number {i}: the user prefers green tea in the afternoon",
        user_id=f"user-{writer % 50}",
        metadata={"source": "bench", "i": i},
        vector=vector,
    )


def _timed(seconds: float, start_at: float, one: Callable[[int], None]) -> Result:
    while time.time() < start_at:
        time.sleep(0.001)
    stop, done, latencies = start_at + seconds, 0, []
    while time.time() < stop:
        began = time.perf_counter()
        one(done)
        latencies.append(time.perf_counter() - began)
        done += 1
    return done, latencies


def _memsync_writer(url: str, writer: int, dim: int, seconds: float, start_at: float) -> Result:
    log = PostgresEventLog(url)
    try:
        return _timed(seconds, start_at, lambda i: log.append([_event(writer, i, dim)]) and None)
    finally:
        log.close()


def _raw_writer(url: str, writer: int, dim: int, seconds: float, start_at: float) -> Result:
    sql = (
        "INSERT INTO raw_events (seq, event_id, type, memory_id, version, user_id, recorded_at, payload, vector, "
        "prev_hash, hash) VALUES (nextval('raw_seq'), %s, 'memory.added', %s, 1, %s, %s, %s, %s, %s, %s)"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")

        def insert(i: int) -> None:
            event = _event(writer, i, dim)
            payload = payload_bytes(event)
            vector = pack_vector(event.vector) if event.vector is not None else None
            recorded_at = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
            digest = chain_hash("00" * 32, seq=i, version=1, recorded_at=recorded_at, payload=payload, vector=vector)
            with conn.transaction():
                row = (event.memory_id, event.user_id, recorded_at, payload, vector, "00" * 32, digest)
                conn.execute(sql, (str(uuid.uuid4()), *row))

        return _timed(seconds, start_at, insert)


def run_processes(target: Callable[..., Result], url: str, writers: int, dim: int, seconds: float) -> list[Result]:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(writers + 1), ctx.Queue()
    procs = [ctx.Process(target=_starter, args=(target, url, w, dim, seconds, barrier, out)) for w in range(writers)]
    for p in procs:
        p.start()
    barrier.wait(timeout=300)  # every process is up: they start together, one second from now
    results = [out.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return results


def _starter(
    target: Callable[..., Result], url: str, writer: int, dim: int, seconds: float, barrier: Barrier, out: Any
) -> None:
    barrier.wait(timeout=300)
    out.put(target(url, writer, dim, seconds, time.time() + 1.0))


def run_threads(url: str, writers: int, dim: int, seconds: float) -> list[Result]:
    log = PostgresEventLog(url)
    results: list[Result] = [(0, [])] * writers
    start_at = time.time() + 1.0

    def work(w: int) -> None:
        results[w] = _timed(seconds, start_at, lambda i: log.append([_event(w, i, dim)]) and None)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    return results


def _check(url: str, expected: int) -> None:
    with PostgresEventLog(url) as log:
        seqs = [r.seq for r in log.stored_rows()]
        report = log.audit()
    if seqs != list(range(1, expected + 1)) or not report.ok:
        raise SystemExit(f"log check failed: {len(seqs)} rows, expected {expected}, audit {report}")


def _fresh_database(admin: str, name: str) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin.rpartition("/")
    return f"{base}/{name}"


def _raw_database(admin: str, name: str) -> str:
    url = _fresh_database(admin, name)
    PostgresEventLog(url).close()  # the same table shape and indexes as the log
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE raw_events (LIKE events INCLUDING ALL)")
        conn.execute("CREATE SEQUENCE raw_seq")
    return url


def bench(admin: str, seconds: float, dim: int, rounds: int) -> list[dict[str, Any]]:
    """Every cell ``rounds`` times, interleaved, so a busy moment of the machine hits all scenarios alike."""
    scenarios: dict[str, tuple[Callable[[str, int], list[Result]], bool]] = {
        "memsync, processes": (lambda url, n: run_processes(_memsync_writer, url, n, dim, seconds), True),
        "memsync, threads (1 log)": (lambda url, n: run_threads(url, n, dim, seconds), True),
        "raw INSERT, processes": (lambda url, n: run_processes(_raw_writer, url, n, dim, seconds), False),
    }
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for round_ in range(rounds):
        for name, (run, is_log) in scenarios.items():
            for writers in WRITERS:
                db = f"bench_{round_}_{len(runs)}"
                url = _fresh_database(admin, db) if is_log else _raw_database(admin, db)
                results = run(url, writers)
                done = sum(r[0] for r in results)
                if is_log:
                    _check(url, done)
                latencies = sorted(x for r in results for x in r[1])
                runs.setdefault((name, writers), []).append(
                    {
                        "per_s": done / seconds,
                        "p50_ms": 1000 * statistics.median(latencies),
                        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
                    }
                )
                print(f"  {round_ + 1}: {name:<26} {writers:>2} writers: {done / seconds:7.0f}/s", file=sys.stderr)
    rows = []
    for (name, writers), cell in runs.items():
        median = sorted(cell, key=lambda r: r["per_s"])[len(cell) // 2]
        low, high = min(r["per_s"] for r in cell), max(r["per_s"] for r in cell)
        rows.append({"scenario": name, "writers": writers, **median, "low": low, "high": high})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    single = {r["scenario"]: r["per_s"] for r in rows if r["writers"] == 1}
    raw = {r["writers"]: r["per_s"] for r in rows if r["scenario"].startswith("raw")}
    header = ("scenario", "writers", "appends/s", "(min-max)", "vs 1 writer", "vs raw", "p50 ms", "p99 ms")
    print("{:<26} {:>7} {:>10} {:>13} {:>12} {:>7} {:>7} {:>7}".format(*header))
    for r in rows:
        ratio = r["per_s"] / single[r["scenario"]]
        of_raw = r["per_s"] / raw[r["writers"]]
        spread = f"({r['low']:.0f}-{r['high']:.0f})"
        print(
            f"{r['scenario']:<26} {r['writers']:>7} {r['per_s']:>10.0f} {spread:>13} {ratio:>11.2f}x {of_raw:>6.2f}x "
            f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run of a cell")
    parser.add_argument("--rounds", type=int, default=3, help="runs per cell (the table shows the median)")
    parser.add_argument("--dim", type=int, default=384, help="vector dimension of each event (0: none)")
    parser.add_argument("--url", help="a PostgreSQL server to use (its `postgres` database URL); default: start one")
    args = parser.parse_args()
    if args.url:
        print_table(bench(args.url, args.seconds, args.dim, args.rounds))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.pg_server import PostgresServer

    with PostgresServer() as server:
        version = server.connect().execute("SHOW server_version").fetchone()[0]
        print(f"PostgreSQL {version}, fsync and synchronous_commit on, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
        print_table(bench(server.url, args.seconds, args.dim, args.rounds))


if __name__ == "__main__":
    main()
