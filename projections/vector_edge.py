"""The vector projection in Qdrant Edge: Qdrant's engine in-process (``qdrant-edge-py``).

The store is a directory (``config.vector_path()``, by default ``<data-dir>/qdrant``)::

    qdrant/                 the store
      memsync.json          {"checkpoint": n, "dimension": d, "distance": "cosine"}, replaced atomically
      shard/                the Edge shard, created once the dimension is known
    qdrant.lock             DirLock: names the process that owns the store
    qdrant.rebuild/         a fresh store a rebuild is filling (same layout)
    qdrant.old/             the previous store, only for the instant of a swap
    qdrant.trash/           a wiped store, only while it is being deleted

The checkpoint lives in the store directory, so deleting it resets it to 0.
Once the shard exists, the checkpoint is a reserved point of the shard (integer
id 0, no vector; memories' points have UUIDs), upserted after the batch's
writes: the shard's write-ahead log orders it after them, so a crash keeps a
prefix of the writes and never a checkpoint without its batch. ``apply`` does
not flush: the WAL is written on every update (into the page cache, so a
killed process loses nothing) and the shard is flushed at most every
:data:`FLUSH_INTERVAL` seconds, after a bulk load and at close. Before the
shard exists (no vector seen yet) the checkpoint is ``memsync.json``'s; with a
shard it is that file's only when the shard holds no checkpoint point.

A wipe renames the directory to ``qdrant.trash`` before deleting it, so a crash
leaves the whole store or nothing (:func:`projections._dirswap.discard`).

A rebuild fills ``qdrant.rebuild/``, marks it complete, and swaps it in with two
renames (``qdrant`` -> ``qdrant.old``, ``qdrant.rebuild`` -> ``qdrant``), with
the helpers the LadybugDB graph store uses too (:mod:`projections._dirswap`). On
open, a crash between the renames is finished (the rebuild was marked complete)
or undone; a rebuild never marked complete is deleted and the old store stays.
See docs/vector-store.md.

Every engine error becomes a :class:`~memsync.errors.StoreError` in
:meth:`EdgeVectorStore._errors` (I/O failures a :class:`StoreUnavailable`).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import msgspec
from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    HasIdCondition,
    IsNullCondition,
    MatchValue,
    Memory,
    PayloadSchemaType,
    Point,
    Query,
    QueryRequest,
    RangeFloat,
    ScrollRequest,
    UpdateOperation,
)

from memsync.config import MemsyncConfig, VectorConfig
from memsync.errors import MemsyncError, StoreError, StoreUnavailable
from memsync.fold import MemoryState
from memsync.locks import DirLock
from memsync.stores import Op, Projection, VectorHit, VectorPoint, VectorStore
from projections._dirswap import discard, fsync_dir, open_locked, rebuild_dir, swap_in
from projections._heap import trim_heap
from projections._vector_common import (
    PAGE,
    SCOPE_INDEXES,
    Condition,
    IsNull,
    Keyed,
    Match,
    Put,
    Remove,
    RemoveScope,
    Step,
    batch_context,
    check_dimensions,
    plan,
    point_payload,
    same_vector,
    scroll_points,
    search_conditions,
    search_pages,
    to_hits,
    vector_values,
    with_vectors,
    write_points,
)

META_FILE: Final = "memsync.json"
SHARD_DIR: Final = "shard"
EDGE_CONFIG: Final = "edge_config.json"  # the engine persists the shard's config there
BULK_BATCH: Final = 4096  # points per write in bulk_load
# bulk_load flushes, closes and reopens the shard after this many points (what the engine's heap grew
# by goes), and between those drops the shard's mapped pages after every write (release_mapped)
RECYCLE_POINTS: Final = 131_072
FLUSH_INTERVAL: Final = 30.0  # seconds: apply flushes the shard at most this often (a flush holds the GIL 20-200 ms)
CHECKPOINT_POINT: Final = 0  # the point holding the checkpoint; memory points have UUID ids, never an integer
CHECKPOINT_KEY: Final = "memsync_checkpoint"
_MEMORIES: Final = Filter(must_not=[HasIdCondition({CHECKPOINT_POINT})])  # every point but the checkpoint

_DISTANCE: Final = {"cosine": Distance.Cosine, "dot": Distance.Dot, "euclid": Distance.Euclid}


class _Meta(msgspec.Struct, kw_only=True):
    checkpoint: int = 0
    dimension: int | None = None
    distance: str | None = None


class EdgeVectorStore(VectorStore):
    """One Edge shard per store directory; owned by one process (see :func:`open_edge_store`)."""

    def __init__(self, path: Path, config: VectorConfig, *, lock: DirLock | None = None) -> None:
        self.path = path
        self._config = config
        self._lock = lock
        self._mutex = threading.RLock()  # the shard is swapped and closed under it
        self._shard: EdgeShard | None = None
        self._meta = _Meta()
        self._checkpoint = 0
        self._flushed = time.monotonic()  # when the shard was last flushed
        self._dirty = False  # updates since then
        self._unloaded = False  # a shard is on disk, to be loaded on first use (after a swap)
        self._fresh: EdgeVectorStore | None = None  # the rebuild under way
        self._closed = False
        self._open()

    # ------------------------------------------------------------ the port

    def checkpoint(self) -> int:
        with self._mutex, self._errors("read the checkpoint"):
            self._ensure_loaded()
            return self._checkpoint

    def apply(self, ops: Sequence[Op], checkpoint: int) -> None:
        steps = plan(ops)
        with self._mutex, self._errors("apply"):
            self._check_open()
            if not steps and checkpoint == self._checkpoint:
                return  # already recorded (a rebuild records its checkpoint once more)
            for step in steps:
                self._write(step)
            self._record(checkpoint)
            if time.monotonic() - self._flushed >= FLUSH_INTERVAL:
                self._flush()

    def bulk_load(self, memories: Iterable[MemoryState], checkpoint: int) -> None:
        with self._mutex, self._errors("bulk load"):
            self._check_open()
            written = 0
            for chunk in with_vectors(memories, BULK_BATCH):
                self._put(chunk)
                written += len(chunk)
                if written >= RECYCLE_POINTS:
                    self._recycle_shard()
                    written = 0
                else:
                    release_mapped(self.path)
            self._record(checkpoint)
            self._flush()

    def search(
        self,
        vector: Sequence[float],
        *,
        scope: dict[str, str],
        filters: dict[str, Any] | None = None,
        limit: int = 10,
        threshold: float | None = None,
    ) -> list[VectorHit]:
        # the bindings turn MatchValue(True) into 1, so booleans are checked on the hits
        conditions, residual = search_conditions(scope, filters, bool_match=False)
        where = Filter(must=[_condition(c) for c in conditions]) if conditions else None
        query = Query.Nearest([float(x) for x in vector])

        def page(offset: int, size: int) -> list[VectorHit]:
            with self._mutex, self._errors("search"):
                shard = self._check_open()
                if shard is None:
                    return []
                request = QueryRequest(
                    limit=size, offset=offset, query=query, filter=where, score_threshold=threshold, with_payload=True
                )
                found = shard.query(request)
            return to_hits(found)

        return search_pages(page, limit, residual)

    def points(self) -> Iterator[VectorPoint]:
        def page(offset: Any) -> tuple[list[Any], Any] | None:
            with self._mutex, self._errors("scroll"):
                shard = self._check_open()
                request = ScrollRequest(
                    offset=offset, limit=PAGE, filter=_MEMORIES, with_payload=True, with_vector=True
                )
                return None if shard is None else shard.scroll(request)

        return scroll_points(page)

    def count(self) -> int:
        with self._mutex, self._errors("count"):
            shard = self._check_open()
            return 0 if shard is None else shard.count(CountRequest(exact=True, filter=_MEMORIES))

    def ping(self) -> bool:
        try:
            return self.count() >= 0
        except Exception:
            return False

    def wipe(self) -> None:
        with self._mutex, self._errors("wipe"):
            self._check_open()
            self._close_shard(flush=False)  # it is deleted next
            discard(self.path)  # renamed aside first: a crash never leaves a checkpoint over half a store
            self._meta = _Meta()
            self._checkpoint = 0

    def begin_rebuild(self) -> EdgeVectorStore:
        with self._mutex, self._errors("begin a rebuild"):
            self._check_open()
            if self._fresh is not None:
                raise StoreError(f"{self.describe()}: a rebuild is already under way")
            self._fresh = EdgeVectorStore(rebuild_dir(self.path), self._config)
            return self._fresh

    def commit_rebuild(self, fresh: Projection) -> None:
        fresh = self._rebuilt(fresh)
        with self._mutex, self._errors("swap in the rebuilt store"):
            self._check_open()
            fresh._save_meta()  # an empty rebuild still leaves a directory to swap in
            fresh.close()
            self._close_shard(flush=False)  # replaced next (its WAL keeps it whole if the swap is undone)
            trim_heap()  # what both shards held: the next phase of a rebuild starts without it
            try:
                swap_in(self.path, fresh.path)  # a step that fails is finished or undone like a crash
            finally:
                self._fresh = None
                self._open(lazy=True)  # a `memsync rebuild` that ends here never pays for loading it

    def abort_rebuild(self, fresh: Projection) -> None:
        fresh = self._rebuilt(fresh)
        with self._mutex:
            self._fresh = None
            fresh.close()
            shutil.rmtree(fresh.path, ignore_errors=True)

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            try:
                with self._errors("close"):
                    self._close_shard()
            finally:
                if self._lock is not None:
                    self._lock.release()

    def describe(self) -> str:
        return f"Qdrant Edge store at {self.path}"

    def same_vector(self, stored: bytes, expected: bytes) -> bool:
        """Whether ``stored`` (from :meth:`points`) is how this store keeps ``expected``."""
        return same_vector(stored, expected, self.distance)

    @property
    def dimension(self) -> int | None:
        if self._shard is not None:
            return self._meta.dimension
        return self._config.dimension

    @property
    def distance(self) -> str:
        return self._meta.distance or self._config.distance

    # ------------------------------------------------------------ writes

    def _write(self, step: Step) -> None:
        """Apply one planned step (one update, one record of the shard's WAL)."""
        if isinstance(step, Put):
            self._put(list(step.memories.items()))
            return
        if self._shard is None:
            return
        if isinstance(step, Remove):
            operation = UpdateOperation.delete_points(list(step.point_ids))
        elif isinstance(step, RemoveScope):
            operation = UpdateOperation.delete_points_by_filter(
                Filter(must=[_condition(Match(k, v)) for k, v in step.scope.items()])
            )
        else:
            operation = UpdateOperation.delete_points_by_filter(_MEMORIES)
        self._update(operation)

    def _record(self, checkpoint: int) -> None:
        """Record the checkpoint after the batch's writes: in the shard's WAL, else in memsync.json."""
        if self._shard is None:
            self._save_meta(checkpoint=checkpoint)
        else:
            self._update(UpdateOperation.upsert_points([_checkpoint_point(checkpoint)]))
        self._checkpoint = checkpoint

    def _update(self, operation: UpdateOperation) -> None:
        assert self._shard is not None
        self._shard.update(operation)
        self._dirty = True

    def _put(self, items: Keyed) -> None:
        dimension = check_dimensions((m for _, m in items), self.dimension)
        assert dimension is not None
        self._ensure_shard(dimension)
        write_points(items, self._upsert)

    def _upsert(self, items: Keyed) -> None:
        with self._errors(batch_context(items)):  # the bindings refuse some payloads already here
            points = [_point(pid, m) for pid, m in items]
            self._update(UpdateOperation.upsert_points(points))

    def _ensure_shard(self, dimension: int) -> EdgeShard:
        if self._shard is not None:
            return self._shard
        # record the dimension first: a shard never exists without it on record
        self._save_meta(dimension=dimension, distance=self._config.distance)
        # Cold: loading the shard does not read the vectors in (the page cache keeps what searches touch)
        params = EdgeVectorParams(size=dimension, distance=_DISTANCE[self._config.distance], memory=Memory.Cold)
        shard = EdgeShard.create(str(self.path / SHARD_DIR), EdgeConfig(vectors=params))
        self._shard = shard
        for field in SCOPE_INDEXES:  # no memory_id index: no other process reads the shard, nothing filters on it
            self._update(UpdateOperation.create_field_index(field, PayloadSchemaType.Keyword))
        self._update(UpdateOperation.upsert_points([_checkpoint_point(self._checkpoint)]))
        return shard

    def _flush(self) -> None:
        if self._shard is not None and self._dirty:
            self._shard.flush()
        self._flushed, self._dirty = time.monotonic(), False

    def _save_meta(self, **changes: Any) -> None:
        self._meta = msgspec.structs.replace(self._meta, **changes)
        _write_atomic(self.path / META_FILE, msgspec.json.encode(self._meta))

    # ------------------------------------------------------------ lifecycle

    def _open(self, *, lazy: bool = False) -> None:
        with self._errors("open"):
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)  # memories' text and vectors are private
            self._meta = _read_meta(self.path / META_FILE)
            shard_dir = self.path / SHARD_DIR
            self._checkpoint = self._meta.checkpoint
            if (shard_dir / EDGE_CONFIG).exists():
                self._unloaded = True
                if not lazy:
                    self._ensure_loaded()
            elif shard_dir.exists():  # a creation that never finished: it holds nothing
                shutil.rmtree(shard_dir)

    def _ensure_loaded(self) -> None:
        """Load the shard :meth:`_open` found (its checkpoint point is the checkpoint)."""
        if not self._unloaded:
            return
        shard_dir = self.path / SHARD_DIR
        self._shard = EdgeShard.load(str(shard_dir))
        self._unloaded = False
        if self._meta.dimension is None:  # memsync.json was lost: the shard's own config says
            self._meta = _meta_from_shard(shard_dir / EDGE_CONFIG, self._meta)
        self._checkpoint = _stored_checkpoint(self._shard, self._meta.checkpoint)

    def _recycle_shard(self) -> None:
        """Flush, close and load the shard again: what it mapped while writing leaves the resident set.

        A bulk load touches every page of the vector, payload and WAL files it
        writes; those pages stay resident (VmRSS) as long as they are mapped.
        """
        self._close_shard()
        trim_heap()
        self._shard = EdgeShard.load(str(self.path / SHARD_DIR))

    def _close_shard(self, *, flush: bool = True) -> None:
        self._unloaded = False  # not loaded yet: nothing to close
        try:
            if flush:
                self._flush()
        finally:
            shard, self._shard = self._shard, None
            if shard is not None:
                shard.close()

    def _check_open(self) -> EdgeShard | None:
        if self._closed:
            raise StoreError(f"{self.describe()} is closed")
        self._ensure_loaded()
        return self._shard

    def _rebuilt(self, fresh: Projection) -> EdgeVectorStore:
        if fresh is not self._fresh or not isinstance(fresh, EdgeVectorStore):
            raise StoreError(f"{self.describe()}: {fresh.describe()} is not the rebuild this store began")
        return fresh

    @contextmanager
    def _errors(self, context: str) -> Iterator[None]:
        """Translate engine and file-system errors, in this one place."""
        try:
            yield
        except MemsyncError:
            raise
        except OSError as e:
            raise StoreUnavailable(f"{self.describe()}: {context}: {e}") from e
        except Exception as e:  # the bindings raise bare Exception with the engine's message
            message = f"{self.describe()}: {context}: {e}"
            if "(os error" in str(e):  # an I/O failure (disk full, ...), not the data's fault
                raise StoreUnavailable(message) from e
            raise StoreError(message) from e


def open_edge_store(config: MemsyncConfig) -> EdgeVectorStore:
    """The entry point ``vector.edge``: the store at ``config.vector_path()``, owned by this process."""
    path = config.vector_path()
    return open_locked(path, "Qdrant Edge store", lambda lock: EdgeVectorStore(path, config.vector, lock=lock))


# ---------------------------------------------------------------- helpers

_MADV_PAGEOUT: Final = 21  # Linux 5.4+
_madvise: Any = None
if sys.platform == "linux":
    _madvise = ctypes.CDLL(None, use_errno=True).madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def release_mapped(directory: Path) -> None:
    """Take the pages of the shared file mappings under ``directory`` out of this process's resident set.

    A bulk load writes every page of the shard's vector, payload and WAL files
    through shared mappings, and a page stays resident while it is mapped.
    MADV_PAGEOUT asks the kernel to reclaim them the way memory pressure would:
    a dirty page is written back first, and the next access maps the file's
    contents again, so the engine sees no difference. (MADV_DONTNEED would do
    as well on these mappings, but if the engine unmapped one and something else
    were mapped there before the call, it would zero that memory; a page-out
    loses nothing anywhere.) Best effort: Linux only, and a kernel without
    MADV_PAGEOUT leaves the pages resident.
    """
    if _madvise is None:
        return
    prefix = f"{directory.resolve()}{os.sep}"  # the kernel lists absolute paths without symlinks
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[1][3] == "s" and fields[5].startswith(prefix):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                _madvise(start, end - start, _MADV_PAGEOUT)


def _point(pid: str, memory: MemoryState) -> Point:
    assert memory.vector is not None
    # the payload's keys cost the bindings the most (~5-8 µs each), then the vector
    return Point(id=pid, vector=vector_values(memory.vector), payload=point_payload(memory))


def _checkpoint_point(checkpoint: int) -> Point:
    return Point(id=CHECKPOINT_POINT, vector={}, payload={CHECKPOINT_KEY: checkpoint})


def _stored_checkpoint(shard: EdgeShard, fallback: int) -> int:
    """The shard's checkpoint point; ``fallback`` (memsync.json's) when it has none yet.

    A shard without the point was created by an older memsync (which kept the
    checkpoint in memsync.json after a flush) or cut short right after its
    creation, before it held anything.
    """
    found = shard.retrieve([CHECKPOINT_POINT], with_payload=True, with_vector=False)
    payload = found[0].payload if found else None
    value = payload.get(CHECKPOINT_KEY) if payload else None
    return value if isinstance(value, int) else fallback


def _condition(condition: Condition) -> FieldCondition | IsNullCondition:
    if isinstance(condition, Match):
        return FieldCondition(key=condition.key, match=MatchValue(condition.value))
    if isinstance(condition, IsNull):
        return IsNullCondition(condition.key)
    return FieldCondition(key=condition.key, range=RangeFloat(gte=condition.low, lte=condition.high))


def _read_meta(path: Path) -> _Meta:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _Meta()
    try:
        return msgspec.json.decode(data, type=_Meta)
    except msgspec.DecodeError as e:
        raise StoreError(f"{path} is corrupt ({e}); delete the store directory to rebuild it from the log") from e


def _meta_from_shard(edge_config: Path, meta: _Meta) -> _Meta:
    try:
        params = json.loads(edge_config.read_text())["vectors"][""]
        return msgspec.structs.replace(meta, dimension=int(params["size"]), distance=str(params["distance"]).lower())
    except (OSError, ValueError, KeyError, TypeError):
        return meta  # unknown: the engine still refuses a wrong dimension


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` so that a crash leaves the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # recreated after a wipe: private again
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
