"""The Memory facade: mem0's verbs over the event log.

Every write is one atomic append to the log; the stores are projections of it.
Reads:

* ``get``, ``get_all`` and ``history`` read the **log** (folding only the
  streams they need), so they are always exact and never lag;
* ``search`` reads the **stores** (vector hits, graph facts). With the default
  ``consistency = "inline"`` the facade projects each write before returning,
  so a search sees the caller's own writes (read-your-writes). With ``"wait"``
  a write waits until a follower process has projected it; with ``"async"`` a
  search may lag the log by the projector's lag (see ``status``).

A failed inline projection never fails the write: the write is durable in the
log, the store catches up on the next write or ``memsync project``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from memsync.config import MemsyncConfig, load_config
from memsync.embeddings import Embedder, make_embedder
from memsync.errors import CommandRefused, InputError, MemsyncError, StoreError
from memsync.events import (
    SCOPE_FIELDS,
    Entity,
    Event,
    MemoriesDeleted,
    MemoriesReset,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    RecordedEvent,
    Relation,
    check_event,
    format_time,
    normalize_name,
    parse_time,
)
from memsync.fold import MemoryState, State, fold
from memsync.history import memory_history
from memsync.hooks import Hooks
from memsync.locks import LOCK_WAIT
from memsync.log import LogQuery, encodable
from memsync.stores import GraphStore, VectorStore
from memsync.system import MemSync

logger = logging.getLogger("memsync.facade")

EntityLike = str | Entity | Mapping[str, Any]
RelationLike = Relation | Sequence[str] | Mapping[str, Any]
Extractor = Callable[[str], tuple[Sequence[EntityLike], Sequence[RelationLike]]]
EMBEDDING_MODEL_KEY = "embedding_model"
EMBEDDING_DIM_KEY = "embedding_dim"


class Memory:
    """mem0-style memory whose writes go through the event log."""

    def __init__(
        self,
        config: MemsyncConfig | None = None,
        *,
        system: MemSync | None = None,
        embedder: Embedder | str | None = "config",
        extractor: Extractor | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.config = config or (system.config if system else MemsyncConfig())
        self.hooks = hooks or (system.hooks if system else Hooks())
        self.system = system or MemSync(self.config, hooks=self.hooks)
        self.system.hooks = self.hooks
        if isinstance(embedder, str):
            embedder = make_embedder(self.config.facade.embedder if embedder == "config" else embedder)
        self.embedder: Embedder | None = embedder
        self.extractor = extractor
        self._project_locks = {kind: threading.Lock() for kind in ("vector", "graph")}

    @classmethod
    def from_config(
        cls,
        config: MemsyncConfig | Mapping[str, Any] | str | Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Memory:
        """Build from a config object, a dict, a TOML file path, or nothing (defaults).

        ``env`` (e.g. ``os.environ``) adds ``MEMSYNC_*`` settings; the library never
        reads the environment on its own.
        """
        if isinstance(config, MemsyncConfig):
            resolved = config
        elif isinstance(config, str | Path):
            resolved = load_config(Path(config), env=env)
        else:
            resolved = load_config(None, env=env, overrides=_flatten(dict(config or {})))
        return cls(resolved, **kwargs)

    # ------------------------------------------------------------ writes

    def add(
        self,
        text_or_messages: str | Sequence[Mapping[str, Any]],
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        vector: Sequence[float] | None = None,
        entities: Sequence[EntityLike] | None = None,
        relations: Sequence[RelationLike] | None = None,
        memory_id: str | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Add one memory (a text) or one per message (``[{"role", "content"}]``)."""
        items = _texts(text_or_messages)
        if memory_id is not None:
            _check_memory_id(memory_id)
        if len(items) > 1 and (memory_id is not None or vector is not None):
            raise InputError("`memory_id` and `vector` apply to a single text, not a list of messages")
        vectors = self._vectors([t for t, _ in items], vector)
        events: list[Event] = []
        for (text, role), vec in zip(items, vectors, strict=True):
            meta = _as_dict(metadata, "metadata") if metadata is not None else {}
            if role is not None:
                meta.setdefault("role", role)
            if vector is None and vec is not None and self.embedder is not None:
                meta[EMBEDDING_MODEL_KEY] = self.embedder.model
                meta[EMBEDDING_DIM_KEY] = self.embedder.dimension
            ents, rels = self._extract(text, entities, relations)
            events.append(
                check_event(
                    MemoryAdded(
                        memory_id=memory_id or str(uuid.uuid4()),
                        text=text,
                        user_id=user_id,
                        agent_id=agent_id,
                        run_id=run_id,
                        vector=vec,
                        metadata=meta or None,
                        entities=ents,
                        relations=rels,
                        actor=actor,
                        reason=reason,
                    )
                )
            )
        records = self._write(events)
        results = [{"id": r.memory_id, "memory": r.event.text, "event": "ADD", "seq": r.seq} for r in records]  # type: ignore[union-attr]
        facts = [_fact(rel) for e in events for rel in (e.relations or [])]  # type: ignore[union-attr]
        return {"results": results, "relations": facts}

    def add_many(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Add many memories in ONE atomic append (``items`` take ``add``'s keywords plus ``text``).

        Validated together: one bad item raises an error naming its index and nothing is recorded.
        """
        events: list[Event] = []
        items = _as_list(items, "items")
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise InputError(f"item {index}: must be a mapping of add's keywords", index=index)
        texts = [str(item.get("text", "")) for item in items]
        need = [i for i, item in enumerate(items) if item.get("vector") is None]
        embedded = self._embed([texts[i] for i in need]) if need and self.embedder else []
        vectors: dict[int, list[float]] = dict(zip(need, embedded, strict=False))
        for index, item in enumerate(items):
            try:
                unknown = set(item) - _ADD_MANY_KEYS
                if unknown:
                    raise InputError(f"unknown key(s) {sorted(unknown)}", field=sorted(unknown)[0])
                meta = _as_dict(item["metadata"], "metadata") if item.get("metadata") is not None else {}
                given_id = item.get("memory_id")
                if given_id is not None:
                    _check_memory_id(given_id)
                vec = item.get("vector")
                if vec is None and index in vectors and self.embedder is not None:
                    vec = vectors[index]
                    meta[EMBEDDING_MODEL_KEY] = self.embedder.model
                    meta[EMBEDDING_DIM_KEY] = self.embedder.dimension
                ents, rels = self._extract(texts[index], item.get("entities"), item.get("relations"))
                events.append(
                    check_event(
                        MemoryAdded(
                            memory_id=given_id or str(uuid.uuid4()),
                            text=texts[index],
                            user_id=item.get("user_id"),
                            agent_id=item.get("agent_id"),
                            run_id=item.get("run_id"),
                            vector=list(vec) if vec is not None else None,
                            metadata=meta or None,
                            entities=ents,
                            relations=rels,
                            actor=item.get("actor"),
                            occurred_at=_occurred(item.get("occurred_at")),
                            reason=item.get("reason"),
                        )
                    )
                )
            except InputError as e:
                raise InputError(f"item {index}: {e.detail}", field=e.field, index=index) from None
            except (TypeError, ValueError) as e:
                raise InputError(f"item {index}: {e}", index=index) from None
        records = self._write(events)
        return {"results": [{"id": r.memory_id, "event": "ADD", "seq": r.seq} for r in records]}

    def import_mem0(self, data: Any, *, actor: str | None = "mem0-import") -> dict[str, Any]:
        """Import a mem0 1.x export (``{"results": [...]}``, a list, or items) in one atomic append.

        Each item's ``id``, ``memory``, ``user_id``/``agent_id``/``run_id``, ``metadata`` and
        ``created_at`` are kept (mem0's ``hash`` goes into metadata as ``mem0_hash``);
        vectors are computed by this Memory's embedder, as mem0 exports carry none.
        """
        items = data.get("results", data.get("memories")) if isinstance(data, Mapping) else data
        if not isinstance(items, Sequence) or isinstance(items, str | bytes):
            raise InputError("a mem0 export is {'results': [...]} or a list of memories", field="results")
        converted = []
        for index, item in enumerate(items):
            if not isinstance(item, Mapping) or not isinstance(item.get("memory"), str):
                raise InputError(f"item {index}: a mem0 memory needs a string `memory`", field="memory", index=index)
            try:
                metadata = _as_dict(item["metadata"], "metadata") if item.get("metadata") is not None else {}
            except InputError as e:
                raise InputError(f"item {index}: {e.detail}", field=e.field, index=index) from None
            if item.get("hash"):
                metadata["mem0_hash"] = item["hash"]
            converted.append(
                {
                    "memory_id": str(item["id"]) if item.get("id") is not None else None,
                    "text": item["memory"],
                    "user_id": item.get("user_id"),
                    "agent_id": item.get("agent_id"),
                    "run_id": item.get("run_id"),
                    "metadata": metadata or None,
                    "occurred_at": item.get("created_at"),
                    "actor": actor,
                    "reason": "imported from mem0",
                }
            )
        return self.add_many(converted)

    def update(
        self,
        memory_id: str,
        text: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        vector: Sequence[float] | None = None,
        entities: Sequence[EntityLike] | None = None,
        relations: Sequence[RelationLike] | None = None,
        expected_version: int | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Update one memory; each given field replaces the old value."""
        current = self._state(memory_id)
        if text is not None and not isinstance(text, str):
            raise InputError(f"`text` must be a string, not {type(text).__name__}", field="text")
        new_vector = _as_list(vector, "vector") if vector is not None else None
        meta = _as_dict(metadata, "metadata") if metadata is not None else None
        if text is not None and new_vector is None and self.embedder is not None:
            new_vector = self._embed([text])[0]
            meta = dict(meta if meta is not None else (current.metadata if current else {}))
            meta[EMBEDDING_MODEL_KEY] = self.embedder.model
            meta[EMBEDDING_DIM_KEY] = self.embedder.dimension
        elif meta is not None and current is not None and vector is None:
            for key in (EMBEDDING_MODEL_KEY, EMBEDDING_DIM_KEY):  # the vector stays, so does its provenance
                if key in current.metadata:
                    meta.setdefault(key, current.metadata[key])
        if text is not None and entities is None and relations is None and self.extractor is not None:
            extracted_entities, extracted_relations = self._extract(text, None, None)
            entities, relations = extracted_entities, extracted_relations
        ents, rels = entities, relations
        event = check_event(
            MemoryUpdated(
                memory_id=memory_id,
                text=text,
                metadata=meta,
                vector=new_vector,
                entities=_entities(ents) if ents is not None else None,
                relations=_relations(rels) if rels is not None else None,
                expected_version=expected_version,
                actor=actor,
                reason=reason,
            )
        )
        record = self._write([event])[0]
        return {
            "id": memory_id,
            "memory": text,
            "event": "UPDATE",
            "version": record.version,
            "seq": record.seq,
            "message": "Memory updated successfully!",
        }

    def delete(self, memory_id: str, *, actor: str | None = None, reason: str | None = None) -> dict[str, Any]:
        record = self._write([MemoryDeleted(memory_id=memory_id, actor=actor, reason=reason)])[0]
        return {"id": memory_id, "event": "DELETE", "seq": record.seq, "message": "Memory deleted successfully!"}

    def delete_all(
        self,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        if not _scope_fields(user_id, agent_id, run_id):
            raise InputError(
                "delete_all needs at least one of user_id, agent_id, run_id; use reset() to delete everything",
                field="user_id",
            )
        event = MemoriesDeleted(user_id=user_id, agent_id=agent_id, run_id=run_id, actor=actor, reason=reason)
        record = self._write([event])[0]
        return {"seq": record.seq, "message": "Memories deleted successfully!"}

    def reset(self, *, actor: str | None = None, reason: str | None = None) -> dict[str, Any]:
        record = self._write([MemoriesReset(actor=actor, reason=reason)])[0]
        return {"seq": record.seq, "message": "Memory store reset successfully!"}

    # ------------------------------------------------------------ reads

    def get(self, memory_id: str) -> dict[str, Any] | None:
        state = self._state(memory_id)
        return _item(state) if state is not None else None

    def get_all(
        self,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        filters: Mapping[str, Any] | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        scope = _scope(user_id, agent_id, run_id, "get_all")
        filters, limit = _filters(filters), _limit(limit)
        memories = [m for m in self._scoped_states(scope) if _metadata_matches(m, filters)]
        memories.sort(key=lambda m: (m.updated_at, m.seq), reverse=True)
        return {"results": [_item(m) for m in memories[:limit]]}

    def search(
        self,
        query: str | Sequence[float],
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        filters: Mapping[str, Any] | None = None,
        limit: int = 10,
        threshold: float | None = None,
    ) -> dict[str, Any]:
        """Vector hits within the scope, plus the graph facts around the matched entities."""
        scope = _scope(user_id, agent_id, run_id, "search")
        filters, limit = _filters(filters), _limit(limit)
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
            raise InputError(f"`threshold` must be a number, not {type(threshold).__name__}", field="threshold")
        if isinstance(query, str):
            if self.embedder is None:
                raise InputError("search by text needs an embedder (or pass a vector)", field="query")
            vector = self._embed([query])[0]
        else:
            vector = _floats(query, "query")
            known = self.system.log.dimension()
            if known is not None and len(vector) != known:
                problem = f"`query` has dimension {len(vector)}, but this log's vectors have {known}"
                raise InputError(problem, field="query")
        store = self.system.store("vector")
        assert isinstance(store, VectorStore)
        hits = store.search(vector, scope=scope, filters=dict(filters or {}), limit=limit, threshold=threshold)
        results = []
        for hit in hits:
            item = _payload_item(hit.payload)
            item["score"] = hit.score
            results.append(item)
        return {"results": results, "relations": self._relations_for(query, scope, [h.memory_id for h in hits])}

    def history(self, memory_id: str) -> list[dict[str, Any]]:
        _check_memory_id(memory_id)
        entries = memory_history(memory_id, self.system.log.read_stream(memory_id))
        for entry in entries:
            entry["id"] = entry["event_id"]
            entry["created_at"] = entry["recorded_at"]
            entry["is_deleted"] = entry["event"] == "DELETE"
        return entries

    def wait_for(self, seq: int, timeout: float | None = None) -> None:
        """Block until every projection has applied ``seq`` (for ``consistency = "async"``)."""
        self.system.wait_for(seq, timeout or self.config.facade.wait_timeout)

    def close(self) -> None:
        self.system.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _write(self, events: list[Event]) -> list[RecordedEvent]:
        self.hooks.emit("before_append", events=events)
        try:
            records = self.system.log.append(events)
        except (CommandRefused, InputError) as e:
            self.hooks.emit("append_refused", events=events, error=e)
            raise
        self.hooks.emit("after_append", records=records)
        mode = self.config.facade.consistency
        if mode == "inline":
            self._project_inline()
        elif mode == "wait" and records:
            self.system.wait_for(records[-1].seq, self.config.facade.wait_timeout)
        return records

    def _project_inline(self) -> None:
        token = LOCK_WAIT.set(0.0)  # a store another process follows is its job, not this write's
        try:
            self._project_all()
        finally:
            LOCK_WAIT.reset(token)

    def _project_all(self) -> None:
        for kind in self.system.kinds:
            with self._project_locks[kind]:
                try:
                    self.system.runner(kind).catch_up()
                except MemsyncError as e:
                    logger.warning(
                        "inline %s projection failed; the log has the write, the store will catch up: %s", kind, e
                    )

    def _state(self, memory_id: str) -> MemoryState | None:
        _check_memory_id(memory_id)
        return fold(self.system.log.read_stream(memory_id)).memories.get(memory_id)

    def _scoped_states(self, scope: dict[str, str]) -> list[MemoryState]:
        log = self.system.log
        ids = {
            r.memory_id
            for r in log.query(
                LogQuery(user_id=scope.get("user_id"), agent_id=scope.get("agent_id"), run_id=scope.get("run_id"))
            )
            if r.memory_id is not None
        }
        state: State = fold(log.read_streams(sorted(ids), until_seq=log.head().seq))
        return [m for m in state if m.matches(scope)]

    def _embed(self, texts: list[str]) -> list[list[float]]:
        assert self.embedder is not None
        return self.embedder.embed(texts)

    def _vectors(self, texts: list[str], vector: Sequence[float] | None) -> list[list[float] | None]:
        if vector is not None:
            return [_as_list(vector, "vector")]
        if self.embedder is None:
            return [None] * len(texts)
        return list(self._embed(texts))

    def _extract(
        self, text: str, entities: Sequence[EntityLike] | None, relations: Sequence[RelationLike] | None
    ) -> tuple[list[Entity] | None, list[Relation] | None]:
        if entities is None and relations is None and self.extractor is not None:
            entities, relations = self.extractor(text)
        return (
            _entities(entities) if entities is not None else None,
            _relations(relations) if relations is not None else None,
        )

    def _relations_for(self, query: Any, scope: dict[str, str], hit_ids: list[str]) -> list[dict[str, str]]:
        if "graph" not in self.system.kinds:
            return []
        names: set[str] = set()
        if isinstance(query, str) and self.extractor is not None:
            ents, rels = self._extract(query, None, None)
            names.update(e.name for e in ents or [])
            names.update(n for r in rels or [] for n in (r.source, r.target))
        if hit_ids:
            log = self.system.log
            for memory in fold(log.read_streams(hit_ids, until_seq=log.head().seq)):
                names.update(memory.mentions)
        if not names:
            return []
        field = next(k for k in SCOPE_FIELDS if k in scope)
        try:
            store = self.system.store("graph")
            assert isinstance(store, GraphStore)
            facts = store.relations(sorted({normalize_name(n) for n in names}), scope=(field, scope[field]))
        except StoreError as e:  # the vector hits are still right; only the graph facts are missing
            logger.warning(
                "graph store unavailable, search returns no relations: %s",
                e,
                extra={"projection": "graph", "error_class": type(e).__name__},
            )
            return []
        return [{"source": s, "relationship": r, "destination": t} for s, r, t in facts]


_ADD_MANY_KEYS = {
    "occurred_at",
    "text",
    "user_id",
    "agent_id",
    "run_id",
    "metadata",
    "vector",
    "entities",
    "relations",
    "memory_id",
    "actor",
    "reason",
}


class AsyncMemory:
    """:class:`Memory` with every method a coroutine (run in worker threads)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._memory = kwargs.pop("memory", None) or Memory(*args, **kwargs)

    @classmethod
    def from_config(cls, config: Any = None, **kwargs: Any) -> AsyncMemory:
        return cls(memory=Memory.from_config(config, **kwargs))

    @property
    def sync(self) -> Memory:
        return self._memory

    async def add(self, text_or_messages: Any, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(partial(self._memory.add, text_or_messages, **kwargs))

    async def add_many(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return await asyncio.to_thread(self._memory.add_many, items)

    async def update(self, memory_id: str, text: str | None = None, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(partial(self._memory.update, memory_id, text, **kwargs))

    async def delete(self, memory_id: str, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(partial(self._memory.delete, memory_id, **kwargs))

    async def delete_all(self, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(partial(self._memory.delete_all, **kwargs))

    async def reset(self, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(partial(self._memory.reset, **kwargs))

    async def get(self, memory_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._memory.get, memory_id)

    async def get_all(self, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(partial(self._memory.get_all, **kwargs))

    async def search(self, query: str | Sequence[float], **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(partial(self._memory.search, query, **kwargs))

    async def history(self, memory_id: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._memory.history, memory_id)

    async def wait_for(self, seq: int, timeout: float | None = None) -> None:
        await asyncio.to_thread(self._memory.wait_for, seq, timeout)

    async def close(self) -> None:
        await asyncio.to_thread(self._memory.close)

    async def __aenter__(self) -> AsyncMemory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ---------------------------------------------------------------- helpers


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value) if isinstance(value, Path) else value
    return out


def _occurred(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise InputError("`occurred_at` must be an RFC 3339 time", field="occurred_at")
    return parse_time(value, field="occurred_at")


def _texts(value: str | Sequence[Mapping[str, Any]]) -> list[tuple[str, str | None]]:
    if isinstance(value, str):
        return [(value, None)]
    out = []
    for i, message in enumerate(_as_list(value, "messages")):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            raise InputError(f"messages[{i}] must be {{'role': ..., 'content': str}}", field=f"messages[{i}]")
        if message.get("role") != "system" and message["content"].strip():
            out.append((message["content"], message.get("role")))
    if not out:
        raise InputError("no text to remember in the messages", field="messages")
    return out


def _scope(user_id: str | None, agent_id: str | None, run_id: str | None, verb: str) -> dict[str, str]:
    scope = _scope_fields(user_id, agent_id, run_id)
    if not scope:
        raise InputError(f"{verb} needs at least one of user_id, agent_id, run_id", field="user_id")
    return scope


def _scope_fields(user_id: Any, agent_id: Any, run_id: Any) -> dict[str, str]:
    """The given scope fields (empty ones dropped); each must be a string."""
    given = {k: v for k, v in (("user_id", user_id), ("agent_id", agent_id), ("run_id", run_id)) if v is not None}
    for key, value in given.items():
        if not isinstance(value, str):
            raise InputError(f"`{key}` must be a string, not {type(value).__name__}", field=key)
    return {k: v for k, v in given.items() if v}


def _entities(values: Sequence[EntityLike]) -> list[Entity]:
    out = []
    for i, value in enumerate(_as_list(values, "entities")):
        if isinstance(value, Entity):
            out.append(value)
        elif isinstance(value, str):
            out.append(Entity(name=value))
        elif isinstance(value, Mapping) and isinstance(value.get("name"), str):
            out.append(Entity(name=value["name"], type=value.get("type")))
        else:
            raise InputError(f"entities[{i}] must be a name or {{'name', 'type'}}", field=f"entities[{i}]")
    return out


def _relations(values: Sequence[RelationLike]) -> list[Relation]:
    out: list[Relation] = []
    for i, value in enumerate(_as_list(values, "relations")):
        if isinstance(value, Relation):
            out.append(value)
        elif isinstance(value, Mapping):
            source = value.get("source")
            relation = value.get("relation", value.get("relationship"))
            target = value.get("target", value.get("destination"))
            if not all(isinstance(x, str) for x in (source, relation, target)):
                raise InputError(f"relations[{i}] needs source, relation, target", field=f"relations[{i}]")
            out.append(Relation(source=source, relation=relation, target=target))  # type: ignore[arg-type]
        elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
            if not all(isinstance(x, str) for x in value):
                raise InputError(f"relations[{i}] must be three strings", field=f"relations[{i}]")
            out.append(Relation(source=value[0], relation=value[1], target=value[2]))
        else:
            raise InputError(f"relations[{i}] must be (source, relation, target)", field=f"relations[{i}]")
    return out


def _as_list(value: Any, field: str) -> list[Any]:
    """A list from a list-like argument (list, tuple, numpy array); anything else is an InputError."""
    if isinstance(value, str | bytes | Mapping | Set) or not isinstance(value, Iterable):
        raise InputError(f"`{field}` must be a list, not {type(value).__name__}", field=field)
    return list(value)


def _as_dict(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InputError(f"`{field}` must be a mapping, not {type(value).__name__}", field=field)
    return dict(value)


def _floats(value: Any, field: str) -> list[float]:
    values = _as_list(value, field)
    if not values or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in values):
        raise InputError(f"`{field}` must be a non-empty list of numbers", field=field)
    out = [float(x) for x in values]
    if not all(map(math.isfinite, out)):
        raise InputError(f"`{field}` must hold finite numbers", field=field)
    return out


def _filters(value: Any) -> dict[str, Any]:
    filters = _as_dict(value, "filters") if value is not None else {}
    if not all(isinstance(k, str) for k in filters):
        raise InputError("`filters` keys must be strings", field="filters")
    return filters


def _limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"`limit` must be a non-negative integer, not {value!r}", field="limit")
    return value


def _check_memory_id(memory_id: Any) -> None:
    if not isinstance(memory_id, str):
        raise InputError(f"`memory_id` must be a string, not {type(memory_id).__name__}", field="memory_id")
    if not encodable(memory_id):
        raise InputError("`memory_id` is not valid text (a lone surrogate: undecodable bytes?)", field="memory_id")


def _fact(rel: Any) -> dict[str, str]:
    return {"source": rel.source, "relationship": rel.relation, "destination": rel.target}


def _metadata_matches(memory: MemoryState, filters: Mapping[str, Any] | None) -> bool:
    return all(memory.metadata.get(k) == v for k, v in (filters or {}).items())


def _item(memory: MemoryState) -> dict[str, Any]:
    return {
        "id": memory.memory_id,
        "memory": memory.text,
        "metadata": memory.metadata,
        "user_id": memory.user_id,
        "agent_id": memory.agent_id,
        "run_id": memory.run_id,
        "created_at": format_time(memory.created_at),
        "updated_at": format_time(memory.updated_at),
        "version": memory.version,
        "entities": [{"name": n, "type": t} for n, t in memory.mentions.items()],
        "relations": [{"source": s, "relationship": r, "destination": t} for s, r, t in memory.relations],
        "vector_dim": len(memory.vector) // 4 if memory.vector else None,
    }


def _payload_item(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": payload["memory_id"],
        "memory": payload["text"],
        "metadata": payload.get("metadata") or {},
        "user_id": payload.get("user_id"),
        "agent_id": payload.get("agent_id"),
        "run_id": payload.get("run_id"),
        "created_at": payload.get("created_at"),
        "updated_at": payload.get("updated_at"),
        "version": payload.get("version"),
    }
