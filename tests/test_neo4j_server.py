"""The Neo4j test-server harness itself: start, query, loopback-only, restart, kill."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from neo4j_server import Neo4jServer  # noqa: E402

neo4j = pytest.importorskip("neo4j")

pytestmark = pytest.mark.timeout(900)  # the very first run resolves Neo4j with Maven


def _non_loopback_ipv4() -> list[str]:
    """This machine's own non-loopback IPv4 addresses (never another host)."""
    addrs: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addrs.add(info[4][0])
    except OSError:
        pass
    try:  # the address the kernel would use for outbound traffic; sends nothing
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            addrs.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(a for a in addrs if not a.startswith("127."))


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

    # Bound to loopback only: every listening TCP socket of the JVM is 127.0.0.1.
    listening = server.listening_addresses()
    assert (port in {p for _, p in listening}), listening
    assert all(addr in ("127.0.0.1", "::ffff:127.0.0.1") for addr, _ in listening), listening
    # ... and the Bolt port is not reachable via this machine's own non-loopback IPs.
    for ip in _non_loopback_ipv4():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            assert s.connect_ex((ip, port)) != 0, f"Bolt reachable on {ip}:{port}"

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
        records, _, _ = drv.execute_query(
            "MATCH (a:Person)-[:KNOWS]->(b:Person) RETURN a.name AS a, b.name AS b")
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
