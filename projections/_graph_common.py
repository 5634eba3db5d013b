"""What the Cypher graph stores (LadybugDB, Neo4j) share: the graph algorithm and its Cypher.

:class:`CypherGraphStore` implements :class:`~memsync.stores.GraphStore` on top of
two backend primitives — a write transaction and a read transaction — so both
backends run the same statements in the same order and a contract suite
checks them once.

An ``apply`` runs in one transaction with the checkpoint:

1. :func:`net_effect` folds the ops into ``memory_id -> state or None``
   (``Reset`` and ``DeleteScope`` are resolved against the store inside the
   transaction, so every op sees the effects of the ones before it);
2. a memory whose Upsert carries ``before`` (the projector vouches the store
   holds that state) with the same scope, entities and relations only gets its
   node's properties set; for the others, find which are in the store (by
   primary key; for those with a ``before`` it is known) and the entities they
   mention (from ``before``, else by walking from the node); for those only,
   delete their RELATES (by ``memory_id``) and MENTIONS, and their node if it
   is gone (in a follow workload most memories of a batch are new or keep
   their edges, so usually nothing runs here);
3. update the live memories found in step 2 and CREATE the others and the new
   entities they mention (CREATE, not MERGE: the batch knows which are new;
   one lookup by key finds the stored entities), then MATCH … CREATE
   their MENTIONS (carrying the memory's type for the entity) and RELATES
   (nodes first, relationships after: one ``UNWIND … MERGE node … MERGE rel``
   statement is wrong on LadybugDB);
4. keep each entity's ``type`` the smallest type on its MENTIONS, so any order
   of events gives the same graph: a new entity is created with it, one that
   only gained mentions gets the smaller of its stored type and the batch's,
   and one that lost a mention is recomputed from its MENTIONS — or deleted
   when no memory mentions it any more (no orphans); only changed types are set;
5. write the checkpoint node ``(:MemsyncCheckpoint {name: 'graph', seq})``.

Batches are passed as one list of rows (``UNWIND $rows AS x``): names,
relations and texts are always parameters, never query text. Statements that
write and return nothing go through :meth:`Tx.write`, which a backend may send
together with the ones after them (Neo4j does: a statement is a round trip);
so what step 3 reads of the entities is read before step 2 writes.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from itertools import islice
from typing import Any, Protocol, TypeVar

from memsync.errors import StoreError
from memsync.events import SCOPE_FIELDS, normalize_name
from memsync.fold import Fact, MemoryState, entity_key
from memsync.stores import (
    Delete,
    DeleteScope,
    GraphEntity,
    GraphMemory,
    GraphSnapshot,
    GraphStore,
    Op,
    Reset,
    Upsert,
)

CHECKPOINT_NAME = "graph"
BATCH_ROWS = 5_000  # rows per statement (see CypherGraphStore._batch)

Row = dict[str, Any]
T = TypeVar("T")


class Tx(Protocol):
    """One open transaction of a backend."""

    def run(self, query: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
        """Run one statement; return its rows (each a list of column values)."""

    def write(self, query: str, params: dict[str, Any] | None = None) -> None:
        """Run a statement whose rows are not needed: a backend may send it with the next one (or the commit),
        but every statement runs, in order, before the next ``run`` and the commit."""


# ---------------------------------------------------------------- batch shaping


def net_effect(
    ops: Sequence[Op],
    *,
    scope_ids: Callable[[dict[str, str]], list[str]],
    clear: Callable[[], None],
) -> dict[str, MemoryState | None]:
    """Fold ``ops`` into what must change: memory id -> its final state, or None if gone.

    ``clear`` wipes the store's data at a ``Reset`` and ``scope_ids`` lists the
    stored memories matching a scope; both run at the op's place in the batch,
    after the earlier ``Reset``s and before any pending upsert is written.
    """
    pending: dict[str, MemoryState | None] = {}
    for op in ops:
        if isinstance(op, Upsert):
            pending[op.memory.memory_id] = op.memory
        elif isinstance(op, Delete):
            pending[op.memory_id] = None
        elif isinstance(op, DeleteScope):
            check_scope(op.scope)
            for memory_id in scope_ids(op.scope):
                pending.setdefault(memory_id, None)  # a pending state decides for itself, below
            for memory_id, memory in pending.items():
                if memory is not None and memory.matches(op.scope):
                    pending[memory_id] = None
        else:
            assert isinstance(op, Reset), op
            clear()
            pending.clear()
    return pending


def check_scope(scope: dict[str, str]) -> None:
    """Scope keys become property names in query text: only the known fields pass."""
    unknown = sorted(set(scope) - set(SCOPE_FIELDS))
    if unknown or not scope:
        raise StoreError(f"invalid scope {scope!r}: give one or more of {', '.join(SCOPE_FIELDS)}")


def scope_where(scope: dict[str, str], var: str = "m") -> tuple[str, dict[str, Any]]:
    """A WHERE condition matching every given scope field (values are parameters)."""
    check_scope(scope)
    fields = [f for f in SCOPE_FIELDS if f in scope]
    return " AND ".join(f"{var}.{f} = ${f}" for f in fields), {f: scope[f] for f in fields}


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def smaller_type(old: str | None, new: str | None) -> str | None:
    """The entity type rule: the smallest non-null type wins."""
    if old is None:
        return new
    return old if new is None else min(old, new)


def memory_row(memory: MemoryState) -> Row:
    """A Memory node's properties, in its property order."""
    return {
        "memory_id": memory.memory_id,
        "text": memory.text,
        "user_id": memory.user_id,
        "agent_id": memory.agent_id,
        "run_id": memory.run_id,
        "version": memory.version,
        "seq": memory.seq,
    }


def vouched(ops: Sequence[Op], pending: dict[str, MemoryState | None]) -> dict[str, MemoryState]:
    """Memory id -> the state the projector vouches the store holds (an Upsert's or a Delete's ``before``)."""
    out = {}
    for op in ops:
        if isinstance(op, Upsert | Delete) and op.before is not None:
            memory_id, now = (op.memory.memory_id, op.memory) if isinstance(op, Upsert) else (op.memory_id, None)
            if memory_id in pending and pending[memory_id] is now:  # the op that decided the memory's fate
                out[memory_id] = op.before
    return out


def edges(memory: MemoryState) -> tuple[Any, ...]:
    """What decides a memory's MENTIONS and RELATES."""
    return memory.scope, memory.entities, memory.relations


class GraphRows:
    """The rows a set of live memories puts in the graph (dicts in each table's property order)."""

    def __init__(self, keys: dict[tuple[str, str, str], str] | None = None) -> None:
        self._keys = keys if keys is not None else {}  # memo of entity_key (JSON encoding is slow)
        self.memories: list[Row] = []
        self.entities: dict[str, tuple[str, str | None, str, str]] = {}  # key -> (name, type, field, value)
        self.mentions: list[Row] = []  # memory_id, key, type
        self.relates: list[Row] = []  # source, target, relation, memory_id

    @classmethod
    def of(cls, memories: Iterable[MemoryState], keys: dict[tuple[str, str, str], str] | None = None) -> GraphRows:
        rows = cls(keys)
        for memory in memories:
            rows.add(memory)
        return rows

    def add(self, memory: MemoryState) -> None:
        self.memories.append(memory_row(memory))
        field, value = memory.scope
        for name, typ in memory.mentions.items():
            key = self.key(field, value, name)
            old = self.entities.get(key)
            self.entities[key] = (name, smaller_type(old[1], typ) if old else typ, field, value)
            self.mentions.append({"memory_id": memory.memory_id, "key": key, "type": typ})
        for source, relation, target in memory.relations:
            self.relates.append(
                {
                    "source": self.key(field, value, source),
                    "target": self.key(field, value, target),
                    "relation": relation,
                    "memory_id": memory.memory_id,
                }
            )

    def key(self, field: str, value: str, name: str) -> str:
        memo = (field, value, name)
        key = self._keys.get(memo)
        if key is None:
            key = self._keys[memo] = entity_key(field, value, name)
        return key

    def entity_rows(self, keys: Iterable[str] | None = None) -> list[Row]:
        """Entity rows (all, or the given keys) in the Entity node's property order."""
        rows = []
        for key in self.entities if keys is None else keys:
            name, typ, field, value = self.entities[key]
            rows.append(
                {"key": key, "name": name, "type": typ, **{f: value if f == field else None for f in SCOPE_FIELDS}}
            )
        return rows


class BulkRows:
    """Streams a fresh build in chunks while keeping entity types exact.

    Each chunk carries only entities not seen before (typed as known so far);
    :meth:`retyped` lists, at the end, those whose type changed since.
    """

    def __init__(self) -> None:
        self._copied: dict[str, str | None] = {}  # key -> type as first written
        self._types: dict[str, str | None] = {}  # key -> type now
        self._keys: dict[tuple[str, str, str], str] = {}

    def chunk(self, memories: Iterable[MemoryState]) -> tuple[GraphRows, list[Row]]:
        rows = GraphRows.of(memories, self._keys)
        new = []
        for key, (_, typ, _, _) in rows.entities.items():
            if key in self._types:
                self._types[key] = smaller_type(self._types[key], typ)
            else:
                self._types[key] = self._copied[key] = typ
                new.append(key)
        return rows, rows.entity_rows(new)

    def retyped(self) -> list[Row]:
        return [{"key": k, "type": t} for k, t in self._types.items() if t != self._copied[k]]


# ---------------------------------------------------------------- the store


class CypherGraphStore(GraphStore):
    """A :class:`GraphStore` over a transactional Cypher engine (see the module docstring)."""

    # -- backend primitives

    @abstractmethod
    def _write(self, what: str) -> AbstractContextManager[Tx]:
        """One write transaction: commits when the block ends, rolls back on error.

        Translates driver errors into StoreError / StoreUnavailable naming ``what``.
        """

    @abstractmethod
    def _read(self, what: str) -> AbstractContextManager[Tx]:
        """One read transaction over committed data (errors translated like :meth:`_write`)."""

    def _batch(self, tx: Tx, query: str, rows: list[Row]) -> None:
        """Run a statement over rows passed as ``$rows``, BATCH_ROWS at a time (none: skipped).

        Parameters are converted whole before a statement runs: a bounded list
        bounds the memory a large batch takes (e.g. the retyped entities of a bulk load).
        """
        for start in range(0, len(rows), BATCH_ROWS):
            tx.write(query, {"rows": rows[start : start + BATCH_ROWS]})

    # -- Projection / GraphStore

    def ping(self) -> bool:
        try:
            with self._read("ping") as tx:
                tx.run("RETURN 1")
            return True
        except Exception:
            return False

    def checkpoint(self) -> int:
        with self._read("reading the checkpoint") as tx:
            rows = tx.run(Q.CHECKPOINT, {"name": CHECKPOINT_NAME})
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def apply(self, ops: Sequence[Op], checkpoint: int) -> None:
        with self._write(f"applying {len(ops)} ops up to seq {checkpoint}") as tx:
            pending = net_effect(
                ops,
                scope_ids=lambda scope: self._scope_ids(tx, scope),
                clear=lambda: self._clear(tx),
            )
            if pending:
                self._replace(tx, pending, vouched(ops, pending))
            self._set_checkpoint(tx, checkpoint)

    def snapshot(self) -> GraphSnapshot:
        with self._read("reading a snapshot") as tx:
            memories = tx.run(Q.SNAPSHOT_MEMORIES)
            entities = tx.run(Q.SNAPSHOT_ENTITIES)
            mentions = tx.run(Q.SNAPSHOT_MENTIONS)
            relates = tx.run(Q.SNAPSHOT_RELATES)
        return GraphSnapshot(
            memories={row[0]: _graph_memory(row) for row in memories},
            entities={row[0]: _graph_entity(row) for row in entities},
            mentions={(m, k) for m, k in mentions},
            relates={(s, r, t, m) for s, r, t, m in relates},
        )

    def relations(self, names: Sequence[str], *, scope: tuple[str, str], limit: int = 50) -> list[Fact]:
        field, value = scope
        check_scope({field: value})
        keys = sorted({entity_key(field, value, normalize_name(n)) for n in names})
        if not keys or limit <= 0:
            return []
        facts: set[Fact] = set()
        with self._read("reading relations") as tx:
            for query in (Q.RELATIONS_FROM, Q.RELATIONS_TO):
                facts.update((s, r, t) for s, r, t in tx.run(query, {"keys": keys, "limit": limit}))
        return sorted(facts)[:limit]

    def counts(self) -> dict[str, int]:
        """One ``count()`` per kind of node and edge: duplicates count, unlike in the snapshot."""
        with self._read("counting") as tx:
            return {name: int(tx.run(query)[0][0]) for name, query in Q.COUNTS}

    def wipe(self) -> None:
        with self._write("wiping the graph") as tx:
            self._clear(tx)
            tx.write(Q.CLEAR_CHECKPOINT)

    def drop_entities(self, keys: Sequence[str]) -> None:
        if keys:
            with self._write(f"dropping {len(keys)} entities") as tx:
                tx.write(Q.DROP_ENTITIES, {"keys": list(keys)})

    # -- the algorithm

    def _scope_ids(self, tx: Tx, scope: dict[str, str]) -> list[str]:
        where, params = scope_where(scope)
        return [row[0] for row in tx.run(f"MATCH (m:Memory) WHERE {where} RETURN m.memory_id", params)]

    def _clear(self, tx: Tx) -> None:
        tx.write(Q.CLEAR_ENTITIES)
        tx.write(Q.CLEAR_MEMORIES)

    def _set_checkpoint(self, tx: Tx, seq: int) -> None:
        tx.write(Q.SET_CHECKPOINT, {"name": CHECKPOINT_NAME, "seq": seq})

    def _replace(self, tx: Tx, pending: dict[str, MemoryState | None], before: dict[str, MemoryState]) -> None:
        """Write ``pending``, given what the store holds of the memories in ``before`` (see :func:`vouched`).

        Where a memory's edges did not change, only its node is updated. The store
        is asked only about memories without a ``before``: first which are in it
        (a primary-key lookup), then what those mention (a walk that costs more).
        """
        same = {i: now for i, state in before.items() if (now := pending[i]) is not None and edges(state) == edges(now)}
        rewrite = [memory_id for memory_id in pending if memory_id not in same]
        rows = GraphRows.of(m for memory_id in rewrite if (m := pending[memory_id]) is not None)
        known_stored = [memory_id for memory_id in rewrite if memory_id in before]
        unknown = [memory_id for memory_id in rewrite if memory_id not in before]
        in_store = [row[0] for row in tx.run(Q.MEMORIES_IN_STORE, {"ids": unknown})] if unknown else []
        found = tx.run(Q.OLD_MENTIONS, {"ids": in_store}) if in_store else []
        old_keys = {key for _, key in found if key is not None}  # the entities they mentioned
        for memory_id in known_stored:
            state = before[memory_id]
            old_keys.update(rows.key(*state.scope, name) for name in state.mentions)
        # what the batch's entities are stored as: read before any write (none of them changes an entity)
        # so that a backend may send all the writes together (see Tx.write)
        entity_types = dict(tx.run(Q.ENTITY_TYPES, {"keys": list(rows.entities)})) if rows.entities else {}
        stored = known_stored + in_store
        if stored:  # in a follow workload most memories of a batch are new: then none of this runs
            tx.write(Q.DELETE_RELATES, {"ids": stored})
            tx.write(Q.DELETE_MENTIONS, {"ids": stored})
            gone = [i for i in stored if pending[i] is None]
            if gone:
                tx.write(Q.DELETE_MEMORIES, {"ids": gone})
        known = set(stored)
        updated = [memory_row(m) for m in same.values()]
        self._batch(tx, Q.UPDATE_MEMORIES, updated + [row for row in rows.memories if row["memory_id"] in known])
        self._batch(tx, Q.CREATE_MEMORIES, [row for row in rows.memories if row["memory_id"] not in known])
        types = self._write_entities(tx, rows, entity_types, old_keys)
        self._batch(tx, Q.CREATE_MENTIONS, rows.mentions)
        self._batch(tx, Q.CREATE_RELATES, rows.relates)
        if old_keys:
            types.update(self._retype(tx, sorted(old_keys)))
        self._batch(tx, Q.SET_TYPES, [{"key": k, "type": t} for k, t in types.items()])

    def _write_entities(
        self, tx: Tx, rows: GraphRows, stored: dict[str, str | None], old_keys: set[str]
    ) -> dict[str, str | None]:
        """CREATE the batch's new entities (those not in ``stored``, key -> stored type); return the new
        types of stored ones that only gained mentions.

        A new entity is created with its type. An entity that only gains mentions
        can only get a smaller type, so its stored type and the batch's decide;
        one that lost a mention (``old_keys``) is recomputed by :meth:`_retype`.
        """
        changed: dict[str, str | None] = {}
        if not rows.entities:
            return changed
        self._batch(tx, Q.CREATE_ENTITIES, rows.entity_rows(k for k in rows.entities if k not in stored))
        for key, typ in stored.items():
            new = smaller_type(typ, rows.entities[key][1])
            if new != typ and key not in old_keys:
                changed[key] = new
        return changed

    def _retype(self, tx: Tx, keys: list[str]) -> dict[str, str | None]:
        """The exact type of each entity in ``keys`` where it changed; drops those no memory mentions.

        The type is the smallest type on its MENTIONS, taken here, not in Cypher:
        Neo4j orders strings by UTF-16 code units, Python (and so ``graph_view``)
        and LadybugDB by code points.
        """
        changed: dict[str, str | None] = {}
        orphans = []
        for key, typ, mentions, types in tx.run(Q.MENTION_TYPES, {"keys": keys}):
            if not mentions:
                orphans.append(key)
                continue
            new = min(types) if types else None
            if new != typ:
                changed[key] = new
        if orphans:
            tx.write(Q.DROP_ENTITIES, {"keys": orphans})
        return changed


def _graph_memory(row: list[Any]) -> GraphMemory:
    memory_id, text, user_id, agent_id, run_id, version, seq = row
    return GraphMemory(
        memory_id=memory_id,
        text=text,
        user_id=user_id,
        agent_id=agent_id,
        run_id=run_id,
        version=int(version),
        seq=int(seq),
    )


def _graph_entity(row: list[Any]) -> GraphEntity:
    key, name, typ, *scope = row
    field, value = next(((f, v) for f, v in zip(SCOPE_FIELDS, scope, strict=True) if v is not None), ("", ""))
    return GraphEntity(key=key, name=name, type=typ, scope_field=field, scope_value=value)


class Q:
    """The Cypher both engines run."""

    CHECKPOINT = "MATCH (c:MemsyncCheckpoint {name: $name}) RETURN c.seq"
    SET_CHECKPOINT = "MERGE (c:MemsyncCheckpoint {name: $name}) SET c.seq = $seq"
    CLEAR_CHECKPOINT = "MATCH (c:MemsyncCheckpoint) DELETE c"
    CLEAR_ENTITIES = "MATCH (e:Entity) DETACH DELETE e"
    CLEAR_MEMORIES = "MATCH (m:Memory) DETACH DELETE m"

    # A node looked up by its key, then OPTIONAL MATCH from it: LadybugDB walks from the bound node
    # (a longer pattern MATCHed straight from UNWIND scans every MENTIONS: ~50 ms per 100 ids at 20k
    # memories, growing with the graph; this way ~2 ms). It still joins with a scan of the Entity
    # table now and then (40-60 ms for 10 ids at 20k memories, even for ids not in the store), so
    # apply asks it only about memories found by MEMORIES_IN_STORE (a primary-key lookup).
    OLD_MENTIONS = (
        "UNWIND $ids AS id MATCH (m:Memory {memory_id: id}) OPTIONAL MATCH (m)-[:MENTIONS]->(e:Entity) "
        "RETURN m.memory_id, e.key"
    )
    # A memory's RELATES start at entities it mentions, so walk there instead of scanning all RELATES.
    MEMORIES_IN_STORE = "UNWIND $ids AS id MATCH (m:Memory {memory_id: id}) RETURN m.memory_id"
    DELETE_RELATES = (
        "UNWIND $ids AS id MATCH (m:Memory {memory_id: id}) "
        "OPTIONAL MATCH (m)-[:MENTIONS]->(:Entity)-[r:RELATES]->(:Entity) WHERE r.memory_id = id DELETE r"
    )
    DELETE_MENTIONS = (
        "UNWIND $ids AS id MATCH (m:Memory {memory_id: id}) OPTIONAL MATCH (m)-[r:MENTIONS]->(:Entity) DELETE r"
    )
    DELETE_MEMORIES = "UNWIND $ids AS id MATCH (m:Memory {memory_id: id}) DETACH DELETE m"
    # One node per MATCH/MERGE, its key bound by WITH first: LadybugDB then looks nodes up by
    # primary key (a pattern of two nodes, or a key read from a row inside the pattern, scans).
    UPDATE_MEMORIES = (
        "UNWIND $rows AS x WITH x.memory_id AS id, x MATCH (m:Memory {memory_id: id}) "
        "SET m.text = x.text, m.user_id = x.user_id, m.agent_id = x.agent_id, m.run_id = x.run_id, "
        "m.version = x.version, m.seq = x.seq"
    )
    # CREATE, not MERGE, where the batch knows the node is new: 2-3x cheaper on LadybugDB.
    CREATE_MEMORIES = (
        "UNWIND $rows AS x CREATE (:Memory {memory_id: x.memory_id, text: x.text, user_id: x.user_id, "
        "agent_id: x.agent_id, run_id: x.run_id, version: x.version, seq: x.seq})"
    )
    ENTITY_TYPES = "UNWIND $keys AS k MATCH (e:Entity {key: k}) RETURN e.key, e.type"
    CREATE_ENTITIES = (
        "UNWIND $rows AS x CREATE (:Entity {key: x.key, name: x.name, type: x.type, user_id: x.user_id, "
        "agent_id: x.agent_id, run_id: x.run_id})"
    )
    CREATE_MENTIONS = (
        "UNWIND $rows AS x WITH x.memory_id AS id, x MATCH (m:Memory {memory_id: id}) "
        "WITH m, x.key AS k, x.type AS t MATCH (e:Entity {key: k}) CREATE (m)-[:MENTIONS {type: t}]->(e)"
    )
    CREATE_RELATES = (
        "UNWIND $rows AS x WITH x.source AS s, x MATCH (a:Entity {key: s}) "
        "WITH a, x.target AS t, x MATCH (b:Entity {key: t}) "
        "CREATE (a)-[:RELATES {relation: x.relation, memory_id: x.memory_id}]->(b)"
    )
    # Per entity: its stored type, how many MENTIONS it has, and their non-null types.
    MENTION_TYPES = (
        "UNWIND $keys AS k MATCH (e:Entity {key: k}) OPTIONAL MATCH (:Memory)-[r:MENTIONS]->(e) "
        "RETURN e.key, e.type, count(r), collect(r.type)"
    )
    SET_TYPES = "UNWIND $rows AS x WITH x.key AS k, x MATCH (e:Entity {key: k}) SET e.type = x.type"
    DROP_ENTITIES = "UNWIND $keys AS k MATCH (e:Entity {key: k}) DETACH DELETE e"
    HAS_DATA = "MATCH (n:Memory) RETURN n.memory_id LIMIT 1"

    SNAPSHOT_MEMORIES = "MATCH (m:Memory) RETURN m.memory_id, m.text, m.user_id, m.agent_id, m.run_id, m.version, m.seq"
    SNAPSHOT_ENTITIES = "MATCH (e:Entity) RETURN e.key, e.name, e.type, e.user_id, e.agent_id, e.run_id"
    SNAPSHOT_MENTIONS = "MATCH (m:Memory)-[:MENTIONS]->(e:Entity) RETURN m.memory_id, e.key"
    SNAPSHOT_RELATES = "MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.key, r.relation, b.key, r.memory_id"
    COUNTS = (  # the keys of GraphStore.counts()
        ("memories", "MATCH (m:Memory) RETURN count(m)"),
        ("entities", "MATCH (e:Entity) RETURN count(e)"),
        ("mentions", "MATCH (:Memory)-[r:MENTIONS]->(:Entity) RETURN count(r)"),
        ("relates", "MATCH (:Entity)-[r:RELATES]->(:Entity) RETURN count(r)"),
    )

    RELATIONS_FROM = (
        "UNWIND $keys AS k MATCH (a:Entity {key: k})-[r:RELATES]->(b:Entity) "
        "RETURN DISTINCT a.name AS source, r.relation AS relation, b.name AS target "
        "ORDER BY source, relation, target LIMIT $limit"
    )
    RELATIONS_TO = (
        "UNWIND $keys AS k MATCH (a:Entity)-[r:RELATES]->(b:Entity {key: k}) "
        "RETURN DISTINCT a.name AS source, r.relation AS relation, b.name AS target "
        "ORDER BY source, relation, target LIMIT $limit"
    )
