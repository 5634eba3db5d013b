"""The Memory facade on real stores: mem0 verbs, read-your-writes, hooks, threads, processes, async."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memsync import AsyncMemory, Hooks, InputError, Memory
from memsync.errors import CommandRefused, ConflictError
from memsync.events import MemoryAdded
from memsync.system import MemSync
from tests.fixtures_system import ALL_PAIRS, system_config


@pytest.fixture
def make_memory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Memory]]:
    made: list[Memory] = []

    def make(pair: str = "embedded", **kwargs: Any) -> Memory:
        overrides = kwargs.pop("overrides", {})
        config = system_config(pair, tmp_path / "data", request, **overrides)
        if config.graph.backend == "neo4j":
            request.getfixturevalue("neo4j_server").clear()
        memory = Memory(config, **kwargs)
        made.append(memory)
        return memory

    yield make
    for memory in made:
        memory.close()


@pytest.mark.parametrize("pair", ALL_PAIRS)
def test_every_verb_with_mem0_shapes(make_memory: Callable[..., Memory], pair: str) -> None:
    m = make_memory(pair)
    added = m.add(
        "Alice drinks green tea every morning",
        user_id="alice",
        metadata={"source": "chat"},
        relations=[("Alice", "drinks", "green tea")],
        actor="agent",
        reason="chat",
    )
    assert added["results"][0]["event"] == "ADD" and added["results"][0]["memory"].startswith("Alice")
    tea = added["results"][0]["id"]
    m.add(
        "Alice works at Acme",
        user_id="alice",
        relations=[{"source": "Alice", "relation": "works at", "target": "Acme"}],
    )
    m.add("Bob likes green tea too", user_id="bob", relations=[("Bob", "likes", "green tea")])

    got = m.get(tea)
    assert got is not None
    for key in ("id", "memory", "metadata", "user_id", "created_at", "updated_at"):
        assert key in got
    assert got["metadata"]["source"] == "chat" and got["metadata"]["embedding_dim"] == 256

    found = m.search("green tea in the morning", user_id="alice", limit=5)
    assert found["results"][0]["id"] == tea  # read-your-writes: projected before add returned
    assert "score" in found["results"][0]
    assert {"source": "alice", "relationship": "drinks", "destination": "green tea"} in found["relations"]
    assert all(r["user_id"] == "alice" for r in found["results"])  # scope isolation
    assert m.search("green tea", user_id="alice", filters={"source": "chat"})["results"][0]["id"] == tea
    assert m.search("green tea", user_id="alice", threshold=0.99)["results"] == []

    updated = m.update(tea, "Alice switched to coffee", relations=[("Alice", "drinks", "coffee")])
    assert updated["event"] == "UPDATE" and updated["version"] == 2
    with pytest.raises(ConflictError):
        m.update(tea, "stale writer", expected_version=1)
    assert m.get(tea)["memory"] == "Alice switched to coffee"  # type: ignore[index]
    assert m.search("coffee", user_id="alice")["results"][0]["memory"] == "Alice switched to coffee"
    assert len(m.get_all(user_id="alice")["results"]) == 2
    assert m.get_all(user_id="alice", filters={"source": "chat"})["results"][0]["id"] == tea

    history = m.history(tea)
    assert [h["event"] for h in history] == ["ADD", "UPDATE"]
    assert history[1]["old_memory"].startswith("Alice drinks") and history[1]["new_memory"].startswith("Alice sw")
    assert history[0]["actor"] == "agent" and history[0]["reason"] == "chat"

    m.delete(tea)
    assert m.get(tea) is None
    with pytest.raises(CommandRefused):
        m.delete(tea)
    with pytest.raises(InputError, match="at least one of user_id"):
        m.delete_all()
    m.delete_all(user_id="alice")
    assert m.get_all(user_id="alice")["results"] == []
    assert m.search("Acme", user_id="alice")["results"] == []
    assert m.get_all(user_id="bob")["results"]
    m.reset()
    assert m.get_all(user_id="bob")["results"] == []
    for kind, drift in m.system.verify().items():
        assert drift.ok, (kind, drift)


def test_messages_become_one_memory_each(make_memory: Callable[..., Memory]) -> None:
    m = make_memory("memory")
    out = m.add(
        [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "I like hiking"},
            {"role": "assistant", "content": "Noted: hiking"},
        ],
        user_id="u",
    )
    assert [r["memory"] for r in out["results"]] == ["I like hiking", "Noted: hiking"]
    assert m.get(out["results"][0]["id"])["metadata"]["role"] == "user"  # type: ignore[index]
    with pytest.raises(InputError):
        m.add([{"role": "user"}], user_id="u")


def test_extractor_output_is_recorded_and_replays_never_call_it(make_memory: Callable[..., Memory]) -> None:
    calls: list[str] = []

    def extractor(text: str) -> tuple[list[Any], list[Any]]:
        calls.append(text)
        return [{"name": "Alice", "type": "person"}], [("Alice", "likes", "jazz")]

    m = make_memory("embedded", extractor=extractor)
    memory_id = m.add("Alice likes jazz", user_id="alice")["results"][0]["id"]
    assert calls == ["Alice likes jazz"]
    event = m.system.log.read_stream(memory_id)[0].event
    assert isinstance(event, MemoryAdded) and event.relations and event.relations[0].target == "jazz"
    m.system.rebuild()
    assert calls == ["Alice likes jazz"]  # the rebuild used the recorded output
    snapshot = m.system.store("graph").snapshot()  # type: ignore[attr-defined]
    assert any(rel[1] == "likes" for rel in snapshot.relates)


def test_hook_errors_never_corrupt_a_write(make_memory: Callable[..., Memory]) -> None:
    hooks = Hooks()
    seen: list[str] = []

    def broken(**info: Any) -> None:
        raise RuntimeError("observer bug")

    for name in ("before_append", "after_append", "before_batch", "after_batch"):
        hooks.on(name, broken)
    hooks.on("after_append", lambda records: seen.append(records[0].memory_id))
    hooks.on("after_batch", lambda projection, **_: seen.append(projection))
    m = make_memory("embedded", hooks=hooks)
    memory_id = m.add("still recorded", user_id="u")["results"][0]["id"]
    assert seen == [memory_id, "vector", "graph"]
    assert m.get(memory_id) is not None
    assert m.system.log.audit().ok
    assert all(d.ok for d in m.system.verify().values())


def test_many_threads_share_one_memory(make_memory: Callable[..., Memory]) -> None:
    m = make_memory("embedded")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(15):
                out = m.add(f"thread {t} note {i}", user_id=f"user{t % 3}")
                if i % 5 == 0:
                    m.update(out["results"][0]["id"], f"thread {t} note {i} (edited)")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(len(m.get_all(user_id=f"user{u}", limit=1000)["results"]) for u in range(3)) == 8 * 15
    assert m.system.log.audit().ok
    m.system.project()
    assert all(d.ok for d in m.system.verify().values())


def _process_writer(data_dir: str, n: int, worker: int) -> None:
    memory = Memory.from_config({"data_dir": data_dir, "facade": {"consistency": "async", "embedder": "lexical"}})
    for i in range(n):
        memory.add(f"process {worker} memory {i}", user_id=f"w{worker}", memory_id=f"p{worker}-{i}")
    memory.close()


def test_several_processes_append_to_one_sqlite_log(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_writer, args=(data_dir, 40, w)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    m = Memory.from_config({"data_dir": data_dir, "facade": {"embedder": "lexical"}})
    try:
        assert [r.seq for r in m.system.log.read()] == list(range(1, 161))
        assert m.system.log.audit().ok
        assert len(m.get_all(user_id="w2", limit=1000)["results"]) == 40
        m.system.project()
        assert all(d.ok for d in m.system.verify().values())
    finally:
        m.close()


def test_async_memory_with_50_concurrent_tasks(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    config = system_config("embedded", tmp_path / "data", request)

    async def scenario() -> None:
        async with AsyncMemory(config) as am:
            results = await asyncio.gather(*(am.add(f"task {i} says hi", user_id=f"u{i % 5}") for i in range(50)))
            ids = [r["results"][0]["id"] for r in results]
            assert len(set(ids)) == 50
            assert len((await am.get_all(user_id="u0"))["results"]) == 10
            hits = await am.search("task 7 says hi", user_id="u2")
            assert hits["results"][0]["memory"] == "task 7 says hi"
            await am.update(ids[0], "task 0 changed")
            assert (await am.get(ids[0]))["memory"] == "task 0 changed"  # type: ignore[index]
            assert [h["event"] for h in await am.history(ids[0])] == ["ADD", "UPDATE"]
            await am.delete(ids[1])
            await am.delete_all(user_id="u3")
            assert (await am.get_all(user_id="u3"))["results"] == []
            system: MemSync = am.sync.system
            assert all(d.ok for d in system.verify().values())

    asyncio.run(scenario())


def test_async_consistency_and_wait_for(make_memory: Callable[..., Memory]) -> None:
    m = make_memory("embedded", overrides={"facade__consistency": "async"})
    out = m.add("eventually visible", user_id="u")
    seq = out["results"][0]["seq"]
    assert m.system.store("vector").checkpoint() < seq  # not projected yet
    stop = threading.Event()
    threads = m.system.follow(None, stop)
    try:
        m.wait_for(seq, timeout=20)
        assert m.search("eventually visible", user_id="u")["results"]
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def test_from_config_accepts_toml_and_env(tmp_path: Path) -> None:
    toml = tmp_path / "memsync.toml"
    toml.write_text(f'data_dir = "{tmp_path / "d"}"\n[facade]\nembedder = "lexical"\n[graph]\nbackend = "none"\n')
    m = Memory.from_config(toml, env={"MEMSYNC_VECTOR__COLLECTION": "custom"})
    try:
        assert m.config.vector.collection == "custom" and m.system.kinds == ["vector"]
        assert m.add("x", user_id="u")["relations"] == []
        assert m.search("x", user_id="u")["relations"] == []
    finally:
        m.close()


def test_minilm_embeddings_are_semantic_and_recorded(tmp_path: Path) -> None:
    from memsync import MiniLMEmbedder

    m = Memory.from_config({"data_dir": str(tmp_path), "facade": {"embedder": "minilm"}})
    try:
        assert isinstance(m.embedder, MiniLMEmbedder)
        m.add("Alice drinks green tea every morning", user_id="alice", memory_id="tea")
        m.add("Alice works as an engineer at Acme", user_id="alice", memory_id="job")
        m.add("The weather in Lisbon is sunny", user_id="alice", memory_id="weather")
        # no word in common with the tea memory: only a semantic model finds it
        assert m.search("which beverage does she like?", user_id="alice")["results"][0]["id"] == "tea"
        assert m.search("what is her profession", user_id="alice")["results"][0]["id"] == "job"
        metadata = m.get("tea")["metadata"]  # type: ignore[index]
        assert metadata["embedding_model"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert metadata["embedding_dim"] == 384
        assert m.system.log.stats().dimension == 384
    finally:
        m.close()


def test_single_store_mode_runs_only_the_vector_projection(make_memory: Callable[..., Memory]) -> None:
    m = make_memory("embedded", overrides={"single_store_mode": True})
    m.add("only vectors here", user_id="u", relations=[("a", "b", "c")])
    m.add("no vector for this one", user_id="u", vector=None)
    assert m.system.kinds == ["vector"]
    status = m.system.status()
    assert set(status["projections"]) == {"vector"}
    assert status["projections"]["vector"]["lag"] == 0
    assert m.search("only vectors", user_id="u")["relations"] == []
    assert not (Path(m.config.data_dir) / "graph").exists()


def test_memories_without_a_vector_are_skipped_and_counted(make_memory: Callable[..., Memory]) -> None:
    m = make_memory("embedded", embedder=None)
    m.add("no vector", user_id="u")
    m.add("with vector", user_id="u", vector=[1.0, 0.0])
    status = m.system.status()["projections"]
    assert status["vector"]["skipped_without_vector"] == 1 and status["vector"]["lag"] == 0
    assert m.system.store("vector").count() == 1  # type: ignore[attr-defined]
    assert len(m.system.store("graph").snapshot().memories) == 2  # type: ignore[attr-defined]


def test_a_search_vector_of_another_dimension_is_an_input_error(make_memory: Callable[..., Memory]) -> None:
    m = make_memory("embedded", embedder=None)
    with pytest.raises(InputError, match="search by text needs an embedder"):
        m.search("anything", user_id="u")
    assert m.search([0.5, 0.5], user_id="u")["results"] == []  # nothing recorded yet: any dimension is fine
    m.add("tea", user_id="u", vector=[1.0, 0.0, 0.0])
    with pytest.raises(InputError, match=r"`query` has dimension 2, but this log's vectors have 3") as info:
        m.search([0.5, 0.5], user_id="u")
    assert info.value.field == "query"
    assert m.search([1.0, 0.0, 0.0], user_id="u")["results"][0]["memory"] == "tea"


def test_an_id_or_metadata_of_the_wrong_type_is_an_input_error_naming_it(make_memory: Callable[..., Memory]) -> None:
    """Found by tests/test_fuzz.py: a numpy array as `memory_id` raised numpy's own ValueError (`x or default`)."""
    m = make_memory("embedded", embedder=None)
    with pytest.raises(InputError, match="`memory_id` must be a string, not ndarray") as info:
        m.add([{"role": "user", "content": "hello"}], user_id="u", memory_id=np.array([1.0, 0.0]))  # type: ignore[arg-type]
    assert info.value.field == "memory_id"
    with pytest.raises(InputError, match="item 1: `memory_id` must be a string") as info:
        m.add_many([{"text": "a", "user_id": "u"}, {"text": "b", "user_id": "u", "memory_id": np.array([1.0, 0.0])}])
    assert info.value.field == "memory_id" and info.value.index == 1
    with pytest.raises(InputError, match="item 0: `metadata` must be a mapping, not str") as info:
        m.add_many([{"text": "a", "user_id": "u", "metadata": "ab"}])
    assert info.value.field == "metadata"
    with pytest.raises(InputError, match="item 0: `metadata` must be a mapping, not list") as info:
        m.import_mem0({"results": [{"id": "x", "memory": "a", "user_id": "u", "metadata": [1, 2]}]})
    assert info.value.field == "metadata"
    assert m.system.log.head().seq == 0  # nothing recorded
    m.add_many([{"text": "a", "user_id": "u", "memory_id": "m1", "metadata": {}}])
    assert m.get("m1") is not None
