"""A store directory that a rebuild replaces whole: what the embedded stores share.

The LadybugDB graph store and the Qdrant Edge vector store each live in one
directory ``<path>``, owned by one process through ``<path>.lock``
(:class:`~memsync.locks.DirLock`, taken by :func:`open_locked`). A rebuild fills
:func:`rebuild_dir` (``<path>.rebuild/``) beside the live store, and
:func:`swap_in` puts it in place:

1. create ``<path>.rebuild/REBUILD-COMPLETE`` durably: from here on, a crash
   finishes the swap instead of undoing it;
2. rename ``<path>`` -> ``<path>.old``, then ``<path>.rebuild`` -> ``<path>``,
   fsyncing the parent directory after each rename;
3. remove the marker and ``<path>.old``.

:func:`discard` deletes a store (a wipe) the same way: it renames ``<path>`` to
``<path>.trash`` first, so a crash leaves the whole store or none of it, never
a half-deleted one under its old checkpoint.

:func:`recover` runs on every open (under the lock) and after a swap that failed
half way; it finishes or undoes what a crash interrupted, then deletes leftovers:

=====================================  ===========================================
found                                  action
=====================================  ===========================================
``<path>`` and ``<path>.rebuild``      delete the rebuild: the live store is intact
no ``<path>``, the rebuild marked      finish the swap (rename the rebuild in)
no ``<path>``, ``<path>.old``          put the old store back
``<path>`` and ``<path>.old``          delete the old store (the swap was done)
``<path>.trash``                       delete it (a wipe was under way)
=====================================  ===========================================
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from memsync.locks import DirLock

REBUILD: Final = "rebuild"
OLD: Final = "old"
TRASH: Final = "trash"  # a store being deleted, never put back
COMPLETE: Final = "REBUILD-COMPLETE"  # in a rebuild directory: a crash from here on finishes the swap

T = TypeVar("T")


def open_locked(path: Path, what: str, make: Callable[[DirLock], T]) -> T:
    """Lock ``path``, recover an interrupted swap, and ``make(lock)`` the store that owns the lock.

    The lock is released again when that fails.
    """
    lock = DirLock(path, what).acquire()
    try:
        recover(path)
        return make(lock)
    except BaseException:
        lock.release()
        raise


def rebuild_dir(path: Path) -> Path:
    """Where a rebuild of the store at ``path`` is built, emptied of any earlier attempt."""
    fresh = sibling(path, REBUILD)
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True, mode=0o700)  # private, like the store it replaces
    return fresh


def swap_in(path: Path, fresh: Path) -> None:
    """Mark ``fresh`` (a closed :func:`rebuild_dir`) complete and put it at ``path``.

    Both stores must be closed. When a step fails, :func:`recover` finishes or
    undoes the swap on the spot, as the next open would after a crash.
    """
    try:
        touch_durably(fresh / COMPLETE)
        _swap(path, fresh)
    finally:
        recover(path)


def discard(path: Path) -> None:
    """Delete the store at ``path`` (closed) so that a crash leaves it whole or gone."""
    trash = sibling(path, TRASH)
    if path.exists():
        if trash.exists():
            shutil.rmtree(trash)
        rename_durably(path, trash)
    shutil.rmtree(trash, ignore_errors=True)  # what is left, recover deletes


def recover(path: Path) -> None:
    """Finish or undo a swap a crash cut between its renames, then delete leftovers (under the lock)."""
    fresh, old = sibling(path, REBUILD), sibling(path, OLD)
    if not path.exists():
        if (fresh / COMPLETE).exists():
            rename_durably(fresh, path)
        elif old.exists():
            rename_durably(old, path)
    for leftover in (fresh, old, sibling(path, TRASH)):
        shutil.rmtree(leftover, ignore_errors=True)
    (path / COMPLETE).unlink(missing_ok=True)


def _swap(path: Path, fresh: Path) -> None:
    old = sibling(path, OLD)
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():  # a wiped Edge store has no directory until it is written again
        rename_durably(path, old)
    rename_durably(fresh, path)
    (path / COMPLETE).unlink()
    shutil.rmtree(old, ignore_errors=True)


def sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f"{path.name}.{suffix}")


def rename_durably(src: Path, dst: Path) -> None:
    src.rename(dst)
    fsync_dir(dst.parent)


def touch_durably(path: Path) -> None:
    path.touch()
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
