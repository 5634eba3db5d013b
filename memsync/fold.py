"""fold: the pure, deterministic function from recorded events to state.

``fold(log.read())`` is what every store must equal. It streams: it holds only
the live memories, never the history. The same :class:`State` is used by the
projector on a small scale (the memories one batch touches), by ``verify``,
``rebuild --as-of`` and the facade.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import msgspec

from memsync.events import (
    SCOPE_FIELDS,
    Entity,
    MemoriesDeleted,
    MemoriesReset,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    RecordedEvent,
    Relation,
    normalize_name,
    pack_vector,
)

Fact = tuple[str, str, str]


class MemoryState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One live memory as of ``seq`` (the last event that touched it).

    ``gc=False`` as :class:`~memsync.events.RecordedEvent`: plain data, and a
    fold holds every live memory.
    """

    memory_id: str
    text: str
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    vector: bytes | None = None
    entities: tuple[tuple[str, str | None], ...] = ()
    relations: tuple[Fact, ...] = ()
    version: int
    seq: int
    created_at: datetime
    updated_at: datetime

    @property
    def scope(self) -> tuple[str, str]:
        """The field that scopes this memory's entities: user, else agent, else run."""
        for name in SCOPE_FIELDS:
            value = getattr(self, name)
            if value:
                return name, value
        raise AssertionError(f"memory {self.memory_id!r} has no scope")  # refused at append

    @property
    def mentions(self) -> dict[str, str | None]:
        """Normalized entity name -> type: its entities plus relation endpoints."""
        out: dict[str, str | None] = dict(self.entities)
        for source, _, target in self.relations:
            out.setdefault(source, None)
            out.setdefault(target, None)
        return out

    def entity_key(self, name: str) -> str:
        return entity_key(*self.scope, name)

    def matches(self, scope: dict[str, str]) -> bool:
        return all(getattr(self, k) == v for k, v in scope.items())


def entity_key(scope_field: str, scope_value: str, name: str) -> str:
    """Unambiguous, readable key of an entity within its scope."""
    return json.dumps([scope_field, scope_value, name], ensure_ascii=False, separators=(",", ":"))


def normalize_entities(entities: Iterable[Entity]) -> tuple[tuple[str, str | None], ...]:
    """Deduplicate by normalized name; of several types the smallest wins."""
    types: dict[str, str | None] = {}
    for entity in entities:
        name = normalize_name(entity.name)
        old = types.get(name)
        new = entity.type
        types[name] = new if old is None else (old if new is None else min(old, new))
    return tuple(sorted(types.items()))


def normalize_relations(relations: Iterable[Relation]) -> tuple[Fact, ...]:
    facts = {(normalize_name(r.source), normalize_name(r.relation), normalize_name(r.target)) for r in relations}
    return tuple(sorted(facts))


def scope_of(event: MemoriesDeleted) -> dict[str, str]:
    return {k: v for k in SCOPE_FIELDS if (v := getattr(event, k))}


class State:
    """Live memories by id, and the last seq applied.

    Change it through :meth:`apply` and :meth:`put` (``memories`` is for
    reading): a delete-all finds its memories through an index by scope field,
    built at the first delete-all and kept up to date by those two methods.

    ``graph=False`` leaves out the entities and relations (a vector store's
    rebuild needs neither; normalizing them is a fifth of its fold).
    """

    def __init__(self, memories: dict[str, MemoryState] | None = None, *, graph: bool = True) -> None:
        self.memories: dict[str, MemoryState] = memories if memories is not None else {}
        self.seq = 0
        self.graph = graph
        self._by_scope: dict[tuple[str, str], set[str]] | None = None

    def __len__(self) -> int:
        return len(self.memories)

    def __iter__(self) -> Iterator[MemoryState]:
        return iter(self.memories.values())

    def put(self, memory: MemoryState) -> None:
        """Set one memory's state (e.g. folded from its own stream)."""
        self._drop(memory.memory_id)
        self.memories[memory.memory_id] = memory
        if self._by_scope is not None:
            self._index(memory)

    def apply(self, record: RecordedEvent) -> list[str]:
        """Apply one recorded event; return the memory ids it changed."""
        event = record.event
        self.seq = record.seq
        if isinstance(event, MemoryAdded):
            self.put(_added(record, event, graph=self.graph))
            return [event.memory_id]
        if isinstance(event, MemoryUpdated):
            old = self.memories.get(event.memory_id)
            if old is not None:  # the scope never changes: the index stays right
                self.memories[event.memory_id] = _updated(old, record, event, graph=self.graph)
            return [event.memory_id]
        if isinstance(event, MemoryDeleted):
            self._drop(event.memory_id)
            return [event.memory_id]
        if isinstance(event, MemoriesDeleted):
            gone = self._matching(scope_of(event))
            for memory_id in gone:
                self._drop(memory_id)
            return gone
        assert isinstance(event, MemoriesReset)
        gone = list(self.memories)
        self.memories.clear()
        self._by_scope = None
        return gone

    def _matching(self, scope: dict[str, str]) -> list[str]:
        """The live memories a delete-all of ``scope`` removes (sorted by id)."""
        if self._by_scope is None:
            self._by_scope = {}
            for memory in self.memories.values():
                self._index(memory)
        candidates = min((self._by_scope.get(item, set()) for item in scope.items()), key=len, default=set())
        return sorted(m for m in candidates if self.memories[m].matches(scope))

    def _index(self, memory: MemoryState) -> None:
        assert self._by_scope is not None
        for field in SCOPE_FIELDS:
            value = getattr(memory, field)
            if value:
                self._by_scope.setdefault((field, value), set()).add(memory.memory_id)

    def _drop(self, memory_id: str) -> None:
        memory = self.memories.pop(memory_id, None)
        if memory is None or self._by_scope is None:
            return
        for field in SCOPE_FIELDS:
            value = getattr(memory, field)
            if value:
                self._by_scope[(field, value)].discard(memory_id)


def _added(record: RecordedEvent, event: MemoryAdded, *, graph: bool) -> MemoryState:
    return MemoryState(
        memory_id=event.memory_id,
        text=event.text,
        user_id=event.user_id,
        agent_id=event.agent_id,
        run_id=event.run_id,
        metadata=dict(event.metadata or {}),
        vector=_vector_bytes(record, event.vector),
        entities=normalize_entities(event.entities) if graph and event.entities else (),
        relations=normalize_relations(event.relations) if graph and event.relations else (),
        version=record.version or 1,
        seq=record.seq,
        created_at=record.recorded_at,
        updated_at=record.recorded_at,
    )


def _updated(old: MemoryState, record: RecordedEvent, event: MemoryUpdated, *, graph: bool) -> MemoryState:
    changes: dict[str, Any] = {
        "version": record.version or old.version + 1,
        "seq": record.seq,
        "updated_at": record.recorded_at,
    }
    if event.text is not None:
        changes["text"] = event.text
    if event.metadata is not None:
        changes["metadata"] = dict(event.metadata)
    if event.vector is not None or record.vector_f32 is not None:  # replayed events carry only the bytes
        changes["vector"] = _vector_bytes(record, event.vector)
    if graph and event.entities is not None:
        changes["entities"] = normalize_entities(event.entities)
    if graph and event.relations is not None:
        changes["relations"] = normalize_relations(event.relations)
    return msgspec.structs.replace(old, **changes)


def _vector_bytes(record: RecordedEvent, vector: list[float] | None) -> bytes | None:
    if record.vector_f32 is not None:
        return record.vector_f32
    return None if vector is None else pack_vector(vector)


def fold(records: Iterable[RecordedEvent], state: State | None = None) -> State:
    """Fold recorded events (in seq order) into the live state."""
    state = state if state is not None else State()
    for record in records:
        state.apply(record)
    return state


# ---------------------------------------------------------------- graph view


class GraphView(msgspec.Struct, kw_only=True):
    """What the graph store must hold for a state (used by verify and bulk load)."""

    entities: dict[str, tuple[str, str | None, str, str]]  # key -> (name, type, scope field, value)
    mentions: set[tuple[str, str]]  # (memory_id, entity key)
    relates: set[tuple[str, str, str, str]]  # (source key, relation, target key, memory_id)


def graph_view(memories: Iterable[MemoryState]) -> GraphView:
    """Entities (typed by the smallest type among live mentions), edges and facts."""
    entities: dict[str, tuple[str, str | None, str, str]] = {}
    mentions: set[tuple[str, str]] = set()
    relates: set[tuple[str, str, str, str]] = set()
    for memory in memories:
        field, value = memory.scope
        for name, typ in memory.mentions.items():
            key = entity_key(field, value, name)
            mentions.add((memory.memory_id, key))
            old = entities.get(key)
            if old is None or (typ is not None and (old[1] is None or typ < old[1])):
                entities[key] = (name, typ, field, value)
        for source, relation, target in memory.relations:
            relates.add(
                (
                    entity_key(field, value, source),
                    relation,
                    entity_key(field, value, target),
                    memory.memory_id,
                )
            )
    return GraphView(entities=entities, mentions=mentions, relates=relates)
