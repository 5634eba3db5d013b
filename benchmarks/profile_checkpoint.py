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

``--layouts`` asks what that fixed part is made of, on the engine alone (no
memsync code): the store's tables filled with N synthetic memories (two
mentions and one relation each, 200 users x 300 names), then 5 times 50 more
and a ``CHECKPOINT``, for three layouts: nodes only (no relationships), the
relationship tables as the store creates them (both directions), and the same
with ``storage_direction = 'fwd'`` (one direction stored; the engine then
refuses undirected patterns, which the store's readers use).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import ladybug

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


Rows = list[dict[str, Any]]
LAYOUTS = {"nodes only": None, "both directions": "", "fwd only": " WITH (storage_direction = 'fwd')"}


def _layout_rows(rng: random.Random, start: int, count: int) -> tuple[Rows, Rows, Rows]:
    memories: Rows = []
    mentions: Rows = []
    relates: Rows = []
    for i in range(start, start + count):
        user = f"u{rng.randrange(200)}"
        a, b = f"{user}|e{rng.randrange(300)}", f"{user}|e{rng.randrange(300)}"
        memories.append({"id": f"m{i}", "text": f"memory {i}", "user": user, "seq": i})
        mentions += [{"m": f"m{i}", "e": a}, {"m": f"m{i}", "e": b}]
        relates.append({"a": a, "b": b, "m": f"m{i}"})
    return memories, mentions, relates


def _layout(name: str, rels: str | None, sizes: list[int]) -> None:
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        db = ladybug.Database(str(Path(tmp) / "g.lbdb"), buffer_pool_size=512 * 2**20, checkpoint_threshold=1 << 40)
        conn = ladybug.Connection(db)
        conn.execute("CREATE NODE TABLE Memory(memory_id STRING PRIMARY KEY, text STRING, user_id STRING, seq INT64)")
        conn.execute("CREATE NODE TABLE Entity(key STRING PRIMARY KEY, name STRING)")
        if rels is not None:
            conn.execute(f"CREATE REL TABLE MENTIONS(FROM Memory TO Entity, type STRING){rels}")
            conn.execute(f"CREATE REL TABLE RELATES(FROM Entity TO Entity, relation STRING, memory_id STRING){rels}")

        def write(start: int, count: int) -> None:
            memories, mentions, relates = _layout_rows(rng, start, count)
            conn.execute("BEGIN TRANSACTION")
            conn.execute(
                "UNWIND $rows AS r MERGE (m:Memory {memory_id: r.id}) SET m.text = r.text, m.user_id = r.user, "
                "m.seq = r.seq",
                {"rows": memories},
            )
            conn.execute(
                "UNWIND $keys AS k MERGE (e:Entity {key: k}) SET e.name = k", {"keys": [x["e"] for x in mentions]}
            )
            if rels is not None:
                conn.execute(
                    "UNWIND $rows AS r MATCH (m:Memory {memory_id: r.m}), (e:Entity {key: r.e}) "
                    "CREATE (m)-[:MENTIONS]->(e)",
                    {"rows": mentions},
                )
                conn.execute(
                    "UNWIND $rows AS r MATCH (a:Entity {key: r.a}), (b:Entity {key: r.b}) "
                    "CREATE (a)-[:RELATES {memory_id: r.m}]->(b)",
                    {"rows": relates},
                )
            conn.execute("COMMIT")

        done = 0
        for size in sizes:
            while done < size:
                write(done, 2000)
                done += 2000
            conn.execute("CHECKPOINT")
            times = []
            for _ in range(5):
                write(done, 50)
                done += 50
                started = time.perf_counter()
                conn.execute("CHECKPOINT")
                times.append(1000 * (time.perf_counter() - started))
            print(
                f"{name:>16}, {size:>7,} memories: CHECKPOINT after 50 more, ms: {' '.join(f'{t:.0f}' for t in times)}"
            )
        conn.close()
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, action="append", help="events in the store first (repeatable)")
    parser.add_argument("--layouts", action="store_true", help="the fixed part by table layout (see above)")
    args = parser.parse_args()
    if args.layouts:
        for name, rels in LAYOUTS.items():
            _layout(name, rels, args.prefill or [10_000, 40_000])
        return
    graph_ladybug.WAL_CHECKPOINT = 1 << 30  # the engine checkpoints only when asked
    for prefill in args.prefill or [10_000, 40_000]:
        _profile(prefill)


if __name__ == "__main__":
    main()
