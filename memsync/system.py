"""Wiring: a config becomes a log, stores and one runner per projection.

:class:`MemSync` is what the CLI and the facade drive. It opens nothing until
asked, so appending never touches (or locks) an embedded store, and a store
that cannot be opened only affects its own projection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from memsync.config import MemsyncConfig
from memsync.config import redact_url as redact_url  # re-exported: the PostgreSQL log imports it from here
from memsync.errors import ConfigError, MemsyncError, StoreLocked, WaitTimeout
from memsync.events import format_time, utcnow
from memsync.hooks import Hooks
from memsync.leader import FileLeadership, Leadership
from memsync.locks import LOCK_WAIT
from memsync.log import EventLog
from memsync.projector import Progress, ProjectionRunner, rebuild
from memsync.stores import Projection, open_store
from memsync.verify import Drift, verify_store

logger = logging.getLogger("memsync.system")

KINDS = ("vector", "graph")
ProgressFactory = Callable[[str, int], Progress]  # (projection, total events) -> advance(n)


def open_log(config: MemsyncConfig) -> EventLog:
    """The event log named by ``config.log_url`` (SQLite by default)."""
    url = config.resolved_log_url
    if url.startswith("sqlite:"):
        from memsync.sqlite_log import SQLiteEventLog

        return SQLiteEventLog.from_url(
            url, synchronous=config.sqlite_synchronous, fixed_dimension=config.vector.dimension
        )
    if url.startswith(("postgresql:", "postgres:")):
        from memsync.postgres_log import PostgresEventLog  # type: ignore[import-not-found,unused-ignore]

        log: EventLog = PostgresEventLog(url, fixed_dimension=config.vector.dimension)
        return log
    raise ConfigError(f"log_url: unsupported scheme in {redact_url(url)!r}")


HEARTBEAT_FILE = "projector-status.json"


class Heartbeat:
    """A follower's progress, written (throttled, atomically) beside the embedded stores.

    Only for display: ``status`` reads it when the store itself is locked by the
    follower. The checkpoint in the store stays the truth.
    """

    _lock = threading.Lock()

    def __init__(self, data_dir: Path, kind: str, every: float = 0.2) -> None:
        self.path = Path(data_dir) / HEARTBEAT_FILE
        self.kind = kind
        self.every = every
        self._last = 0.0
        self._pending: int | None = None

    def on_batch(self, projection: str, last_seq: int, **_: Any) -> None:
        now = time.monotonic()
        if projection != self.kind or now - self._last < self.every:
            self._pending = last_seq if projection == self.kind else self._pending
            return
        self._last = now
        self.write(last_seq)

    def flush(self) -> None:
        """Write a checkpoint the throttle held back (called when the follower is idle)."""
        if self._pending is not None:
            self.write(self._pending)

    def write(self, last_seq: int) -> None:
        """Best effort: a heartbeat that cannot be written is logged, never fatal to the follower."""
        self._pending = None
        with self._lock:
            data = read_heartbeat(self.path.parent)
            data[self.kind] = {"checkpoint": last_seq, "pid": os.getpid(), "at": format_time(utcnow())}
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                tmp.write_text(json.dumps(data))
                os.replace(tmp, self.path)
            except OSError as e:
                logger.warning("cannot write the follower heartbeat %s: %s", self.path, e)


def read_heartbeat(data_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(data_dir) / HEARTBEAT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class MemSync:
    def __init__(
        self,
        config: MemsyncConfig | None = None,
        *,
        log: EventLog | None = None,
        stores: dict[str, Projection] | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.config = config or MemsyncConfig()
        self.hooks = hooks or Hooks()
        self._log = log
        self._stores: dict[str, Projection] = dict(stores or {})
        self._runners: dict[str, ProjectionRunner] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------ parts

    @property
    def log(self) -> EventLog:
        with self._lock:
            if self._log is None:
                self._log = open_log(self.config)
            return self._log

    @property
    def kinds(self) -> list[str]:
        if self._stores and not self.config.graph_enabled:
            return [k for k in KINDS if k in self._stores and k != "graph"]
        return ["vector", "graph"] if self.config.graph_enabled else ["vector"]

    def check_kind(self, kind: str) -> None:
        if kind not in self.kinds:
            raise ConfigError(f"projection {kind!r} is not enabled (enabled: {', '.join(self.kinds)})")

    def store(self, kind: str) -> Projection:
        with self._lock:
            self.check_kind(kind)
            if kind not in self._stores:
                backend = self.config.vector.backend if kind == "vector" else self.config.graph.backend
                self._stores[kind] = open_store(kind, backend, self.config)
            return self._stores[kind]

    @property
    def runners(self) -> dict[str, ProjectionRunner]:
        """The runners made so far, by projection (a live view)."""
        return self._runners

    def runner(self, kind: str) -> ProjectionRunner:
        with self._lock:
            if kind not in self._runners:
                self._runners[kind] = ProjectionRunner(self.log, self.store(kind), self.config.projector, self.hooks)
            return self._runners[kind]

    def select(self, which: str | None) -> list[str]:
        if which in (None, "all"):
            return self.kinds
        assert which is not None
        self.check_kind(which)
        return [which]

    # ------------------------------------------------------------ work

    def project(self, kinds: Sequence[str] | None = None, *, progress: ProgressFactory | None = None) -> dict[str, Any]:
        """Bring each projection to the head, independently: one failing does not stop the others."""
        result: dict[str, Any] = {}
        for kind in kinds or self.kinds:
            try:
                runner = self.runner(kind)
                bar = None
                if progress is not None:
                    bar = progress(kind, max(0, self.log.head().seq - runner.store.checkpoint()))
                applied = runner.catch_up(progress=bar)
                result[kind] = {"applied": applied, "checkpoint": self.store(kind).checkpoint()}
            except MemsyncError as e:
                result[kind] = {"error": str(e)}
        return result

    def leadership(self, kind: str) -> Leadership:
        """The lock that makes one follower per projection active (see memsync.leader)."""
        log = self.log
        factory = getattr(log, "leadership", None)
        if factory is not None:
            lock: Leadership = factory(kind)
            return lock
        path = getattr(log, "path", None)
        if path is None:
            raise ConfigError(f"the {type(log).__name__} log offers no leadership lock")
        return FileLeadership(Path(f"{path}.{kind}.leader"))

    def follow(
        self,
        kinds: Sequence[str] | None,
        stop: threading.Event,
        *,
        on_state: Callable[[str, str], None] | None = None,
        standby_poll: float = 0.5,
    ) -> list[threading.Thread]:
        """Follow each projection in its own thread; a thread applies only while it leads."""
        threads = []
        for kind in kinds or self.kinds:
            args = (kind, stop, on_state or (lambda k, s: None), standby_poll)
            thread = threading.Thread(target=self._follow_kind, args=args, name=f"memsync-{kind}", daemon=True)
            thread.start()
            threads.append(thread)
        return threads

    def _follow_kind(
        self, kind: str, stop: threading.Event, on_state: Callable[[str, str], None], standby_poll: float
    ) -> None:
        lead = self.leadership(kind)
        standing_by = False
        try:
            while not stop.is_set():
                if not lead.try_acquire():
                    if not standing_by:
                        on_state(kind, "standby")
                        standing_by = True
                    stop.wait(standby_poll)
                    continue
                standing_by = False
                on_state(kind, "active")
                beat = Heartbeat(self.config.data_dir, kind)
                self.hooks.on("after_batch", beat.on_batch)
                try:
                    self.runner(kind).follow(stop, keep_going=lead.still_held, on_idle=beat.flush)
                except MemsyncError as e:  # e.g. the store cannot be opened yet: retry later
                    on_state(kind, f"error: {e}")
                    stop.wait(standby_poll)
                except Exception as e:  # a bug must not leave a follower that silently follows nothing
                    logger.exception("%s follower failed; restarting it", kind, extra={"projection": kind})
                    on_state(kind, f"error: {type(e).__name__}: {e}")
                    stop.wait(standby_poll)
                finally:
                    self.hooks.off("after_batch", beat.on_batch)
        finally:
            lead.release()

    def wait_for(self, seq: int, timeout: float = 10.0, kinds: Sequence[str] | None = None) -> None:
        """Block until every selected projection's checkpoint reaches ``seq``."""
        import time

        deadline = time.monotonic() + timeout
        for kind in kinds or self.kinds:
            store = self.store(kind)
            while store.checkpoint() < seq:
                if time.monotonic() > deadline:
                    raise WaitTimeout(f"the {kind} projection did not reach seq {seq} within {timeout}s")
                time.sleep(0.002)

    def rebuild(
        self,
        kinds: Sequence[str] | None = None,
        *,
        to_seq: int | None = None,
        as_of: datetime | None = None,
        in_place: bool = False,
        progress: ProgressFactory | None = None,
    ) -> dict[str, int]:
        if as_of is not None:
            to_seq = self.log.seq_at(as_of)
        target = to_seq if to_seq is not None else self.log.head().seq
        out = {}
        for kind in kinds or self.kinds:
            out[kind] = rebuild(
                self.log,
                self.store(kind),
                to_seq=target,
                in_place=in_place,
                config=self.config.projector,
                progress=progress(kind, target) if progress else None,
            )
        return out

    def verify(self, kinds: Sequence[str] | None = None, *, repair: bool = False) -> dict[str, Drift]:
        return {kind: verify_store(self.log, self.store(kind), repair=repair) for kind in kinds or self.kinds}

    def status(self) -> dict[str, Any]:
        token = LOCK_WAIT.set(0.0)  # a store a follower holds is reported from its heartbeat, not waited for
        try:
            return self._status()
        finally:
            LOCK_WAIT.reset(token)

    def _status(self) -> dict[str, Any]:
        head = self.log.head()
        stats = self.log.stats()
        projections: dict[str, Any] = {}
        for kind in self.kinds:
            entry: dict[str, Any] = {"checkpoint": None, "lag": None, "parked": len(self.log.parked(kind))}
            try:
                store = self.store(kind)
                checkpoint = store.checkpoint()
                entry.update(checkpoint=checkpoint, lag=head.seq - checkpoint, reachable=store.ping())
                entry["store"] = store.describe()
            except StoreLocked as e:  # a follower owns the embedded store: read what it last reported
                beat = read_heartbeat(self.config.data_dir).get(kind)
                entry.update(reachable=beat is not None, error=str(e))
                if beat is not None:
                    entry.update(
                        checkpoint=beat["checkpoint"],
                        lag=head.seq - beat["checkpoint"],
                        reported_by=beat["pid"],
                        reported_at=beat["at"],
                    )
            except MemsyncError as e:
                entry.update(reachable=False, error=str(e))
                runner = self._runners.get(kind)
                if runner is not None and runner.checkpoint_seen is not None:  # last known, from this process
                    entry.update(checkpoint=runner.checkpoint_seen, lag=head.seq - runner.checkpoint_seen)
            if kind == "vector":
                entry["skipped_without_vector"] = stats.live_memories - stats.with_vector
            projections[kind] = entry
        return {
            "head": {"seq": head.seq, "hash": head.hash},
            "live_memories": stats.live_memories,
            "projections": projections,
        }

    def close_stores(self) -> None:
        """Close the stores (and their runners), releasing embedded stores for other processes."""
        with self._lock:
            for store in self._stores.values():
                with contextlib.suppress(MemsyncError):
                    store.close()
            self._stores.clear()
            self._runners.clear()

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                with contextlib.suppress(MemsyncError):
                    store.close()
            self._stores.clear()
            self._runners.clear()
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> MemSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
