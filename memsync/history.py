"""A memory's history: its versions, what changed in each, who and why."""

from __future__ import annotations

from typing import Any

from memsync.events import (
    MemoriesDeleted,
    MemoriesReset,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    RecordedEvent,
    event_to_dict,
    format_time,
)
from memsync.fold import MemoryState, State

_EVENT_NAMES = {
    "memory.added": "ADD",
    "memory.updated": "UPDATE",
    "memory.deleted": "DELETE",
    "memories.deleted": "DELETE",
    "memories.reset": "DELETE",
}


def memory_history(memory_id: str, records: list[RecordedEvent]) -> list[dict[str, Any]]:
    """One entry per event of the memory's stream, oldest first."""
    state = State()
    entries = []
    for record in records:
        before = state.memories.get(memory_id)
        state.apply(record)
        after = state.memories.get(memory_id)
        entries.append(
            {
                "memory_id": memory_id,
                "version": record.version if record.memory_id is not None else _bulk_version(before),
                "seq": record.seq,
                "type": record.type,
                "event": _EVENT_NAMES[record.type],
                "recorded_at": format_time(record.recorded_at),
                "occurred_at": format_time(record.event.occurred_at) if record.event.occurred_at else None,
                "actor": record.event.actor,
                "reason": record.event.reason,
                "old_memory": before.text if before else None,
                "new_memory": after.text if after else None,
                "changes": _changes(before, after, record),
                "event_id": record.event_id,
            }
        )
    return entries


def _bulk_version(before: MemoryState | None) -> int | None:
    return before.version + 1 if before is not None else None


def _changes(before: MemoryState | None, after: MemoryState | None, record: RecordedEvent) -> dict[str, Any]:
    event = record.event
    if isinstance(event, MemoryAdded):
        return {k: v for k, v in event_to_dict(event).items() if k not in ("type", "memory_id", "event_id")}
    if isinstance(event, MemoryDeleted | MemoriesReset):
        return {}
    if isinstance(event, MemoriesDeleted):
        return {"scope": {k: v for k, v in event_to_dict(event).items() if k.endswith("_id") and k != "event_id"}}
    assert isinstance(event, MemoryUpdated) and before is not None and after is not None
    out: dict[str, Any] = {}
    if before.text != after.text:
        out["text"] = {"old": before.text, "new": after.text}
    if before.metadata != after.metadata:
        keys = sorted(set(before.metadata) | set(after.metadata))
        out["metadata"] = {
            k: {"old": before.metadata.get(k), "new": after.metadata.get(k)}
            for k in keys
            if before.metadata.get(k) != after.metadata.get(k)
        }
    if before.vector != after.vector:
        out["vector"] = {"changed": True, "dimension": len(after.vector or b"") // 4}
    old_entities, new_entities = set(before.mentions), set(after.mentions)
    if old_entities != new_entities:
        out["entities"] = {"added": sorted(new_entities - old_entities), "removed": sorted(old_entities - new_entities)}
    if before.relations != after.relations:
        old_facts, new_facts = set(before.relations), set(after.relations)
        out["relations"] = {
            "added": [list(f) for f in sorted(new_facts - old_facts)],
            "removed": [list(f) for f in sorted(old_facts - new_facts)],
        }
    return out


def describe_changes(entry: dict[str, Any]) -> list[str]:
    """Human-readable lines for one history entry."""
    changes = entry["changes"]
    kind = entry["type"]
    if kind == "memory.added":
        lines = [f'text: "{entry["new_memory"]}"']
        for key in ("user_id", "agent_id", "run_id"):
            if key in changes:
                lines.append(f"{key}: {changes[key]}")
        if "metadata" in changes:
            lines.append(f"metadata: {changes['metadata']}")
        if "entities" in changes:
            lines.append("entities: " + ", ".join(e["name"] for e in changes["entities"]))
        if "relations" in changes:
            lines.append(
                "relations: "
                + "; ".join(f"{r['source']} -{r['relation']}-> {r['target']}" for r in changes["relations"])
            )
        if "vector" in changes:
            lines.append(f"vector: {len(changes['vector'])} dims")
        return lines
    if kind == "memory.deleted":
        return ["deleted"]
    if kind == "memories.deleted":
        scope = ", ".join(f"{k}={v}" for k, v in changes.get("scope", {}).items())
        return [f"deleted by delete-all ({scope})"]
    if kind == "memories.reset":
        return ["deleted by reset"]
    lines = []
    if "text" in changes:
        lines.append(f'text: "{changes["text"]["old"]}" -> "{changes["text"]["new"]}"')
    for key, change in changes.get("metadata", {}).items():
        if change["old"] is None:
            lines.append(f"metadata.{key}: + {change['new']!r}")
        elif change["new"] is None:
            lines.append(f"metadata.{key}: - {change['old']!r}")
        else:
            lines.append(f"metadata.{key}: {change['old']!r} -> {change['new']!r}")
    if "vector" in changes:
        lines.append("vector: replaced")
    if "entities" in changes:
        added, removed = changes["entities"]["added"], changes["entities"]["removed"]
        lines.append("entities: " + " ".join([f"+{a}" for a in added] + [f"-{r}" for r in removed]))
    if "relations" in changes:
        rel = changes["relations"]
        parts = [f"+({' '.join(f)})" for f in rel["added"]] + [f"-({' '.join(f)})" for f in rel["removed"]]
        lines.append("relations: " + " ".join(parts))
    return lines or ["no visible change"]
