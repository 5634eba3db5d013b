"""Metrics, structured logs, the live status view, and bulk operations."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from memsync import AsyncMemory, InputError, Memory
from memsync.errors import ConflictError
from memsync.hooks import Hooks
from memsync.metrics import Metrics

MEMSYNC = str(Path(sys.executable).with_name("memsync"))


def _env(data: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MEMSYNC_DATA_DIR": str(data),
        "MEMSYNC_FACADE__EMBEDDER": "lexical",
        "MEMSYNC_SQLITE_SYNCHRONOUS": "NORMAL",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _append(data: Path, n: int, start: int) -> None:
    lines = "".join(
        json.dumps(
            {
                "type": "memory.added",
                "memory_id": f"m{i}",
                "text": f"note {i}",
                "user_id": "u",
                "vector": [1.0, float(i % 7), 0.5],
            }
        )
        + "\n"
        for i in range(start, start + n)
    )
    subprocess.run([MEMSYNC, "append", "-"], input=lines, text=True, env=_env(data), check=True, capture_output=True)


def _scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in body.splitlines():
        if line.startswith("memsync_") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_metrics_endpoint_moves_with_a_real_follow_run(tmp_path: Path) -> None:
    data, port = tmp_path / "data", _free_port()
    _append(data, 5, 0)
    proc = subprocess.Popen(
        [MEMSYNC, "project", "--follow", "--metrics-port", str(port)],
        env=_env(data),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(lambda: _try_scrape(port).get('memsync_projection_checkpoint{projection="graph"}') == 5)
        before = _scrape(port)
        assert before["memsync_log_head_seq"] == 5
        assert before['memsync_store_reachable{projection="vector"}'] == 1
        _append(data, 40, 5)
        _wait(lambda: _scrape(port).get('memsync_projection_checkpoint{projection="vector"}') == 45)
        _wait(lambda: _scrape(port).get('memsync_projection_checkpoint{projection="graph"}') == 45)
        after = _scrape(port)
        assert after["memsync_log_head_seq"] == 45
        assert after['memsync_projection_lag_events{projection="graph"}'] == 0
        applied = 'memsync_projection_events_applied_total{projection="vector"}'
        assert after[applied] >= before.get(applied, 0) + 40
        assert after['memsync_projection_batches_total{projection="graph"}'] >= 1
        assert after['memsync_projection_batch_seconds_count{projection="graph"}'] >= 1
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""


def _try_scrape(port: int) -> dict[str, float]:
    try:
        return _scrape(port)
    except OSError:
        return {}


def test_facade_append_metrics_count_appends_conflicts_and_refusals(tmp_path: Path) -> None:
    hooks = Hooks()
    metrics = Metrics()
    metrics.attach(hooks)
    m = Memory.from_config({"data_dir": str(tmp_path), "facade": {"embedder": "lexical"}}, hooks=hooks)
    try:
        memory_id = m.add("one", user_id="u")["results"][0]["id"]
        m.add_many([{"text": "two", "user_id": "u"}, {"text": "three", "user_id": "u"}])
        with pytest.raises(ConflictError):
            m.update(memory_id, "x", expected_version=7)
        with pytest.raises(InputError):
            m.add("   ", user_id="u")
        registry = metrics.registry
        assert registry.get_sample_value("memsync_appends_total") == 3
        assert registry.get_sample_value("memsync_append_conflicts_total") == 1
        assert registry.get_sample_value("memsync_append_refused_total") is not None
        assert registry.get_sample_value("memsync_projection_events_applied_total", {"projection": "graph"}) == 3
    finally:
        m.close()


def test_json_logs_carry_context_and_never_secrets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _append(data, 3, 0)
    env = {
        **_env(data),
        "MEMSYNC_GRAPH__BACKEND": "neo4j",
        "MEMSYNC_GRAPH__URI": f"bolt://127.0.0.1:{_free_port()}",
        "MEMSYNC_GRAPH__PASSWORD": "hunter2-very-secret",
        "MEMSYNC_PROJECTOR__MAX_ATTEMPTS": "2",
        "MEMSYNC_PROJECTOR__BACKOFF_INITIAL": "0.01",
    }
    proc = subprocess.run(
        [MEMSYNC, "--log-format", "json", "--log-level", "debug", "project"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3  # the graph store is unreachable; the vector projection still ran
    assert "hunter2" not in proc.stderr + proc.stdout
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert records, proc.stderr
    applied = [r for r in records if r.get("projection") == "vector" and r.get("last_seq") == 3]
    assert applied and applied[0]["level"] == "debug"
    retries = [r for r in records if r.get("projection") == "graph" and r.get("error_class")]
    assert retries and retries[0]["error_class"] == "StoreUnavailable"
    status = subprocess.run([MEMSYNC, "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert "hunter2" not in status.stdout + status.stderr
    assert json.loads(status.stdout)["projections"]["graph"]["reachable"] is False


def test_status_watch_in_a_real_terminal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _append(data, 3, 0)
    session = f"memsync-watch-{os.getpid()}"
    command = f"MEMSYNC_DATA_DIR={data} {MEMSYNC} status --watch --interval 0.3"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "110", "-y", "15", command], check=True)
    try:
        screen = ""

        def shows(text: str) -> bool:
            nonlocal screen
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            return text in screen

        _wait(lambda: shows("head seq 3"))
        assert "vector" in screen and "graph" in screen and "lag" in screen
        _append(data, 4, 3)  # from another process
        _wait(lambda: shows("head seq 7"))
        subprocess.run([MEMSYNC, "project"], env=_env(data), check=True, capture_output=True)
        _wait(lambda: shows("7           0"))  # checkpoint 7, lag 0 once projected
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        _wait(lambda: subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_status_watch_prints_plain_lines_when_not_a_terminal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _append(data, 2, 0)
    proc = subprocess.Popen(
        [MEMSYNC, "status", "--watch", "--interval", "0.2"], env=_env(data), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    second = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0
    for line in (first, second):
        assert "head=2" in line and "vector=0 lag=2" in line and "\x1b" not in line


def test_add_many_is_one_atomic_append(tmp_path: Path) -> None:
    m = Memory.from_config({"data_dir": str(tmp_path), "facade": {"embedder": "lexical"}})
    try:
        out = m.add_many([{"text": f"bulk {i}", "user_id": f"u{i % 3}", "metadata": {"i": i}} for i in range(200)])
        seqs = [r["seq"] for r in out["results"]]
        assert seqs == list(range(1, 201))
        assert len(m.get_all(user_id="u1", limit=1000)["results"]) == 67
        head = m.system.log.head()
        bad = [{"text": "fine", "user_id": "u"}, {"text": "", "user_id": "u"}, {"text": "fine", "user_id": "u"}]
        with pytest.raises(InputError, match="item 1") as caught:
            m.add_many(bad)
        assert caught.value.index == 1
        with pytest.raises(InputError, match="item 0"):
            m.add_many([{"text": "x", "user": "typo"}])
        assert m.system.log.head() == head  # nothing recorded
        assert all(d.ok for d in m.system.verify().values())
    finally:
        m.close()

    async def run_async() -> None:
        async with AsyncMemory.from_config(
            {"data_dir": str(tmp_path / "async"), "facade": {"embedder": "lexical"}}
        ) as am:
            result = await am.add_many([{"text": "a", "user_id": "u"}, {"text": "b", "user_id": "u"}])
            assert [r["seq"] for r in result["results"]] == [1, 2]

    asyncio.run(run_async())


MEM0_EXPORT = {
    "results": [
        {
            "id": "9f1c3d1e-0000-4000-8000-000000000001",
            "memory": "Likes Italian food",
            "hash": "abc",
            "metadata": {"category": "food"},
            "created_at": "2025-03-01T10:00:00-08:00",
            "updated_at": None,
            "user_id": "alice",
        },
        {
            "id": "9f1c3d1e-0000-4000-8000-000000000002",
            "memory": "Allergic to nuts",
            "hash": "def",
            "metadata": None,
            "created_at": "2025-03-02T10:00:00-08:00",
            "user_id": "alice",
            "agent_id": "chef",
        },
        {"id": "9f1c3d1e-0000-4000-8000-000000000003", "memory": "Prefers mornings", "user_id": "bob", "run_id": "r1"},
    ]
}


def test_import_a_mem0_export(tmp_path: Path) -> None:
    source = tmp_path / "mem0.json"
    source.write_text(json.dumps(MEM0_EXPORT))
    env = {"MEMSYNC_FACADE__EMBEDDER": "lexical"}
    result = CliRunner().invoke(
        main, ["--data-dir", str(tmp_path / "d"), "import", "--format", "mem0", str(source), "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["results"]) == 3
    m = Memory.from_config({"data_dir": str(tmp_path / "d"), "facade": {"embedder": "lexical"}})
    try:
        alice = {r["id"]: r for r in m.get_all(user_id="alice")["results"]}
        first = alice["9f1c3d1e-0000-4000-8000-000000000001"]
        assert first["memory"] == "Likes Italian food"
        assert first["metadata"]["category"] == "food" and first["metadata"]["mem0_hash"] == "abc"
        assert alice["9f1c3d1e-0000-4000-8000-000000000002"]["agent_id"] == "chef"
        history = m.history("9f1c3d1e-0000-4000-8000-000000000001")
        assert history[0]["occurred_at"] == "2025-03-01T18:00:00.000000Z"
        assert m.search("italian food", user_id="alice")["results"][0]["memory"] == "Likes Italian food"
    finally:
        m.close()
    broken = {"results": [MEM0_EXPORT["results"][2], {"id": "x", "user_id": "u"}]}
    source.write_text(json.dumps(broken))
    result = CliRunner().invoke(
        main, ["--data-dir", str(tmp_path / "e"), "import", "--format", "mem0", str(source)], env=env
    )
    assert result.exit_code == 2 and "item 1" in result.output
