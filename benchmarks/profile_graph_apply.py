"""Where a graph apply's time goes, statement by statement, on the follow benchmark's stream.

``python -m benchmarks.profile_graph_apply [--prefill N] [--batches B] [--size S] [--neo4j]``

Writes ``prefill + batches * size`` events of ``bench_follow``'s stream (three adds,
then an update, per writer) to a scratch log, loads the first ``prefill`` into a
fresh LadybugDB store (``--neo4j``: the test suite's Neo4j server, started for
the run) in large batches, then applies the rest ``size`` events at a
time the way the follower does (``plan_batch`` then ``apply``), timing every
statement. Prints the median apply per batch and each statement's mean share.
On Neo4j the writes go with the next read or the commit (``Tx.write``), so their
time shows in that read's line or in the last one.
A profile, not a benchmark: no anchor, no target.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.bench_follow import scratch_log
from memsync.projector import plan_batch
from projections import graph_ladybug, graph_neo4j
from projections._graph_common import CypherGraphStore, Q


@contextmanager
def _store(tmp: Path, neo4j: bool) -> Iterator[tuple[CypherGraphStore, Any]]:
    """A fresh store and its transaction class (whose ``run`` the profile times)."""
    if not neo4j:
        store = graph_ladybug.LadybugGraphStore(tmp / "graph")
        try:
            yield store, graph_ladybug._Tx
        finally:
            store.close()
        return
    from tests.neo4j_server import Neo4jServer

    with Neo4jServer(pagecache="512m") as server:
        store = graph_neo4j.Neo4jGraphStore(server.uri)
        try:
            store.wipe()
            yield store, graph_neo4j._Tx
        finally:
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, default=24_000, help="events in the store before timing")
    parser.add_argument("--batches", type=int, default=180, help="batches timed")
    parser.add_argument("--size", type=int, default=10, help="events per timed batch")
    parser.add_argument("--neo4j", action="store_true", help="profile the Neo4j store instead of LadybugDB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, _store(Path(tmp), args.neo4j) as (store, tx_class):
        log, records = scratch_log(Path(tmp) / "events.db", args.prefill + args.batches * args.size)
        for start in range(0, args.prefill, 500):
            chunk = records[start : min(start + 500, args.prefill)]
            store.apply(plan_batch(log, chunk), chunk[-1].seq)

        names = {text: name for name, text in vars(Q).items() if isinstance(text, str)}
        spent: dict[str, float] = collections.defaultdict(float)
        runs: collections.Counter[str] = collections.Counter()
        run = tx_class.run

        def timed(tx: Any, query: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
            started = time.perf_counter()
            try:
                return run(tx, query, params)
            finally:
                name = names.get(query, query[:40])
                spent[name] += time.perf_counter() - started
                runs[name] += 1

        tx_class.run = timed
        applies = []
        rest = records[args.prefill :]
        for start in range(0, len(rest), args.size):
            batch = rest[start : start + args.size]
            ops = plan_batch(log, batch)
            started = time.perf_counter()
            store.apply(ops, batch[-1].seq)
            applies.append(time.perf_counter() - started)
        tx_class.run = run
        log.close()
    count = len(applies)
    print(
        f"{count} batches of {args.size} events after {args.prefill:,}: apply median "
        f"{1000 * statistics.median(applies):.2f} ms, mean {1000 * statistics.fmean(applies):.2f} ms"
    )
    for name, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {name:20} {1000 * seconds / count:7.2f} ms per batch ({runs[name] / count:.2f} runs)")
    rest_ms = 1000 * (sum(applies) - sum(spent.values())) / count
    print(f"  {'BEGIN/COMMIT, Python':20} {rest_ms:7.2f} ms per batch")


if __name__ == "__main__":
    main()
