"""The memsync CLI through click's CliRunner (and a real terminal for the progress bar)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli import main
from memsync.events import event_to_dict
from tests.streams import random_stream

ENV = {"MEMSYNC_FACADE__EMBEDDER": "lexical", "MEMSYNC_SQLITE_SYNCHRONOUS": "NORMAL"}


def run(data: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(data), *args], input=input, env=ENV, catch_exceptions=False)


def jsonl(events: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


ADD_A = {
    "type": "memory.added",
    "memory_id": "a",
    "text": "Alice likes tea",
    "user_id": "alice",
    "vector": [1.0, 0.0, 0.0],
    "relations": [{"source": "Alice", "relation": "likes", "target": "tea"}],
}
ADD_B = {
    "type": "memory.added",
    "memory_id": "b",
    "text": "Bob likes coffee",
    "user_id": "bob",
    "vector": [0.0, 1.0, 0.0],
}


def test_append_is_atomic_and_errors_name_the_line(tmp_path: Path) -> None:
    result = run(tmp_path, "append", "--json", input=jsonl([ADD_A, ADD_B]))
    assert result.exit_code == 0 and json.loads(result.output)["seqs"] == [1, 2]
    bad = (
        jsonl([{**ADD_B, "memory_id": "c"}])
        + "\n"
        + jsonl([{"type": "memory.updated", "memory_id": "zz", "text": "x"}])
    )
    result = run(tmp_path, "append", input=bad)
    assert result.exit_code == 2 and "line 3" in result.output and "zz" in result.output
    result = run(tmp_path, "append", input='{"type": "memory.added", "memory_id": 5}\n')
    assert result.exit_code == 2 and "line 1" in result.output and "memory_id" in result.output
    result = run(tmp_path, "append", input=jsonl([{**ADD_B, "memory_id": "d", "vector": [1.0]}]))
    assert result.exit_code == 2 and "dimension" in result.output
    status = json.loads(run(tmp_path, "status", "--json").output)
    assert status["head"]["seq"] == 2  # nothing of the refused calls was recorded


def test_status_verify_audit_shapes_and_exit_codes(tmp_path: Path) -> None:
    run(tmp_path, "append", input=jsonl([ADD_A, ADD_B]))
    status = json.loads(run(tmp_path, "status", "--json").output)
    assert set(status["head"]) == {"seq", "hash"} and status["head"]["seq"] == 2
    for kind in ("vector", "graph"):
        entry = status["projections"][kind]
        assert {"checkpoint", "lag", "parked", "reachable"} <= set(entry)
        assert entry["checkpoint"] == 0 and entry["lag"] == 2 and entry["reachable"] is True
    assert run(tmp_path, "project").exit_code == 0
    result = run(tmp_path, "verify", "--json")
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["ok"] is True
    assert set(report["projections"]["graph"]) == {"missing", "extra", "stale", "orphans"}
    audit = run(tmp_path, "audit", "--json")
    assert audit.exit_code == 0 and json.loads(audit.output)["ok"] is True


def test_verify_exits_1_on_drift_and_repair_fixes_it(tmp_path: Path) -> None:
    run(tmp_path, "append", input=jsonl([ADD_A, ADD_B]))
    run(tmp_path, "project")
    from memsync.config import MemsyncConfig
    from memsync.stores import Delete
    from memsync.system import MemSync

    with MemSync(MemsyncConfig(data_dir=tmp_path)) as system:  # drift behind memsync's back
        store = system.store("vector")
        store.apply([Delete("a")], store.checkpoint())
    result = run(tmp_path, "verify", "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["projections"]["vector"]["missing"] == ["a"]
    assert run(tmp_path, "verify", "--repair").exit_code == 1  # reports what it found and fixed
    assert run(tmp_path, "verify").exit_code == 0


def test_add_update_delete_history_log_search(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        "add",
        "Alice likes green tea",
        "--id",
        "m1",
        "--user",
        "alice",
        "--entity",
        "Alice:person",
        "--relation",
        "Alice,likes,green tea",
        "--metadata",
        '{"src": "cli"}',
        "--actor",
        "me",
        "--json",
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["id"] == "m1"
    assert run(tmp_path, "update", "m1", "--text", "Alice likes coffee", "--reason", "changed mind").exit_code == 0
    assert run(tmp_path, "update", "m1", "--text", "x", "--expected-version", "1").exit_code == 2
    assert run(tmp_path, "add", "bad", "--user", "u", "--metadata", "[1]").exit_code == 2
    assert run(tmp_path, "add", "no scope").exit_code == 2
    history = run(tmp_path, "history", "m1")
    assert "green tea" in history.output and "coffee" in history.output and "changed mind" in history.output
    entries = json.loads(run(tmp_path, "history", "m1", "--json").output)
    assert [e["version"] for e in entries] == [1, 2] and entries[1]["changes"]["text"]["new"] == "Alice likes coffee"
    hits = json.loads(run(tmp_path, "search", "coffee", "--user", "alice", "--json").output)
    assert hits["results"][0]["id"] == "m1"
    assert run(tmp_path, "delete", "m1").exit_code == 0
    assert run(tmp_path, "delete", "m1").exit_code == 2
    lines = run(tmp_path, "log", "--memory", "m1", "--json").output.splitlines()
    assert [json.loads(x)["type"] for x in lines] == ["memory.added", "memory.updated", "memory.deleted"]
    assert run(tmp_path, "log", "--type", "memory.deleted", "--json").output.count("\n") == 1
    assert run(tmp_path, "log", "--since", "not a time").exit_code == 2
    assert run(tmp_path, "delete-all").exit_code == 2
    assert run(tmp_path, "reset", "--yes").exit_code == 0


def test_export_import_round_trip_reproduces_every_record(tmp_path: Path) -> None:
    events = [event_to_dict(e) for e in random_stream(300, seed=5, dim=3)]
    assert run(tmp_path / "a", "append", input=jsonl(events)).exit_code == 0
    exported = run(tmp_path / "a", "export").output
    export_file = tmp_path / "log.jsonl"
    export_file.write_text(exported)
    assert run(tmp_path / "b", "import", str(export_file)).exit_code == 0
    assert run(tmp_path / "b", "export").output == exported
    assert run(tmp_path / "b", "audit").exit_code == 0
    tampered = exported.replace('"text":"memory 3', '"text":"memory X', 1)
    assert tampered != exported
    export_file.write_text(tampered)
    result = run(tmp_path / "c", "import", str(export_file))
    assert result.exit_code == 2 and "hash" in result.output
    assert json.loads(run(tmp_path / "c", "status", "--json").output)["head"]["seq"] == 0


def test_rebuild_flags(tmp_path: Path) -> None:
    run(tmp_path, "append", input=jsonl([ADD_A, ADD_B]))
    assert run(tmp_path, "rebuild", "--to-seq", "1", "--as-of", "2026-01-01").exit_code == 2
    result = run(tmp_path, "rebuild", "vector", "--to-seq", "1", "--json")
    assert json.loads(result.output) == {"rebuilt": {"vector": 1}}
    assert run(tmp_path, "rebuild", "--in-place").exit_code == 0
    assert json.loads(run(tmp_path, "status", "--json").output)["projections"]["graph"]["lag"] == 0
    assert run(tmp_path, "rebuild", "--as-of", "2000-01-01T00:00:00Z", "--json").exit_code == 0
    assert json.loads(run(tmp_path, "status", "--json").output)["projections"]["graph"]["checkpoint"] == 0


def test_parked_list_retry_skip(tmp_path: Path) -> None:
    run(tmp_path, "append", input=jsonl([ADD_A, ADD_B]))
    run(tmp_path, "project")
    from memsync.config import MemsyncConfig
    from memsync.system import MemSync

    with MemSync(MemsyncConfig(data_dir=tmp_path)) as system:
        system.log.park("vector", 1, "StoreError: injected", 5)
        system.log.park("graph", 2, "StoreError: injected", 5)
    listed = json.loads(run(tmp_path, "parked", "list", "--json").output)
    assert {(p["projection"], p["seq"]) for p in listed} == {("vector", 1), ("graph", 2)}
    assert run(tmp_path, "parked", "retry", "1", "--projection", "vector").exit_code == 0
    assert run(tmp_path, "parked", "skip", "--projection", "graph").exit_code == 0
    assert json.loads(run(tmp_path, "parked", "--json").output) == []
    assert run(tmp_path, "verify").exit_code == 0


def test_config_file_and_env_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[projector]\nbatch_size = -1\n")
    result = CliRunner().invoke(main, ["--config", str(bad), "status"], env=ENV)
    assert result.exit_code == 2 and "projector.batch_size" in result.output
    result = CliRunner().invoke(
        main, ["--data-dir", str(tmp_path), "status"], env={**ENV, "MEMSYNC_VECTOR__BACKEND": "nope"}
    )
    assert result.exit_code == 0 and "vector.backend" in result.output  # status still reports the log


def test_progress_bar_on_a_terminal_and_quiet_otherwise(tmp_path: Path) -> None:
    events = [event_to_dict(e) for e in random_stream(3000, seed=1, dim=3)]
    run(tmp_path, "append", input=jsonl(events))
    memsync = str(Path(sys.executable).with_name("memsync"))
    env = {**os.environ, **ENV, "COLUMNS": "120"}
    plain = subprocess.run(
        [memsync, "--data-dir", str(tmp_path), "rebuild", "vector"], env=env, capture_output=True, text=True, check=True
    )
    assert "ev/s" not in plain.stderr + plain.stdout
    parent, child = pty.openpty()
    proc = subprocess.Popen(
        [memsync, "--data-dir", str(tmp_path), "rebuild", "vector"], env=env, stdin=child, stdout=child, stderr=child
    )
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(60) == 0
    os.close(parent)
    text = output.decode(errors="replace")
    assert "vector" in text and "ev/s" in text and "100%" in text


@pytest.mark.parametrize("command", ["status", "log", "audit", "export", "parked"])
def test_reporting_commands_on_an_empty_log(tmp_path: Path, command: str) -> None:
    assert run(tmp_path, command).exit_code == 0
