"""Structured logging: one event per line, text or JSON, with secrets redacted.

Records carry memsync's context as ``extra`` fields (``seq``, ``memory_id``,
``projection``, ``error_class``); the JSON format emits them as keys. Any
configured secret (passwords, API keys, URL credentials) that reaches a
message is replaced by ``***`` before the line is written.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

CONTEXT_FIELDS = ("seq", "first_seq", "last_seq", "memory_id", "projection", "error_class", "attempt", "delay")


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                out[field] = value
        if record.exc_info and record.exc_info[0] is not None:
            out.setdefault("error_class", record.exc_info[0].__name__)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{f}={getattr(record, f)}" for f in CONTEXT_FIELDS if getattr(record, f, None) is not None)
        line = f"{self.formatTime(record)} {record.levelname.lower():<7} {record.name}: {record.getMessage()}"
        return f"{line} [{context}]" if context else line


def configure_logging(
    fmt: str = "text", level: str = "info", *, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> logging.Handler:
    """Route memsync's loggers to ``stream`` (stderr) in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger("memsync")
    for old in list(root.handlers):
        if getattr(old, "_memsync", False):
            root.removeHandler(old)
    handler._memsync = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    return handler
