"""Neo4j graph store over Bolt with the official ``neo4j`` driver (ARCHITECTURE.md section 4).

Same graph, same Cypher and same algorithm as the embedded store (see
:mod:`projections._graph_common`); every ``apply`` is one explicit transaction
with the checkpoint node, so an outage mid-batch leaves nothing of it. The store
does not retry (the projector does, with backoff); the driver reconnects by
itself once the server is back, so the same store object carries on.

Errors are translated in one place, :meth:`Neo4jGraphStore._errors`::

    ServiceUnavailable, SessionExpired (server gone, connection refused or lost),
    IncompleteCommit (outcome unknown: retrying is safe, batches are idempotent),
    TransientError (deadlock, database unavailable)     -> StoreUnavailable
    anything else from the driver or the server         -> StoreError

Rebuilds are in place (the :class:`~memsync.stores.Projection` default:
``wipe`` then replay): Neo4j Community has a single user database, so there is
no second database to build beside the live one and swap in.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import neo4j
from neo4j import GraphDatabase
from neo4j.exceptions import DriverError, Neo4jError, ServiceUnavailable, SessionExpired, TransientError

from memsync.errors import ConfigError, StoreError, StoreUnavailable
from projections._graph_common import BulkRows, CypherGraphStore, Q, batched

if TYPE_CHECKING:
    from memsync.config import MemsyncConfig
    from memsync.fold import MemoryState

BULK_CHUNK = 2_000
DELETE_CHUNK = 10_000

CONSTRAINTS = (
    "CREATE CONSTRAINT memsync_memory_id IF NOT EXISTS FOR (m:Memory) REQUIRE m.memory_id IS UNIQUE",
    "CREATE CONSTRAINT memsync_entity_key IF NOT EXISTS FOR (e:Entity) REQUIRE e.key IS UNIQUE",
    "CREATE CONSTRAINT memsync_checkpoint_name IF NOT EXISTS FOR (c:MemsyncCheckpoint) REQUIRE c.name IS UNIQUE",
)
CREATE_MEMORIES = "UNWIND $rows AS x CREATE (m:Memory) SET m = x"  # a null in x sets nothing
CREATE_ENTITIES = "UNWIND $rows AS x CREATE (e:Entity) SET e = x"
WIPE = (
    f"MATCH (n:Memory) CALL (n) {{ DETACH DELETE n }} IN TRANSACTIONS OF {DELETE_CHUNK} ROWS",
    f"MATCH (n:Entity) CALL (n) {{ DETACH DELETE n }} IN TRANSACTIONS OF {DELETE_CHUNK} ROWS",
)


def open_neo4j_store(config: MemsyncConfig) -> Neo4jGraphStore:
    """A store for ``config.graph`` (uri, user, password, database). Connects lazily."""
    graph = config.graph
    if not graph.uri:
        raise ConfigError("graph.uri: required for the neo4j graph backend (e.g. bolt://localhost:7687)")
    auth = (graph.user, graph.password.get_secret_value()) if graph.password is not None else None
    return Neo4jGraphStore(graph.uri, auth=auth, database=graph.database, timeout=graph.timeout)


_PARAMETER = re.compile(r"\$(\w+)")  # a parameter in query text (queries hold no other `$`)


class _Tx:
    """A transaction whose writes go to the server together: each statement is a round trip, so the
    writes that return nothing wait for the next ``run`` (or the commit) and go as one statement of
    ``CALL { … }`` subqueries, in order (a later clause sees what an earlier one wrote)."""

    def __init__(self, tx: neo4j.Transaction) -> None:
        self._tx = tx
        self._writes: list[tuple[str, dict[str, Any]]] = []

    def run(self, query: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
        self.flush()
        return self._tx.run(query, params or {}).values()

    def write(self, query: str, params: dict[str, Any] | None = None) -> None:
        self._writes.append((query, params or {}))

    def flush(self) -> None:
        if not self._writes:
            return
        writes, self._writes = self._writes, []
        if len(writes) == 1:
            self._tx.run(*writes[0]).consume()
            return
        parts, params = [], {}
        for i, (query, given) in enumerate(writes):  # each statement's parameters renamed apart
            renamed = _PARAMETER.sub(rf"$\1_{i}", query)
            parts.append(f"CALL {{ {renamed} }}")
            params.update({f"{name}_{i}": value for name, value in given.items()})
        self._tx.run("\n".join(parts), params).consume()


class Neo4jGraphStore(CypherGraphStore):
    """The graph in a Neo4j database (``database`` None: the server's default)."""

    def __init__(
        self,
        uri: str,
        *,
        auth: tuple[str, str] | None = None,
        database: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._where = _redact(uri)
        self._database = database
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        try:
            self._driver = GraphDatabase.driver(
                uri,
                auth=auth,
                connection_timeout=timeout,
                connection_acquisition_timeout=timeout,
                liveness_check_timeout=1.0,  # test connections idle for 1 s+: a restarted server is noticed
                notifications_min_severity="OFF",
                user_agent="memsync",
            )
        except (ValueError, neo4j.exceptions.ConfigurationError) as e:
            raise ConfigError(f"graph.uri: {str(e).replace(uri, self._where)}") from None

    def describe(self) -> str:
        return f"Neo4j graph store at {self._where} (database {self._database or 'default'})"

    def close(self) -> None:
        self._driver.close()

    # -- backend primitives

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate driver and server errors (the one place that does)."""
        try:
            yield
        except (ServiceUnavailable, SessionExpired, TransientError) as e:
            raise StoreUnavailable(f"{self.describe()}: {what}: {type(e).__name__}: {e}") from e
        except (Neo4jError, DriverError) as e:
            raise StoreError(f"{self.describe()}: {what} failed: {type(e).__name__}: {e}") from e

    @contextmanager
    def _write(self, what: str) -> Iterator[_Tx]:
        with self._errors(what):
            self._ensure_schema()
            with self._driver.session(database=self._database) as session, session.begin_transaction() as tx:
                writes = _Tx(tx)
                yield writes
                writes.flush()
                tx.commit()

    @contextmanager
    def _read(self, what: str) -> Iterator[_Tx]:
        with (
            self._errors(what),
            self._driver.session(database=self._database, default_access_mode=neo4j.READ_ACCESS) as session,
            session.begin_transaction() as tx,
        ):
            yield _Tx(tx)

    def _ensure_schema(self) -> None:
        """Create the uniqueness constraints once per store object (idempotent on the server)."""
        with self._schema_lock:
            if self._schema_ready:
                return
            with self._driver.session(database=self._database) as session:
                for statement in CONSTRAINTS:
                    session.run(statement).consume()
            self._schema_ready = True

    # -- bulk load and wipe: large data, several transactions

    def bulk_load(self, memories: Iterable[MemoryState], checkpoint: int) -> None:
        """CREATE in transactions of BULK_CHUNK memories; the checkpoint is written last."""
        with self._read("checking the store is empty") as tx:
            if tx.run(Q.HAS_DATA):
                raise StoreError(f"{self.describe()}: bulk_load needs an empty store")
        bulk = BulkRows()
        for chunk in batched(memories, BULK_CHUNK):
            rows, entities = bulk.chunk(chunk)
            with self._write(f"bulk loading {len(chunk)} memories") as tx:
                self._batch(tx, CREATE_MEMORIES, rows.memories)
                self._batch(tx, CREATE_ENTITIES, entities)
                self._batch(tx, Q.CREATE_MENTIONS, rows.mentions)
                self._batch(tx, Q.CREATE_RELATES, rows.relates)
        with self._write(f"finishing a bulk load at seq {checkpoint}") as tx:
            self._batch(tx, Q.SET_TYPES, bulk.retyped())
            self._set_checkpoint(tx, checkpoint)

    def wipe(self) -> None:
        """Drop the checkpoint first, then delete in chunks (a crash in between leaves seq 0)."""
        with self._write("wiping the checkpoint") as tx:
            tx.run(Q.CLEAR_CHECKPOINT)
        with self._errors("wiping the graph"), self._driver.session(database=self._database) as session:
            for statement in WIPE:
                session.run(statement).consume()


def _redact(uri: str) -> str:
    """The URI without any user:password part."""
    parts = urlsplit(uri)
    if parts.hostname is None or "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=host).geturl()
