"""Real faults for the projector: kill -9 mid-projection, and a Neo4j server that goes away."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from memsync.config import MemsyncConfig
from memsync.events import MemoryAdded
from memsync.system import MemSync
from memsync.verify import verify_store
from tests.streams import random_stream

MEMSYNC = str(Path(sys.executable).with_name("memsync"))


def _env(data: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "MEMSYNC_DATA_DIR": str(data), "MEMSYNC_SQLITE_SYNCHRONOUS": "NORMAL", **extra}


def _fill(data: Path, n: int, seed: int) -> int:
    with MemSync(MemsyncConfig(data_dir=data, sqlite_synchronous="NORMAL")) as system:
        events = list(random_stream(n, seed=seed))
        for start in range(0, len(events), 50):
            system.log.append(events[start : start + 50])
        return system.log.head().seq


def _assert_clean(data: Path) -> None:
    with MemSync(MemsyncConfig(data_dir=data)) as system:
        head = system.log.head().seq
        assert system.log.audit().ok
        for kind, drift in system.verify().items():
            assert drift.ok, (kind, drift)
            assert drift.checkpoint == head, kind


@pytest.mark.slow
def test_projector_killed_at_random_points_converges(tmp_path: Path) -> None:
    data = tmp_path / "data"
    head = _fill(data, 3000, seed=21)
    rng = random.Random(5)
    env = _env(data, MEMSYNC_PROJECTOR__BATCH_SIZE="13")
    kills = 0
    for _ in range(12):
        proc = subprocess.Popen([MEMSYNC, "project"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.3, 2.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(30)
    done = subprocess.run([MEMSYNC, "project", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert kills >= 3, "the projector finished too early to be killed; make the stream longer"
    _assert_clean(data)
    with MemSync(MemsyncConfig(data_dir=data)) as system:
        assert system.store("vector").checkpoint() == head


CRASH_BETWEEN_BATCH_AND_CHECKPOINT = textwrap.dedent(
    """
    import os, signal, sys
    from memsync.config import MemsyncConfig
    from memsync.system import MemSync

    kind, crash_at = sys.argv[1], int(sys.argv[2])
    system = MemSync(MemsyncConfig(data_dir=sys.argv[3], projector={"batch_size": 10}))
    store = system.store(kind)
    real_apply = store.apply
    calls = 0

    def apply(ops, checkpoint):
        global calls
        calls += 1
        if calls == crash_at:
            # the batch's effects become durable, then the process dies before its checkpoint
            real_apply(ops, store.checkpoint())
            os.kill(os.getpid(), signal.SIGKILL)
        real_apply(ops, checkpoint)

    store.apply = apply
    system.runner(kind).catch_up()
    """
)


@pytest.mark.parametrize("kind", ["vector", "graph"])
def test_killed_between_writing_a_batch_and_its_checkpoint(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    _fill(data, 400, seed=3)
    script = tmp_path / "crash.py"
    script.write_text(CRASH_BETWEEN_BATCH_AND_CHECKPOINT)
    proc = subprocess.run([sys.executable, str(script), kind, "7", str(data)], env=_env(data), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    with MemSync(MemsyncConfig(data_dir=data)) as system:
        store = system.store(kind)
        assert store.checkpoint() == 60  # six batches of 10 were checkpointed; the 7th's effects are ahead of it
        system.runner(kind).catch_up()
        drift = verify_store(system.log, store)
        assert drift.ok, drift
        assert store.checkpoint() == system.log.head().seq


@pytest.mark.neo4j
def test_neo4j_down_delays_only_the_graph_projection(tmp_path: Path, neo4j_server: Any) -> None:
    neo4j_server.clear()
    config = MemsyncConfig.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "sqlite_synchronous": "NORMAL",
            "graph": {"backend": "neo4j", "uri": neo4j_server.uri, "timeout": 2.0},
            "projector": {"backoff_initial": 0.01, "backoff_max": 0.2, "max_attempts": 3},
        }
    )
    system = MemSync(config)
    stop = threading.Event()
    states: list[tuple[str, str]] = []
    threads = system.follow(None, stop, on_state=lambda k, s: states.append((k, s)))
    events = iter(random_stream(10**6, seed=9))

    def append(n: int) -> int:
        for _ in range(n):
            system.log.append([next(events)])
        return system.log.head().seq

    def wait_until(predicate: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    try:
        head = append(100)
        wait_until(lambda: all(system.store(k).checkpoint() == head for k in system.kinds))
        neo4j_server.stop()
        try:
            head = append(200)  # appends go on while the graph store is down
            wait_until(lambda: system.store("vector").checkpoint() == head)
            status = system.status()["projections"]
            assert status["graph"]["reachable"] is False
            assert status["graph"]["lag"] > 0 and status["vector"]["lag"] == 0
            head = append(50)
            wait_until(lambda: system.store("vector").checkpoint() == head)
        finally:
            neo4j_server.start()
        wait_until(lambda: system.store("graph").checkpoint() == head, timeout=120)
        system.log.append([MemoryAdded(memory_id="after-outage", text="back", user_id="u")])
        head = system.log.head().seq
        wait_until(lambda: system.store("graph").checkpoint() == head)
    finally:
        stop.set()
        for thread in threads:
            thread.join(20)
    for kind, drift in system.verify().items():
        assert drift.ok, (kind, drift)
    assert system.log.parked() == []
    assert ("graph", "active") in states
    system.close()
    assert json.dumps(states)
