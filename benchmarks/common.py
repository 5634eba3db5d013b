"""What every benchmark shares: settings, figures with their targets, interleaved rounds, RSS, machine notes.

Noise: the reference machine has 2 cores and other work runs on it. Each figure
is therefore measured side by side with its anchor in the same run, in
alternating rounds (the order rotates every round), and reported as medians;
a ratio is the median of the per-round ratios, so a slow moment of the machine
hits both sides of a ratio alike.
"""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    smoke: bool
    events: int  # events of the rebuild benchmarks
    sizes: tuple[int, ...]  # log sizes of the scaling benchmark
    rounds: int | None  # None: each benchmark's default
    workdir: Path  # scratch space (deleted at the end)
    neo4j_uri: str | None = None  # an existing server to use instead of starting one

    def pick(self, full: int, smoke: int) -> int:
        return smoke if self.smoke else full

    def rounds_or(self, full: int, smoke: int = 2) -> int:
        if self.rounds is not None:
            return self.rounds
        return smoke if self.smoke else full


@dataclass
class Figure:
    """One measured figure, its anchor measured in the same run, and its target."""

    benchmark: str
    name: str
    value: float
    unit: str
    anchor: str | None = None
    anchor_value: float | None = None
    ratio: float | None = None  # value / anchor_value, median of the per-round ratios
    target: str | None = None  # e.g. ">= 1.75x" (on the ratio) or "<= 50 ms" (on the value)
    ok: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def check(self, *, min_ratio: float | None = None, max_value: float | None = None) -> Figure:
        if min_ratio is not None and self.ratio is not None:
            self.target, self.ok = f">= {min_ratio:g}x", self.ratio >= min_ratio
        if max_value is not None:
            self.target, self.ok = f"<= {max_value:g} {self.unit}", self.value <= max_value
        return self


@dataclass
class Skipped:
    benchmark: str
    reason: str


Result = Figure | Skipped


# ---------------------------------------------------------------- measuring


def interleave(contenders: dict[str, Callable[[int], float]], rounds: int) -> dict[str, list[float]]:
    """Call each contender once per round (it returns a rate); the order rotates every round."""
    names = list(contenders)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            out[name].append(contenders[name](r))
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio(values: Sequence[float], anchors: Sequence[float]) -> float:
    """The median of the per-round ratios."""
    return statistics.median(v / a for v, a in zip(values, anchors, strict=True))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    return _status_mb()["VmHWM"]


def rss_mb() -> float:
    return _status_mb()["VmRSS"]


def _status_mb() -> dict[str, float]:
    with open("/proc/self/status") as f:
        return {
            k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in f) if k.startswith(("Vm", "Rss"))
        }


class RssSampler:
    """Peaks of RssAnon (the heap: Python, engines) and RssFile (mapped files, e.g. an engine's vector
    storage: page cache the kernel can reclaim) sampled every 20 ms; VmHWM counts both."""

    def __init__(self) -> None:
        self.anon = self.file = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    def sample(self) -> None:
        status = _status_mb()
        self.anon, self.file = max(self.anon, status["RssAnon"]), max(self.file, status["RssFile"])

    def reset(self) -> None:
        self.anon = self.file = 0.0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- the machine


def _package(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "packages": {
            name: _package(name)
            for name in ("memsync", "eventsourcing", "qdrant-edge-py", "ladybug", "neo4j", "msgspec", "pyarrow")
        },
    }


# ---------------------------------------------------------------- printing


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def table(results: Sequence[Result]) -> str:
    rows = [("benchmark", "figure", "measured", "anchor", "anchor value", "ratio", "target", "")]
    for r in results:
        if isinstance(r, Skipped):
            rows.append((r.benchmark, "skipped", r.reason, "", "", "", "", ""))
            continue
        verdict = "" if r.ok is None else ("pass" if r.ok else "MISS")
        rows.append(
            (
                r.benchmark,
                r.name,
                _number(r.value, r.unit),
                r.anchor or "",
                _number(r.anchor_value, r.unit) if r.anchor else "",
                f"{r.ratio:.2f}x" if r.ratio is not None else "",
                r.target or "",
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
