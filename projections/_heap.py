"""Handing the C heap that a bulk load freed back to the OS.

glibc keeps freed memory in its arenas for reuse, so after the engines free
what a bulk load built (a LadybugDB chunk, a closed Qdrant Edge shard), the
process stays as large as at its peak, and the next phase of a rebuild starts
from there. ``malloc_trim`` returns the free pages.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

_malloc_trim: Callable[[int], int] | None
try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _malloc_trim = None


def trim_heap() -> None:
    """Give the free pages of every malloc arena back to the OS (glibc only; elsewhere nothing)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
