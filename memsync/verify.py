"""verify: compare each store with ``fold(log)`` at the store's checkpoint.

A store that lags is not drifting: it is compared with the fold up to its own
checkpoint. Drift is reported per store as ids:

* ``missing`` — a live memory the store does not have,
* ``extra``   — a memory the store has that is not live,
* ``stale``   — present in both but different (text, payload, vector, edges),
  or, in a graph, holding a duplicate node or edge (see :func:`_duplicate_holders`),
* ``orphans`` — entity keys no live memory mentions (graph only).

``repair`` writes the fold's state for exactly those memories (and drops the
orphans) without moving the checkpoint.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec

from memsync.fold import MemoryState, State, fold
from memsync.log import EventLog
from memsync.projector import strip_vectors
from memsync.stores import (
    Delete,
    GraphSnapshot,
    GraphStore,
    Op,
    Projection,
    Upsert,
    VectorStore,
    expected_graph,
    vector_payload,
)


class Drift(msgspec.Struct, kw_only=True):
    checkpoint: int
    missing: list[str] = msgspec.field(default_factory=list)
    extra: list[str] = msgspec.field(default_factory=list)
    stale: list[str] = msgspec.field(default_factory=list)
    orphans: list[str] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.stale or self.orphans)

    def to_dict(self) -> dict[str, Any]:
        return {"missing": self.missing, "extra": self.extra, "stale": self.stale, "orphans": self.orphans}


def expected_state(log: EventLog, checkpoint: int, *, vectors: bool) -> State:
    records = log.read(limit=checkpoint)
    return fold(records if vectors else strip_vectors(records))


def verify_store(log: EventLog, store: Projection, *, repair: bool = False) -> Drift:
    checkpoint = store.checkpoint()
    if isinstance(store, VectorStore):
        state = expected_state(log, checkpoint, vectors=True)
        drift = _vector_drift(store, state, checkpoint)
    elif isinstance(store, GraphStore):
        state = expected_state(log, checkpoint, vectors=False)
        drift = _graph_drift(store, state, checkpoint)
    else:
        raise TypeError(f"cannot verify {type(store).__name__}")
    if repair and not drift.ok:
        _repair(store, state, drift)
    return drift


def _vector_drift(store: VectorStore, state: State, checkpoint: int) -> Drift:
    expected = {m.memory_id: m for m in state if m.vector is not None}
    drift = Drift(checkpoint=checkpoint)
    seen: set[str] = set()
    for point in store.points():
        seen.add(point.memory_id)
        memory = expected.get(point.memory_id)
        if memory is None:
            drift.extra.append(point.memory_id)
        elif (
            point.payload != vector_payload(memory)
            or memory.vector is None
            or not store.same_vector(point.vector, memory.vector)
        ):
            drift.stale.append(point.memory_id)
    drift.missing = [m for m in expected if m not in seen]
    drift.extra.sort()
    drift.stale.sort()
    drift.missing.sort()
    return drift


def _graph_drift(store: GraphStore, state: State, checkpoint: int) -> Drift:
    found = store.snapshot()
    counts = store.counts()
    want = expected_graph(state)
    drift = Drift(checkpoint=checkpoint)
    edges_want, edges_found = _edges_by_memory(want), _edges_by_memory(found)
    for memory_id, node in found.memories.items():
        if memory_id not in want.memories:
            drift.extra.append(memory_id)
        elif node != want.memories[memory_id] or edges_want.get(memory_id) != edges_found.get(memory_id):
            drift.stale.append(memory_id)
    drift.missing = sorted(m for m in want.memories if m not in found.memories)
    stale = set(drift.stale) | (_duplicate_holders(found, counts) & want.memories.keys())
    for key, entity in found.entities.items():
        expected = want.entities.get(key)
        if expected is None:
            drift.orphans.append(key)
        elif entity != expected:
            stale.update(m for m, k in want.mentions if k == key)
    drift.stale = sorted(stale - set(drift.missing))
    drift.extra.sort()
    drift.orphans.sort()
    return drift


def _duplicate_holders(graph: GraphSnapshot, counts: dict[str, int]) -> set[str]:
    """The memories that may hold a duplicate the snapshot's sets hide, seen as counts above its sizes.

    Counts do not say which node or edge is doubled, so every memory holding one
    of that kind is suspect. Repair rewrites their edges, which drops doubled
    edges; a doubled node (the engines' unique keys prevent it) stays reported.
    """
    excess = {kind for kind, size in graph.sizes().items() if counts.get(kind, 0) > size}
    holders: set[str] = set()
    if "memories" in excess:
        holders.update(graph.memories)
    if excess & {"entities", "mentions"}:
        holders.update(memory_id for memory_id, _ in graph.mentions)
    if "relates" in excess:
        holders.update(memory_id for *_, memory_id in graph.relates)
    return holders


def _edges_by_memory(graph: GraphSnapshot) -> dict[str, tuple[frozenset[str], frozenset[tuple[str, str, str]]]]:
    m: dict[str, set[str]] = defaultdict(set)
    r: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for memory_id, key in graph.mentions:
        m[memory_id].add(key)
    for source, relation, target, memory_id in graph.relates:
        r[memory_id].add((source, relation, target))
    return {k: (frozenset(m.get(k, ())), frozenset(r.get(k, ()))) for k in set(m) | set(r)}


def _repair(store: Projection, state: State, drift: Drift) -> None:
    ops: list[Op] = [Delete(m) for m in drift.extra]
    for memory_id in drift.missing + drift.stale:
        memory: MemoryState = state.memories[memory_id]
        ops.append(Upsert(memory))
    if ops:
        store.apply(ops, drift.checkpoint)
    if drift.orphans and isinstance(store, GraphStore):
        store.drop_entities(drift.orphans)
