"""The fault matrix: what memsync does when the world breaks. Each case is a row of docs/reliability.md.

Cases covered elsewhere and only referenced here (not duplicated):

* Neo4j stopped mid-stream and started again:
  tests/test_projector_faults.py::test_neo4j_down_delays_only_the_graph_projection
* kill -9 of the projector, of the appender: tests/test_projector_faults.py, tests/test_crashloop.py
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli import main
from memsync import Memory
from memsync.config import MemsyncConfig
from memsync.errors import StoreUnavailable
from memsync.events import event_to_dict
from memsync.stores import GraphStore, Op, Upsert
from memsync.system import MemSync
from memsync.verify import verify_store
from projections.graph_ladybug import SPILL_DIR
from tests.streams import random_stream
from tests.test_projector import Flaky
from tests.test_security import all_logs, closed_port  # noqa: F401 (all_logs: a fixture, used by name)

ROOT = Path(__file__).resolve().parent.parent
MEMSYNC = str(Path(sys.executable).with_name("memsync"))
FAST_RETRIES = {"backoff_initial": 0.001, "backoff_max": 0.01, "max_attempts": 2}
ENV = {"MEMSYNC_FACADE__EMBEDDER": "none", "MEMSYNC_SQLITE_SYNCHRONOUS": "NORMAL"}


def cli(data: Path, *args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    """memsync in-process; a Python traceback (any exception but SystemExit) fails the test."""
    result = CliRunner().invoke(
        main, ["--data-dir", str(data), *args], input=input, env={**ENV, **(env or {})}, catch_exceptions=True
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"memsync {' '.join(args)} crashed with a traceback:\n{result.output}") from (
            result.exception
        )
    assert result.exit_code in (0, 1, 2, 3), result.exit_code
    return result


def run(command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A real process; its stderr must never hold a Python traceback."""
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=120, **kwargs)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def fill(data: Path, n: int = 200, *, seed: int = 4, project: bool = True) -> int:
    with MemSync(MemsyncConfig(data_dir=data, sqlite_synchronous="NORMAL")) as system:
        events = list(random_stream(n, seed=seed))
        for start in range(0, n, 25):
            system.log.append(events[start : start + 25])
        if project:
            system.project()
        return system.log.head().seq


def run_until_killed(tmp_path: Path, source: str, data: Path, *args: str) -> None:
    """Run a script (given ``data`` and ``args``) that ends by SIGKILLing itself, as a crash would."""
    script = tmp_path / "crash.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script), str(data), *args], env=env, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr


def assert_converges(data: Path, kind: str, head: int) -> None:
    """After a crash the store equals the fold at its checkpoint, and catching up ends clean at the head."""
    with MemSync(MemsyncConfig(data_dir=data)) as system:
        store = system.store(kind)
        assert verify_store(system.log, store).ok  # whatever the crash left is the fold at its checkpoint
        system.project()
        drift = verify_store(system.log, store)
        assert drift.ok and drift.checkpoint == head, drift


ADD = json.dumps({"type": "memory.added", "memory_id": "new", "text": "still accepted", "user_id": "u"}) + "\n"


# ---------------------------------------------------------------- a store server that refuses connections


@pytest.mark.parametrize("down", ["graph", "vector"])
@pytest.mark.usefixtures("all_logs")  # caplog sees the memsync logger too
def test_store_server_refusing_connections(tmp_path: Path, down: str, caplog: pytest.LogCaptureFixture) -> None:
    """Neo4j or the Qdrant server unreachable: appends go on, the other projection goes on, status says so."""
    port = closed_port()
    env = {"MEMSYNC_PROJECTOR__BACKOFF_INITIAL": "0.001", "MEMSYNC_PROJECTOR__MAX_ATTEMPTS": "2"}
    if down == "graph":
        env.update(MEMSYNC_GRAPH__BACKEND="neo4j", MEMSYNC_GRAPH__URI=f"bolt://127.0.0.1:{port}")
        where = f"bolt://127.0.0.1:{port}"
    else:
        env.update(MEMSYNC_VECTOR__BACKEND="qdrant", MEMSYNC_VECTOR__URL=f"http://127.0.0.1:{port}")
        where = f"http://127.0.0.1:{port}"
    up = "vector" if down == "graph" else "graph"
    data = tmp_path / "data"
    lines = "".join(json.dumps(event_to_dict(e)) + "\n" for e in random_stream(50, seed=2, dim=3))

    assert cli(data, "append", input=lines, env=env).exit_code == 0  # the log never needs a store
    status = cli(data, "status", "--json", env=env)
    assert status.exit_code == 0
    report = json.loads(status.stdout)["projections"]
    assert report[down]["reachable"] is False and where in report[down]["error"]
    assert report[up]["reachable"] is True

    project = cli(data, "project", "--json", env=env)
    assert project.exit_code == 3  # a store failed at run time
    outcome = json.loads(project.stdout)
    assert where in outcome[down]["error"]
    assert outcome[up]["checkpoint"] == 50  # the other projection went on to the head
    assert cli(data, "append", input=ADD, env=env).exit_code == 0
    assert json.loads(cli(data, "status", "--json", env=env).stdout)["projections"][up]["lag"] == 1
    assert cli(data, "verify", up, env=env).exit_code == 0

    # the facade with inline projection: the write succeeds, the failure is logged, reads from the log work
    config = MemsyncConfig.model_validate(
        {"data_dir": str(data), "sqlite_synchronous": "NORMAL", "projector": FAST_RETRIES, **_sections(env)}
    )
    with Memory(config, embedder=None) as memory:
        added = memory.add(
            "Alice likes tea", user_id="alice", vector=[1.0, 0.0, 0.0], relations=[("Alice", "likes", "tea")]
        )
        memory_id = added["results"][0]["id"]
        assert memory.get(memory_id) is not None
        assert memory.system.store(up).checkpoint() == memory.system.log.head().seq
        assert f"inline {down} projection failed; the log has the write" in caplog.text
        if down == "vector":  # the hits come from the vector store: no search without it
            with pytest.raises(StoreUnavailable, match=re.escape(where)):
                memory.search([1.0, 0.0, 0.0], user_id="alice")
        else:  # the graph only adds relations: search still answers, without them, and says why in the log
            found = memory.search([1.0, 0.0, 0.0], user_id="alice")
            assert found["results"][0]["id"] == memory_id
            assert found["relations"] == []
            assert "graph store unavailable, search returns no relations" in caplog.text


def _sections(env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in env.items():
        section, _, name = key.removeprefix("MEMSYNC_").lower().partition("__")
        if section in ("graph", "vector"):
            out.setdefault(section, {})[name] = value
    return out


# ---------------------------------------------------------------- a store write that raises


class Raising(Flaky):
    """Flaky whose poison makes the store raise a raw, untranslated error (an adapter bug)."""

    def apply(self, ops: Sequence[Op], checkpoint: int) -> None:
        if self.poison and any(isinstance(op, Upsert) and op.memory.memory_id == self.poison for op in ops):
            raise RuntimeError(f"driver blew up on {self.poison}")
        super().apply(ops, checkpoint)


@pytest.mark.parametrize("wrapper", [Flaky, Raising], ids=["StoreError", "RuntimeError"])
def test_graph_write_that_raises_is_parked_and_everything_else_goes_on(tmp_path: Path, wrapper: type[Flaky]) -> None:
    config = MemsyncConfig.model_validate(
        {"data_dir": str(tmp_path / "data"), "sqlite_synchronous": "NORMAL", "projector": FAST_RETRIES}
    )
    memory = Memory(config, embedder=None)  # consistency "inline": each write is projected before it returns
    flaky = wrapper(memory.system.store("graph"), poison="bad")
    memory.system._stores["graph"] = flaky
    try:
        memory.add("fine", user_id="u", memory_id="ok1", vector=[1.0, 0.0], entities=["Ann"])
        memory.add("poison", user_id="u", memory_id="bad", vector=[0.0, 1.0], entities=["Bo"])
        memory.add("fine too", user_id="u", memory_id="ok2", vector=[1.0, 1.0], entities=["Cy"])
        head = memory.system.log.head().seq
        parked = memory.system.log.parked("graph")
        assert [p.seq for p in parked] == [2]
        assert ("RuntimeError" if wrapper is Raising else "injected rejection") in parked[0].error
        status = memory.system.status()["projections"]
        assert status["graph"]["parked"] == 1 and status["graph"]["lag"] == 0
        assert status["vector"]["parked"] == 0 and status["vector"]["lag"] == 0
        log = memory.system.log
        assert verify_store(log, memory.system.store("vector")).ok  # the other projection is whole
        assert verify_store(log, flaky.inner).missing == ["bad"]  # exactly the parked event is missing
        flaky.poison = None  # the cause is fixed: retry the parked event
        memory.system.runner("graph").retry_parked(2)
        assert memory.system.log.parked() == []
        drift = verify_store(log, flaky.inner)
        assert drift.ok and drift.checkpoint == head
    finally:
        memory.close()


# ---------------------------------------------------------------- a crash in the middle of wiping a store

CRASH_MID_WIPE = textwrap.dedent(
    """
    import os, shutil, signal, sys
    from memsync.config import MemsyncConfig
    from memsync.system import MemSync

    system = MemSync(MemsyncConfig(data_dir=sys.argv[1]))
    store = system.store("vector")
    real_rmtree = shutil.rmtree

    def crash_mid_rmtree(path, *args, **kwargs):
        real_rmtree(os.path.join(path, "shard"))  # the directory listing happened to put the shard first ...
        os.kill(os.getpid(), signal.SIGKILL)  # ... and the process died before memsync.json was deleted

    shutil.rmtree = crash_mid_rmtree
    system.rebuild(["vector"], in_place=True)
    """
)


def test_crash_in_the_middle_of_an_in_place_rebuild_of_the_edge_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    head = fill(data, 200)
    run_until_killed(tmp_path, CRASH_MID_WIPE, data)
    assert_converges(data, "vector", head)


# ---------------------------------------------------------------- kill -9 while LadybugDB checkpoints a rebuild

KILLED_WHILE_LADYBUG_CHECKPOINTS = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from pathlib import Path
    from memsync.config import MemsyncConfig
    from memsync.system import MemSync

    data = Path(sys.argv[1])
    system = MemSync(MemsyncConfig(data_dir=data))

    def kill_when_ladybug_checkpoints():  # it merges its WAL into the database file after a bulk COPY
        while not any(p.name.endswith((".wal.checkpoint", ".shadow")) for p in (data / "graph").iterdir()):
            time.sleep(0.0001)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=kill_when_ladybug_checkpoints, daemon=True).start()
    system.rebuild(["graph"], in_place=True)
    time.sleep(30)  # not reached: the watcher kills us during the rebuild
    """
)


def test_kill_9_while_ladybug_checkpoints_an_in_place_rebuild(tmp_path: Path) -> None:
    data = tmp_path / "data"
    head = fill(data, 300)
    run_until_killed(tmp_path, KILLED_WHILE_LADYBUG_CHECKPOINTS, data)
    assert_converges(data, "graph", head)  # the rows were lost with the store checkpoint: empty at 0


KILLED_IN_A_CHUNKED_BULK_LOAD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from memsync.config import MemsyncConfig
    from memsync.system import MemSync
    from projections import graph_ladybug

    graph_ladybug.BULK_CHUNK = 4  # several chunks (of the ~15 live memories) ...
    graph_ladybug.COPY_PART = 5  # ... in several files per table, each COPYed in its own transaction
    store_class = graph_ladybug.LadybugGraphStore
    reopen, set_checkpoint = store_class._reopen, store_class._set_checkpoint
    parts = []

    def after_a_part(self):  # the database is reopened after each committed COPY
        parts.append(1)
        if sys.argv[2] == f"after {len(parts)} parts":
            os.kill(os.getpid(), signal.SIGKILL)
        reopen(self)

    def at_the_store_checkpoint(self, tx, seq):
        if seq and sys.argv[2] == "at the store checkpoint":
            os.kill(os.getpid(), signal.SIGKILL)
        set_checkpoint(self, tx, seq)

    store_class._reopen, store_class._set_checkpoint = after_a_part, at_the_store_checkpoint
    MemSync(MemsyncConfig(data_dir=Path(sys.argv[1]))).rebuild(["graph"], in_place=True)
    """
)


@pytest.mark.parametrize("when", ["after 2 parts", "after 4 parts", "at the store checkpoint"])
def test_kill_9_in_a_chunked_in_place_bulk_load_leaves_checkpoint_0_and_converges(tmp_path: Path, when: str) -> None:
    """Durable parts under checkpoint 0 (memories without entities or edges, entity types maybe not final):
    catching up rewrites them all; the spilled files are gone with the next open."""
    data = tmp_path / "data"
    head = fill(data, 300)
    run_until_killed(tmp_path, KILLED_IN_A_CHUNKED_BULK_LOAD, data, when)
    with MemSync(MemsyncConfig(data_dir=data)) as system:
        store = system.store("graph")
        assert isinstance(store, GraphStore)
        assert store.checkpoint() == 0 and store.counts()["memories"] >= 8  # rows durable, checkpoint not
        assert not (data / "graph" / SPILL_DIR).exists()
        system.project()
        drift = verify_store(system.log, store)
        assert drift.ok and drift.checkpoint == head, drift


# ---------------------------------------------------------------- kill -9 tears the graph store's WAL

KILLED_WITH_TRANSACTIONS_IN_THE_WAL = textwrap.dedent(
    """
    import os, signal, sys
    from memsync.config import MemsyncConfig
    from memsync.system import MemSync
    from tests.streams import random_stream

    system = MemSync(MemsyncConfig(data_dir=sys.argv[1], projector={"batch_size": 10}))
    events = list(random_stream(400, seed=9))
    for start in range(200, 400, 20):
        system.log.append(events[start : start + 20])
    system.runner("graph").catch_up()
    os.kill(os.getpid(), signal.SIGKILL)  # no clean close: the last transactions live only in the WAL
    """
)


@pytest.mark.parametrize("torn_bytes", [1, 100])
def test_kill_9_that_tears_the_graph_wal_does_not_strand_the_projection(tmp_path: Path, torn_bytes: int) -> None:
    data = tmp_path / "data"
    with MemSync(MemsyncConfig(data_dir=data, sqlite_synchronous="NORMAL")) as system:
        system.log.append(list(random_stream(400, seed=9))[:200])
        system.project()
    run_until_killed(tmp_path, KILLED_WITH_TRANSACTIONS_IN_THE_WAL, data)
    wal = data / "graph" / "memsync.lbug.wal"
    assert wal.stat().st_size > torn_bytes  # the killed process left transactions in the WAL ...
    with open(wal, "r+b") as f:  # ... and died in the middle of writing the last one
        f.truncate(wal.stat().st_size - torn_bytes)
    assert_converges(data, "graph", 400)


# ---------------------------------------------------------------- disk full while appending


DISK_FULL = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    from memsync.errors import LogError
    from memsync.events import MemoryAdded
    from memsync.sqlite_log import SQLiteEventLog

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
    path = Path(sys.argv[1])
    log = SQLiteEventLog(path)
    before = log.head().seq
    largest = max(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith(path.name))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 8192, hard))
    out = {}
    try:
        log.append([MemoryAdded(memory_id="big", text="x" * 400_000, user_id="u")])
        out["error"] = None
    except LogError as e:
        out["error"] = str(e)
    out["head_during"] = log.head().seq
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space is back
    out["appended_after"] = log.append([MemoryAdded(memory_id="after", text="fits", user_id="u")])[0].seq
    out["audit"] = log.audit().ok
    out["before"] = before
    print(json.dumps(out))
    """
)


def _no_fsize_limit_then(limit: int) -> Callable[[], None]:
    def preexec() -> None:  # in the child: a file-size limit, and SIGXFSZ ignored so writes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return preexec


def test_disk_full_while_appending_records_nothing_and_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    head = fill(data, 60, project=False)
    script = tmp_path / "full.py"
    script.write_text(DISK_FULL)
    done = run([sys.executable, str(script), str(data / "events.db")], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["error"] is not None and str(data / "events.db") in out["error"]  # a LogError naming the file
    assert out["head_during"] == out["before"] == head  # nothing half-written
    assert out["appended_after"] == head + 1 and out["audit"] is True  # the same process carries on

    # the CLI in a process whose files cannot grow: exit 3, a one-line error, no traceback
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"type": "memory.added", "memory_id": "b", "text": "y" * 400_000, "user_id": "u"}))
    largest = max(f.stat().st_size for f in data.iterdir() if f.name.startswith("events.db"))
    env = {**os.environ, **ENV}
    full = run(
        [MEMSYNC, "--data-dir", str(data), "append", str(big)], env=env, preexec_fn=_no_fsize_limit_then(largest + 8192)
    )
    assert full.returncode == 3, full.stderr
    assert full.stderr.startswith("Error: ") and str(data / "events.db") in full.stderr
    audit = run([MEMSYNC, "--data-dir", str(data), "audit", "--json"], env=env)
    assert audit.returncode == 0 and json.loads(audit.stdout)["head"]["seq"] == head + 1
    assert run([MEMSYNC, "--data-dir", str(data), "append", str(big)], env=env).returncode == 0  # space is back


def test_disk_full_error_names_the_real_cause(tmp_path: Path) -> None:
    data = tmp_path / "data"
    fill(data, 20, project=False)
    script = tmp_path / "full.py"
    script.write_text(DISK_FULL)
    out = json.loads(run([sys.executable, str(script), str(data / "events.db")], cwd=ROOT).stdout)
    assert "cannot rollback" not in out["error"]
    assert "disk I/O error" in out["error"] or "full" in out["error"]


# ---------------------------------------------------------------- a corrupted SQLite file


def _pages(db: Path) -> dict[str, list[int]]:
    """Page numbers of each table and index (SQLite's dbstat)."""
    conn = sqlite3.connect(db)
    try:
        out: dict[str, list[int]] = {}
        for name, page in conn.execute("SELECT name, pageno FROM dbstat ORDER BY pageno"):
            out.setdefault(name, []).append(page)
        return out
    finally:
        conn.close()


def _overwrite_page(db: Path, page: int, seed: int) -> None:
    size = 4096
    with open(db, "r+b") as f:
        f.seek((page - 1) * size)
        f.write(random_bytes(size, seed))


def random_bytes(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


CORRUPTIONS = ["header page", "events page", "last events page", "truncated", "index page", "memories page"]
COMMANDS = [
    ("audit",),
    ("status", "--json"),
    ("log", "--user", "alice"),
    ("export",),
    ("history", "m3"),
    ("verify",),
    ("project",),
    ("append",),
]


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupted_sqlite_file_gives_clear_errors_never_a_traceback(tmp_path: Path, corruption: str) -> None:
    data = tmp_path / "data"
    fill(data, 400)
    db = data / "events.db"
    pages = _pages(db)  # the log is closed and checkpointed: every page is in the main file
    assert not (data / "events.db-wal").exists()
    if corruption == "truncated":
        with open(db, "r+b") as f:
            f.truncate(db.stat().st_size // 2)
    else:
        table = {"header page": "sqlite_schema", "index page": "events_user", "memories page": "memories"}
        page = {"events page": pages["events"][len(pages["events"]) // 2], "last events page": pages["events"][-1]}
        _overwrite_page(db, page.get(corruption) or pages[table.get(corruption, "events")][0], seed=len(corruption))
    codes = {}
    for command in COMMANDS:
        result = cli(data, *command, input=ADD if command == ("append",) else None)
        codes[command[0]] = result.exit_code
        if result.exit_code == 3:  # a failure of the log: the message names the file
            assert str(db) in result.output, (command, result.output)
    if corruption in ("header page", "truncated"):
        assert set(codes.values()) == {3}, codes  # nothing can be read: every command says so
    elif corruption in ("events page", "last events page"):
        assert codes["audit"] in (1, 3) and codes["export"] == 3, codes  # the chain cannot be walked
    else:  # index and memories pages are outside the hash chain: SQLite's own check finds them
        assert codes["audit"] in (1, 3), codes


@pytest.mark.parametrize("table", ["memories", "events_user"])
def test_audit_notices_corruption_outside_the_events_table(tmp_path: Path, table: str) -> None:
    data = tmp_path / "data"
    fill(data, 400, project=False)
    _overwrite_page(data / "events.db", _pages(data / "events.db")[table][0], seed=1)
    assert cli(data, "audit").exit_code != 0


def test_a_payload_that_no_longer_decodes_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    fill(data, 100)
    db = data / "events.db"
    raw = bytearray(db.read_bytes())
    at = raw.find(b'"text":"memory 3')
    assert at > 0
    raw[at] = ord("X")  # one flipped byte: the JSON is malformed now
    db.write_bytes(bytes(raw))
    assert cli(data, "audit").exit_code == 1  # audit names the seq
    for command in (("log",), ("export",), ("history", "m3"), ("verify",)):
        assert cli(data, *command).exit_code in (1, 3), command


def test_corrupted_log_through_the_real_binary_prints_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    fill(data, 50, project=False)
    _overwrite_page(data / "events.db", 1, seed=3)
    done = run([MEMSYNC, "--data-dir", str(data), "status"], env={**os.environ, **ENV})
    assert done.returncode == 3
    assert done.stderr == f"Error: cannot open the SQLite log {data / 'events.db'}: file is not a database\n"


# ---------------------------------------------------------------- a read-only data directory


def in_read_only_mount(directory: Path, command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with ``directory`` bind-mounted read-only in a private mount namespace.

    The tests run as root, where ``chmod 0500`` stops nothing; a read-only mount refuses writes
    with EROFS even for root. Needs util-linux ``unshare`` and CAP_SYS_ADMIN (fails loudly if not).
    """
    unshare = shutil.which("unshare")
    assert unshare is not None, "util-linux `unshare` is needed for the read-only data directory test"
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'
    return run([unshare, "--mount", "sh", "-c", script, "sh", str(directory), *command], **kwargs)


def test_read_only_data_directory_gives_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    head = fill(data, 50)
    probe = in_read_only_mount(data, ["touch", str(data / "probe")])
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe.stderr  # the mount works
    env = {**os.environ, **ENV}
    for command in (["status"], ["audit"], ["log"], ["append", "-"], ["project"], ["add", "x", "--user", "u"]):
        done = in_read_only_mount(data, [MEMSYNC, "--data-dir", str(data), *command], env=env, input=ADD)
        assert done.returncode == 3, (command, done.stderr)
        assert f"cannot open the SQLite log {data / 'events.db'}" in done.stderr, (command, done.stderr)
    assert cli(data, "audit", "--json").exit_code == 0  # writable again: nothing was harmed
    assert json.loads(cli(data, "status", "--json").stdout)["head"]["seq"] == head


def test_data_directory_that_cannot_be_created_gives_a_clear_error(tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    done = in_read_only_mount(parent, [MEMSYNC, "--data-dir", str(parent / "new"), "status"])
    assert done.returncode == 3 and str(parent / "new") in done.stderr, done.stderr


# ---------------------------------------------------------------- the document


def test_every_guarantee_in_the_doc_names_a_test_that_exists() -> None:
    text = (ROOT / "docs" / "reliability.md").read_text()
    named = re.findall(r"(tests/[\w/]+\.py)::((?:\w+::)?\w+)", text)
    assert len(named) >= 30
    for path, name in named:
        source = (ROOT / path).read_text()
        *owner, test = name.split("::")
        assert re.search(rf"^\s*def {test}\(", source, re.M), f"{path}::{name} is not a test"
        if owner:
            assert re.search(rf"^class {owner[0]}\b", source, re.M), f"{path}::{name}: no class {owner[0]}"
    model = (ROOT / "tests" / "test_model_based.py").read_text()
    for names in re.findall(r"\(rules? ([^)]*)\)", text):
        for rule in re.findall(r"`(\w+)", names):
            assert re.search(rf"^    def {rule}", model, re.M), f"no rule {rule} in the model"
    assert (ROOT / "tests" / "crashloop.py").exists() and "python -m tests.crashloop" in text
