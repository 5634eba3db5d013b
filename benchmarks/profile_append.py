"""Where a single append's time goes: wall time and CPU (user, system) per call, memsync against raw.

    python -m benchmarks.profile_append [--events 3000] [--rounds 3] [--synchronous FULL] [--nap 0]

Each contender runs in a child process of its own (so neither inherits the other's
heap or caches), appends ``--events`` events one per call, and reports from
``getrusage``: wall µs per call, CPU µs per call (user and system), voluntary
context switches per call. The raw side inserts the rows memsync stores for the
same events (``benchmarks.bench_append``), one per transaction. ``--nap`` sleeps
that many seconds after each call: at ``--synchronous OFF`` it shows what an
fsync's wait alone does to the CPU of the next call (caches gone cold).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_append import INSERT, raw_connection, stored_rows
from benchmarks.workload import added_events
from memsync.sqlite_log import SQLiteEventLog


def child(which: str, events: int, synchronous: str, nap: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="memsync-profile-append-"))
    stream = added_events(events, seed=1)
    if which == "raw":
        rows = stored_rows(stream, work / "scratch.db")
        raw = raw_connection(work / "raw.db")
        raw.execute(f"PRAGMA synchronous = {synchronous}")

        def one(i: int) -> None:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute(INSERT, rows[i])
            raw.execute("COMMIT")
    else:
        log = SQLiteEventLog(work / "memsync.db", synchronous=synchronous)

        def one(i: int) -> None:
            log.append([stream[i]])

    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(events):
        one(i)
        if nap:
            time.sleep(nap)
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    per = 1e6 / events
    return {
        "wall_us": wall * per - nap * 1e6,
        "user_us": (after.ru_utime - before.ru_utime) * per,
        "system_us": (after.ru_stime - before.ru_stime) * per,
        "switches": (after.ru_nvcsw - before.ru_nvcsw) / events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_append", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--synchronous", default="FULL", choices=["OFF", "NORMAL", "FULL"])
    parser.add_argument("--nap", type=float, default=0.0, help="seconds to sleep after each call")
    parser.add_argument("--child", choices=["memsync", "raw"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.events, args.synchronous, args.nap)))
        return
    runs: dict[str, list[dict[str, Any]]] = {"memsync": [], "raw": []}
    for r in range(args.rounds):
        for which in ("memsync", "raw") if r % 2 == 0 else ("raw", "memsync"):
            command = [sys.executable, "-m", "benchmarks.profile_append", "--child", which]
            command += ["--events", str(args.events), "--synchronous", args.synchronous, "--nap", str(args.nap)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[which].append(json.loads(out))
    setting = f"synchronous = {args.synchronous}, nap {args.nap * 1e3:g} ms"
    print(f"{setting}, {args.events} calls x {args.rounds} rounds (medians)")
    print(f"{'':8} {'wall µs':>8} {'user µs':>8} {'sys µs':>8} {'switches':>9}")
    for which, results in runs.items():
        m = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(f"{which:8} {m['wall_us']:8.0f} {m['user_us']:8.0f} {m['system_us']:8.0f} {m['switches']:9.2f}")


if __name__ == "__main__":
    main()
