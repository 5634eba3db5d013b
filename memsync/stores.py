"""Ports the projections implement, and the operations the projector sends them.

The core never imports a store client: backends live in ``projections/`` and
are found by name through the ``memsync.stores`` entry-point group (see
:func:`open_store`), so a third party can add one without touching memsync.

The projector folds a batch of events into its net effect and hands the store
a list of :data:`Op` in order, with the seq they bring the store to:

* :class:`Upsert` — the memory's full state after the batch,
* :class:`Delete` — the memory is gone,
* :class:`DeleteScope` / :class:`Reset` — every live memory matching a scope / all.

A store applies the ops and records the checkpoint *with its data*: in the same
transaction where it has transactions, otherwise after idempotent writes.
"""

from __future__ import annotations

import hashlib
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import msgspec

from memsync.errors import ConfigError
from memsync.events import format_time
from memsync.fold import Fact, MemoryState, graph_view

if TYPE_CHECKING:
    from memsync.config import MemsyncConfig

ENTRY_POINT_GROUP = "memsync.stores"


class Upsert(msgspec.Struct, frozen=True):
    """Write ``memory``'s state.

    ``before``: the memory's state when the store's checkpoint was last set, if
    the projector knows the store holds exactly that (None: unknown or absent).
    A store may use it to write only what changed; ignoring it is always correct.
    """

    memory: MemoryState
    before: MemoryState | None = None


class Delete(msgspec.Struct, frozen=True):
    """Remove the memory (``before`` as in :class:`Upsert`)."""

    memory_id: str
    before: MemoryState | None = None


class DeleteScope(msgspec.Struct, frozen=True):
    scope: dict[str, str]  # e.g. {"user_id": "alice"}: all given fields must match


class Reset(msgspec.Struct, frozen=True):
    pass


Op: TypeAlias = Upsert | Delete | DeleteScope | Reset


class Projection(ABC):
    """A store the projector keeps equal to ``fold(log)`` up to its checkpoint."""

    kind: ClassVar[str]  # "vector" or "graph"

    @abstractmethod
    def checkpoint(self) -> int:
        """The last seq whose effects are durable in this store (0 when empty)."""

    @abstractmethod
    def apply(self, ops: Sequence[Op], checkpoint: int) -> None:
        """Apply ``ops`` in order, then record ``checkpoint``.

        Idempotent: applying the same ops again leaves the same state. Where the
        store has transactions, effects and checkpoint commit together.
        Raises :class:`~memsync.errors.StoreUnavailable` when the store cannot be
        reached (the projector retries) and :class:`~memsync.errors.StoreError`
        when the store rejects the batch.
        """

    @abstractmethod
    def ping(self) -> bool:
        """True when the store answers right now; never raises."""

    @abstractmethod
    def wipe(self) -> None:
        """Remove every memory and the checkpoint (the store is empty, at 0)."""

    def bulk_load(self, memories: Iterable[MemoryState], checkpoint: int) -> None:
        """Load live memories into an *empty* store, then record ``checkpoint``.

        Backends override this with their fastest fresh-build path.
        """
        chunk: list[Op] = []
        for memory in memories:
            chunk.append(Upsert(memory))
            if len(chunk) >= 1000:
                self.apply(chunk, self.checkpoint())
                chunk = []
        self.apply(chunk, checkpoint)

    def begin_rebuild(self) -> Projection:
        """A fresh, empty store of the same kind that readers do not see yet.

        The default rebuilds in place: it wipes this store and returns it.
        """
        self.wipe()
        return self

    def commit_rebuild(self, fresh: Projection) -> None:
        """Make ``fresh`` (from :meth:`begin_rebuild`) the store readers see."""

    def abort_rebuild(self, fresh: Projection) -> None:
        """Drop ``fresh``; the current store stays as it was."""

    def close(self) -> None:
        """Release files, connections and locks."""

    def describe(self) -> str:
        """Where the store is, for messages (never includes secrets)."""
        return type(self).__name__


class VectorPoint(msgspec.Struct, frozen=True, kw_only=True):
    """A stored point as verify sees it."""

    memory_id: str
    payload: dict[str, Any]
    vector: bytes  # float32


class VectorHit(msgspec.Struct, frozen=True, kw_only=True):
    memory_id: str
    score: float
    payload: dict[str, Any]


class VectorStore(Projection):
    """One point per live memory that has a vector (ARCHITECTURE.md section 4).

    Payload: memory_id, text, user_id, agent_id, run_id, metadata, version, seq,
    created_at, updated_at (RFC 3339 strings from :func:`memsync.events.format_time`).
    """

    kind: ClassVar[str] = "vector"

    @abstractmethod
    def search(
        self,
        vector: Sequence[float],
        *,
        scope: dict[str, str],
        filters: dict[str, Any] | None = None,
        limit: int = 10,
        threshold: float | None = None,
    ) -> list[VectorHit]:
        """Nearest points within ``scope`` whose metadata equals ``filters``, best first."""

    @abstractmethod
    def points(self) -> Iterator[VectorPoint]:
        """Every memory point in the store (not the checkpoint), any order."""

    @abstractmethod
    def count(self) -> int:
        """Number of memory points."""

    def same_vector(self, stored: bytes, expected: bytes) -> bool:
        """Whether a point's stored vector (float32 bytes) is ``expected`` as this store keeps it.

        Exact by default; a store that transforms vectors (cosine stores normalize them)
        overrides this with what that transformation allows.
        """
        return stored == expected


class GraphMemory(msgspec.Struct, frozen=True, kw_only=True):
    memory_id: str
    text: str
    user_id: str | None
    agent_id: str | None
    run_id: str | None
    version: int
    seq: int


class GraphEntity(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    name: str
    type: str | None
    scope_field: str
    scope_value: str


class GraphSnapshot(msgspec.Struct, kw_only=True):
    """Everything a graph store holds, as verify compares it."""

    memories: dict[str, GraphMemory]
    entities: dict[str, GraphEntity]
    mentions: set[tuple[str, str]]  # (memory_id, entity key)
    relates: set[tuple[str, str, str, str]]  # (source key, relation, target key, memory_id)

    def sizes(self) -> dict[str, int]:
        """What :meth:`GraphStore.counts` returns for a store holding this graph and nothing more."""
        return {
            "memories": len(self.memories),
            "entities": len(self.entities),
            "mentions": len(self.mentions),
            "relates": len(self.relates),
        }


def expected_graph(memories: Iterable[MemoryState]) -> GraphSnapshot:
    """The graph a store must hold for these live memories: their nodes plus :func:`~memsync.fold.graph_view`."""
    live = list(memories)
    view = graph_view(live)
    return GraphSnapshot(
        memories={
            m.memory_id: GraphMemory(
                memory_id=m.memory_id,
                text=m.text,
                user_id=m.user_id,
                agent_id=m.agent_id,
                run_id=m.run_id,
                version=m.version,
                seq=m.seq,
            )
            for m in live
        },
        entities={
            key: GraphEntity(key=key, name=name, type=typ, scope_field=field, scope_value=value)
            for key, (name, typ, field, value) in view.entities.items()
        },
        mentions=view.mentions,
        relates=view.relates,
    )


class GraphStore(Projection):
    """Memories, entities, MENTIONS and RELATES (ARCHITECTURE.md section 4).

    No orphans: after any ``apply`` an entity exists only while a live memory
    mentions it. An entity's ``type`` is the smallest non-null type among the
    live memories mentioning it (order-independent, so replays agree).
    """

    kind: ClassVar[str] = "graph"

    @abstractmethod
    def snapshot(self) -> GraphSnapshot:
        """The whole graph (for verify; sized for operator use, not hot paths)."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Raw counts: ``memories`` and ``entities`` (nodes), ``mentions`` and ``relates`` (edges).

        Every node and edge of each kind is counted, duplicates included. The
        snapshot's sets hide a duplicate (a second MENTIONS edge between the same
        memory and entity looks like one), so verify compares these with
        :meth:`GraphSnapshot.sizes`: a store holding exactly its snapshot returns
        the same numbers.
        """

    @abstractmethod
    def relations(self, names: Sequence[str], *, scope: tuple[str, str], limit: int = 50) -> list[Fact]:
        """Facts (source, relation, target) touching the named entities within one scope."""

    @abstractmethod
    def drop_entities(self, keys: Sequence[str]) -> None:
        """Delete entity nodes by key with their edges (repair of orphans)."""


def open_store(kind: str, backend: str, config: MemsyncConfig) -> Projection:
    """Build a store by name from the ``memsync.stores`` entry points.

    Entry point names are ``<kind>.<backend>`` (``vector.edge``, ``graph.neo4j``);
    each points at a factory ``(config) -> Projection``.
    """
    name = f"{kind}.{backend}"
    found = [ep for ep in _store_entry_points() if ep.name == name]
    if not found:
        known = sorted(ep.name for ep in _store_entry_points() if ep.name.startswith(kind))
        raise ConfigError(f"{kind}.backend: unknown store {backend!r} (installed: {', '.join(known) or 'none'})")
    try:
        factory = found[0].load()
    except ImportError as e:
        raise ConfigError(f"{kind}.backend: store {backend!r} cannot be loaded: {e}") from e
    store = factory(config)
    if not isinstance(store, Projection) or store.kind != kind:
        raise ConfigError(f"{kind}.backend: entry point {name!r} did not build a {kind} store")
    return store


@cache
def _store_entry_points() -> tuple[EntryPoint, ...]:
    """The installed store factories; scanning the installed distributions takes ~10 ms, so once."""
    return tuple(entry_points(group=ENTRY_POINT_GROUP))


_POINT_NAMESPACE = uuid.UUID("6f1c2a4e-6d8b-5b8e-9a57-3c1f2d7e9b10")
_NAMESPACE_BYTES = _POINT_NAMESPACE.bytes


def point_id(memory_id: str) -> str:
    """The vector point id of a memory: the id itself if it is a UUID, else UUIDv5 of it.

    Every spelling of a UUID has at least 32 characters; shorter ids take
    UUIDv5 by hand (SHA-1 of namespace + name, version and variant bits set),
    2.5x faster than :func:`uuid.uuid5` — a rebuild does it once per memory.
    """
    if len(memory_id) >= 32:
        try:
            return str(uuid.UUID(memory_id))
        except ValueError:
            return str(uuid.uuid5(_POINT_NAMESPACE, memory_id))
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + memory_id.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def vector_payload(memory: MemoryState) -> dict[str, Any]:
    """The payload of a memory's point (section 4), JSON-ready."""
    created = format_time(memory.created_at)
    return {
        "memory_id": memory.memory_id,
        "text": memory.text,
        "user_id": memory.user_id,
        "agent_id": memory.agent_id,
        "run_id": memory.run_id,
        "metadata": memory.metadata,
        "version": memory.version,
        "seq": memory.seq,
        "created_at": created,
        # a memory never updated has one time for both (the same object): formatted once
        "updated_at": created if memory.updated_at is memory.created_at else format_time(memory.updated_at),
    }
