"""How cost grows with the log: 1k -> 1M events of the mixed workload (cached logs).

Per size:

* append rate on a copy of the log: one event per call, and batches of 1000;
* read rate: ``log.read()`` from seq 0 to the head;
* ``history(memory_id)`` latency (p50, p99): ``read_stream`` plus the diffs, as
  ``memsync history`` and ``Memory.history`` do, for random memories (live or not);
* ``log --user`` first page latency (p50, p99): the first 1000 records of
  ``log.query(LogQuery(user_id=…))`` (the page the SQLite log reads per query),
  for random users, the busiest and the rarest included; and the same page with
  ``vectors=False`` (vectors left as float32 bytes: all a text listing needs);
* ``rebuild all`` (vector into Qdrant Edge, then graph into LadybugDB) in a child
  process, as ``memsync rebuild`` runs it: events/s of each, and the child's peak
  RSS (VmHWM from /proc/self/status) after each.

The targets apply at the largest size: history p99 <= 2 ms, log --user p99 <= 50 ms,
rebuild peak RSS <= 500 MB.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

from benchmarks.common import Figure, Result, RssSampler, Settings, median, peak_rss_mb, percentile, rss_mb
from benchmarks.workload import DIM, added_events, cached_log, copy_log
from memsync.history import memory_history
from memsync.log import LogQuery
from memsync.sqlite_log import SQLiteEventLog

PAGE = 1000


def _sample(path: Path, count: int, seed: int) -> tuple[list[str], list[str]]:
    """Random memory ids, and users (random ones plus the busiest and the rarest)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        memories = [r[0] for r in db.execute("SELECT memory_id FROM memories")]
        users = db.execute("SELECT user_id, COUNT(*) AS n FROM memories WHERE user_id IS NOT NULL GROUP BY user_id")
        by_size = [u for u, _ in sorted(users.fetchall(), key=lambda r: r[1])]
    finally:
        db.close()
    rng = random.Random(seed)
    picked = rng.sample(memories, min(count, len(memories)))
    users_picked = [by_size[0], by_size[-1], *rng.choices(by_size, k=max(0, count // 3 - 2))]
    return picked, users_picked


def _latencies(fn: Any, keys: list[str], seed: int) -> list[float]:
    """Milliseconds of ``fn(key)`` for every key, in a shuffled order."""
    out = []
    for key in random.Random(seed).sample(keys, len(keys)):
        started = time.perf_counter()
        fn(key)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _reads(path: Path, samples: int, rounds: int) -> dict[str, Any]:
    """Latencies in alternating rounds: a moment the machine spends elsewhere spoils one round's p99,
    and the figure is the median over the rounds."""
    memories, users = _sample(path, samples, seed=3)
    history: list[list[float]] = []
    first_page: list[list[float]] = []
    first_text_page: list[list[float]] = []
    # What the harness holds by now (earlier benchmarks' results, the sampled ids) is frozen out of
    # the collector's full walks, as a `memsync log` or `memsync history` process holds only its
    # imports: each full collection would otherwise walk all of it inside some sample's clock.
    gc.collect()
    gc.freeze()
    try:
        with SQLiteEventLog(path) as log:
            started = time.perf_counter()
            count = sum(1 for _ in log.read())
            read_rate = count / (time.perf_counter() - started)
            for r in range(rounds + 1):  # round 0 warms up
                history.append(_latencies(lambda m: memory_history(m, log.read_stream(m)), memories, r))
                page = _latencies(lambda u: list(islice(log.query(LogQuery(user_id=u), limit=PAGE), PAGE)), users, r)
                first_page.append(page)
                bytes_page = _latencies(  # vectors left as float32 bytes: all a text listing needs
                    lambda u: list(islice(log.query(LogQuery(user_id=u), limit=PAGE, vectors=False), PAGE)), users, r
                )
                first_text_page.append(bytes_page)
    finally:
        gc.unfreeze()
    latencies = (("history", history), ("log", first_page), ("log_text", first_text_page))
    p99 = {name: [percentile(x, 99) for x in runs[1:]] for name, runs in latencies}
    return {
        "read_events_per_s": read_rate,
        "history_p50_ms": median([median(x) for x in history[1:]]),
        "history_p99_ms": median(p99["history"]),
        "history_p99_rounds_ms": p99["history"],
        "log_user_p50_ms": median([median(x) for x in first_page[1:]]),
        "log_user_p99_ms": median(p99["log"]),
        "log_user_p99_rounds_ms": p99["log"],
        "log_user_text_p50_ms": median([median(x) for x in first_text_page[1:]]),
        "log_user_text_p99_ms": median(p99["log_text"]),
        "log_user_text_p99_rounds_ms": p99["log_text"],
        "history_samples": len(memories),
        "log_user_samples": len(users),
    }


def _appends(path: Path, work: Path, singles: int, batch: int) -> dict[str, Any]:
    """Appends to a copy of the log, after one batch that warms the caches up (not counted)."""
    copy = copy_log(path, work / "append-copy.db")
    events = added_events(singles + batch * 3, seed=77, prefix="scale")
    try:
        with SQLiteEventLog(copy) as log:
            log.append(events[:batch])
            started = time.perf_counter()
            for e in events[batch : batch + singles]:
                log.append([e])
            single_rate = singles / (time.perf_counter() - started)
            started = time.perf_counter()
            log.append(events[batch + singles : 2 * batch + singles])
            log.append(events[2 * batch + singles :])
            batch_rate = 2 * batch / (time.perf_counter() - started)
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)
    return {"append_single_per_s": single_rate, "append_batch_per_s": batch_rate, "append_batch_size": batch}


def _rebuild_child(path: Path, work: Path) -> dict[str, Any]:
    data_dir = work / "rebuild"
    command = [sys.executable, "-m", "benchmarks.bench_scale", "--child", str(path), str(data_dir)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    shutil.rmtree(data_dir, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"rebuild child failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def scale(settings: Settings) -> list[Result]:
    work = settings.workdir / "scale"
    work.mkdir()
    rows: dict[int, dict[str, Any]] = {}
    for n in settings.sizes:
        path = cached_log(n)
        row = _reads(path, settings.pick(300, 30), settings.rounds_or(5))
        row.update(_appends(path, work, settings.pick(50, 5), settings.pick(1000, 200)))
        child = _rebuild_child(path, work)
        row.update(
            {
                "rebuild_vector_per_s": n / child["vector"]["seconds"],
                "rebuild_graph_per_s": n / child["graph"]["seconds"],
                "rss_after_vector_mb": child["vector"]["peak_rss_mb"],
                "rss_peak_mb": child["graph"]["peak_rss_mb"],
                "vector_peak_anon_mb": child["vector"]["peak_anon_mb"],
                "vector_peak_file_mb": child["vector"]["peak_file_mb"],
                "graph_peak_anon_mb": child["graph"]["peak_anon_mb"],
                "graph_peak_file_mb": child["graph"]["peak_file_mb"],
                "rss_baseline_mb": child["baseline_rss_mb"],
                "fold_only_anon_mb": child["fold"]["peak_anon_mb"],
                "fold_only_per_s": n / child["fold"]["seconds"],
                "log_file_mb": path.stat().st_size / 2**20,
            }
        )
        rows[n] = row
        print("  " + _row_text(n, row), flush=True)
    largest = max(rows)
    top = rows[largest]
    detail = {"scaling": {str(n): r for n, r in rows.items()}}
    print(scaling_table(rows))
    return [
        Figure(
            "scale",
            f"history(memory_id) p99 at {largest:,} events",
            top["history_p99_ms"],
            "ms",
            detail={**detail, "p50_ms": top["history_p50_ms"]},
        ).check(max_value=2.0),
        Figure(
            "scale",
            f"log --user first page ({PAGE}) p99 at {largest:,} events (as the CLI lists it: vectors as bytes)",
            top["log_user_text_p99_ms"],
            "ms",
            detail={
                "p50_ms": top["log_user_text_p50_ms"],
                "with_vector_lists_p50_ms": top["log_user_p50_ms"],
                "with_vector_lists_p99_ms": top["log_user_p99_ms"],
            },
        ).check(max_value=50.0),
        Figure(
            "scale",
            f"rebuild all, {largest:,} events, {DIM}-d vectors: peak RSS",
            top["rss_peak_mb"],
            "MB",
            detail={
                "after_vector_mb": top["rss_after_vector_mb"],
                "fold_only_anon_mb": top["fold_only_anon_mb"],
                "baseline_mb": top["rss_baseline_mb"],
                **{k: top[k] for k in ("vector_peak_anon_mb", "vector_peak_file_mb")},
                **{k: top[k] for k in ("graph_peak_anon_mb", "graph_peak_file_mb")},
            },
        ).check(max_value=500.0),
    ]


COLUMNS = (
    ("events", None),
    ("append 1/call /s", "append_single_per_s"),
    ("append batch /s", "append_batch_per_s"),
    ("read /s", "read_events_per_s"),
    ("history p50/p99 ms", ("history_p50_ms", "history_p99_ms")),
    ("log --user p50/p99 ms", ("log_user_p50_ms", "log_user_p99_ms")),
    ("rebuild vector /s", "rebuild_vector_per_s"),
    ("rebuild graph /s", "rebuild_graph_per_s"),
    ("peak RSS MB", "rss_peak_mb"),
    ("anon MB vector/graph", ("vector_peak_anon_mb", "graph_peak_anon_mb")),
    ("fold only anon MB", "fold_only_anon_mb"),
)


def _cell(row: dict[str, Any], key: Any) -> str:
    if isinstance(key, tuple):
        return "/".join(f"{row[k]:.0f}" if row[k] >= 100 else f"{row[k]:.2f}" for k in key)
    value = row.get(key)
    return "-" if value is None else f"{value:,.0f}"


def _row_text(n: int, row: dict[str, Any]) -> str:
    return f"{n:>9,} events: " + ", ".join(f"{name} {_cell(row, key)}" for name, key in COLUMNS[1:])


def scaling_table(rows: dict[int, dict[str, Any]]) -> str:
    header = [name for name, _ in COLUMNS]
    body = [[f"{n:,}", *(_cell(row, key) for _, key in COLUMNS[1:])] for n, row in sorted(rows.items())]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in [header, *body]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# ---------------------------------------------------------------- the child


def child(log_path: Path, data_dir: Path) -> dict[str, Any]:
    """``memsync rebuild`` (vector, then graph) of ``log_path`` into fresh stores; time and peak RSS of each."""
    from memsync.config import MemsyncConfig
    from memsync.projector import final_states
    from memsync.system import MemSync

    config = MemsyncConfig(data_dir=data_dir, log_url=f"sqlite:///{log_path}")
    out: dict[str, Any] = {}
    sampler = RssSampler()
    with SQLiteEventLog(log_path) as log:  # memsync's own share: the streamed fold, with vectors, no store
        started = time.perf_counter()
        count = sum(1 for _ in final_states(log, log.head().seq))
        sampler.sample()
        out["fold"] = {"seconds": time.perf_counter() - started, "memories": count, "peak_anon_mb": sampler.anon}
    with MemSync(config) as system:
        for kind in ("vector", "graph"):
            system.store(kind)  # engines loaded and stores open before the baseline
        out["baseline_rss_mb"] = rss_mb()
        for kind in ("vector", "graph"):
            sampler.reset()
            started = time.perf_counter()
            system.rebuild([kind])
            seconds = time.perf_counter() - started
            sampler.sample()
            out[kind] = {
                "seconds": seconds,
                "peak_rss_mb": peak_rss_mb(),
                "peak_anon_mb": sampler.anon,
                "peak_file_mb": sampler.file,
            }
    sampler.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2, metavar=("LOG", "DATA_DIR"), required=True)
    args = parser.parse_args()
    print(json.dumps(child(Path(args.child[0]), Path(args.child[1]))))


if __name__ == "__main__":
    main()
