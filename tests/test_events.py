"""Events: the wire format, its decoder and validation, canonical bytes and the chain hash."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest

from memsync.errors import InputError, LogError, TamperError
from memsync.events import (
    EVENT_TYPES,
    GENESIS_HASH,
    METADATA_INT_RANGE,
    METADATA_MAX_DEPTH,
    Entity,
    Event,
    MemoriesDeleted,
    MemoriesReset,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    Relation,
    chain_hash,
    check_event,
    decode_event,
    decode_payload,
    encode_json,
    event_from_dict,
    event_to_dict,
    event_type,
    format_time,
    normalize_name,
    pack_vector,
    parse_time,
    payload_bytes,
    read_jsonl,
    recorded_from_dict,
    unpack_vector,
)
from tests.log_contract import CORPUS_FILES, parse_corpus

FULL_ADD = {
    "type": "memory.added",
    "memory_id": "m1",
    "text": "Alice lives in Paris",
    "user_id": "u1",
    "agent_id": "a1",
    "run_id": "r1",
    "vector": [0.5, -1.0, 2.0],
    "metadata": {"source": "chat", "n": 3, "nested": {"ok": True}},
    "entities": [{"name": "Alice", "type": "person"}, {"name": "Paris"}],
    "relations": [{"source": "Alice", "relation": "lives_in", "target": "Paris"}],
    "event_id": "6f1c1a64-3d7e-4c53-9b7a-3c0b6f0f8d11",
    "expected_version": 0,
    "actor": "agent",
    "reason": "user said so",
    "occurred_at": "2024-03-01T10:00:00Z",
}


ADD_PREFIX = '{"type": "memory.added", "memory_id": "m", "text": "t", "user_id": "u", '


def decode(obj: object, line: int | None = None) -> Event:
    return decode_event(json.dumps(obj), line=line)


# ---------------------------------------------------------------- decoding


def test_every_type_decodes_to_its_struct() -> None:
    cases: list[tuple[dict[str, object], type]] = [
        (FULL_ADD, MemoryAdded),
        ({"type": "memory.updated", "memory_id": "m1", "metadata": {}}, MemoryUpdated),
        ({"type": "memory.deleted", "memory_id": "m1", "expected_version": 3}, MemoryDeleted),
        ({"type": "memories.deleted", "agent_id": "a1"}, MemoriesDeleted),
        ({"type": "memories.reset", "reason": "fresh start"}, MemoriesReset),
    ]
    for data, cls in cases:
        event = decode(data)
        assert type(event) is cls
        assert event_type(event) == data["type"]
    assert {event_type(decode(d)) for d, _ in cases} == set(EVENT_TYPES)


def test_full_add_round_trips_through_dict() -> None:
    event = decode(FULL_ADD)
    assert isinstance(event, MemoryAdded)
    assert event.entities == [Entity(name="Alice", type="person"), Entity(name="Paris")]
    assert event.relations == [Relation(source="Alice", relation="lives_in", target="Paris")]
    assert event.occurred_at == datetime(2024, 3, 1, 10, tzinfo=UTC)
    out = event_to_dict(event)
    assert next(iter(out)) == "type"
    assert "expected_version" not in out  # a precondition, not part of the fact
    assert out == {k: v for k, v in FULL_ADD.items() if k != "expected_version"}
    assert event_from_dict(out) == msgspec.structs.replace(event, expected_version=None)


def test_events_are_frozen() -> None:
    event = decode(FULL_ADD)
    with pytest.raises(AttributeError):
        event.text = "changed"  # type: ignore[misc]


def test_integers_are_accepted_as_floats() -> None:
    event = decode({**FULL_ADD, "vector": [1, 2, 3]})
    assert isinstance(event, MemoryAdded) and event.vector == [1.0, 2.0, 3.0]
    assert all(type(x) is float for x in event.vector)


def test_read_jsonl_numbers_lines_and_skips_blanks() -> None:
    lines = [
        json.dumps({"type": "memories.reset"}),
        "",
        "   ",
        json.dumps({"type": "memory.deleted", "memory_id": "m"}).encode(),
        json.dumps({"type": "memory.deleted", "memory_id": ""}),
    ]
    events = read_jsonl(lines)
    assert isinstance(next(events), MemoriesReset)
    assert isinstance(next(events), MemoryDeleted)  # bytes lines work too
    with pytest.raises(InputError) as info:
        next(events)
    assert info.value.line == 5 and info.value.field == "memory_id"
    assert str(info.value).startswith("line 5: ")


def test_read_jsonl_is_lazy() -> None:
    def lines():  # type: ignore[no-untyped-def]
        yield json.dumps({"type": "memories.reset"})
        raise AssertionError("read past the first event")

    assert isinstance(next(read_jsonl(lines())), MemoriesReset)


@pytest.mark.parametrize("path", [p for p in CORPUS_FILES if "line" in parse_corpus(p)[1]["where"][0]], ids=str)
def test_corpus_decode_errors_name_line_and_field(path: Path) -> None:
    """The decode-time half of the bad-input corpus, without a log."""
    lines, expect = parse_corpus(path)
    number = int(expect["where"][0].split()[1])
    with pytest.raises(InputError) as info:
        list(read_jsonl(lines))
    assert info.value.line == number
    assert str(info.value).startswith(f"line {number}: ")
    for field in expect.get("field", []):
        assert info.value.field == field
        assert field.split(".")[-1].split("[")[0] in str(info.value)
    for name in expect.get("names", []):
        assert name in str(info.value)


def test_corpus_files_all_have_expectations() -> None:
    assert len(CORPUS_FILES) >= 30
    for path in CORPUS_FILES:
        lines, expect = parse_corpus(path)
        assert expect.get("error") and expect.get("where"), path
        assert any(line.strip() for line in lines), path


@pytest.mark.parametrize(
    ("raw", "field", "says"),
    [
        (ADD_PREFIX + '"vector": [NaN]}', "vector[0]", "NaN"),
        (ADD_PREFIX + '"vector": [1, Infinity]}', "vector[1]", "Infinity"),
        ('{"type": "memory.updated", "memory_id": "m", "metadata": {"a": [1, -Infinity]}}', "metadata.a[1]", "NaN"),
        (ADD_PREFIX + '"vector": [nan]}', None, "malformed"),  # not even Python's NaN spelling
        ('{"type": "memory.added", "memory_id": "m" "text": "t"}', None, "malformed JSON"),
    ],
)
def test_non_json_numbers_are_clear_errors(raw: str, field: str | None, says: str) -> None:
    with pytest.raises(InputError) as info:
        decode_event(raw, line=7)
    assert info.value.field == field
    assert str(info.value).startswith("line 7: ")
    assert says in str(info.value)


def test_field_paths_of_nested_errors() -> None:
    with pytest.raises(InputError) as info:
        decode({**FULL_ADD, "relations": [{"source": "a", "relation": "r"}]})
    assert info.value.field == "relations[0].target"
    with pytest.raises(InputError) as info:
        decode({**FULL_ADD, "entities": [{"name": "a"}, {"name": 3}]})
    assert info.value.field == "entities[1].name"
    with pytest.raises(InputError) as info:
        decode({"type": "memory.deleted", "memory_id": "m", "text": "no"})
    assert info.value.field == "text" and "unknown field" in str(info.value)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "\n\t "}, "text"),
        ({"memory_id": " "}, "memory_id"),
        ({"user_id": None, "agent_id": None, "run_id": None}, "user_id"),
        ({"user_id": "", "agent_id": "", "run_id": None}, "user_id"),
        ({"vector": []}, "vector"),
        ({"vector": [0.0, 3.5e38]}, "vector[1]"),
        ({"vector": [1e-50]}, None),  # underflows to 0.0 in float32: finite, accepted
        ({"entities": [{"name": " "}]}, "entities[0].name"),
        ({"relations": [{"source": "a", "relation": "r", "target": ""}]}, "relations[0].target"),
        ({"event_id": "123"}, "event_id"),
        ({"event_id": "6f1c1a64-3d7e-4c53-9b7a-3c0b6f0f8d11"}, None),
        ({"expected_version": -2}, "expected_version"),
        ({"occurred_at": "2024-13-01T00:00:00Z"}, "occurred_at"),
    ],
)
def test_validation_names_the_field(change: dict[str, object], field: str | None) -> None:
    data = {**FULL_ADD, **change}
    if field is None:
        decode(data)
        return
    with pytest.raises(InputError) as info:
        decode(data, line=2)
    assert info.value.field == field
    assert str(info.value).startswith("line 2: ")


def test_update_needs_a_field_and_bulk_delete_a_scope() -> None:
    with pytest.raises(InputError, match=r"memory\.updated"):
        decode({"type": "memory.updated", "memory_id": "m", "actor": "x"})
    for field in ("text", "vector", "metadata", "entities", "relations"):
        value = {"text": "t", "vector": [1.0], "metadata": {}, "entities": [], "relations": []}[field]
        decode({"type": "memory.updated", "memory_id": "m", field: value})
    with pytest.raises(InputError, match=r"memories\.deleted"):
        decode({"type": "memories.deleted"})
    decode({"type": "memories.deleted", "run_id": "r"})


def test_check_event_type_checks_python_built_events() -> None:
    good = MemoryAdded(memory_id="m", text="t", user_id="u", vector=[1, 2])  # type: ignore[list-item]
    checked = check_event(good)
    assert isinstance(checked, MemoryAdded) and checked.vector == [1.0, 2.0]
    bad: list[tuple[Event, str]] = [
        (MemoryAdded(memory_id="m", text=["t"], user_id="u"), "text"),  # type: ignore[arg-type]
        (MemoryAdded(memory_id="m", text="t", user_id="u", vector=[math.nan]), "vector[0]"),
        (MemoryAdded(memory_id="m", text="t", user_id="u", entities=[{"name": "x"}]), ""),  # type: ignore[list-item]
        (MemoryUpdated(memory_id="m", metadata={"x": math.inf}), "metadata.x"),
        (MemoryAdded(memory_id="m", text="t", user_id="u", occurred_at="soon"), "occurred_at"),  # type: ignore[arg-type]
    ]
    for event, field in bad[:2] + bad[3:]:
        with pytest.raises(InputError) as info:
            check_event(event)
        assert info.value.field == field
    # dicts in place of Entity structs are converted, not refused
    converted = check_event(bad[2][0])
    assert isinstance(converted, MemoryAdded) and converted.entities == [Entity(name="x")]
    with pytest.raises(InputError):
        check_event("memory.added")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"text": "a\x00b"}, "text"),
        ({"memory_id": "m\x00"}, "memory_id"),
        ({"user_id": "\x00"}, "user_id"),
        ({"run_id": "r\x00"}, "run_id"),
        ({"actor": "x\x00"}, "actor"),
        ({"reason": "\x00"}, "reason"),
        ({"entities": [{"name": "A"}, {"name": "B\x00"}]}, "entities[1].name"),
        ({"entities": [{"name": "A", "type": "\x00"}]}, "entities[0].type"),
        ({"relations": [{"source": "a", "relation": "r\x00", "target": "b"}]}, "relations[0].relation"),
    ],
)
def test_nul_characters_in_text_ids_and_names_are_refused(change: dict[str, object], field: str) -> None:
    with pytest.raises(InputError, match="NUL") as info:
        decode({**FULL_ADD, **change}, line=3)
    assert info.value.field == field and info.value.line == 3


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (MemoryAdded(memory_id="m", text="t\ud800", user_id="u"), "text"),
        (MemoryAdded(memory_id="\udcff", text="t", user_id="u"), "memory_id"),
        (MemoriesDeleted(agent_id="a\udfff"), "agent_id"),
        (MemoryAdded(memory_id="m", text="t", user_id="u", entities=[Entity(name="\ud800")]), "entities[0].name"),
        (MemoryUpdated(memory_id="m", metadata={"a": ["ok", "x\ud800"]}), "metadata.a[1]"),
        (MemoryUpdated(memory_id="m", metadata={"a": {"k\udc80": 1}}), "metadata.a"),
    ],
)
def test_lone_surrogates_are_refused(event: Event, field: str) -> None:
    """A lone surrogate has no UTF-8 form: refused up front, not by the encoder or the database later."""
    with pytest.raises(InputError, match="surrogate") as info:
        check_event(event)
    assert info.value.field == field


def nested(levels: int) -> object:
    """``levels`` arrays one inside the other."""
    value: object = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_metadata_that_would_not_read_back_is_refused() -> None:
    low, high = METADATA_INT_RANGE
    fine = {"n": high, "m": low, "s": "a NUL is data here: \x00", "deep": nested(METADATA_MAX_DEPTH - 1)}
    assert check_event(MemoryUpdated(memory_id="m", metadata=fine)).metadata == fine
    assert decode({**FULL_ADD, "metadata": fine}).metadata == fine  # type: ignore[union-attr]
    refused: list[tuple[dict[str, Any], str, str, bool]] = [  # (metadata, field, message, also as JSON)
        ({"n": high + 1}, "metadata.n", "64-bit", True),
        ({"x": [{"n": low - 1}]}, "metadata.x[0].n", "64-bit", True),
        ({"n": 10**5000}, "metadata.n", "64-bit", False),  # more digits than str() may print
        ({"deep": nested(METADATA_MAX_DEPTH)}, "metadata.deep" + "[0]" * (METADATA_MAX_DEPTH - 1), "nested", True),
        ({"a": {1: "x"}}, "metadata.a", "not a string", False),  # JSON keys are strings
    ]
    for metadata, field, says, as_json in refused:
        with pytest.raises(InputError, match=says) as info:
            check_event(MemoryUpdated(memory_id="m", metadata=metadata))
        assert info.value.field == field
        if as_json:
            with pytest.raises(InputError, match=says) as info:
                decode({**FULL_ADD, "metadata": metadata}, line=5)
            assert info.value.field == field and info.value.line == 5


def test_nesting_too_deep_to_decode_is_an_input_error() -> None:
    """Past msgspec's recursion limit (JSON) or Python's (built in Python): an InputError, never RecursionError."""
    with pytest.raises(InputError, match="nested too deeply") as info:
        decode_event(ADD_PREFIX + '"metadata": {"a": ' + "[" * 5000 + "]" * 5000 + "}}", line=2)
    assert info.value.line == 2
    with pytest.raises(InputError, match="nested deeper") as info:
        check_event(MemoryUpdated(memory_id="m", metadata={"a": nested(5000)}))
    assert info.value.field == "metadata"


# ---------------------------------------------------------------- time and names


def test_time_format_is_fixed_width_utc() -> None:
    t = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(t) == "2024-01-02T01:04:05.000006Z"
    assert format_time(datetime(2024, 1, 2)) == "2024-01-02T00:00:00.000000Z"  # naive = UTC
    assert parse_time("2024-01-02T01:04:05.000006Z") == t
    assert parse_time("2024-01-02") == datetime(2024, 1, 2, tzinfo=UTC)
    with pytest.raises(InputError) as info:
        parse_time("last tuesday", field="since")
    assert info.value.field == "since"


@pytest.mark.parametrize(
    ("name", "normal"),
    [("  Alice  ", "alice"), ("New   York\tCity", "new york city"), ("ÉCOLE", "école"), ("a\nb", "a b"), (" ", "")],
)
def test_normalize_name(name: str, normal: str) -> None:
    assert normalize_name(name) == normal


# ---------------------------------------------------------------- bytes and hashes


def test_payload_bytes_are_canonical() -> None:
    a = decode(FULL_ADD)
    reordered = json.dumps(dict(reversed(list(FULL_ADD.items()))))
    b = decode_event(reordered)
    assert payload_bytes(a) == payload_bytes(b)
    payload = json.loads(payload_bytes(a))
    assert list(payload) == sorted(payload)
    assert "vector" not in payload and "expected_version" not in payload
    assert payload["type"] == "memory.added"
    # decoding the payload plus the float32 vector gives the event back (without the precondition)
    back = decode_payload(payload_bytes(a), pack_vector([0.5, -1.0, 2.0]))
    assert back == msgspec.structs.replace(a, expected_version=None)


def test_a_stored_payload_that_no_longer_decodes_names_its_seq() -> None:
    good = payload_bytes(decode(FULL_ADD))
    for payload, vector in [(good[:-1], None), (good.replace(b"memory.added", b"memory.addex"), None), (good, b"\x00")]:
        with pytest.raises(TamperError) as info:
            decode_payload(payload, vector, seq=12)
        assert info.value.seq == 12 and "does not decode" in str(info.value)
        with pytest.raises(LogError, match="does not decode"):
            decode_payload(payload, vector)


def test_vectors_pack_as_little_endian_float32() -> None:
    packed = pack_vector([1.0, -2.0, 0.1])
    assert packed[:4] == b"\x00\x00\x80\x3f" and len(packed) == 12
    assert unpack_vector(packed)[:2] == [1.0, -2.0]
    assert unpack_vector(packed)[2] == pytest.approx(0.1, rel=1e-7) and unpack_vector(packed)[2] != 0.1


def test_chain_hash_covers_every_recorded_field() -> None:
    base = {"seq": 3, "version": 2, "recorded_at": "2024-01-01T00:00:00.000000Z", "payload": b"{}", "vector": None}
    digest = chain_hash(GENESIS_HASH, **base)  # type: ignore[arg-type]
    assert len(digest) == 64
    assert chain_hash(GENESIS_HASH, **base) == digest  # type: ignore[arg-type]
    changes = [
        {"seq": 4},
        {"version": None},
        {"version": 3},
        {"recorded_at": "2024-01-01T00:00:00.000001Z"},
        {"payload": b"{ }"},
        {"vector": pack_vector([1.0])},
    ]
    for change in changes:
        assert chain_hash(GENESIS_HASH, **{**base, **change}) != digest, change  # type: ignore[arg-type]
    assert chain_hash("ab" * 32, **base) != digest  # type: ignore[arg-type]
    # the payload is length-prefixed: bytes cannot move between payload and vector
    assert chain_hash(GENESIS_HASH, **{**base, "payload": b"{}\x00", "vector": b"\x00"}) != chain_hash(  # type: ignore[arg-type]
        GENESIS_HASH,
        **{**base, "payload": b"{}", "vector": b"\x00\x00"},  # type: ignore[arg-type]
    )


def test_recorded_from_dict() -> None:
    record = {
        **{k: v for k, v in FULL_ADD.items() if k != "expected_version"},
        "seq": 1,
        "version": 1,
        "recorded_at": "2024-01-01T00:00:00.000000Z",
        "prev_hash": GENESIS_HASH,
        "hash": "a" * 64,
    }
    event, recorded = recorded_from_dict(record)
    assert isinstance(event, MemoryAdded) and event.event_id == FULL_ADD["event_id"]
    assert recorded == {k: record[k] for k in ("seq", "version", "recorded_at", "prev_hash", "hash")}
    for missing in ("seq", "hash", "recorded_at"):
        with pytest.raises(InputError) as info:
            recorded_from_dict({k: v for k, v in record.items() if k != missing}, line=4)
        assert info.value.line == 4
    with pytest.raises(InputError, match="event_id"):
        recorded_from_dict({k: v for k, v in record.items() if k != "event_id"})


def test_encode_json_is_compact() -> None:
    assert encode_json({"a": [1, 2.5, None]}) == b'{"a":[1,2.5,null]}'
