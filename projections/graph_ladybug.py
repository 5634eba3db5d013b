"""LadybugDB graph store: the embedded default (ARCHITECTURE.md sections 1 and 4).

Files, next to each other in the data dir::

    graph/memsync.lbug (+ .wal)   the database; the checkpoint node lives in it
    graph/bulk-load/              the Parquet files of a bulk load under way (removed by the next open)
    graph.lock                    DirLock: names the process that owns the store
    graph.rebuild/                a fresh database being built by a rebuild
    graph.old/                    the previous database during a rebuild swap

A rebuild builds ``graph.rebuild/``, marks it complete, then swaps it in with two
renames (``graph`` -> ``graph.old``, ``graph.rebuild`` -> ``graph``), as
:mod:`projections._dirswap` does for both embedded stores. A crash before the
swap leaves the old store; a crash between the renames is finished (or undone)
by the next open, which also removes leftovers. The lock covers all three
directories for the whole time.

Engine facts this module works around (ladybug 0.22): the Python binding caches
every statement it prepares, keyed by the parameters' types, with the last
parameters bound, so the writer connection is recycled every RECYCLE_EVERY
transactions (the cache would keep every batch alive), and a bulk load reopens
the database after each COPY (the engine keeps what a COPY built otherwise);
re-executing a cached ``COPY … FROM (subquery)`` crashes the process, so without
pyarrow every COPY gets its own text. ``apply`` does not COPY: the commit of a
transaction that COPYs runs the engine's CHECKPOINT (that is what makes the rows
durable; see bulk_load), ~170 ms and more. Driver errors are ``RuntimeError``; they become
:class:`~memsync.errors.StoreError` in :meth:`LadybugGraphStore._transaction`
(a full buffer pool :class:`~memsync.errors.StoreUnavailable`, see POOL_FULL).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import ladybug

from memsync.errors import StoreError, StoreUnavailable
from memsync.locks import DirLock
from memsync.stores import Projection
from projections._dirswap import open_locked, rebuild_dir, swap_in
from projections._graph_common import BulkRows, CypherGraphStore, Q, Row, batched
from projections._heap import trim_heap

if TYPE_CHECKING:
    from memsync.config import MemsyncConfig
    from memsync.fold import MemoryState

# pyarrow makes bulk loads ~5x faster (COPY FROM Parquet files instead of parameter lists). It is
# imported by the first bulk load, not with the store: its libraries are ~45 MB of resident memory
# that a follower never needs, and in `memsync rebuild` they would sit under the vector phase's peak.
# None without it (the fallback is tested by setting this to None).
_NOT_YET: Final = object()
pyarrow: Any = _NOT_YET


def _arrow() -> Any:
    """The pyarrow module with its Parquet writer loaded, or None when it is not installed."""
    global pyarrow
    if pyarrow is _NOT_YET:
        try:
            import pyarrow.parquet  # binds the global `pyarrow` to the package (declared global above)
        except ImportError:  # pragma: no cover - the fallback is tested by setting pyarrow to None
            pyarrow = None
    return pyarrow


DB_FILE = "memsync.lbug"
# memories folded into rows and spilled at a time by a bulk load (without pyarrow: COPYed, a transaction
# each). Measured at 1M events (graph store alone): 5,000 peaks at 333 MB, 25,000 at 417 MB
BULK_CHUNK = 5_000
# engine threads for a bulk load's COPYs: one peaks ~25 MB lower at 1M events than the default (one
# per core) for ~2-5 % more time on 2 cores (a follower's applies keep the default)
BULK_THREADS = 1
# rows per COPY FROM a spilled file (about: a file ends with the chunk that reaches it). A COPY into
# an edge table rewrites the edges already stored at the nodes it touches, so the fewer the better;
# one COPY of 1.44M MENTIONS (1M events) peaked at ~400 MB, 500,000 at no more than the fold needs
COPY_PART = 500_000
SPILL_DIR = "bulk-load"  # the rows of a bulk load under way, beside the database (see _Spill)
BUFFER_POOL = 512 * 2**20  # bytes, at least (see buffer_pool_for); the engine's default is 80 % of the RAM
RECYCLE_EVERY = 256  # write transactions per writer connection (see _recycle_writer)
# The engine checkpoints (folds the WAL into the database file) at the COMMIT that takes the WAL
# past this size, stalling that commit (~0.3 s in a small store, ~1 s at 40k memories): its
# default, 16 MB, is one stall every ~30 s of following at 500 events/s. Not more: what the WAL
# holds stays in the buffer pool until the checkpoint, and at 64 MB a follower filled a 512 MB pool
# after ~40k events (every apply then failed with "the buffer pool is full").
WAL_CHECKPOINT = 16 * 2**20  # bytes
# A full buffer pool fails every statement that needs a page, whatever the batch: a resource
# fault, not a poison event, so it is StoreUnavailable (retried, never parked). Once it happened,
# measured with a 16 MB pool: later applies mostly keep failing, reopening the database does not
# help (the open does not checkpoint) and a CHECKPOINT after reopening left a corrupt file, so
# the store attempts no recovery of its own.
POOL_FULL = "buffer pool is full"
WHAT = "LadybugDB graph store"

SCHEMA = (
    "CREATE NODE TABLE IF NOT EXISTS Memory(memory_id STRING PRIMARY KEY, text STRING, "
    "user_id STRING, agent_id STRING, run_id STRING, version INT64, seq INT64)",
    "CREATE NODE TABLE IF NOT EXISTS Entity(key STRING PRIMARY KEY, name STRING, type STRING, "
    "user_id STRING, agent_id STRING, run_id STRING)",
    "CREATE NODE TABLE IF NOT EXISTS MemsyncCheckpoint(name STRING PRIMARY KEY, seq INT64)",
    "CREATE REL TABLE IF NOT EXISTS MENTIONS(FROM Memory TO Entity, type STRING)",
    "CREATE REL TABLE IF NOT EXISTS RELATES(FROM Entity TO Entity, relation STRING, memory_id STRING)",
)
INT_COLUMNS = frozenset({"version", "seq"})


def open_ladybug_store(config: MemsyncConfig) -> LadybugGraphStore:
    """Open (creating if needed) the store at ``config.graph_path()``, owning it until close()."""
    path = Path(config.graph_path())
    return open_locked(path, WHAT, lambda lock: LadybugGraphStore(path, lock=lock))


def release_memory() -> None:
    """Return memory freed by a chunk to the OS: Arrow's pool and the C heap keep it for reuse."""
    if pyarrow is not None and pyarrow is not _NOT_YET:
        pyarrow.default_memory_pool().release_unused()
    trim_heap()


def buffer_pool_for(path: Path) -> int:
    """The buffer pool for the database in ``path``: BUFFER_POOL, or 4x the database file if larger.

    The pool bounds the engine's memory, but a bulk load needs room in proportion
    to the graph (measured: 130 k memories, a 62 MB file, fail to load with a
    32 MB pool and load with 64 MB); a rebuild gets the pool of the store it replaces.
    """
    try:
        size = (path / DB_FILE).stat().st_size
    except OSError:
        size = 0
    return max(BUFFER_POOL, 4 * size)


class _Tx:
    def __init__(self, conn: ladybug.Connection) -> None:
        self._conn = conn

    def run(self, query: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
        result = self._conn.execute(query, params or {})
        assert isinstance(result, ladybug.QueryResult), "one statement at a time"
        try:
            return [list(row) for row in result.get_all()]
        finally:
            result.close()

    def write(self, query: str, params: dict[str, Any] | None = None) -> None:
        self.run(query, params)  # in-process: nothing to save by sending statements together


class LadybugGraphStore(CypherGraphStore):
    """The graph in an embedded LadybugDB database at ``path`` (a directory).

    One writer connection (serialized by a lock) and one reader connection: reads
    see committed data and never wait for a batch being applied. ``lock`` is the
    DirLock this store releases on close (None for a rebuild's fresh store, which
    lives under its parent's lock).
    """

    def __init__(self, path: Path, *, lock: DirLock | None = None, buffer_pool: int | None = None) -> None:
        self.path = path
        self._lock = lock
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._db: ladybug.Database | None = None
        self._writer: ladybug.Connection | None = None
        self._reader: ladybug.Connection | None = None
        self._fresh: LadybugGraphStore | None = None
        self._copies = 0
        self._writes = 0
        self._buffer_pool = buffer_pool or buffer_pool_for(path)
        shutil.rmtree(path / SPILL_DIR, ignore_errors=True)  # left by a bulk load that was killed
        self._open()

    def describe(self) -> str:
        return f"{WHAT} at {self.path}"

    # -- lifecycle

    def _open(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            # A kill in the middle of a WAL write leaves a torn last record: replay the whole
            # transactions before it instead of refusing to open (each carries its own checkpoint).
            self._db = ladybug.Database(
                str(self.path / DB_FILE),
                buffer_pool_size=self._buffer_pool,
                checkpoint_threshold=WAL_CHECKPOINT,
                throw_on_wal_replay_failure=False,
            )
            self._writer = ladybug.Connection(self._db)
            self._reader = ladybug.Connection(self._db)
            for statement in SCHEMA:
                _Tx(self._writer).run(statement)
        except (RuntimeError, OSError) as e:
            self._close_db()
            raise StoreError(f"{self.describe()}: cannot open: {e}") from e

    def _close_db(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        if self._db is not None:
            self._db.close()
        self._db = self._writer = self._reader = None

    def close(self) -> None:
        if self._fresh is not None:
            self._fresh.close()  # its directory is removed by the next open
            self._fresh = None
        with self._write_lock, self._read_lock:
            self._close_db()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- backend primitives

    @contextmanager
    def _write(self, what: str) -> Iterator[_Tx]:
        with self._write_lock:
            with self._transaction(self._writer, "BEGIN TRANSACTION", what) as tx:
                yield tx
            self._writes += 1
            if self._writes % RECYCLE_EVERY == 0:
                self._recycle_writer()

    @contextmanager
    def _read(self, what: str) -> Iterator[_Tx]:
        with self._read_lock, self._transaction(self._reader, "BEGIN TRANSACTION READ ONLY", what) as tx:
            yield tx

    @contextmanager
    def _transaction(self, conn: ladybug.Connection | None, begin: str, what: str) -> Iterator[_Tx]:
        """BEGIN … COMMIT on ``conn``; ROLLBACK and translate driver errors on failure."""
        conn = self._connection(conn)
        try:
            conn.execute(begin)
            yield _Tx(conn)
            conn.execute("COMMIT")
        except BaseException as e:
            with suppress(RuntimeError):  # the engine ends a transaction itself when a statement fails
                conn.execute("ROLLBACK")
            if isinstance(e, RuntimeError) and POOL_FULL in str(e):
                raise StoreUnavailable(
                    f"{self.describe()}: {what} failed: {e} (the engine's memory, not the data: retried, never "
                    "parked; if it persists, `memsync rebuild graph` builds a fresh store)"
                ) from e
            if isinstance(e, RuntimeError):
                raise StoreError(f"{self.describe()}: {what} failed: {e}") from e
            raise

    def _connection(self, conn: ladybug.Connection | None) -> ladybug.Connection:
        if conn is None:
            raise StoreError(f"{self.describe()} is closed")
        return conn

    # -- bulk load

    def bulk_load(self, memories: Iterable[MemoryState], checkpoint: int) -> None:
        """Fold the rows to Parquet files, then COPY them, a transaction per file; the checkpoint last, alone.

        The memories come chunk by chunk (BULK_CHUNK); their rows go to files beside
        the database (:class:`_Spill`, COPY_PART rows each), then each file is COPYed
        in its own transaction, nodes before edges, the database reopened after each
        (what the engine keeps after a COPY leaves the process). COPYing every chunk
        as it came made the load ~3x slower at 1M events: each COPY into an edge table
        rewrites the edges already stored at the nodes it touches, so time and memory
        grew with the graph.

        Rows a COPY writes become durable through the engine's own CHECKPOINT, not
        its WAL, while every other write of the same transaction is WAL-durable: a
        kill during that CHECKPOINT loses the rows and keeps the rest. So the rows
        are committed and CHECKPOINTed first, and only then the store checkpoint is
        written, in a transaction of its own: a kill before it leaves this store at
        checkpoint 0 (it was empty) over the nodes and edges already durable, and
        catching up from 0 rewrites each of those memories with its edges (every
        apply is idempotent, and an entity that lost a MENTIONS is retyped exactly).
        """
        with self._read("checking the store is empty") as tx:
            if tx.run(Q.HAS_DATA):
                raise StoreError(f"{self.describe()}: bulk_load needs an empty store")
        bulk = BulkRows()
        spill = _Spill(self.path / SPILL_DIR) if _arrow() is not None else None
        try:
            for chunk in batched(memories, BULK_CHUNK):
                rows, entities = bulk.chunk(chunk)
                tables = [
                    ("Memory", rows.memories),
                    ("Entity", entities),
                    ("MENTIONS", rows.mentions),
                    ("RELATES", rows.relates),
                ]
                if spill is not None:
                    for table, table_rows in tables:
                        spill.add(table, table_rows)
                    continue
                with self._write(f"bulk loading {len(chunk)} memories up to seq {checkpoint}") as tx:
                    for table, table_rows in tables:  # without pyarrow: a transaction per chunk
                        self._copy(tx, table, table_rows)
                self._reopen()
            for table, part in spill.parts() if spill is not None else ():
                self._connection(self._writer).set_max_threads_for_exec(BULK_THREADS)  # a new one each part
                with self._write(f"bulk loading {table} up to seq {checkpoint}") as tx:
                    tx.run(f"COPY {table} FROM '{_cypher_path(part)}'")
                self._reopen()  # what the engine keeps after a COPY leaves the process
            self._checkpoint_engine(f"making a bulk load up to seq {checkpoint} durable")
            with self._write(f"finishing a bulk load at seq {checkpoint}") as tx:
                self._batch(tx, Q.SET_TYPES, bulk.retyped())
                self._set_checkpoint(tx, checkpoint)
        except OSError as e:  # writing the spilled files (a full disk, say)
            raise StoreError(f"{self.describe()}: bulk loading up to seq {checkpoint} failed: {e}") from e
        finally:
            if spill is not None:
                spill.remove()
            with self._write_lock:
                self._recycle_writer()

    def _checkpoint_engine(self, what: str) -> None:
        """The engine's CHECKPOINT: what is committed is in the database file, not only in the WAL."""
        with self._write_lock:
            conn = self._connection(self._writer)
            try:
                conn.execute("CHECKPOINT")
            except RuntimeError as e:
                raise StoreError(f"{self.describe()}: {what} failed: {e}") from e

    def _copy(self, tx: _Tx, table: str, rows: list[Row]) -> None:
        """COPY rows (dicts in the table's property order) into a table, without pyarrow (see bulk_load)."""
        if not rows:
            return
        self._copies += 1  # a fresh variable name makes a fresh statement (see the module docstring)
        var = f"r{self._copies}"
        fields = ", ".join(f"{var}.{k}" for k in rows[0])
        tx.run(f"COPY {table} FROM (UNWIND $rows AS {var} RETURN {fields})", {"rows": rows})

    def _reopen(self) -> None:
        """Close and open the database again, and hand freed memory back to the OS: what the engine
        keeps after a COPY leaves the process.

        Measured on a 1M-event rebuild: the memory left between chunks grew from 166 to
        327 MB over 21 chunks with only the writer recycled, and stayed at 153-191 MB
        with the database reopened; the time is the same (each chunk's commit has
        already checkpointed, so the open replays nothing).
        """
        with self._write_lock, self._read_lock:
            self._close_db()
            self._open()
        release_memory()

    def _recycle_writer(self) -> None:
        """A new writer connection: drops the binding's statement cache and the data it holds.

        The cache keeps one statement per query and parameter types (a null or a
        wider int in a batch is another type) with the last batch bound to it, and
        one per bulk COPY; recycling bounds what a long-running projector keeps.
        """
        if self._writer is not None and self._db is not None:
            self._writer.close()
            self._writer = ladybug.Connection(self._db)

    # -- rebuild: a fresh database beside this one, swapped in by renames

    def begin_rebuild(self) -> LadybugGraphStore:
        if self._fresh is not None:
            raise StoreError(f"{self.describe()}: a rebuild is already under way")
        self._connection(self._writer)
        self._fresh = LadybugGraphStore(rebuild_dir(self.path), lock=None, buffer_pool=self._buffer_pool)
        return self._fresh

    def commit_rebuild(self, fresh: Projection) -> None:
        if fresh is self:
            return
        if self._fresh is None or fresh is not self._fresh:
            raise StoreError(f"{self.describe()}: commit_rebuild got a store this one did not begin")
        fresh, self._fresh = self._fresh, None
        fresh.close()
        with self._write_lock, self._read_lock:
            self._close_db()
            try:
                swap_in(self.path, fresh.path)
            except OSError as e:
                raise StoreError(f"{self.describe()}: swapping in the rebuilt store failed: {e}") from e
            finally:
                self._open()

    def abort_rebuild(self, fresh: Projection) -> None:
        if self._fresh is None or fresh is not self._fresh:
            return
        fresh, self._fresh = self._fresh, None
        fresh.close()
        shutil.rmtree(fresh.path, ignore_errors=True)


class _Spill:
    """A bulk load's rows on disk until every chunk is folded: Parquet files of about COPY_PART rows.

    Rows are dicts in their table's column order (for an edge: FROM key, TO key,
    properties), the order a COPY FROM a file reads the columns in. :meth:`parts`
    lists the files nodes first, in the order the tables were first given rows.
    """

    def __init__(self, path: Path) -> None:
        self.path = path  # created by the first add
        self._files: dict[str, list[Path]] = {}  # table -> its files, in order
        self._writers: dict[str, Any] = {}  # table -> its open pyarrow.parquet.ParquetWriter
        self._rows: dict[str, int] = {}  # table -> rows in its open file

    def add(self, table: str, rows: list[Row]) -> None:
        if not rows:
            return
        writer = self._writers.get(table)
        if writer is None or self._rows[table] >= COPY_PART:
            if writer is not None:
                writer.close()
            if not self._files:
                shutil.rmtree(self.path, ignore_errors=True)
                self.path.mkdir(mode=0o700)
            files = self._files.setdefault(table, [])
            files.append(self.path / f"{table}-{len(files)}.parquet")
            writer = self._writers[table] = pyarrow.parquet.ParquetWriter(files[-1], _arrow_schema(rows[0]))
            self._rows[table] = 0
        writer.write_table(pyarrow.Table.from_pylist(rows, schema=writer.schema))
        self._rows[table] += len(rows)

    def parts(self) -> list[tuple[str, Path]]:
        """Each file with its table, once all are written in full."""
        self._close()
        return [(table, file) for table, files in self._files.items() for file in files]

    def remove(self) -> None:
        self._close()
        shutil.rmtree(self.path, ignore_errors=True)

    def _close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _arrow_schema(row: Row) -> Any:
    return pyarrow.schema([(k, pyarrow.int64() if k in INT_COLUMNS else pyarrow.string()) for k in row])


def _cypher_path(path: Path) -> str:
    """A path as the text of a single-quoted Cypher string."""
    return str(path.resolve()).replace("\\", "\\\\").replace("'", "\\'")
