"""The Neo4j test-server harness itself: start, query, loopback-only, restart, kill."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.neo4j_server import Neo4jServer

neo4j = pytest.importorskip("neo4j")

pytestmark = [pytest.mark.neo4j, pytest.mark.timeout(900)]  # the very first run resolves Neo4j with Maven


def _ss_listeners(pid: int) -> list[str] | None:
    """Local addresses of TCP listeners of ``pid`` as `ss -ltnp` shows them (None: no ss)."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=False).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]


def _query(server: Neo4jServer, cypher: str, **params):
    with neo4j.GraphDatabase.driver(server.uri, auth=None) as drv:
        records, _, _ = drv.execute_query(cypher, params)
        return records


@pytest.fixture
def server():
    srv = Neo4jServer()
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def test_start_query_loopback_restart_persist(server: Neo4jServer) -> None:
    port = server.port
    assert server.uri == f"bolt://127.0.0.1:{port}"
    assert _query(server, "RETURN 1 AS x")[0]["x"] == 1

    # Bound to loopback only: every listening TCP socket of the JVM is on 127.0.0.1
    # (read from /proc; cross-checked with `ss -ltnp` where it is installed). Nothing
    # is sent to a non-loopback address to find out.
    listening = server.listening_addresses()
    assert port in {p for _, p in listening}, listening
    assert all(addr in ("127.0.0.1", "::ffff:127.0.0.1") for addr, _ in listening), listening
    ss = _ss_listeners(server.pid)  # type: ignore[arg-type]
    if ss is not None:
        assert ss and all(a.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]") for a in ss), ss

    _query(server, "CREATE CONSTRAINT person_id IF NOT EXISTS FOR (p:Person) REQUIRE p.id IS UNIQUE")
    _query(server, "CREATE INDEX person_name IF NOT EXISTS FOR (p:Person) ON (p.name)")
    _query(server, "CREATE (:Person {id: 1, name: 'Ada'})-[:KNOWS]->(:Person {id: 2, name: 'Bob'})")

    # A client driver that stays open across the restart reconnects transparently.
    with neo4j.GraphDatabase.driver(server.uri, auth=None) as drv:
        drv.execute_query("RETURN 1")
        server.stop()
        assert not server.is_running()
        server.restart()
        assert server.port == port and server.uri == f"bolt://127.0.0.1:{port}"
        records, _, _ = drv.execute_query("MATCH (a:Person)-[:KNOWS]->(b:Person) RETURN a.name AS a, b.name AS b")
        assert [(r["a"], r["b"]) for r in records] == [("Ada", "Bob")]

    # Crash (SIGKILL) + start: committed data survives recovery.
    _query(server, "CREATE (:Person {id: 3, name: 'Cy'})")
    server.kill()
    assert not server.is_running()
    server.start()
    assert server.port == port
    assert _query(server, "MATCH (p:Person) RETURN count(p) AS n")[0]["n"] == 3

    # clear(): no data, no constraints, no user indexes (built-in LOOKUP ones stay).
    server.clear()
    assert _query(server, "MATCH (n) RETURN count(n) AS n")[0]["n"] == 0
    assert _query(server, "SHOW CONSTRAINTS YIELD name RETURN count(*) AS n")[0]["n"] == 0
    kinds = [r["type"] for r in _query(server, "SHOW INDEXES YIELD type RETURN type")]
    assert kinds and all(k == "LOOKUP" for k in kinds), kinds


def test_context_manager_and_error_reporting(tmp_path: Path) -> None:
    with Neo4jServer(data_dir=tmp_path / "db") as srv:
        assert _query(srv, "RETURN 2 AS x")[0]["x"] == 2
        pid = srv.pid
    assert not srv.is_running()
    assert pid is not None

    # A second server on an occupied fixed port fails with a clear error + output tail.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        busy = blocker.getsockname()[1]
        bad = Neo4jServer(port=busy, data_dir=tmp_path / "busy", start_timeout=120)
        with pytest.raises(RuntimeError, match=str(busy)):
            bad.start()
        assert not bad.is_running()
