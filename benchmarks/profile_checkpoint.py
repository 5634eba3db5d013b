"""What one LadybugDB checkpoint costs, by store size and by how much the WAL holds.

``python -m benchmarks.profile_checkpoint [--prefill N ...]``

For each ``--prefill``: writes ``bench_follow``'s stream to a scratch log, loads
the first N events into a fresh LadybugDB store in batches of 500 (checkpointing
as it goes), then applies 50, 200, 1,000, 4,000 and 14,000 more events in
batches of 10 the way the follower does, each time followed by a ``CHECKPOINT``
whose time and WAL size it prints. The engine's own checkpoint threshold is set
out of the way, so every checkpoint is one of these. A profile, not a benchmark:
no anchor, no target. It shows why the follow lag's p99 is the checkpoint's
(docs/performance.md): a checkpoint has a fixed part that grows with the store.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.bench_follow import scratch_log
from memsync.projector import plan_batch
from projections import graph_ladybug

WAL_EVENTS = (50, 200, 1000, 4000, 14000)


def _profile(prefill: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log, records = scratch_log(Path(tmp) / "events.db", prefill + sum(WAL_EVENTS))
        store = graph_ladybug.LadybugGraphStore(Path(tmp) / "graph")
        wal = Path(tmp) / "graph" / f"{graph_ladybug.DB_FILE}.wal"

        def checkpoint() -> tuple[float, float]:
            size = wal.stat().st_size if wal.exists() else 0
            started = time.perf_counter()
            store._checkpoint_engine("profiling a checkpoint")
            return size / 2**20, 1000 * (time.perf_counter() - started)

        def apply(start: int, stop: int, size: int) -> None:
            for first in range(start, stop, size):
                batch = records[first : min(first + size, stop)]
                store.apply(plan_batch(log, batch), batch[-1].seq)

        for start in range(0, prefill, 5000):
            apply(start, min(start + 5000, prefill), 500)
            checkpoint()
        done = prefill
        for count in WAL_EVENTS:
            apply(done, done + count, 10)
            done += count
            wal_mb, ms = checkpoint()
            print(
                f"{prefill:>7,} events in the store, {count:>6,} since the last checkpoint: "
                f"WAL {wal_mb:5.1f} MB, CHECKPOINT {ms:5.0f} ms"
            )
        store.close()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, action="append", help="events in the store first (repeatable)")
    args = parser.parse_args()
    graph_ladybug.WAL_CHECKPOINT = 1 << 30  # the engine checkpoints only when asked
    for prefill in args.prefill or [10_000, 40_000]:
        _profile(prefill)


if __name__ == "__main__":
    main()
