"""In-memory stores: real backends (not mocks) for tests, demos and reference.

They hold exactly what a store must hold — live memories and a checkpoint —
and derive everything else, so they are the simplest correct implementation of
the ports. Not durable: a process exit wipes them (and resets the checkpoint).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from memsync.config import MemsyncConfig
from memsync.errors import StoreError
from memsync.fold import Fact, MemoryState
from memsync.stores import (
    Delete,
    DeleteScope,
    GraphSnapshot,
    GraphStore,
    Op,
    Projection,
    Reset,
    Upsert,
    VectorHit,
    VectorPoint,
    VectorStore,
    expected_graph,
    vector_payload,
)


class _LiveMemories(Projection):
    """What both in-memory stores keep: live memories by id, and the checkpoint."""

    vectors_only: ClassVar[bool]  # keep only the memories that have a vector

    def __init__(self) -> None:
        self.memories: dict[str, MemoryState] = {}
        self._checkpoint = 0
        self._lock = threading.Lock()

    def checkpoint(self) -> int:
        return self._checkpoint

    def apply(self, ops: Sequence[Op], checkpoint: int) -> None:
        with self._lock:
            for op in ops:
                self._apply(op)
            self._checkpoint = checkpoint

    def _apply(self, op: Op) -> None:
        memories = self.memories
        if isinstance(op, Upsert):
            if self.vectors_only and op.memory.vector is None:
                memories.pop(op.memory.memory_id, None)
            else:
                memories[op.memory.memory_id] = op.memory
        elif isinstance(op, Delete):
            memories.pop(op.memory_id, None)
        elif isinstance(op, DeleteScope):
            for memory_id in [m.memory_id for m in memories.values() if m.matches(op.scope)]:
                del memories[memory_id]
        else:
            assert isinstance(op, Reset)
            memories.clear()

    def ping(self) -> bool:
        return True

    def wipe(self) -> None:
        with self._lock:
            self.memories.clear()
            self._checkpoint = 0


class InMemoryVectorStore(_LiveMemories, VectorStore):
    vectors_only = True

    def search(
        self,
        vector: Sequence[float],
        *,
        scope: dict[str, str],
        filters: dict[str, Any] | None = None,
        limit: int = 10,
        threshold: float | None = None,
    ) -> list[VectorHit]:
        query = np.asarray(vector, dtype=np.float32)
        hits = []
        for memory in list(self.memories.values()):
            if not memory.matches(scope) or any(memory.metadata.get(k) != v for k, v in (filters or {}).items()):
                continue
            assert memory.vector is not None
            stored = np.frombuffer(memory.vector, dtype="<f4")
            if stored.shape != query.shape:  # as the real stores refuse it
                raise StoreError(
                    f"in-memory vector store: search: the query has dimension {query.size}, the store {stored.size}"
                )
            denominator = float(np.linalg.norm(query) * np.linalg.norm(stored)) or math.inf
            score = float(np.dot(query, stored)) / denominator
            if threshold is None or score >= threshold:
                hits.append(VectorHit(memory_id=memory.memory_id, score=score, payload=vector_payload(memory)))
        hits.sort(key=lambda h: -h.score)
        return hits[:limit]

    def points(self) -> Iterator[VectorPoint]:
        for memory in list(self.memories.values()):
            assert memory.vector is not None
            yield VectorPoint(memory_id=memory.memory_id, payload=vector_payload(memory), vector=memory.vector)

    def count(self) -> int:
        return len(self.memories)

    def describe(self) -> str:
        return "in-memory vector store"


class InMemoryGraphStore(_LiveMemories, GraphStore):
    vectors_only = False

    def snapshot(self) -> GraphSnapshot:
        return expected_graph(self.memories.values())

    def counts(self) -> dict[str, int]:
        """The snapshot's sizes: the graph is derived from the memories, so it has no duplicates."""
        return self.snapshot().sizes()

    def relations(self, names: Sequence[str], *, scope: tuple[str, str], limit: int = 50) -> list[Fact]:
        wanted = set(names)
        facts: set[Fact] = set()
        for memory in list(self.memories.values()):
            if memory.scope != scope:
                continue
            facts.update(f for f in memory.relations if f[0] in wanted or f[2] in wanted)
        return sorted(facts)[:limit]

    def drop_entities(self, keys: Sequence[str]) -> None:
        """Entities are derived here, so there is never an orphan to drop."""

    def describe(self) -> str:
        return "in-memory graph store"


def open_memory_vector_store(config: MemsyncConfig) -> Projection:
    return InMemoryVectorStore()


def open_memory_graph_store(config: MemsyncConfig) -> Projection:
    return InMemoryGraphStore()
