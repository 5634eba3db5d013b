"""Events: the wire format of the log (ARCHITECTURE.md section 3).

Events are frozen, tagged, keyword-only msgspec Structs in one union,
:data:`Event`. Input is decoded by one reusable typed decoder and then checked
by :func:`validate` (rules msgspec types cannot say: a non-empty text, a scope,
a finite vector, text every backend can store, metadata that reads back as
written). A recorded event (:class:`RecordedEvent`) wraps the input
event with what the log adds: ``seq``, ``version``, ``recorded_at``,
``event_id``, ``prev_hash`` and ``hash``.

Schema evolution: new fields get defaults, a field never changes type, a tag is
never renamed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
import os
import re
import struct
import uuid
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, Literal, TypeAlias, get_args

import msgspec

from memsync.errors import InputError, LogError, TamperError

GENESIS_HASH: Final = "0" * 64
SCOPE_FIELDS: Final = ("user_id", "agent_id", "run_id")
METADATA_MAX_DEPTH: Final = 32  # levels of objects and arrays in `metadata`, itself included
METADATA_INT_RANGE: Final = (-(2**63), 2**63 - 1)  # what the stores keep as integers (wider ones become floats)


class Entity(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """An entity a memory mentions; ``name`` is compared normalized."""

    name: str
    type: str | None = None


class Relation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A fact ``(source, relation, target)`` asserted by one memory."""

    source: str
    relation: str
    target: str


class _Event(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    tag_field="type",
    gc=False,
):
    """Fields every event may carry (the envelope).

    Events are not tracked by the garbage collector (``gc=False``, as
    :class:`RecordedEvent`): they hold data, never a reference back to
    themselves, and a page of the log or a batch holds thousands, which
    the collector would otherwise walk again and again.
    """

    event_id: str | None = None
    actor: str | None = None
    reason: str | None = None
    occurred_at: datetime | None = None

    memory_event: ClassVar[bool] = False


class MemoryAdded(_Event, frozen=True, tag="memory.added"):
    memory_id: str
    text: str
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None
    vector: list[float] | None = None
    metadata: dict[str, Any] | None = None
    entities: list[Entity] | None = None
    relations: list[Relation] | None = None
    expected_version: int | None = None

    memory_event: ClassVar[bool] = True


class MemoryUpdated(_Event, frozen=True, tag="memory.updated"):
    memory_id: str
    text: str | None = None
    vector: list[float] | None = None
    metadata: dict[str, Any] | None = None
    entities: list[Entity] | None = None
    relations: list[Relation] | None = None
    expected_version: int | None = None

    memory_event: ClassVar[bool] = True


class MemoryDeleted(_Event, frozen=True, tag="memory.deleted"):
    memory_id: str
    expected_version: int | None = None

    memory_event: ClassVar[bool] = True


class MemoriesDeleted(_Event, frozen=True, tag="memories.deleted"):
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None


class MemoriesReset(_Event, frozen=True, tag="memories.reset"):
    pass


Event: TypeAlias = MemoryAdded | MemoryUpdated | MemoryDeleted | MemoriesDeleted | MemoriesReset
MemoryEvent: TypeAlias = MemoryAdded | MemoryUpdated | MemoryDeleted
EventType = Literal["memory.added", "memory.updated", "memory.deleted", "memories.deleted", "memories.reset"]
EVENT_TYPES: Final[tuple[str, ...]] = (
    "memory.added",
    "memory.updated",
    "memory.deleted",
    "memories.deleted",
    "memories.reset",
)
UPDATABLE_FIELDS: Final = ("text", "vector", "metadata", "entities", "relations")
_UNSTORED: Final = ("vector", "expected_version")  # not part of an event's stored payload
_EVENT_CLASSES: Final = frozenset(get_args(Event))
_NOT_TEXT: Final = ("vector", "metadata", "entities", "relations", "expected_version", "occurred_at")
_TEXT_FIELDS: Final = {  # the str fields of each event type: ids, scopes, text, actor, reason
    cls: tuple(f for f in cls.__struct_fields__ if f not in _NOT_TEXT) for cls in _EVENT_CLASSES
}


class RecordedEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event as the log recorded it.

    Not tracked by the garbage collector (``gc=False``): it holds data, never a
    reference back, so it cannot be part of a cycle, and folds and pages hold
    many at once, which the collector would otherwise walk again and again.
    """

    seq: int
    event: Event
    event_id: str
    version: int | None
    recorded_at: datetime
    prev_hash: str
    hash: str
    vector_f32: bytes | None = None

    @property
    def type(self) -> str:
        return event_type(self.event)

    @property
    def memory_id(self) -> str | None:
        return getattr(self.event, "memory_id", None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of section 3: input fields plus the recorded ones."""
        out: dict[str, Any] = {"seq": self.seq}
        out.update(event_to_dict(self.event))
        out["event_id"] = self.event_id
        if self.version is not None:
            out["version"] = self.version
        out["recorded_at"] = format_time(self.recorded_at)
        out["prev_hash"] = self.prev_hash
        out["hash"] = self.hash
        return out


# ---------------------------------------------------------------- time


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(t: datetime) -> str:
    """Fixed-width RFC 3339 UTC with microseconds; sorts lexically."""
    if t.tzinfo is UTC and t.year >= 1000:  # what the log reads back: the fast path (no conversion)
        return t.isoformat(timespec="microseconds")[:-6] + "Z"
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    t = t.astimezone(UTC)
    if t.year >= 1000:  # then isoformat writes the same, twice as fast (strftime does not pad years < 1000)
        return t.isoformat(timespec="microseconds")[:-6] + "Z"
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str, *, field: str = "time") -> datetime:
    """Parse RFC 3339 (or a date); naive values are taken as UTC."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InputError(f"`{field}` is not an RFC 3339 time: {text!r}", field=field) from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


# ---------------------------------------------------------------- codec

_decoder: Final = msgspec.json.Decoder(Event)
_canonical: Final = msgspec.json.Encoder(order="sorted")
_plain: Final = msgspec.json.Encoder()


def event_type(event: Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def event_to_dict(event: Event) -> dict[str, Any]:
    """The event as a JSON-ready dict, ``type`` first, unset fields left out."""
    out: dict[str, Any] = {"type": event_type(event)}
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if value is not None and name != "expected_version":
            out[name] = value
    return msgspec.to_builtins(out)  # type: ignore[no-any-return]


def decode_event(data: bytes | str, *, line: int | None = None) -> Event:
    """Decode and validate one JSON event; errors name the field and line."""
    try:
        event = _decoder.decode(data)
    except msgspec.ValidationError as e:
        raise InputError(_describe(e), line=line, field=_field_of(e)) from None
    except msgspec.DecodeError as e:
        field = _non_json_number(data)
        if field is not None:
            message = f"`{field}` is NaN or Infinity, which JSON does not allow (vectors must be finite)"
            raise InputError(message, line=line, field=field) from None
        raise InputError(f"malformed JSON: {e}", line=line) from None
    except RecursionError:
        message = f"malformed JSON: nested too deeply to decode (metadata may nest {METADATA_MAX_DEPTH} levels)"
        raise InputError(message, line=line) from None
    except UnicodeEncodeError as e:  # a str holding a lone surrogate
        raise InputError(f"malformed JSON: not valid Unicode text: {e.reason}", line=line) from None
    return validate(event, line=line)


def _non_json_number(data: bytes | str) -> str | None:
    """The path of the first ``NaN``/``Infinity`` token, if that is why the JSON is malformed."""
    try:
        return _first_non_finite(json.loads(data), "")
    except (ValueError, RecursionError):
        return None


def _first_non_finite(value: Any, path: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return path or "$"
    items: Iterable[tuple[str, Any]] = ()
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    for sub_path, sub in items:
        found = _first_non_finite(sub, sub_path)
        if found is not None:
            return found
    return None


def check_event(event: Event) -> Event:
    """Type-check and validate an event built in Python (JSON input is checked by the decoder).

    Returns the event as the decoder would have produced it (ints in a vector
    become floats), so a recorded payload always decodes again.
    """
    return checked_event(event)[0]


def checked_event(event: Event) -> tuple[Event, bytes | None]:
    """:func:`check_event`, and the event's vector packed as float32 (checked once, stored as is)."""
    if type(event) not in _EVENT_CLASSES:
        raise InputError(f"not an event: {type(event).__name__} (known types: {', '.join(EVENT_TYPES)})", field="type")
    data = msgspec.structs.asdict(event)
    vector = data.get("vector")
    if vector is not None and type(vector) is not list:
        data["vector"] = _float_list(vector)
    for key in ("metadata", "entities", "relations"):  # nested values are checked as plain data
        if data.get(key) is not None:
            try:
                data[key] = msgspec.to_builtins(data[key])
            except (TypeError, ValueError) as e:
                raise InputError(f"`{key}` cannot be stored as JSON: {e}", field=key) from None
            except RecursionError:
                raise InputError(f"`{key}` {_TOO_DEEP}", field=key) from None
    try:
        checked: Event = msgspec.convert(data, type(event))  # ints in a list[float] become floats here
    except msgspec.ValidationError as e:
        if data.get("vector") is None:
            raise InputError(_describe(e), field=_field_of(e)) from None
        data["vector"] = _float_list(data["vector"])  # numpy scalars and other reals, then check again
        try:
            checked = msgspec.convert(data, type(event))
        except msgspec.ValidationError as e:
            raise InputError(_describe(e), field=_field_of(e)) from None
    return checked, _validate(checked, None)


def _float_list(vector: Any) -> Any:
    """Real numbers of any kind (int, numpy.float32, ...) as floats; anything else is left for the type check."""
    if isinstance(vector, str | bytes | Mapping) or not isinstance(vector, Iterable):
        return vector
    return [float(x) if isinstance(x, numbers.Real) and not isinstance(x, bool) else x for x in vector]


def event_from_dict(data: Mapping[str, Any], *, line: int | None = None) -> Event:
    """Build and validate an event from a Python mapping (the facade's path)."""
    try:
        event = msgspec.convert(data, Event)
    except msgspec.ValidationError as e:
        raise InputError(_describe(e), line=line, field=_field_of(e)) from None
    return validate(event, line=line)


def read_jsonl(lines: Iterable[bytes | str]) -> Iterator[Event]:
    """Decode JSON Lines lazily; blank lines are skipped, numbering is kept."""
    for number, raw in enumerate(lines, start=1):
        if raw.strip():
            yield decode_event(raw, line=number)


def encode_json(value: Any) -> bytes:
    return _plain.encode(value)


def _describe(e: msgspec.ValidationError) -> str:
    text = str(e)
    if text.startswith("Invalid value") and "$.type" in text:
        return f"{text}; known types: {', '.join(EVENT_TYPES)}"
    return text


def _field_of(e: msgspec.ValidationError) -> str | None:
    """The JSON path msgspec names (``$.entities[0]``), plus the field it is missing or does not know."""
    text = str(e)
    path = text.rsplit("`$", 1)[1].rstrip("`").lstrip(".") if "`$" in text else ""
    for marker in ("required field `", "unknown field `"):
        if marker in text:
            name = text.split(marker, 1)[1].split("`", 1)[0]
            path = f"{path}.{name}" if path else name
    return path or None


# ---------------------------------------------------------------- validation


def validate(event: Event, *, line: int | None = None) -> Event:
    """Check the rules types cannot express; return the event unchanged."""
    _validate(event, line)
    return event


def _validate(event: Event, line: int | None) -> bytes | None:
    """:func:`validate`; returns the event's vector packed as float32 (None without one)."""
    packed = None

    def fail(field: str, message: str) -> InputError:
        return InputError(f"`{field}` {message}", line=line, field=field)

    if event.event_id is not None:
        try:
            uuid.UUID(event.event_id)
        except ValueError:
            raise fail("event_id", f"is not a UUID: {event.event_id!r}") from None
    for name in _TEXT_FIELDS.get(type(event), ()):
        value = getattr(event, name)
        if value is not None and ("\x00" in value or not value.isascii()):  # the common case costs no call
            if (problem := _text_problem(value)) is not None:
                raise fail(name, problem)
    if isinstance(event, _MEMORY_CLASSES):
        if not event.memory_id.strip():
            raise fail("memory_id", "must not be empty")
        if event.expected_version is not None and event.expected_version < 0:
            raise fail("expected_version", "must be >= 0")
    if isinstance(event, MemoryAdded):
        if not any(getattr(event, f) for f in SCOPE_FIELDS):
            raise fail("user_id", "or `agent_id` or `run_id` is required for memory.added")
    if isinstance(event, _CONTENT_CLASSES):
        if isinstance(event, MemoryUpdated) and all(getattr(event, f) is None for f in UPDATABLE_FIELDS):
            raise fail("text", "or another of vector, metadata, entities, relations is required for memory.updated")
        if event.text is not None and not event.text.strip():
            raise fail("text", "must not be empty")
        if event.vector is not None:
            packed = _packed_vector(event.vector, fail)
        if event.metadata is not None and (found := _metadata_problem(event.metadata, 1)) is not None:
            path, problem = found
            raise fail("metadata" + "".join(reversed(path)), problem)
        for i, entity in enumerate(event.entities or ()):
            for part, value in (("name", entity.name), ("type", entity.type)):
                if value is None or (value.isascii() and "\x00" not in value):  # the common case: no call
                    continue
                if (problem := _text_problem(value)) is not None:
                    raise fail(f"entities[{i}].{part}", problem)
            if not normalize_name(entity.name):
                raise fail(f"entities[{i}].name", "must not be empty")
        for i, rel in enumerate(event.relations or ()):
            for part, value in (("source", rel.source), ("relation", rel.relation), ("target", rel.target)):
                if ("\x00" in value or not value.isascii()) and (problem := _text_problem(value)) is not None:
                    raise fail(f"relations[{i}].{part}", problem)
                if not normalize_name(value):
                    raise fail(f"relations[{i}].{part}", "must not be empty")
    if isinstance(event, MemoriesDeleted) and not any(getattr(event, f) for f in SCOPE_FIELDS):
        raise fail("user_id", "or `agent_id` or `run_id` is required for memories.deleted")
    return packed


# tuples, not `A | B` unions: a union is a new (garbage-collected) object at every call
_MEMORY_CLASSES: Final = (MemoryAdded, MemoryUpdated, MemoryDeleted)
_CONTENT_CLASSES: Final = (MemoryAdded, MemoryUpdated)
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")
_TOO_DEEP: Final = f"is nested deeper than {METADATA_MAX_DEPTH} levels of objects and arrays"


def _text_problem(text: str, *, nul_ok: bool = False) -> str | None:
    """Why ``text`` cannot be stored everywhere, if it cannot.

    A lone surrogate has no UTF-8 form at all; a NUL character is refused by
    PostgreSQL's text columns (ids, scopes) and is no part of any real name or text.
    """
    if not nul_ok and "\x00" in text:
        return "contains a NUL character"
    if not text.isascii() and _SURROGATE.search(text) is not None:
        return "contains a lone surrogate (not valid Unicode text, so not UTF-8)"
    return None


def _metadata_problem(value: Any, depth: int) -> tuple[list[str], str] | None:
    """Why a metadata value would not read back as written: ``(its path, innermost part first; the reason)``.

    ``depth`` counts the objects and arrays around ``value``, itself included
    (``metadata`` is 1). Every store and reader must decode what the log
    accepts, from any call depth, so nesting is bounded; integers beyond 64
    bits would come back from the vector stores as floats; strings may hold
    NUL (they are JSON inside the payload), not lone surrogates.
    """
    kind = type(value)
    if kind is str:
        problem = _text_problem(value, nul_ok=True)
        return None if problem is None else ([], problem)
    if kind is int:
        low, high = METADATA_INT_RANGE
        return None if low <= value <= high else ([], "is an integer beyond the signed 64-bit range")
    if kind is float:
        return None if math.isfinite(value) else ([], "is NaN or Infinity, which JSON cannot carry")
    if kind is not dict and kind is not list:
        return None
    if depth > METADATA_MAX_DEPTH:
        return [], _TOO_DEEP
    if kind is list:
        for i, item in enumerate(value):
            if (found := _metadata_problem(item, depth + 1)) is not None:
                found[0].append(f"[{i}]")
                return found
        return None
    for key, item in value.items():
        if (problem := _key_problem(key)) is not None:
            return [], problem
        if (found := _metadata_problem(item, depth + 1)) is not None:
            found[0].append(f".{key}")
            return found
    return None


def _key_problem(key: Any) -> str | None:
    """Why ``key`` cannot be a JSON object key (it is named in the message, not in the path, if it cannot)."""
    if type(key) is not str:
        return f"has a key that is not a string: {key!r:.40}"
    problem = _text_problem(key, nul_ok=True)
    return None if problem is None else f"has a key that {problem}"


def _packed_vector(vector: Sequence[float], fail: Any) -> bytes:
    if not vector:
        raise fail("vector", "must not be empty")
    try:  # struct refuses what float32 cannot hold; a float64 sum is finite only if every value is
        packed = struct.pack(f"<{len(vector)}f", *vector)
        finite = math.isfinite(sum(vector))
    except OverflowError:
        finite = False
    if not finite:
        bad = next(i for i, x in enumerate(array("f", vector)) if not math.isfinite(x))
        raise fail(f"vector[{bad}]", f"is not a finite float32 value: {vector[bad]!r}")
    return packed


def pack_vector(vector: Sequence[float]) -> bytes:
    """float32, little-endian on every supported platform."""
    return array("f", vector).tobytes()


def unpack_vector(data: bytes) -> list[float]:
    values = array("f")
    values.frombytes(data)
    return values.tolist()


# ---------------------------------------------------------------- names


@functools.lru_cache(maxsize=1 << 16)  # folds normalize the same few names again and again
def normalize_name(name: str) -> str:
    """Trimmed, lower-case, inner whitespace collapsed."""
    return " ".join(name.split()).lower()


# ---------------------------------------------------------------- hashing


def payload_bytes(event: Event) -> bytes:
    """Canonical bytes of an event's content, without its vector.

    The vector is stored and hashed as float32 bytes; ``expected_version`` is
    a precondition of the append, not part of the fact, so it is not stored.
    The bytes are the event's JSON object with sorted keys (``type`` included)
    and no unset field: the struct's own encoding, as every field defaults to None.
    """
    unstored = {name: None for name in _UNSTORED if getattr(event, name, None) is not None}
    return _canonical.encode(msgspec.structs.replace(event, **unstored) if unstored else event)


def chain_hash(
    prev_hash: str,
    *,
    seq: int,
    version: int | None,
    recorded_at: str,
    payload: bytes,
    vector: bytes | None,
) -> str:
    """``sha256(prev_hash + canonical bytes of the recorded event)``, as hex."""
    fields = f"{seq}\n{'' if version is None else version}\n{recorded_at}\n".encode()
    h = hashlib.sha256(b"".join((bytes.fromhex(prev_hash), fields, len(payload).to_bytes(8, "big"), payload)))
    if vector is not None:
        h.update(vector)
    return h.hexdigest()


def decode_payload(payload: bytes, vector: bytes | None, *, seq: int | None = None) -> Event:
    """Inverse of :func:`payload_bytes` plus the stored vector.

    Stored bytes that no longer decode (bit rot, tampering) raise
    :class:`~memsync.errors.TamperError` naming ``seq`` (a
    :class:`~memsync.errors.LogError` when no seq is given).
    """
    try:
        event: Event = _decoder.decode(payload)
        if vector is not None:  # set on the fresh struct in place: no second copy of it
            msgspec.structs.force_setattr(event, "vector", unpack_vector(vector))
    except (ValueError, RecursionError) as e:  # msgspec.DecodeError is a ValueError, and so is a torn vector
        problem = f"the stored event does not decode: {e}"
        raise (LogError(problem) if seq is None else TamperError(seq, problem)) from e
    return event


def stored_time(text: str, *, seq: int) -> datetime:
    """A stored ``recorded_at``; text that is no longer a time raises :class:`~memsync.errors.TamperError`."""
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise TamperError(seq, f"`recorded_at` is not a time: {text!r}") from None


def new_event_id() -> str:
    """A random UUID (version 4) as ``str(uuid.uuid4())`` writes it, without the two objects it builds."""
    n = int.from_bytes(os.urandom(16), "big") & _UUID4_CLEAR | _UUID4_SET
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID4_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48))  # the version and variant bits
_UUID4_SET: Final = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def recorded_from_dict(data: Mapping[str, Any], *, line: int | None = None) -> tuple[Event, dict[str, Any]]:
    """Split an exported record into its input event and its recorded fields."""
    body = dict(data)
    recorded: dict[str, Any] = {}
    for key in ("seq", "version", "recorded_at", "prev_hash", "hash"):
        recorded[key] = body.pop(key, None)
    if recorded["seq"] is None or recorded["hash"] is None or recorded["recorded_at"] is None:
        raise InputError("an exported record needs `seq`, `recorded_at` and `hash`", line=line, field="seq")
    event = event_from_dict(body, line=line)
    if event.event_id is None:
        raise InputError("`event_id` is required in an exported record", line=line, field="event_id")
    return event, recorded
