"""What the two vector backends (Qdrant Edge, qdrant-client) share.

* :func:`plan` turns the projector's ops into as few engine writes as possible,
* :func:`search_conditions` turns a scope and metadata filters into engine-neutral
  conditions, leaving what an engine cannot express to :func:`search_pages`,
* float32 vectors in and out, the dimension check, and :func:`write_points`,
  which names the memory a store rejected,
* :func:`scroll_points`, the paging loop of ``points()``.

Nothing here imports an engine: each backend maps these neutral shapes onto its
own types and translates its own errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, Final, NamedTuple, TypeAlias

import numpy as np

from memsync.errors import InputError, StoreError, StoreUnavailable
from memsync.events import SCOPE_FIELDS
from memsync.fold import MemoryState
from memsync.stores import Delete, DeleteScope, Op, Reset, Upsert, VectorHit, VectorPoint, point_id

INDEXED_FIELDS: Final = ("user_id", "agent_id", "run_id", "memory_id")
PAGE: Final = 512  # points per scroll page

# ---------------------------------------------------------------- planning


class Put(NamedTuple):
    """Upsert these memories (each has a vector), keyed by point id."""

    memories: dict[str, MemoryState]


class Remove(NamedTuple):
    point_ids: dict[str, None]  # an ordered set


class RemoveScope(NamedTuple):
    scope: dict[str, str]


class RemoveAll(NamedTuple):
    pass


Step: TypeAlias = Put | Remove | RemoveScope | RemoveAll


def plan(ops: Sequence[Op]) -> list[Step]:
    """The ops as engine writes, in order: consecutive upserts (and deletes) become one write.

    An upsert of a memory without a vector removes its point. A reset drops the
    writes planned before it: they would be deleted anyway.
    """
    steps: list[Step] = []
    for op in ops:
        last = steps[-1] if steps else None
        if isinstance(op, Upsert) and op.memory.vector is not None:
            if not isinstance(last, Put):
                steps.append(last := Put({}))
            last.memories[point_id(op.memory.memory_id)] = op.memory
        elif isinstance(op, Upsert | Delete):
            memory_id = op.memory.memory_id if isinstance(op, Upsert) else op.memory_id
            if not isinstance(last, Remove):
                steps.append(last := Remove({}))
            last.point_ids[point_id(memory_id)] = None
        elif isinstance(op, DeleteScope):
            steps.append(RemoveScope(check_scope(op.scope, deleting=True)))
        else:
            assert isinstance(op, Reset)
            steps = [RemoveAll()]
    return steps


def check_scope(scope: Mapping[str, str], *, deleting: bool = False) -> dict[str, str]:
    unknown = sorted(set(scope) - set(SCOPE_FIELDS))
    if unknown:
        raise InputError(f"unknown scope field {unknown[0]!r} (known: {', '.join(SCOPE_FIELDS)})", field=unknown[0])
    if deleting and not scope:
        raise InputError("a scope delete needs at least one of user_id, agent_id, run_id", field="user_id")
    return dict(scope)


# ---------------------------------------------------------------- vectors


def with_vectors(memories: Iterable[MemoryState], size: int) -> Iterator[list[MemoryState]]:
    """The memories that have a vector, in lists of ``size`` (bulk loads)."""
    found = (m for m in memories if m.vector is not None)
    while chunk := list(islice(found, size)):
        yield chunk


def vector_array(vector: bytes) -> np.ndarray:
    return np.frombuffer(vector, dtype="<f4")


def vector_bytes(values: Iterable[float] | np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def to_point(record: Any) -> VectorPoint:
    """A scrolled record (either engine: ``.payload``, ``.vector``) as the port's point."""
    vector = record.vector
    if isinstance(vector, dict):  # named vectors: ours is the default one
        vector = vector[""]
    payload = record.payload or {}
    return VectorPoint(memory_id=payload["memory_id"], payload=payload, vector=vector_bytes(vector))


def scroll_points(page: Callable[[Any], tuple[Iterable[Any], Any] | None]) -> Iterator[VectorPoint]:
    """Every point, a page at a time: ``page(offset)`` scrolls from ``offset`` (None: the start).

    It returns the page's records and the next offset (None after the last page),
    or None when there is nothing to scroll yet (no shard or collection).
    """
    offset: Any = None
    while True:
        found = page(offset)
        if found is None:
            return
        records, offset = found
        yield from map(to_point, records)
        if offset is None:
            return


def to_hits(scored: Iterable[Any]) -> list[VectorHit]:
    """Scored points (either engine: ``.payload``, ``.score``) as the port's hits, in order."""
    return [VectorHit(memory_id=p.payload["memory_id"], score=p.score, payload=p.payload) for p in scored if p.payload]


def check_dimensions(memories: Iterable[MemoryState], dimension: int | None) -> int | None:
    """The store's dimension after these memories; StoreError names the first that differs."""
    for memory in memories:
        assert memory.vector is not None
        size, rest = divmod(len(memory.vector), 4)
        if rest or size == 0:
            raise StoreError(f"memory {memory.memory_id!r}: vector is not float32 ({len(memory.vector)} bytes)")
        if dimension is None:
            dimension = size
        elif size != dimension:
            raise StoreError(
                f"memory {memory.memory_id!r}: vector has dimension {size}, the store holds dimension {dimension}"
            )
    return dimension


def same_vector(stored: bytes, expected: bytes, distance: str) -> bool:
    """Whether a point's stored vector is the memory's vector as this store keeps it.

    Cosine stores keep the vector normalized to unit length (the engine does it,
    with its own rounding), so those compare to a few float32 ulps.
    """
    if distance != "cosine":
        return stored == expected
    want, got = vector_array(expected), vector_array(stored)
    norm = float(np.linalg.norm(want))
    if want.shape != got.shape:
        return False
    return bool(np.allclose(got, want / norm if norm else want, rtol=1e-5, atol=1e-6))


def write_points(memories: list[MemoryState], write: Callable[[list[MemoryState]], None]) -> None:
    """Write a batch; when the store rejects it, write one by one to name the memory at fault.

    ``write`` raises translated errors; the points before the bad one are then
    written, which is harmless (upserts are idempotent).
    """
    try:
        write(memories)
    except StoreUnavailable:
        raise
    except StoreError:
        if len(memories) == 1:
            raise
        for memory in memories:
            write([memory])
        raise


def batch_context(memories: Sequence[MemoryState]) -> str:
    if len(memories) == 1:
        return f"upsert of memory {memories[0].memory_id!r}"
    return f"upsert of {len(memories)} memories"


# ---------------------------------------------------------------- search


class Match(NamedTuple):
    key: str
    value: str | int | bool


class Range(NamedTuple):
    key: str
    value: float


class IsNull(NamedTuple):
    key: str


Condition: TypeAlias = Match | Range | IsNull

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]+")
_I64 = (-(2**63), 2**63 - 1)


def metadata_path(key: str) -> str:
    """The payload path of a metadata key; keys with dots or spaces are quoted."""
    if _PLAIN_KEY.fullmatch(key):
        return f"metadata.{key}"
    return "metadata." + json.dumps(key)


def search_conditions(
    scope: Mapping[str, str], filters: Mapping[str, Any] | None, *, bool_match: bool = True
) -> tuple[list[Condition], dict[str, Any]]:
    """Conditions the engine evaluates, and the filters it cannot (checked on the hits).

    Strings, integers and booleans match exactly, floats by a closed range, None
    matches a null. Lists and objects (and booleans where ``bool_match`` is
    False) are left over for :func:`search_pages`.
    """
    conditions: list[Condition] = [Match(k, v) for k, v in check_scope(scope).items()]
    residual: dict[str, Any] = {}
    for key, value in (filters or {}).items():
        path = metadata_path(key)
        if value is None:
            conditions.append(IsNull(path))
        elif isinstance(value, bool):
            if bool_match:
                conditions.append(Match(path, value))
            else:
                residual[key] = value
        elif isinstance(value, str) or (isinstance(value, int) and _I64[0] <= value <= _I64[1]):
            conditions.append(Match(path, value))
        elif isinstance(value, float):
            conditions.append(Range(path, value))
        else:
            residual[key] = value
    return conditions, residual


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def matches_residual(payload: Mapping[str, Any], residual: Mapping[str, Any]) -> bool:
    metadata = payload.get("metadata") or {}
    return all(k in metadata and _canonical(metadata[k]) == _canonical(v) for k, v in residual.items())


def search_pages(
    query: Callable[[int, int], list[VectorHit]], limit: int, residual: Mapping[str, Any]
) -> list[VectorHit]:
    """Run ``query(offset, page)`` until ``limit`` hits pass the residual filters.

    Pages come best first, so the hits kept are still the best ones.
    """
    if limit <= 0:
        return []
    if not residual:
        return query(0, limit)
    page = max(4 * limit, 64)
    hits: list[VectorHit] = []
    offset = 0
    while True:
        batch = query(offset, page)
        hits.extend(h for h in batch if matches_residual(h.payload, residual))
        if len(hits) >= limit or len(batch) < page:
            return hits[:limit]
        offset += page
