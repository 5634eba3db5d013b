"""memsync: an event-sourced memory log for AI agents, projected into vector and graph stores.

The public face is small: the facade (:class:`Memory`, :class:`AsyncMemory`),
the events, the log, the projector pieces, configuration and errors.
"""

from memsync.config import MemsyncConfig, load_config
from memsync.embeddings import Embedder, LexicalEmbedder, MiniLMEmbedder
from memsync.errors import (
    CommandRefused,
    ConfigError,
    ConflictError,
    InputError,
    LogError,
    MemsyncError,
    StoreError,
    StoreLocked,
    StoreUnavailable,
    TamperError,
    WaitTimeout,
)
from memsync.events import (
    Entity,
    Event,
    MemoriesDeleted,
    MemoriesReset,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    RecordedEvent,
    Relation,
    read_jsonl,
)
from memsync.facade import AsyncMemory, Extractor, Memory
from memsync.fold import MemoryState, State, fold
from memsync.hooks import Hooks
from memsync.log import EventLog, Head, LogQuery
from memsync.projector import ProjectionRunner, rebuild
from memsync.sqlite_log import SQLiteEventLog
from memsync.stores import GraphStore, Projection, VectorStore
from memsync.system import MemSync, open_log

__version__ = "0.1.0"

__all__ = [
    "AsyncMemory",
    "CommandRefused",
    "ConfigError",
    "ConflictError",
    "Embedder",
    "Entity",
    "Event",
    "EventLog",
    "Extractor",
    "GraphStore",
    "Head",
    "Hooks",
    "InputError",
    "LexicalEmbedder",
    "LogError",
    "LogQuery",
    "MemSync",
    "MemoriesDeleted",
    "MemoriesReset",
    "Memory",
    "MemoryAdded",
    "MemoryDeleted",
    "MemoryState",
    "MemoryUpdated",
    "MemsyncConfig",
    "MemsyncError",
    "MiniLMEmbedder",
    "Projection",
    "ProjectionRunner",
    "RecordedEvent",
    "Relation",
    "SQLiteEventLog",
    "State",
    "StoreError",
    "StoreLocked",
    "StoreUnavailable",
    "TamperError",
    "VectorStore",
    "WaitTimeout",
    "__version__",
    "fold",
    "load_config",
    "open_log",
    "read_jsonl",
    "rebuild",
]
