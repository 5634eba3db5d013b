"""The vector projection in Qdrant through ``qdrant-client``: a server, or the client's local mode.

Layout: readers use the alias ``config.vector.collection`` (``memsync_memories``),
which points at a physical collection ``<alias>_<8 hex>``. A rebuild fills a
fresh physical collection no alias points at, then swaps the alias in one
``update_collection_aliases`` call (delete + create, atomic on the server) and
drops the old collection. The client's local mode keeps aliases too (in its
``meta.json``, replaced atomically), so tests run the same swap without a server.

The checkpoint lives in the physical collection's metadata (``memsync_checkpoint``),
written after the points (``wait=True``); dropping the collection resets it.
The collection gets its vectors once the dimension is known (config, else the
first vector). Until then a checkpoint is kept in a *placeholder*: a physical
collection without vectors behind the same alias, which the first vector
replaces by the real one (created with the checkpoint, then the alias swapped,
then the placeholder dropped; it holds no points, so nothing is copied).

Driver errors are translated in :meth:`QdrantVectorStore._errors`: no answer,
timeouts and 5xx/429 become :class:`~memsync.errors.StoreUnavailable`, other
refusals :class:`~memsync.errors.StoreError`.
"""

from __future__ import annotations

import math
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from memsync.config import MemsyncConfig, VectorConfig
from memsync.errors import MemsyncError, StoreError, StoreLocked, StoreUnavailable
from memsync.fold import MemoryState
from memsync.locks import DirLock
from memsync.stores import Op, Projection, VectorHit, VectorPoint, VectorStore
from projections._vector_common import (
    INDEXED_FIELDS,
    PAGE,
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
    vector_array,
    with_vectors,
    write_points,
)

CHECKPOINT_KEY: Final = "memsync_checkpoint"
BULK_BATCH: Final = 1000  # points per request in bulk_load

_DISTANCE: Final = {"cosine": qm.Distance.COSINE, "dot": qm.Distance.DOT, "euclid": qm.Distance.EUCLID}


class QdrantVectorStore(VectorStore):
    """One physical collection behind an alias (``alias=None``: a rebuild no reader sees yet)."""

    def __init__(
        self,
        client: QdrantClient,
        config: VectorConfig,
        *,
        where: str,
        server: bool,
        alias: str | None,
        planned: str | None = None,
        lock: DirLock | None = None,
        owns_client: bool = True,
    ) -> None:
        self._client = client
        self._config = config
        self._where = where
        self._server = server
        self._alias = alias
        self._planned = planned  # the name a rebuild's collection gets
        self._lock = lock
        self._owns_client = owns_client
        self._mutex = threading.RLock()
        self._resolved = False
        self._collection: str | None = None  # the physical collection, once it exists
        self._dimension: int | None = None  # None while there is no collection, or only a placeholder
        self._distance: str = config.distance
        self._mirror: int | None = None  # local mode: this process owns the store, no need to re-read
        self._stale = False  # our collection vanished (a server answered 404): see _errors
        self._closed = False

    # ------------------------------------------------------------ the port

    def checkpoint(self) -> int:
        with self._mutex, self._errors("read the checkpoint"):
            if self._stale:  # look the alias up again: the caller now plans from what it finds
                self._stale, self._resolved, self._collection, self._mirror = False, False, None, None
            self._resolve()
            if self._collection is None:
                return 0
            checkpoint = self._stored_checkpoint()
            if not self._server:
                self._mirror = checkpoint
            return checkpoint

    def apply(self, ops: Sequence[Op], checkpoint: int) -> None:
        steps = plan(ops)
        with self._mutex, self._errors("apply"):
            self._check_fresh()
            self._resolve()
            for step in steps:
                self._write(step)
            if self._dimension is None and self._config.dimension is not None:
                self._ensure_collection(self._config.dimension)
            self._save_checkpoint(checkpoint)

    def bulk_load(self, memories: Iterable[MemoryState], checkpoint: int) -> None:
        with self._mutex, self._errors("bulk load"):
            self._check_fresh()
            self._resolve()
            for chunk in with_vectors(memories, BULK_BATCH):
                self._put(chunk)
            if self._dimension is None and self._config.dimension is not None:
                self._ensure_collection(self._config.dimension)
            self._save_checkpoint(checkpoint)

    def search(
        self,
        vector: Sequence[float],
        *,
        scope: dict[str, str],
        filters: dict[str, Any] | None = None,
        limit: int = 10,
        threshold: float | None = None,
    ) -> list[VectorHit]:
        conditions, residual = search_conditions(scope, filters)
        where = qm.Filter(must=[_condition(c) for c in conditions]) if conditions else None
        query = [float(x) for x in vector]

        def page(offset: int, size: int) -> list[VectorHit]:
            with self._mutex, self._errors("search"):
                target = self._target()
                if target is None or self._dimension is None:  # nothing, or a placeholder without vectors
                    return []
                found = self._client.query_points(
                    target,
                    query=query,
                    query_filter=where,
                    limit=size,
                    offset=offset or None,
                    with_payload=True,
                    score_threshold=threshold,
                ).points
            return to_hits(found)

        return search_pages(page, limit, residual)

    def points(self) -> Iterator[VectorPoint]:
        def page(offset: Any) -> tuple[list[Any], Any] | None:
            with self._mutex, self._errors("scroll"):
                target = self._target()
                if target is None:
                    return None
                return self._client.scroll(target, limit=PAGE, offset=offset, with_payload=True, with_vectors=True)

        return scroll_points(page)

    def count(self) -> int:
        with self._mutex, self._errors("count"):
            target = self._target()
            return 0 if target is None else self._client.count(target, exact=True).count

    def ping(self) -> bool:
        try:
            with self._mutex:
                self._check_open()
                if self._server:
                    self._client.get_collections()
                return True
        except Exception:
            return False

    def wipe(self) -> None:
        with self._mutex, self._errors("wipe"):
            self._resolve()
            if self._collection is not None:
                self._client.delete_collection(self._collection)  # its aliases go with it
            self._collection = None
            self._dimension = None
            self._mirror = None

    def begin_rebuild(self) -> QdrantVectorStore:
        with self._mutex, self._errors("begin a rebuild"):
            self._resolve()
            fresh = QdrantVectorStore(
                self._client,
                self._config,
                where=self._where,
                server=self._server,
                alias=None,
                planned=_physical_name(self._config.collection),
                owns_client=False,
            )
            if self._config.dimension is not None:
                fresh._ensure_collection(self._config.dimension)
            return fresh

    def commit_rebuild(self, fresh: Projection) -> None:
        fresh = self._rebuilt(fresh)
        alias = self._config.collection
        with self._mutex, self._errors("swap the alias"):
            self._resolve()
            old = self._collection
            changes: list[qm.DeleteAliasOperation | qm.CreateAliasOperation] = []
            if old == alias:  # a plain collection holds the alias name: it must go first (not atomic)
                self._client.delete_collection(old)
            elif old is not None:
                changes.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
            if fresh._collection is not None:
                changes.append(
                    qm.CreateAliasOperation(
                        create_alias=qm.CreateAlias(collection_name=fresh._collection, alias_name=alias)
                    )
                )
            if changes:
                self._client.update_collection_aliases(change_aliases_operations=changes)
            if old is not None and old != alias:
                self._client.delete_collection(old)
            self._collection, self._dimension, self._distance = fresh._collection, fresh._dimension, fresh._distance
            self._mirror = fresh._mirror
            fresh._collection = None
            fresh.close()

    def abort_rebuild(self, fresh: Projection) -> None:
        fresh = self._rebuilt(fresh)
        with self._mutex, self._errors("drop the rebuild"):
            if fresh._collection is not None:
                self._client.delete_collection(fresh._collection)
            fresh._collection = None
            fresh.close()

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            try:
                if self._owns_client:
                    self._client.close()
            finally:
                if self._lock is not None:
                    self._lock.release()

    def describe(self) -> str:
        name = self._alias or self._collection or self._planned
        return f"{self._where}, collection {name}"

    def same_vector(self, stored: bytes, expected: bytes) -> bool:
        """Whether ``stored`` (from :meth:`points`) is how this store keeps ``expected``."""
        return same_vector(stored, expected, self._distance)

    # ------------------------------------------------------------ writes

    def _write(self, step: Step) -> None:
        if isinstance(step, Put):
            self._put(list(step.memories.items()))
            return
        if self._collection is None:
            return
        selector: qm.PointIdsList | qm.FilterSelector
        if isinstance(step, Remove):
            selector = qm.PointIdsList(points=list(step.point_ids))
        elif isinstance(step, RemoveScope):
            selector = qm.FilterSelector(
                filter=qm.Filter(must=[_condition(Match(k, v)) for k, v in step.scope.items()])
            )
        else:
            selector = qm.FilterSelector(filter=qm.Filter())
        self._client.delete(self._collection, points_selector=selector, wait=True)

    def _put(self, items: Keyed) -> None:
        dimension = check_dimensions((m for _, m in items), self._dimension or self._config.dimension)
        assert dimension is not None
        self._ensure_collection(dimension)
        write_points(items, self._upsert)

    def _upsert(self, items: Keyed) -> None:
        assert self._collection is not None
        points = [_point(pid, m) for pid, m in items]
        with self._errors(batch_context(items)):
            self._client.upsert(self._collection, points=points, wait=True)

    def _save_checkpoint(self, checkpoint: int) -> None:
        if self._collection is None:  # no dimension yet: a placeholder holds the checkpoint
            self._create(self._planned or _physical_name(self._config.collection), None, checkpoint)
            return
        self._client.update_collection(self._collection, metadata={CHECKPOINT_KEY: checkpoint})
        if not self._server:
            self._mirror = checkpoint

    def _ensure_collection(self, dimension: int) -> str:
        """The collection with vectors of ``dimension`` (the configured one wins), created once."""
        if self._collection is not None and self._dimension is not None:
            return self._collection
        placeholder = self._collection
        checkpoint = 0 if placeholder is None else self._stored_checkpoint()
        name = self._planned if placeholder is None and self._planned else _physical_name(self._config.collection)
        self._create(name, self._config.dimension or dimension, checkpoint)
        if placeholder is not None:
            self._client.delete_collection(placeholder)
        assert self._collection is not None
        return self._collection

    def _create(self, name: str, dimension: int | None, checkpoint: int) -> None:
        """Create ``name`` holding ``checkpoint`` (no vectors: a placeholder) and point the alias at it."""
        vectors: qm.VectorParams | dict[str, qm.VectorParams] = {}
        if dimension is not None:
            vectors = qm.VectorParams(size=dimension, distance=_DISTANCE[self._config.distance])
        self._client.create_collection(name, vectors_config=vectors, metadata={CHECKPOINT_KEY: checkpoint})
        if self._server and dimension is not None:  # local mode ignores payload indexes (and warns)
            for field in INDEXED_FIELDS:
                self._client.create_payload_index(name, field, field_schema=qm.PayloadSchemaType.KEYWORD, wait=True)
        if self._alias is not None:
            changes: list[qm.DeleteAliasOperation | qm.CreateAliasOperation] = []
            if self._collection is not None:  # replacing a placeholder: one atomic alias swap
                changes.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=self._alias)))
            create = qm.CreateAlias(collection_name=name, alias_name=self._alias)
            changes.append(qm.CreateAliasOperation(create_alias=create))
            self._client.update_collection_aliases(change_aliases_operations=changes)
        self._collection, self._dimension, self._distance = name, dimension, self._config.distance
        if not self._server:
            self._mirror = checkpoint

    def _stored_checkpoint(self) -> int:
        assert self._collection is not None
        if self._mirror is not None:
            return self._mirror
        metadata = self._client.get_collection(self._collection).config.metadata or {}
        return int(metadata.get(CHECKPOINT_KEY, 0))

    # ------------------------------------------------------------ resolving names

    def _target(self) -> str | None:
        """The name readers use: the alias (the rebuild's own collection for a rebuild)."""
        self._resolve()
        if self._collection is None:
            return None
        return self._alias or self._collection

    def _resolve(self) -> None:
        """Find the physical collection behind the alias, once (lazily: the server may be down at open)."""
        self._check_open()
        if self._resolved:
            return
        if self._alias is not None:
            aliases = {a.alias_name: a.collection_name for a in self._client.get_aliases().aliases}
            if self._alias in aliases:
                self._collection = aliases[self._alias]
            elif self._client.collection_exists(self._alias):  # made by hand, or by another tool
                self._collection = self._alias
        if self._collection is not None:
            vectors = self._client.get_collection(self._collection).config.params.vectors
            if isinstance(vectors, qm.VectorParams):
                self._dimension, self._distance = vectors.size, vectors.distance.value.lower()
        if not self._server and self._alias is not None:
            self._drop_leftovers()
        self._resolved = True

    def _drop_leftovers(self) -> None:
        """Local mode (this process owns the store): drop rebuilds a crash left behind."""
        pattern = re.compile(re.escape(self._config.collection) + r"_[0-9a-f]{8}")
        for description in self._client.get_collections().collections:
            if pattern.fullmatch(description.name) and description.name != self._collection:
                self._client.delete_collection(description.name)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.describe()} is closed")

    def _check_fresh(self) -> None:
        """Refuse writes planned against a collection that has since vanished.

        A batch planned from the old checkpoint could leave a gap in whatever now
        holds the alias; the projector reads :meth:`checkpoint` again after a
        StoreUnavailable, which clears this.
        """
        if self._stale:
            raise StoreUnavailable(
                f"{self.describe()}: the collection changed underneath (rebuilt or dropped elsewhere); "
                "read the checkpoint again before applying"
            )

    def _rebuilt(self, fresh: Projection) -> QdrantVectorStore:
        if not isinstance(fresh, QdrantVectorStore) or fresh._client is not self._client or fresh._alias is not None:
            raise StoreError(f"{fresh.describe()} is not a rebuild of {self.describe()}")
        return fresh

    @contextmanager
    def _errors(self, context: str) -> Iterator[None]:
        """Translate driver errors, in this one place."""
        try:
            yield
        except MemsyncError:
            raise
        except UnexpectedResponse as e:
            code = e.status_code
            content = e.content[:300].decode(errors="replace")
            message = f"{self.describe()}: {context}: HTTP {code} {e.reason_phrase}: {content}"
            if code == 404:  # our collection is gone (a rebuild or a drop elsewhere)
                self._stale = True
                raise StoreUnavailable(message) from e
            if code is None or code >= 500 or code in (408, 429):
                raise StoreUnavailable(message) from e
            raise StoreError(message) from e
        except (ResponseHandlingException, httpx.TransportError, ConnectionError, TimeoutError) as e:
            raise StoreUnavailable(f"{self.describe()}: {context}: {type(e).__name__}: {e}") from e
        except Exception as e:  # local mode raises ValueError/RuntimeError for refused data
            raise StoreError(f"{self.describe()}: {context}: {e}") from e


def open_qdrant_store(config: MemsyncConfig) -> QdrantVectorStore:
    """The entry point ``vector.qdrant``: a server at ``vector.url``, else local mode at ``vector_path()``.

    Nothing is sent to a server here: a server that is down shows on first use.
    """
    vector = config.vector
    if vector.url:
        api_key = vector.api_key.get_secret_value() if vector.api_key is not None else None
        client = QdrantClient(
            url=vector.url, api_key=api_key, timeout=math.ceil(vector.timeout), check_compatibility=False
        )
        where = f"Qdrant at {_safe_url(vector.url)}"
        return QdrantVectorStore(client, vector, where=where, server=True, alias=vector.collection)
    path = config.vector_path()
    if str(path) == ":memory:":
        client = QdrantClient(location=":memory:")
        return QdrantVectorStore(client, vector, where="Qdrant in memory", server=False, alias=vector.collection)
    lock = DirLock(path, "Qdrant local store").acquire()
    try:
        client = QdrantClient(path=str(path))
    except RuntimeError as e:  # its own lock: held by a process that bypassed ours
        lock.release()
        raise StoreLocked(f"the Qdrant local store at {path} is in use: {e}") from e
    except BaseException:
        lock.release()
        raise
    where = f"Qdrant local mode at {path}"
    return QdrantVectorStore(client, vector, where=where, server=False, alias=vector.collection, lock=lock)


# ---------------------------------------------------------------- helpers


def _physical_name(alias: str) -> str:
    return f"{alias}_{uuid.uuid4().hex[:8]}"


def _safe_url(url: str) -> str:
    """The URL without credentials or query (it may carry secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _point(pid: str, memory: MemoryState) -> qm.PointStruct:
    assert memory.vector is not None
    vector = vector_array(memory.vector).tolist()
    return qm.PointStruct(id=pid, vector=vector, payload=point_payload(memory))


def _condition(condition: Condition) -> qm.FieldCondition | qm.IsNullCondition:
    if isinstance(condition, Match):
        return qm.FieldCondition(key=condition.key, match=qm.MatchValue(value=condition.value))
    if isinstance(condition, IsNull):
        return qm.IsNullCondition(is_null=qm.PayloadField(key=condition.key))
    return qm.FieldCondition(key=condition.key, range=qm.Range(gte=condition.low, lte=condition.high))
