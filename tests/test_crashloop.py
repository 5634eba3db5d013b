"""The crash loop (tests/crashloop.py), short: SIGKILL appender and projector at random points.

The long run is a command: ``.venv/bin/python -m tests.crashloop --points 200 --events 20000``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from memsync.config import MemsyncConfig
from memsync.stores import Delete
from memsync.system import MemSync
from tests import crashloop


def test_kill_9_appender_and_projector_at_random_points(tmp_path: Path) -> None:
    report = crashloop.run(points=15, events=3000, seed=7, workdir=tmp_path)
    assert report.ok and report.head == report.acknowledged == 3000
    assert set(report.projector_modes) == {"follow", "rebuild", "rebuild --in-place"}, report
    assert report.kills["appender"] >= 3 and report.kills["projector"] >= 3, report
    assert report.log_checks >= 15 and report.store_checks >= 3 and report.catch_up_checks >= 1, report


def test_the_appender_resumes_after_its_last_ack_and_retries_idempotently(tmp_path: Path) -> None:
    data, acks = tmp_path / "data", tmp_path / "acks.txt"
    assert crashloop.appender(data, acks, 40, seed=3, rate=0) == 0
    lines = acks.read_bytes().splitlines(keepends=True)
    acks.write_bytes(b"".join(lines[:25]) + lines[25][:7])  # as if killed before acking 25.. and mid-line
    assert crashloop.appender(data, acks, 40, seed=3, rate=0) == 0  # re-appends 25.. (already in the log)
    assert [a[0] for a in crashloop.read_acks(acks)] == list(range(40))
    with MemSync(MemsyncConfig(data_dir=data)) as system:
        assert system.log.head().seq == 40 and system.log.audit().ok


def test_the_checks_catch_a_lost_acknowledged_event_and_a_drifted_store(tmp_path: Path) -> None:
    """A harness that cannot fail proves nothing: break each guarantee by hand and watch it notice."""
    harness = crashloop.Harness(tmp_path, events=60, seed=5, rate=0)
    assert crashloop.appender(harness.data, harness.acks, 60, seed=5, rate=0) == 0
    assert harness.check_log() == 60
    harness.check_stores(catch_up=True)
    with MemSync(MemsyncConfig(data_dir=harness.data)) as system:  # drift behind memsync's back
        store = system.store("vector")
        victim = next(p.memory_id for p in store.points())  # type: ignore[attr-defined]
        store.apply([Delete(victim)], store.checkpoint())
    with pytest.raises(crashloop.Violation, match="vector store drifted"):
        harness.check_stores(catch_up=False)
    db = sqlite3.connect(harness.data / "events.db")
    with db:
        db.execute("DELETE FROM events WHERE seq = 60")  # the last acknowledged event vanishes
    db.close()
    with pytest.raises(crashloop.Violation, match="acknowledged event 59"):
        harness.check_log()
