"""A follower never dies silently: its heartbeat is best effort, and an unexpected error
in a follow loop is logged and the loop restarted (regression tests for the HA failover bug:
a heartbeat write into a data directory a server-only worker never created raised out of
``on_idle`` and ended the follower thread without a word)."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from memsync.config import MemsyncConfig
from memsync.events import MemoryAdded
from memsync.projector import ProjectionRunner
from memsync.system import HEARTBEAT_FILE, Heartbeat, MemSync


def _config(data_dir: Path) -> MemsyncConfig:
    return MemsyncConfig.model_validate(
        {"data_dir": str(data_dir), "vector": {"backend": "memory"}, "graph": {"backend": "memory"}}
    )


def _until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_heartbeat_creates_its_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "never" / "created"
    Heartbeat(data_dir, "graph").write(7)
    assert json.loads((data_dir / HEARTBEAT_FILE).read_text())["graph"]["checkpoint"] == 7
    assert (data_dir.stat().st_mode & 0o777) == 0o700


def test_heartbeat_that_cannot_be_written_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    beat = Heartbeat(blocker / "data", "vector")
    with caplog.at_level(logging.WARNING):
        beat.write(3)
        beat.on_batch("vector", last_seq=4)
        beat.flush()
    assert "heartbeat" in caplog.text.lower()


def test_a_follower_survives_an_unexpected_error_and_catches_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug-shaped error (not a MemsyncError) in one follow loop: logged, loop restarted, no event lost."""
    failures = {"left": 2}
    real_follow = ProjectionRunner.follow

    def flaky_follow(self: ProjectionRunner, *args: object, **kwargs: object) -> None:
        if self.name == "graph" and failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("injected: a bug in the follow loop")
        real_follow(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ProjectionRunner, "follow", flaky_follow)
    stop = threading.Event()
    states: list[tuple[str, str]] = []
    with MemSync(_config(tmp_path / "data")) as system, caplog.at_level(logging.ERROR):
        threads = system.follow(None, stop, on_state=lambda k, s: states.append((k, s)), standby_poll=0.01)
        try:
            system.log.append([MemoryAdded(memory_id=f"m{i}", text=f"fact {i}", user_id="u") for i in range(5)])
            head = system.log.head().seq
            _until(lambda: all(system.store(kind).checkpoint() == head for kind in system.kinds))
            assert all(t.is_alive() for t in threads)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
    assert failures["left"] == 0
    assert "graph follower failed; restarting it" in caplog.text
    assert sum(1 for k, s in states if k == "graph" and s.startswith("error: RuntimeError")) == 2
