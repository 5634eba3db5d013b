"""The events every benchmark uses, and the cached logs of the read and rebuild benchmarks.

Two shapes, both deterministic for a seed:

* :func:`added_events` — the *append shape*: ``memory.added`` events as an agent
  writes them (a sentence of text, a user and an agent, small metadata, a 384-d
  vector, two entities and a relation). The append benchmarks give the same
  fields to every contender (eventsourcing, raw sqlite3).
* :func:`mixed_stream` — a log as it grows in use: 60 % adds, 25 % updates
  (text with a new vector, metadata, or entities and relations), 15 % deletes,
  and now and then a delete-all of one run. Users are skewed (user-0 is the
  busiest), one memory in ten belongs to an agent alone.

:func:`cached_log` writes a mixed log of ``n`` events once, under
``benchmarks/.cache/`` (gitignored), through memsync itself (so it is a valid,
hash-chained log), and hands back its path on every later call.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import numpy as np

from memsync.events import (
    Entity,
    Event,
    MemoriesDeleted,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    Relation,
)

DIM: Final = 384
WORKLOAD_VERSION: Final = 1  # bump when the streams below change: cached logs are keyed by it
CACHE: Final = Path(__file__).resolve().parent / ".cache"
USERS: Final = 200
RUNS: Final = 5000
NAMES: Final = tuple(f"entity {k}" for k in range(300))
TYPES: Final = (None, "person", "place", "thing", "food")
RELATIONS: Final = ("likes", "works at", "lives in", "allergic to", "knows")
WORDS: Final = ("prefers", "green tea", "in the afternoon", "lives in", "Lisbon", "works on", "the project", "likes")


class Vectors:
    """Unit-scale float32 vectors (as Python floats), drawn in blocks from numpy."""

    def __init__(self, seed: int, dim: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._dim = dim
        self._block: list[list[float]] = []

    def next(self) -> list[float]:
        if not self._block:
            block = self._rng.standard_normal((1024, self._dim), dtype=np.float32) / np.float32(self._dim**0.5)
            self._block = block.tolist()
        return self._block.pop()


def _text(rng: random.Random, i: int) -> str:
    return f"memory {i}: the user " + " ".join(rng.choice(WORDS) for _ in range(6))


def _entities(rng: random.Random, k: int) -> list[Entity]:
    return [Entity(name=rng.choice(NAMES), type=rng.choice(TYPES)) for _ in range(k)]


def _relations(rng: random.Random, k: int) -> list[Relation]:
    return [
        Relation(source=rng.choice(NAMES), relation=rng.choice(RELATIONS), target=rng.choice(NAMES)) for _ in range(k)
    ]


def added_events(n: int, *, seed: int = 0, dim: int = DIM, prefix: str = "m") -> list[MemoryAdded]:
    """``n`` adds of the append shape; ``prefix`` keeps memory ids apart between runs into one log."""
    rng = random.Random(seed)
    vectors = Vectors(seed, dim)
    return [
        MemoryAdded(
            memory_id=f"{prefix}-{seed}-{i:08d}",
            text=_text(rng, i),
            user_id=f"user-{i % 100}",
            agent_id="assistant",
            metadata={"source": "bench", "i": i},
            vector=vectors.next(),
            entities=_entities(rng, 2),
            relations=_relations(rng, 1),
        )
        for i in range(n)
    ]


def _user(rng: random.Random) -> str:
    return f"user-{int(USERS * rng.random() ** 2)}"  # skewed: low numbers are busy


def mixed_stream(n: int, *, seed: int = 0, dim: int = DIM) -> Iterator[Event]:
    """``n`` events the log accepts in order (see the module docstring)."""
    rng = random.Random(seed)
    vectors = Vectors(seed + 1, dim)
    live: list[str] = []  # memory ids, for O(1) random picks
    where: dict[str, int] = {}
    runs: dict[str, list[str]] = {}
    for i in range(n):
        r = rng.random()
        if r < 0.6 or len(live) < 10:
            memory_id = f"mem-{i:08d}"
            user = _user(rng) if rng.random() < 0.9 else None
            run = f"run-{rng.randrange(RUNS)}"
            where[memory_id] = len(live)
            live.append(memory_id)
            runs.setdefault(run, []).append(memory_id)
            yield MemoryAdded(
                memory_id=memory_id,
                text=_text(rng, i),
                user_id=user,
                agent_id="assistant" if user is None or rng.random() < 0.5 else None,
                run_id=run,
                metadata={"source": "bench", "i": i} if rng.random() < 0.7 else None,
                vector=vectors.next(),
                entities=_entities(rng, rng.randint(0, 3)) or None,
                relations=_relations(rng, rng.randint(0, 2)) or None,
            )
        elif r < 0.85:
            memory_id = live[rng.randrange(len(live))]
            kind = rng.random()
            if kind < 0.5:
                yield MemoryUpdated(memory_id=memory_id, text=_text(rng, i), vector=vectors.next())
            elif kind < 0.8:
                yield MemoryUpdated(memory_id=memory_id, metadata={"source": "bench", "i": i, "edited": True})
            else:
                yield MemoryUpdated(
                    memory_id=memory_id, entities=_entities(rng, rng.randint(1, 3)), relations=_relations(rng, 1)
                )
        elif r < 0.999:
            memory_id = live[rng.randrange(len(live))]
            _drop(live, where, memory_id)
            yield MemoryDeleted(memory_id=memory_id, reason="no longer true")
        else:
            run = f"run-{rng.randrange(RUNS)}"
            for memory_id in runs.pop(run, []):
                if memory_id in where:
                    _drop(live, where, memory_id)
            yield MemoriesDeleted(run_id=run)


def _drop(live: list[str], where: dict[str, int], memory_id: str) -> None:
    index = where.pop(memory_id)
    last = live.pop()
    if last != memory_id:
        live[index] = last
        where[last] = index


def cached_log(n: int, *, seed: int = 0, dim: int = DIM, quiet: bool = False) -> Path:
    """The path of a mixed log of ``n`` events, written on first use (appends of 1000 events)."""
    from memsync.sqlite_log import SQLiteEventLog

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"log-{n}-d{dim}-s{seed}-w{WORKLOAD_VERSION}.db"
    if path.exists():
        return path
    tmp = path.with_name(path.name + ".partial")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)
    started = time.perf_counter()
    log = SQLiteEventLog(tmp, synchronous="OFF")  # a cache, not a record: durability is not the point here
    try:
        batch: list[Event] = []
        for event in mixed_stream(n, seed=seed, dim=dim):
            batch.append(event)
            if len(batch) == 1000:
                log.append(batch)
                batch = []
        if batch:
            log.append(batch)
    finally:
        log.close()
    os.replace(tmp, path)
    if not quiet:
        print(f"  cached a log of {n} events in {time.perf_counter() - started:.0f} s: {path}", flush=True)
    return path


def copy_log(source: Path, target: Path) -> Path:
    """A private copy of a cached log (for benchmarks that append to it)."""
    shutil.copyfile(source, target)
    return target
