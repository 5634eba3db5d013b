"""Security: hostile input stays data, secrets stay secret, files stay private, test servers stay local."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli import main
from memsync import Memory
from memsync.config import MemsyncConfig, load_config
from memsync.errors import MemsyncError
from memsync.events import normalize_name
from tests.fixtures_system import system_config
from tests.test_graph_store_contract import HOSTILE

# ---------------------------------------------------------------- hostile names, end to end

MORE_HOSTILE = ("'}) DETACH DELETE n //", "a`) DETACH DELETE (n", "x\n}) MATCH (n) DETACH DELETE n //", "名前\u200b🚀")
NAMES = tuple(dict.fromkeys(HOSTILE + MORE_HOSTILE))
STORABLE = tuple(n for n in NAMES if "\x00" not in n)  # a NUL in an id, text or name is refused at input


@pytest.fixture
def make_memory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Memory]]:
    made: list[Memory] = []

    def make(pair: str) -> Memory:
        # the graph backend is the point here; Qdrant Edge keeps the many searches fast on both
        config = system_config(pair, tmp_path / "data", request, facade__consistency="async", vector__backend="edge")
        if config.graph.backend == "neo4j":
            request.getfixturevalue("neo4j_server").clear()
        memory = Memory(config, embedder=None)
        made.append(memory)
        return memory

    yield make
    for memory in made:
        memory.close()


@pytest.mark.parametrize("pair", ["embedded", pytest.param("servers", marks=pytest.mark.neo4j)])
def test_hostile_names_through_the_facade_are_data(make_memory: Callable[[str], Memory], pair: str) -> None:
    """Names, texts, ids, scopes and metadata keys that look like Cypher or filters never act as code."""
    m = make_memory(pair)
    bystander = m.add(
        "Bob knows Eve",
        user_id="alice",
        memory_id="bystander",
        vector=[1.0, 0.0, 0.0],
        relations=[("bob", "knows", "eve")],
        metadata={"kind": "plain"},
    )["results"][0]["id"]
    for i, name in enumerate(STORABLE):
        m.add(
            f"text {name}",
            user_id="alice",
            memory_id=f"id {name}",
            vector=[1.0, float(i + 1), 0.0],
            entities=[{"name": name, "type": f"type {name}"}, "bob"],
            relations=[(name, name, "bob"), ("bob", f"rel {name}", name)],
            metadata={name: name, "tag": name, "kind": "hostile"},
        )
        m.add(
            f"scoped {name}",
            user_id=f"user {name}",
            memory_id=f"scoped {name}",
            vector=[0.0, 0.0, 1.0],
            relations=[(name, "is", name)],
        )
    m.system.project()  # consistency "async": the writes are projected here, all at once
    for kind, drift in m.system.verify().items():
        assert drift.ok, (kind, drift)
    graph = m.system.store("graph").snapshot()  # type: ignore[attr-defined]
    assert {normalize_name(n) for n in STORABLE} <= {e.name for e in graph.entities.values()}
    assert len(graph.memories) == 1 + 2 * len(STORABLE)

    found = m.search([1.0, 0.0, 0.0], user_id="alice", limit=100)
    assert len(found["results"]) == 1 + len(STORABLE)
    facts = {(r["source"], r["relationship"], r["destination"]) for r in found["relations"]}
    assert ("bob", "knows", "eve") in facts
    for name in STORABLE:
        assert m.get(f"id {name}")["memory"] == f"text {name}"  # type: ignore[index]
        hits = m.search([1.0, 0.0, 0.0], user_id="alice", filters={"tag": name}, limit=100)["results"]
        assert [h["id"] for h in hits] == [f"id {name}"], name  # a hostile filter value matches only itself
        scoped = m.search([0.0, 0.0, 1.0], user_id=f"user {name}", limit=10)
        assert [h["id"] for h in scoped["results"]] == [f"scoped {name}"]
        assert scoped["relations"] == [
            {"source": normalize_name(name), "relationship": "is", "destination": normalize_name(name)}
        ]
        assert [r["id"] for r in m.get_all(user_id=f"user {name}")["results"]] == [f"scoped {name}"]

    for name in STORABLE:
        m.delete(f"id {name}")
        m.delete_all(user_id=f"user {name}")
    m.system.project()
    for kind, drift in m.system.verify().items():
        assert drift.ok, (kind, drift)
    graph = m.system.store("graph").snapshot()  # type: ignore[attr-defined]
    assert set(graph.memories) == {bystander}  # everything else intact, nothing more deleted
    assert {e.name for e in graph.entities.values()} == {"bob", "eve"}
    assert {
        (r["source"], r["relationship"], r["destination"])
        for r in m.search([1.0, 0.0, 0.0], user_id="alice")["relations"]
    } == {("bob", "knows", "eve")}


def test_hostile_metadata_filter_keys_match_only_themselves(make_memory: Callable[[str], Memory]) -> None:
    m = make_memory("embedded")
    # the names are metadata keys only (ids and texts have rules of their own, e.g. no NUL)
    for i, name in enumerate(NAMES):
        m.add(f"text {i}", user_id="alice", memory_id=f"id {i}", vector=[1.0, float(i), 0.0], metadata={name: 1})
    m.system.project()
    for i, name in enumerate(NAMES):
        hits = m.search([1.0, 0.0, 0.0], user_id="alice", filters={name: 1}, limit=100)["results"]
        assert [h["id"] for h in hits] == [f"id {i}"], name
        assert hits[0]["metadata"] == {name: 1}


# ---------------------------------------------------------------- secrets


SECRETS = ("neo-S3cr3t-pw", "qd-S3cr3t-key", "pg-S3cr3t-pw", "pg-S3cr3t-q")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def secret_config(tmp_path: Path, *, graph_uri: str, log_url: str | None) -> dict[str, Any]:
    port = closed_port()
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "sqlite_synchronous": "NORMAL",
        "graph": {"backend": "neo4j", "uri": graph_uri, "password": SECRETS[0], "timeout": 2.0},
        "vector": {"backend": "qdrant", "url": f"http://127.0.0.1:{port}", "api_key": SECRETS[1], "timeout": 2.0},
        "projector": {"backoff_initial": 0.001, "backoff_max": 0.01, "max_attempts": 2},
        "facade": {"embedder": "none"},
    }
    if log_url is not None:
        data["log_url"] = log_url
    return data


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {where}:\n{text}"


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of every logger at DEBUG (the memsync logger does not propagate once the CLI ran)."""
    memsync_logger = logging.getLogger("memsync")
    memsync_logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="memsync")
    try:
        yield caplog
    finally:
        memsync_logger.removeHandler(caplog.handler)


def exercise(config_data: dict[str, Any], all_logs: pytest.LogCaptureFixture) -> str:
    """Use a config with secrets in every way that can print or log; return everything that was shown."""
    shown: list[str] = []
    config = MemsyncConfig.model_validate(config_data)
    shown += [repr(config), str(config), repr(config.graph), repr(config.vector)]
    memory = Memory(config, embedder=None)
    steps: list[Callable[[], Any]] = [
        lambda: memory.add("secret-free text", user_id="u", vector=[1.0, 0.0, 0.0], relations=[("a", "b", "c")]),
        lambda: memory.search([1.0, 0.0, 0.0], user_id="u"),
        memory.system.status,
        memory.system.project,
        memory.system.verify,
    ]
    try:
        for step in steps:
            try:
                shown.append(json.dumps(step(), default=str))
            except MemsyncError as e:
                shown.append(f"{e!r} {e} {e.__cause__!r} {e.__cause__}")
    finally:
        memory.close()
    env = {
        "MEMSYNC_GRAPH__PASSWORD": SECRETS[0],
        "MEMSYNC_VECTOR__API_KEY": SECRETS[1],
        "MEMSYNC_FACADE__EMBEDDER": "none",
    }
    toml = Path(config_data["data_dir"]).parent / "memsync.toml"
    toml.write_text(
        "\n".join(
            [f'data_dir = "{config_data["data_dir"]}"']
            + ([f'log_url = "{config_data["log_url"]}"'] if "log_url" in config_data else [])
            + [
                "[graph]",
                'backend = "neo4j"',
                f'uri = "{config_data["graph"]["uri"]}"',
                "timeout = 2.0",
                "[vector]",
                'backend = "qdrant"',
                f'url = "{config_data["vector"]["url"]}"',
                "timeout = 2.0",
                "[projector]",
                "backoff_initial = 0.001",
                "max_attempts = 2",
            ]
        )
    )
    for args in (
        ["status"],
        ["status", "--json"],
        ["project", "--json"],
        ["verify"],
        ["audit"],
        ["search", "[1,0,0]", "--user", "u"],
        ["--log-level", "debug", "status"],
    ):
        result = CliRunner().invoke(main, ["--config", str(toml), *args], env=env, catch_exceptions=True)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        shown.append(result.output)
    shown.append(all_logs.text)
    shown += [str(r.args) for r in all_logs.records]
    return "\n".join(shown)


def test_secrets_never_shown_with_unreachable_servers(tmp_path: Path, all_logs: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    data = secret_config(
        tmp_path,
        graph_uri=f"bolt://neo4j:{SECRETS[0]}@127.0.0.1:{port}",
        log_url=f"postgresql://memsync:{SECRETS[2]}@127.0.0.1:{port}/memsync?password={SECRETS[3]}",
    )
    shown = exercise(data, all_logs)
    assert "127.0.0.1" in shown and "Error" in shown  # the failures were shown, only their secrets were not
    assert_no_secret(shown, "output, errors or logs")


@pytest.mark.neo4j
@pytest.mark.postgres
def test_secrets_never_shown_with_real_servers(
    tmp_path: Path, all_logs: pytest.LogCaptureFixture, neo4j_server: Any, pg_database: str
) -> None:
    """Through real Bolt handshakes and PostgreSQL connections (the test servers accept any password)."""
    neo4j_server.clear()
    log_url = re.sub(r"^postgresql://([^@/]+)@", rf"postgresql://\1:{SECRETS[2]}@", pg_database)
    assert SECRETS[2] in log_url
    data = secret_config(tmp_path, graph_uri=neo4j_server.uri, log_url=log_url)
    shown = exercise(data, all_logs)
    assert "neo4j" in all_logs.text.lower() or "bolt" in shown.lower()
    assert_no_secret(shown, "output, errors or logs")


def test_secrets_from_the_environment_never_reach_repr_or_errors(tmp_path: Path) -> None:
    env = {
        "MEMSYNC_GRAPH__PASSWORD": SECRETS[0],
        "MEMSYNC_VECTOR__API_KEY": SECRETS[1],
        "MEMSYNC_LOG_URL": f"postgresql://u:{SECRETS[2]}@127.0.0.1:1/db",
        "MEMSYNC_VECTOR__DIMENSION": "not a number",
    }
    with pytest.raises(MemsyncError) as error:
        load_config(None, env=env)
    assert_no_secret(str(error.value), "a config error")
    del env["MEMSYNC_VECTOR__DIMENSION"]
    config = load_config(None, env=env)
    assert_no_secret(repr(config) + str(config), "repr(config)")
    assert config.graph.password is not None and config.graph.password.get_secret_value() == SECRETS[0]


# ---------------------------------------------------------------- private files


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the common default: everything would be world-readable unless memsync says otherwise
    try:
        yield
    finally:
        os.umask(old)


def test_data_directory_and_log_are_private(tmp_path: Path, umask_022: None) -> None:
    data = tmp_path / "nested" / "data"
    with Memory(MemsyncConfig(data_dir=data), embedder=None) as memory:
        memory.add("private text", user_id="u", vector=[1.0, 0.0], relations=[("a", "b", "c")])
        found = modes(data)
        assert found["."] == 0o700, oct(found["."])
        for name in ("events.db", "events.db-wal", "events.db-shm"):
            assert found[name] == 0o600, (name, oct(found[name]))
        assert all(mode & 0o077 == 0 for name, mode in found.items() if name.endswith(".lock")), found
        assert found["graph"] == 0o700


def test_graph_store_outside_the_data_directory_is_private(tmp_path: Path, umask_022: None) -> None:
    config = MemsyncConfig.model_validate(
        {"data_dir": str(tmp_path / "data"), "graph": {"path": str(tmp_path / "graph")}}
    )
    with Memory(config, embedder=None) as memory:
        memory.add("private text", user_id="u", relations=[("a", "b", "c")])
        assert stat.S_IMODE((tmp_path / "graph").stat().st_mode) == 0o700


def test_vector_store_outside_the_data_directory_is_private(tmp_path: Path, umask_022: None) -> None:
    config = MemsyncConfig.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "vector": {"path": str(tmp_path / "vectors")},
            "graph": {"backend": "none"},
        }
    )
    with Memory(config, embedder=None) as memory:
        memory.add("private text", user_id="u", vector=[1.0, 0.0])
        assert stat.S_IMODE((tmp_path / "vectors").stat().st_mode) & 0o077 == 0


# ---------------------------------------------------------------- servers the tests start


LOOPBACK = {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of each TCP socket ``pid`` listens on, from ``ss -ltnp``."""
    out = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if f"pid={pid}," in line:
            local = line.split()[3]
            address, _, port = local.rpartition(":")
            found.append((address, int(port)))
    return found


@pytest.mark.neo4j
def test_neo4j_test_server_listens_on_loopback_only(neo4j_server: Any) -> None:
    sockets = listening(neo4j_server.pid)
    assert any(port == neo4j_server.port for _, port in sockets), sockets  # found the Bolt socket
    assert {address for address, _ in sockets} <= LOOPBACK, sockets


@pytest.mark.postgres
def test_postgres_test_server_listens_on_loopback_only(pg_server: Any) -> None:
    sockets = listening(pg_server.pid)
    assert any(port == pg_server.port for _, port in sockets), sockets
    assert {address for address, _ in sockets} <= LOOPBACK, sockets
