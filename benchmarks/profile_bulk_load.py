"""A LadybugDB bulk load alone, from a cached log: its time and its peak memory.

``python -m benchmarks.profile_bulk_load [--events N] [--chunk M] [--part R]``

Folds the live memories of the cached mixed log of N events (default 1M; the
graph part only, as ``memsync rebuild graph`` does) into a fresh LadybugDB store
in a child process per run, and prints the seconds, the child's peak RSS
(VmHWM) and the store's counts. ``--chunk`` and ``--part`` override
``BULK_CHUNK`` and ``COPY_PART``. A profile, not a benchmark: no anchor, no
target. It measured the choice of both constants (docs/performance-history.md, fourth pass).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

from benchmarks.workload import cached_log

CHILD = textwrap.dedent(
    """
    import sys, tempfile, time
    from pathlib import Path
    from memsync.projector import final_states
    from memsync.sqlite_log import SQLiteEventLog
    from projections import graph_ladybug

    path, chunk, part = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    graph_ladybug.BULK_CHUNK = chunk or graph_ladybug.BULK_CHUNK
    graph_ladybug.COPY_PART = part or graph_ladybug.COPY_PART
    with SQLiteEventLog(path) as log, tempfile.TemporaryDirectory() as tmp:
        head = log.head().seq
        store = graph_ladybug.LadybugGraphStore(Path(tmp) / "graph")
        started = time.perf_counter()
        store.bulk_load(final_states(log, head, vectors=False), head)
        elapsed = time.perf_counter() - started
        counts = store.counts()
        store.close()
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(f"BULK_CHUNK {graph_ladybug.BULK_CHUNK:,}, COPY_PART {graph_ladybug.COPY_PART:,}: "
          f"{elapsed:.1f} s, VmHWM {hwm / 1024:.0f} MB, {counts}")
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=0, help="BULK_CHUNK (default: the store's)")
    parser.add_argument("--part", type=int, default=0, help="COPY_PART (default: the store's)")
    args = parser.parse_args()
    path = cached_log(args.events)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(args.chunk), str(args.part)], cwd=root, check=False
    )
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
