"""Errors raised by memsync.

Every error memsync raises derives from :class:`MemsyncError`; driver errors
(sqlite3, psycopg, qdrant, neo4j, ladybug) are translated at the edge of the
backend that met them, with ``raise ... from e``.

    MemsyncError
    ├── ConfigError            a setting is missing or invalid (names the key)
    ├── InputError             an event is malformed (names the field and line/index)
    ├── CommandRefused         an event is well formed but refused by the log's state
    │   └── ConflictError      expected_version did not match
    ├── LogError               the event log failed (I/O, corruption, locked)
    │   └── TamperError        the hash chain is broken (carries the first bad seq)
    ├── StoreError             a projection store failed
    │   ├── StoreUnavailable   the store cannot be reached (transient: retried)
    │   └── StoreLocked        an embedded store is owned by another process
    └── WaitTimeout            waiting for a projection to reach a seq timed out
"""

from __future__ import annotations


class MemsyncError(Exception):
    """Root of every error memsync raises."""


class ConfigError(MemsyncError):
    """A configuration value is missing or invalid; the message names the key."""


class InputError(MemsyncError, ValueError):
    """An event or argument is malformed.

    ``line`` is the 1-based JSONL line (or the index in a batch) and ``field``
    the JSON path of the bad field, when known.
    """

    def __init__(
        self, message: str, *, line: int | None = None, field: str | None = None, index: int | None = None
    ) -> None:
        self.line = line
        self.field = field
        self.index = index
        self.detail = message
        if line is not None:
            where = f"line {line}: "
        elif index is not None:
            where = f"event {index + 1}: "
        else:
            where = ""
        super().__init__(f"{where}{message}")


class CommandRefused(MemsyncError):
    """A well-formed event that the current state of the log does not allow."""

    def __init__(self, message: str, *, index: int | None = None, memory_id: str | None = None) -> None:
        self.index = index
        self.memory_id = memory_id
        self.detail = message
        where = f"event {index + 1}: " if index is not None else ""
        super().__init__(f"{where}{message}")


class ConflictError(CommandRefused):
    """``expected_version`` did not match the stream's version."""

    def __init__(
        self,
        memory_id: str,
        expected: int,
        actual: int,
        *,
        index: int | None = None,
    ) -> None:
        self.expected = expected
        self.actual = actual
        CommandRefused.__init__(
            self,
            f"version conflict on memory {memory_id!r}: expected version {expected}, stream is at version {actual}",
            index=index,
            memory_id=memory_id,
        )


class LogError(MemsyncError):
    """The event log could not be read or written."""


class TamperError(LogError):
    """The hash chain is broken at ``seq``."""

    def __init__(self, seq: int, message: str) -> None:
        self.seq = seq
        super().__init__(f"hash chain broken at seq {seq}: {message}")


class StoreError(MemsyncError):
    """A projection store failed."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; the projector retries."""


class StoreLocked(StoreError):
    """An embedded store is owned by another process (named in the message)."""


class WaitTimeout(MemsyncError, TimeoutError):
    """A projection did not reach the requested seq in time."""
