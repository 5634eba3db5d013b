"""Ownership of embedded store directories.

Embedded engines lock their files, but their errors do not say who holds them.
:class:`DirLock` takes an exclusive ``flock`` on ``<dir>.lock`` and writes the
holder's pid and command line into it, so a second process gets a
:class:`~memsync.errors.StoreLocked` that names the holder. The kernel drops
the lock when the process dies, so a ``kill -9`` never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from contextvars import ContextVar
from pathlib import Path

from memsync.errors import StoreLocked

LOCK_WAIT: ContextVar[float] = ContextVar("memsync_lock_wait", default=5.0)
"""How long opening an embedded store waits for a brief holder (e.g. a ``status`` reading)."""


class DirLock:
    def __init__(self, directory: Path, what: str) -> None:
        self.path = Path(str(directory) + ".lock")
        self.what = what
        self._fd: int | None = None

    def acquire(self, timeout: float | None = None) -> DirLock:
        """Take the lock, waiting up to ``timeout`` (default: :data:`LOCK_WAIT`) for a brief holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + (LOCK_WAIT.get() if timeout is None else timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise StoreLocked(
                    f"the {self.what} at {self.path.with_suffix('')} is in use by {holder}; "
                    "embedded stores belong to one process at a time (stop it, or use server stores)"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
