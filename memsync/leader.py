"""Leadership: exactly one active follower per projection.

``memsync project --follow`` may run on several hosts; each takes the
projection's leadership before it applies anything and stands by otherwise.
The lock lives with the log, the one thing every worker shares:

* SQLite: an exclusive ``flock`` on ``<events.db>.<name>.leader`` — released by
  the kernel when the holder dies, even by ``kill -9``;
* PostgreSQL: a session-level advisory lock — released by the server when the
  holder's connection drops.

A standby polls ``try_acquire`` and takes over within one poll interval of the
holder's death. Because checkpoints live in the stores and batches are
idempotent, a takeover re-applies at most the batch the dead leader had not
checkpointed; nothing is lost or applied twice in effect.
"""

from __future__ import annotations

import fcntl
import os
from abc import ABC, abstractmethod
from pathlib import Path


class Leadership(ABC):
    """An exclusive, crash-released lock named after one projection."""

    @abstractmethod
    def try_acquire(self) -> bool:
        """Take the lock if free; True when this process holds it (idempotent)."""

    @abstractmethod
    def still_held(self) -> bool:
        """False once the lock is known to be lost (e.g. the database connection dropped)."""

    @abstractmethod
    def release(self) -> None: ...


class FileLeadership(Leadership):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._fd = fd
        return True

    def still_held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
