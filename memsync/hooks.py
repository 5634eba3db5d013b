"""One small observer API for what happens in memsync.

Hook names and the keyword arguments they receive:

* ``before_append(events)``, ``after_append(records)`` and
  ``append_refused(events, error)`` — facade writes;
* ``before_batch(projection, first_seq, last_seq, ops)`` and
  ``after_batch(projection, first_seq, last_seq, ops, seconds)`` — a projection batch;
* ``retry(projection, attempt, error, delay)`` — a failed batch will be tried again;
* ``parked(projection, seq, error)`` — an event was set aside.

A hook that raises never changes the outcome of the write or batch it observes:
the error is logged (logger ``memsync.hooks``) and the remaining hooks still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

logger = logging.getLogger("memsync.hooks")

HOOK_NAMES: Final = (
    "before_append",
    "after_append",
    "append_refused",
    "before_batch",
    "after_batch",
    "retry",
    "parked",
)

Hook = Callable[..., Any]


class Hooks:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Hook]] = {name: [] for name in HOOK_NAMES}

    def on(self, name: str, handler: Hook | None = None) -> Any:
        """Register ``handler`` for ``name``; usable as a decorator."""
        if name not in self._handlers:
            raise ValueError(f"unknown hook {name!r}; known: {', '.join(HOOK_NAMES)}")

        def register(fn: Hook) -> Hook:
            self._handlers[name].append(fn)
            return fn

        return register(handler) if handler is not None else register

    def off(self, name: str, handler: Hook) -> None:
        self._handlers[name].remove(handler)

    def emit(self, name: str, **info: Any) -> None:
        for handler in self._handlers[name]:
            try:
                handler(**info)
            except Exception:
                logger.exception("hook %s raised; ignored (the observed operation is unaffected)", name)

    def __bool__(self) -> bool:
        return any(self._handlers.values())
