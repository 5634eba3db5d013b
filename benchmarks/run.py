"""Run the benchmarks: ``python -m benchmarks.run [--smoke] [--only NAME ...] [--events N] [--sizes ...]``.

Prints a table (each figure beside its anchor, measured in the same run, and
the ratio against its target) and writes everything measured, round by round,
to ``benchmarks/results/<timestamp>.json``. ``--smoke`` runs every benchmark at
tiny sizes (well under a minute): it checks the benchmarks work, its figures
mean nothing. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import bench_append, bench_follow, bench_rebuild, bench_scale
from benchmarks.common import Figure, Result, Settings, Skipped, machine, table

RESULTS = Path(__file__).resolve().parent / "results"

BENCHMARKS: dict[str, Callable[[Settings], list[Result]]] = {
    "append_single": bench_append.single,
    "append_threads": bench_append.threads,
    "append_batch": bench_append.batches,
    "rebuild_vector": bench_rebuild.vector,
    "rebuild_ladybug": bench_rebuild.ladybug,
    "rebuild_neo4j": bench_rebuild.neo4j,
    "follow_lag": bench_follow.lag,
    "follow_lag_neo4j": bench_follow.lag_neo4j,
    "scale": bench_scale.scale,
}


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(float(s)) for s in text.split(",") if s.strip())


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every benchmark at tiny sizes (< ~60 s)")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only this one (repeatable)")
    parser.add_argument("--events", type=int, help="events of the rebuild benchmarks (default 100000; smoke 2000)")
    parser.add_argument("--sizes", type=_sizes, help="log sizes of `scale` (default 1e3,1e4,1e5,1e6; smoke 1e3,3e3)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per benchmark (default: each its own)")
    parser.add_argument("--neo4j-uri", help="use this Neo4j (its data is deleted!) instead of starting one")
    parser.add_argument("--postgres", action="store_true", help="also run benchmarks/bench_postgres.py")
    parser.add_argument("--out", type=Path, help="where to write the JSON (default benchmarks/results/<time>.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    smoke = bool(args.smoke)
    names = args.only or list(BENCHMARKS)
    workdir = Path(tempfile.mkdtemp(prefix="memsync-bench-"))
    settings = Settings(
        smoke=smoke,
        events=args.events or (2000 if smoke else 100_000),
        sizes=args.sizes or ((1000, 3000) if smoke else (1000, 10_000, 100_000, 1_000_000)),
        rounds=args.rounds,
        workdir=workdir,
        neo4j_uri=args.neo4j_uri,
    )
    started = time.time()
    report: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {**asdict(settings), "workdir": str(workdir)},
        "machine": machine(),
        "benchmarks": {},
    }
    results: list[Result] = []
    failed = False
    try:
        for name in names:
            print(f"[{name}]", flush=True)
            began = time.perf_counter()
            try:
                found = BENCHMARKS[name](settings)
            except Exception as e:  # report and go on: one broken benchmark must not hide the others
                traceback.print_exc()
                found, failed = [Skipped(name, f"failed: {type(e).__name__}: {e}")], True
            seconds = time.perf_counter() - began
            results.extend(found)
            report["benchmarks"][name] = {"seconds": round(seconds, 2), "results": [_plain(r) for r in found]}
            for r in found:
                print("  " + _line(r), flush=True)
        if args.postgres:
            report["postgres"] = _postgres(smoke)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["seconds"] = round(time.time() - started, 1)
    report["machine"]["load_average_end"] = os.getloadavg()
    out = args.out or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}{'-smoke' if smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print()
    print(table(results))
    print(f"\n{len(results)} figures in {report['seconds']} s; JSON: {out}")
    return 1 if failed else 0


def _plain(result: Result) -> dict[str, Any]:
    return {"kind": "skipped" if isinstance(result, Skipped) else "figure", **asdict(result)}


def _line(r: Result) -> str:
    if isinstance(r, Skipped):
        return f"skipped: {r.reason}"
    assert isinstance(r, Figure)
    anchor = f" vs {r.anchor} {r.anchor_value:,.1f}: {r.ratio:.2f}x" if r.anchor_value is not None else ""
    verdict = "" if r.ok is None else f" [{r.target}: {'pass' if r.ok else 'MISS'}]"
    return f"{r.name}: {r.value:,.2f} {r.unit}{anchor}{verdict}"


def _postgres(smoke: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.bench_postgres"]
    if smoke:
        command += ["--seconds", "0.5", "--rounds", "1"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    print(done.stdout)
    return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr[-4000:]}


if __name__ == "__main__":
    raise SystemExit(main())
