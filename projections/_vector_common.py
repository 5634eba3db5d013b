"""What the two vector backends (Qdrant Edge, qdrant-client) share.

* :func:`plan` turns the projector's ops into as few engine writes as possible,
* :func:`search_conditions` turns a scope and metadata filters into engine-neutral
  conditions, leaving what an engine cannot express to :func:`search_pages`,
* float32 vectors in and out, the dimension check, and :func:`write_points`,
  which names the memory a store rejected,
* :func:`point_payload` / :func:`read_payload`: the payload as stored, with an
  exact JSON copy of the metadata (see below),
* :func:`scroll_points`, the paging loop of ``points()``.

Metadata holding a float is stored twice in a point's payload: as the native
``metadata`` object, which filters address, and as ``metadata_json``, its exact
JSON text. Qdrant parses payload numbers without correct rounding (Edge gives
back about 1 in 9 random floats 1 ulp off, and keeps integers beyond 64 bits
as floats), so reads take the metadata from the JSON copy, and float filters
match the native field within a few ulps and then exactly on the copy. A point
whose native metadata no longer agrees with its copy reads back with the native
metadata, so verify still reports it. Metadata of strings, booleans and 64-bit
integers comes back exactly and gets no copy (each payload key costs the Edge
bindings ~5-8 µs per point).

Nothing here imports an engine: each backend maps these neutral shapes onto its
own types and translates its own errors.
"""

from __future__ import annotations

import json
import math
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, Final, NamedTuple, TypeAlias, cast

import msgspec
import numpy as np

from memsync.errors import InputError, StoreError, StoreUnavailable
from memsync.events import SCOPE_FIELDS
from memsync.fold import MemoryState
from memsync.stores import (
    Delete,
    DeleteScope,
    Op,
    Reset,
    Upsert,
    VectorHit,
    VectorPoint,
    point_id,
    vector_payload,
)

SCOPE_INDEXES: Final = ("user_id", "agent_id", "run_id")  # what searches and scope deletes filter on
# and memory_id, for readers of a server that look memories up by id (memsync addresses points by id)
INDEXED_FIELDS: Final = (*SCOPE_INDEXES, "memory_id")
METADATA_JSON: Final = "metadata_json"  # the payload key of the metadata's exact JSON copy
PAGE: Final = 512  # points per scroll page

# ---------------------------------------------------------------- planning


Keyed: TypeAlias = list[tuple[str, MemoryState]]  # (point id, memory with a vector)


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


def with_vectors(memories: Iterable[MemoryState], size: int) -> Iterator[Keyed]:
    """The memories that have a vector with their point ids, in lists of ``size`` (bulk loads)."""
    found = ((point_id(m.memory_id), m) for m in memories if m.vector is not None)
    while chunk := list(islice(found, size)):
        yield chunk


def vector_array(vector: bytes) -> np.ndarray:
    return np.frombuffer(vector, dtype="<f4")


def vector_values(vector: bytes) -> list[float]:
    """A float32 vector as the Edge bindings take it: they read any sequence of floats, an ``array`` fastest."""
    if _LITTLE_ENDIAN:
        return cast("list[float]", array("f", vector))  # typed as the bindings' stub says: a list
    values: list[float] = vector_array(vector).tolist()
    return values


_LITTLE_ENDIAN: Final = sys.byteorder == "little"  # array("f") is native-endian, vectors are little-endian


def vector_bytes(values: Iterable[float] | np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def to_point(record: Any) -> VectorPoint:
    """A scrolled record (either engine: ``.payload``, ``.vector``) as the port's point."""
    vector = record.vector
    if isinstance(vector, dict):  # named vectors: ours is the default one
        vector = vector[""]
    payload = read_payload(record.payload or {})
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
    hits = []
    for point in scored:
        if point.payload:
            payload = read_payload(point.payload)
            hits.append(VectorHit(memory_id=payload["memory_id"], score=point.score, payload=payload))
    return hits


# ---------------------------------------------------------------- payloads

_encode_json = msgspec.json.Encoder().encode  # exact for every float and for integers of any size
_decode_json = msgspec.json.Decoder().decode


def point_payload(memory: MemoryState) -> dict[str, Any]:
    """The payload a memory's point is written with: section 4's fields (and the metadata's JSON copy)."""
    payload = vector_payload(memory)
    if _needs_copy(memory.metadata):
        payload[METADATA_JSON] = _encode_json(memory.metadata).decode()
    return payload


def _needs_copy(value: Any) -> bool:
    """Whether the engine may give ``value`` back changed: it holds a float or an integer beyond 64 bits."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return False
    if kind is dict:
        return any(_needs_copy(v) for v in value.values())
    if kind is list:
        return any(_needs_copy(v) for v in value)
    if kind is int:
        return not _I64[0] <= value <= _I64[1]
    return True  # a float (or anything else decoded JSON does not hold): keep the exact copy


def read_payload(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored payload as it was written: the metadata from its exact copy (when the native field agrees)."""
    payload = dict(stored)
    copy = payload.pop(METADATA_JSON, None)
    if isinstance(copy, str):
        try:
            exact = _decode_json(copy)
        except msgspec.DecodeError:
            return payload  # a damaged copy: the native metadata stands, and verify judges it
        if _agrees(payload.get("metadata"), exact):
            payload["metadata"] = exact
    return payload


def _agrees(native: Any, exact: Any) -> bool:
    """Whether the engine's parse of ``exact`` is ``native``: equal, numbers within a few ulps."""
    if isinstance(exact, dict):
        return (
            isinstance(native, dict)
            and native.keys() == exact.keys()
            and all(_agrees(native[k], v) for k, v in exact.items())
        )
    if isinstance(exact, list):
        return isinstance(native, list) and len(native) == len(exact) and all(map(_agrees, native, exact))
    if _is_number(exact) and _is_number(native):
        return native == exact or math.isclose(native, exact, rel_tol=1e-12)
    return type(native) is type(exact) and native == exact


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
    with its own rounding), so those compare to a few float32 ulps. qdrant-client's
    local mode keeps the vector as given, so the exact bytes are right too.
    """
    if stored == expected:
        return True
    if distance != "cosine":
        return False
    want, got = vector_array(expected), vector_array(stored)
    norm = float(np.linalg.norm(want))
    if want.shape != got.shape:
        return False
    return bool(np.allclose(got, want / norm if norm else want, rtol=1e-5, atol=1e-6))


def write_points(items: Keyed, write: Callable[[Keyed], None]) -> None:
    """Write a batch; when the store rejects it, write one by one to name the memory at fault.

    ``write`` raises translated errors; the points before the bad one are then
    written, which is harmless (upserts are idempotent).
    """
    try:
        write(items)
    except StoreUnavailable:
        raise
    except StoreError:
        if len(items) == 1:
            raise
        for item in items:
            write([item])
        raise


def batch_context(items: Keyed) -> str:
    if len(items) == 1:
        return f"upsert of memory {items[0][1].memory_id!r}"
    return f"upsert of {len(items)} memories"


# ---------------------------------------------------------------- search


class Match(NamedTuple):
    key: str
    value: str | int | bool


class Range(NamedTuple):
    key: str
    low: float
    high: float


class IsNull(NamedTuple):
    key: str


Condition: TypeAlias = Match | Range | IsNull

_I64 = (-(2**63), 2**63 - 1)
_ULPS = 16  # how far the engine's parse of a float may be from it (1 ulp seen)


def metadata_path(key: str) -> str | None:
    """The payload path of a metadata key, quoted as it is; None when no path can name it.

    Qdrant's path syntax (Edge, server and the client's local mode) takes any
    key between double quotes, without escapes: a key holding ``"`` or ``\\``
    (or an empty one) cannot be addressed, so it is checked on the hits instead.
    """
    if not key or '"' in key or "\\" in key:
        return None
    return f'metadata."{key}"'


def search_conditions(
    scope: Mapping[str, str], filters: Mapping[str, Any] | None, *, bool_match: bool = True
) -> tuple[list[Condition], dict[str, Any]]:
    """Conditions the engine evaluates, and the filters it cannot (checked on the hits).

    Strings, integers and booleans match exactly, None matches a null. Floats
    match the native field within a few ulps (the engine's parse may be that
    far off) and are then checked exactly on the hits. Lists and objects, keys
    no path can name (and booleans where ``bool_match`` is False) are left over
    for :func:`search_pages`.
    """
    conditions: list[Condition] = [Match(k, v) for k, v in check_scope(scope).items()]
    residual: dict[str, Any] = {}
    for key, value in (filters or {}).items():
        path = metadata_path(key)
        if path is None:
            residual[key] = value
        elif value is None:
            conditions.append(IsNull(path))
        elif isinstance(value, bool):
            if bool_match:
                conditions.append(Match(path, value))
            else:
                residual[key] = value
        elif isinstance(value, str) or (isinstance(value, int) and _I64[0] <= value <= _I64[1]):
            conditions.append(Match(path, value))
        elif isinstance(value, float) and math.isfinite(value):
            margin = _ULPS * math.ulp(value)
            conditions.append(Range(path, value - margin, value + margin))
            residual[key] = value
        else:
            residual[key] = value
    return conditions, residual


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def matches_residual(payload: Mapping[str, Any], residual: Mapping[str, Any]) -> bool:
    metadata = payload.get("metadata") or {}
    return all(k in metadata and _same_value(metadata[k], v) for k, v in residual.items())


def _same_value(stored: Any, wanted: Any) -> bool:
    """A filter's equality: numbers by value (``1 == 1.0``, as the engines match them), the rest as JSON."""
    if _is_number(stored) and _is_number(wanted):
        return bool(stored == wanted)
    return _canonical(stored) == _canonical(wanted)


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
