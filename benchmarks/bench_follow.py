"""Follow lag: from an append's return to its seq being checkpointed in both embedded stores.

The follower is ``MemSync.follow`` (what ``memsync project --follow`` runs: one
thread per projection, Qdrant Edge and LadybugDB), measured two ways:

* in its own process (``python -m benchmarks.bench_follow --child DIR``), as
  ``memsync project --follow`` is deployed beside an application: it reports
  every batch's last seq and the time its store's apply (with the checkpoint)
  returned, as ``after_batch`` sees it, on stdout;
* in a thread of the appending process (the facade's follower).

Four appender threads each append single events (durable, ``synchronous =
FULL``) on a fixed schedule that adds up to 500 events/s: three adds, then an
update of one of the writer's earlier memories. An event's lag is the later of
the two stores' times for a checkpoint >= its seq, minus the time its append
returned (``time.monotonic``, which is one clock for every process).
"""

from __future__ import annotations

import argparse
import bisect
import gc
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.common import Figure, Result, Settings, Skipped, median, percentile
from benchmarks.workload import Vectors, added_events
from memsync.config import GraphConfig, MemsyncConfig
from memsync.events import Event, MemoryUpdated, RecordedEvent
from memsync.projector import strip_vectors
from memsync.sqlite_log import SQLiteEventLog
from memsync.system import MemSync

RATE = 500.0
WRITERS = 4
KINDS = ("vector", "graph")
Reached = dict[str, list[tuple[int, float]]]  # projection -> (last seq of a batch, when it was applied)
Applied = dict[str, list[tuple[int, float]]]  # projection -> (events in a batch, seconds its apply took)


def scratch_log(path: Path, total: int) -> tuple[SQLiteEventLog, list[RecordedEvent]]:
    """``total`` events of this benchmark's stream (its writers interleaved) in a new log at ``path``
    (not durable), and their records without vectors, as the graph follower reads them."""
    each = -(-total // WRITERS)
    log = SQLiteEventLog(path, synchronous="OFF")
    plans = [_events(w, each) for w in range(WRITERS)]
    for k in range(each):
        log.append([plans[w][k] for w in range(WRITERS)])
    return log, list(strip_vectors(log.read(limit=total)))


def _events(writer: int, count: int) -> list[Event]:
    adds = added_events(count, seed=50 + writer, prefix=f"w{writer}")
    vectors = Vectors(900 + writer, len(adds[0].vector or ()))
    out: list[Event] = []
    for k in range(count):
        if k % 4 == 3:
            memory_id = getattr(out[k - 2], "memory_id", "")
            out.append(MemoryUpdated(memory_id=memory_id, text=f"updated {k}", vector=vectors.next()))
        else:
            out.append(adds[k])
    return out


class _InThread:
    """The follower as threads of this process, reporting through the ``after_batch`` hook."""

    def __init__(self, config: MemsyncConfig, reached: Reached, applied: Applied) -> None:
        self.system = MemSync(config)

        def note(projection: str, first_seq: int, last_seq: int, seconds: float, **_: object) -> None:
            reached[projection].append((last_seq, time.monotonic()))
            applied[projection].append((last_seq - first_seq + 1, seconds))

        self.system.hooks.on("after_batch", note)
        self.stop = threading.Event()
        self.threads = self.system.follow(list(KINDS), self.stop)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        self.system.close()


class _InProcess:
    """The follower in a child process; its stdout lines are ``projection last_seq monotonic``."""

    def __init__(self, config: MemsyncConfig, reached: Reached, applied: Applied) -> None:
        command = [sys.executable, "-m", "benchmarks.bench_follow", "--child", str(config.data_dir)]
        self.child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, args=(reached, applied), daemon=True)
        self.reader.start()

    def _read(self, reached: Reached, applied: Applied) -> None:
        assert self.child.stdout is not None
        for line in self.child.stdout:
            kind, first, last, at, seconds = line.split()
            reached[kind].append((int(last), float(at)))
            applied[kind].append((int(last) - int(first) + 1, float(seconds)))

    def close(self) -> None:
        self.child.send_signal(signal.SIGTERM)
        self.child.wait(timeout=120)
        self.reader.join(timeout=10)


def _run(settings: Settings, where: str, graph: GraphConfig | None = None) -> dict[str, Any]:
    # two minutes: long enough for a growing store (~45k memories) and for LadybugDB's WAL
    # checkpoints, whose stalls grow with the store; 20 s from an empty store saw neither and
    # flattered the follower (p99 30-35 ms there, 0.6-0.8 s over two minutes)
    seconds = settings.pick(120, 2)
    each = int(seconds * RATE / WRITERS)
    plans = [_events(w, each) for w in range(WRITERS)]
    # The plans hold every event of the run up front (10k lists of 384 floats), which an
    # application making its events as it goes does not: left to the collector, each
    # full collection walks their 3.8M slots (~80 ms, in whichever thread triggers it).
    gc.collect()
    gc.freeze()
    data_dir = settings.workdir / (f"follow-{where}" if graph is None else f"follow-{where}-{graph.backend}")
    data_dir.mkdir()
    config = MemsyncConfig(data_dir=data_dir) if graph is None else MemsyncConfig(data_dir=data_dir, graph=graph)
    reached: Reached = {kind: [] for kind in KINDS}
    applied: Applied = {kind: [] for kind in KINDS}
    appended: list[tuple[int, float]] = []
    lock = threading.Lock()
    follower = (_InThread if where == "thread" else _InProcess)(config, reached, applied)
    log = follower.system.log if isinstance(follower, _InThread) else SQLiteEventLog(data_dir / "events.db")
    try:
        log.append(plans[0][:1])  # warm up: the stores exist and the first batch is done
        _wait_until(lambda: all(r and r[-1][0] >= 1 for r in reached.values()), 120)
        start = time.monotonic() + 0.2

        def write(w: int) -> None:
            for k, event in enumerate(plans[w][1:] if w == 0 else plans[w]):
                pause = start + (k * WRITERS + w) / RATE - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                seq = log.append([event])[0].seq
                done = time.monotonic()
                with lock:
                    appended.append((seq, done))

        writers = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        elapsed = time.monotonic() - start
        head = log.head().seq
        _wait_until(lambda: all(r and r[-1][0] >= head for r in reached.values()), 300)
    finally:
        follower.close()
        gc.unfreeze()
        if not isinstance(follower, _InThread):
            log.close()
    seqs = {kind: [s for s, _ in batches] for kind, batches in reached.items()}
    lags = [max(0.0, _lag(seq, at, reached, seqs)) * 1000 for seq, at in appended]
    return {
        "p99_ms": percentile(lags, 99),
        "p50_ms": median(lags),
        "p90_ms": percentile(lags, 90),
        "max_ms": max(lags),
        "events": len(appended),
        "append_rate": len(appended) / elapsed,
        "batches": {
            kind: {
                "count": len(batches),
                "events_median": median([n for n, _ in batches]),
                "apply_ms_median": 1000 * median([x for _, x in batches]),
                "apply_ms_p90": 1000 * percentile([x for _, x in batches], 90),
            }
            for kind, batches in applied.items()
        },
    }


def _figure(benchmark: str, stores: str, where: str, found: dict[str, Any]) -> Figure:
    name = f"follow lag, append -> {stores}, {RATE:.0f} events/s, follower in a {where}"
    return Figure(benchmark, name, found["p99_ms"], "ms", detail=found).check(max_value=50.0)


def lag(settings: Settings) -> list[Result]:
    return [_figure("follow_lag", "both stores", where, _run(settings, where)) for where in ("process", "thread")]


def lag_neo4j(settings: Settings) -> list[Result]:
    """The same, with Neo4j as the graph store (the follower in a thread): a server checkpoints
    without stopping commits, which LadybugDB does not (docs/performance.md, "Follow lag")."""
    from benchmarks.bench_rebuild import clear_neo4j, enter_neo4j

    stack = ExitStack()
    uri = enter_neo4j(stack, settings, "follow_lag_neo4j")
    if isinstance(uri, Skipped):
        return [uri]
    with stack:
        clear_neo4j(uri)
        found = _run(settings, "thread", GraphConfig(backend="neo4j", uri=uri))
        clear_neo4j(uri)
    return [_figure("follow_lag_neo4j", "Qdrant Edge + Neo4j", "thread", found)]


def _lag(seq: int, appended_at: float, reached: Reached, seqs: dict[str, list[int]]) -> float:
    """The later of the stores' first times at a checkpoint >= seq, minus the append's return."""
    times = [batches[bisect.bisect_left(seqs[kind], seq)][1] for kind, batches in reached.items()]
    return max(times) - appended_at


def _wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the followers did not get there in time")
        time.sleep(0.005)


# ---------------------------------------------------------------- the child


def child(data_dir: Path) -> None:
    """Follow both projections of ``data_dir`` until SIGTERM; print each batch as it is applied."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()

    def report(projection: str, first_seq: int, last_seq: int, seconds: float, **_: object) -> None:
        with lock:
            print(projection, first_seq, last_seq, time.monotonic(), seconds, flush=True)

    with MemSync(MemsyncConfig(data_dir=data_dir)) as system:
        system.hooks.on("after_batch", report)
        threads = system.follow(list(KINDS), stop)
        while not stop.wait(0.2):
            pass
        for t in threads:
            t.join(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", type=Path, required=True)
    child(parser.parse_args().child)


if __name__ == "__main__":
    main()
