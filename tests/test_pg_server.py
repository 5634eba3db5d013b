"""Tests for the throw-away PostgreSQL harness in tests/pg_server.py.

These start real PostgreSQL 15 servers.  Nothing is skipped: if the server
binaries or the ``postgres`` user are missing the tests fail with the
RuntimeError raised by the harness.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

HERE = Path(__file__).resolve().parent
try:
    from tests import pg_server
except ImportError:  # tests/ not importable as a package (e.g. importlib mode)
    sys.path.insert(0, str(HERE))
    import pg_server  # type: ignore[no-redef]

PostgresServer = pg_server.PostgresServer

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg():
    with PostgresServer() as server:
        yield server


@pytest.fixture
def own_pg():
    """A private server for tests that kill/stop it."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of LISTEN TCP sockets on ``port`` (from /proc/net)."""
    found: set[str] = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state != "0A":  # TCP_LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            if int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(addr_hex)
            if v6:
                # /proc prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                found.add(socket.inet_ntop(socket.AF_INET6, raw))
            else:
                found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
    return found


def _non_loopback_ipv4() -> list[str]:
    """This machine's own non-loopback IPv4 addresses (never another host)."""
    addrs: set[str] = set()
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addrs.add(str(info[4][0]))
    # the outbound address; a UDP connect() sends nothing
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        addrs.add(s.getsockname()[0])
    return sorted(a for a in addrs if not a.startswith("127."))


def _port_refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_start_connect_create_database_query(pg: PostgresServer) -> None:
    assert pg.running
    assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    with psycopg.connect(pg.url) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()[0]
        assert int(version) // 10000 == 15
        assert conn.execute("SELECT current_user").fetchone()[0] == "postgres"

    url = pg.create_database("harness_smoke")
    assert url == pg.url_for("harness_smoke")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g")
        conn.commit()
        assert conn.execute("SELECT count(*), sum(id) FROM t").fetchone() == (100, 5050)
        assert conn.execute("SELECT current_database()").fetchone()[0] == "harness_smoke"


def test_listens_only_on_loopback(pg: PostgresServer) -> None:
    with psycopg.connect(pg.url) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
        assert conn.execute("SHOW port").fetchone()[0] == str(pg.port)
    assert _listening_addresses(pg.port) == {"127.0.0.1"}

    ss = shutil.which("ss")
    if ss:  # cross-check with ss(8) when it is installed
        out = subprocess.run([ss, "-Hltn", f"sport = :{pg.port}"], capture_output=True, text=True, check=True).stdout
        local = {line.split()[3] for line in out.splitlines() if line.strip()}
        assert local == {f"127.0.0.1:{pg.port}"}, out

    # not reachable through this machine's other addresses
    for addr in _non_loopback_ipv4():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            assert s.connect_ex((addr, pg.port)) != 0, f"reachable on {addr}"

    # the unix socket lives in the private directory and works too
    sock = pg.socket_dir / f".s.PGSQL.{pg.port}"
    assert sock.exists()
    with psycopg.connect(host=str(pg.socket_dir), port=pg.port, user="postgres") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_settings(pg: PostgresServer) -> None:
    with psycopg.connect(pg.url) as conn:
        show = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]
            for name in ("fsync", "synchronous_commit", "full_page_writes", "max_connections")
        }
    assert show == {
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
        "max_connections": "100",
    }


def test_server_runs_as_unprivileged_user_in_tmp(pg: PostgresServer) -> None:
    assert str(pg.base_dir).startswith(str(pg_server._tmp_root()))
    status = Path(f"/proc/{pg.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    uids = {int(x) for x in uid_line.split()[1:]}
    assert 0 not in uids
    assert pg.data_dir.stat().st_uid in uids
    assert pg.data_dir.stat().st_mode & 0o077 == 0


def test_create_database_from_prepared_template(pg: PostgresServer) -> None:
    tpl = pg.create_database("harness_tpl")
    with psycopg.connect(tpl) as conn:
        conn.execute("CREATE TABLE schema_marker (x int)")
        conn.execute("INSERT INTO schema_marker VALUES (42)")
    t0 = time.perf_counter()
    clones = [pg.create_database(f"harness_clone_{i}", template="harness_tpl") for i in range(3)]
    per_db = (time.perf_counter() - t0) / 3
    for url in clones:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM schema_marker").fetchone() == (42,)
    print(f"create_database from prepared template: {per_db * 1000:.0f} ms each")
    pg.drop_database("harness_clone_0")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(clones[0], connect_timeout=5).close()


def test_kill_restart_keeps_committed_data(own_pg: PostgresServer) -> None:
    pg = own_pg
    url = pg.create_database("harness_crash")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
    # an in-flight transaction that must not survive the crash
    inflight = psycopg.connect(url)
    inflight.execute("INSERT INTO t VALUES (-1)")
    old_pid, port, data = pg.pid, pg.port, pg.data_dir

    pg.kill()
    assert not pg.running
    assert _port_refuses(port)
    with pytest.raises(psycopg.OperationalError):
        inflight.execute("SELECT 1")
    inflight.close()
    st = pg_server._proc_stat(old_pid)
    assert st is None or st[0] == "Z"

    pg.restart()
    assert pg.running and pg.pid != old_pid
    assert (pg.port, pg.data_dir) == (port, data)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*), min(id) FROM t").fetchone() == (1000, 1)
    assert "not properly shut down" in pg.log_tail(200) or "redo" in pg.log_tail(200)

    # killing only the postmaster (backends left to die alone) also recovers
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO t VALUES (1001)")
    idle = psycopg.connect(url)  # a backend that outlives its postmaster briefly
    pg.kill(children=False)
    idle.close()
    pg.start()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1001,)


def test_stop_start_and_cleanup(own_pg: PostgresServer) -> None:
    pg = own_pg
    with psycopg.connect(pg.url) as conn:
        conn.execute("CREATE TABLE keep (x int)")
        conn.execute("INSERT INTO keep VALUES (7)")
    port = pg.port
    pg.stop()
    assert not pg.running
    assert _port_refuses(port)
    assert "database system is shut down" in pg.log_tail()
    pg.stop()  # idempotent
    pg.start()
    assert pg.port == port
    with psycopg.connect(pg.url) as conn:
        assert conn.execute("SELECT x FROM keep").fetchone() == (7,)
    base = pg.base_dir
    pg.cleanup()
    assert not base.exists()
    assert _port_refuses(port)
    pg.cleanup()  # idempotent


def test_missing_binaries_fail_loudly(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="missing or not executable"):
        PostgresServer(bindir=tmp_path / "nope").start()
    with pytest.raises(RuntimeError, match="PostgreSQL 99 server binaries"):
        pg_server.find_bindir(99)


def test_missing_user_fails_loudly() -> None:
    with pytest.raises(RuntimeError, match="no-such-pg-user"):
        PostgresServer(user="no-such-pg-user").start()


def test_startup_failure_reports_log() -> None:
    server = PostgresServer(settings={"shared_buffers": "not-a-size"})
    with pytest.raises(RuntimeError, match=r"(?s)exited with code.*shared_buffers"):
        server.start()
    server.cleanup()


def _tmp_for_postgres() -> Path:
    d = Path(tempfile.mkdtemp(prefix="memsync-pg-test-", dir=pg_server._tmp_root()))
    os.chmod(d, 0o755)  # traversable by the server user
    return d


def test_template_is_built_once_under_concurrency() -> None:
    """Several processes racing for a missing template: one initdb, all succeed."""
    root = _tmp_for_postgres()
    try:
        script = textwrap.dedent(
            f"""
            import json, sys
            sys.path.insert(0, {str(HERE)!r})
            import pg_server as m
            from pathlib import Path
            bindir = m.find_bindir()
            user = m._User(None)
            with m.ensure_template(bindir, 15, user, Path({str(root)!r}) / "tpl") as t:
                ok = (t / "data" / "PG_VERSION").read_text().strip()
            print(json.dumps({{"built": m.last_template_build_seconds, "ok": ok}}))
            """
        )
        procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(4)]
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0
            results.append(json.loads(out))
        assert [r["ok"] for r in results] == ["15"] * 4
        assert sum(1 for r in results if r["built"] > 0) == 1, results
        assert not list(root.glob("tpl.tmp-*"))  # no scratch dirs left behind

        # a server starts from that template
        with PostgresServer(template_dir=root / "tpl") as server, server.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_server_dies_with_its_python_process() -> None:
    """A test process that dies without cleanup must not leak its server."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(HERE)!r})
        from pg_server import PostgresServer
        s = PostgresServer().start()
        print(s.pid, s.base_dir, flush=True)
        os._exit(0)   # no cleanup at all
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    pid_s, base = out.stdout.split()
    pid = int(pid_s)
    try:
        deadline = time.monotonic() + 15
        while (st := pg_server._proc_stat(pid)) is not None and st[0] != "Z":
            assert time.monotonic() < deadline, "postmaster outlived its parent"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def test_timings_report() -> None:
    """Start from the cached template must be fast (target: well under 2 s)."""
    t0 = time.perf_counter()
    with PostgresServer() as server:
        elapsed = time.perf_counter() - t0
        timings = dict(server.timings)
    print(f"start from cached template: {elapsed:.3f}s {timings}")
    assert timings["template_initdb"] == 0.0
    assert elapsed < 5.0  # generous: shared CI machines are noisy
