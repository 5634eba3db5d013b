"""Model-based testing: random sequences of facade and CLI operations against a tiny model.

A hypothesis state machine drives one memsync system (``consistency = "async"``,
explicit 3-d vectors, no embedder) through random adds, updates, deletes,
delete-alls, resets and JSONL appends — through :class:`memsync.Memory` *and*
through ``memsync`` (click's CliRunner on ``cli.main`` with ``--data-dir``) —
with projections, rebuilds (fresh, in place, to a seq) and partial catch-ups
at random points. The model is a plain dict of live memories; it knows nothing
of memsync's code. After every step:

* ``fold(log)`` equals the model, and the head seq counts exactly the accepted events;
* each store equals ``fold(log)`` at its own checkpoint (``verify_store(...).ok``);
* the hash chain audits;
* refused commands (duplicate add, update/delete of a missing or deleted memory,
  wrong ``expected_version``, bad input, a batch with one bad event) raised and
  recorded nothing; and after a projection step, checkpoints equal the head.

Runs on the embedded stores (Qdrant Edge + LadybugDB on SQLite) in the default
suite, and with fewer examples on a real Neo4j plus a PostgreSQL log.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cli import main
from memsync import Memory
from memsync.config import MemsyncConfig
from memsync.errors import CommandRefused, ConflictError, InputError
from memsync.events import unpack_vector
from memsync.fold import fold
from memsync.stores import VectorStore
from memsync.verify import verify_store

DIM = 3
IDS = ["m0", "m1", "m2", "ünï-1", "a b", "5f0c8a9e-9d4b-4f0e-8a53-2a8f0b6c1d11"]
USERS = ["alice", "bob"]
AGENTS = ["planner", "coder"]
RUNS = ["r1", "r2"]
NAMES = ["Alice", "bob", "  Green  Tea ", "ACME", "x", "Ünï Cødé"]  # no ':' or ',' (CLI syntax)
TYPES = [None, "person", "thing"]
RELS = ["likes", "works at", "Lives  In"]


def norm(name: str) -> str:
    return " ".join(name.split()).lower()


def f32(values: list[float]) -> tuple[float, ...]:
    return struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values))


# ---------------------------------------------------------------- the model


@dataclass
class Live:
    text: str
    scope: dict[str, str]
    metadata: dict[str, Any]
    vector: tuple[float, ...] | None
    entities: dict[str, str | None]  # normalized name -> smallest type
    relations: frozenset[tuple[str, str, str]]
    version: int


@dataclass
class Model:
    live: dict[str, Live] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # every memory ever added, live or not
    seq: int = 0
    recorded: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # event_id -> (seq, event)

    def copy(self) -> Model:
        return Model(dict(self.live), dict(self.versions), self.seq, dict(self.recorded))

    def apply(self, event: dict[str, Any]) -> str | None:
        """Apply one input event as the contract says; return why it is refused or skipped, or None.

        ``"duplicate"``: its ``event_id`` is already recorded, so the log returns the original record.
        """
        if event.get("event_id") in self.recorded:
            return "duplicate"
        refusal = self._apply(event)
        if refusal is None:
            self.seq += 1
            if event.get("event_id") is not None:
                self.recorded[event["event_id"]] = (self.seq, event)
        return refusal

    def _apply(self, event: dict[str, Any]) -> str | None:
        kind = event["type"]
        memory_id = event.get("memory_id")
        if kind.startswith("memory."):
            current = self.versions.get(memory_id, 0)
            expected = event.get("expected_version")
            if expected is not None and expected != current:
                return "conflict"
            if kind == "memory.added":
                if memory_id in self.live:
                    return "refused"
                self.live[memory_id] = Live(
                    text=event["text"],
                    scope={k: event[k] for k in ("user_id", "agent_id", "run_id") if event.get(k)},
                    metadata=dict(event.get("metadata") or {}),
                    vector=f32(event["vector"]) if event.get("vector") is not None else None,
                    entities=entity_map(event.get("entities") or []),
                    relations=relation_set(event.get("relations") or []),
                    version=current + 1,
                )
            elif memory_id not in self.live:
                return "refused"
            elif kind == "memory.deleted":
                del self.live[memory_id]
            else:
                self.live[memory_id] = updated(self.live[memory_id], event, current + 1)
            self.versions[memory_id] = current + 1
        else:
            scope = {k: event[k] for k in ("user_id", "agent_id", "run_id") if event.get(k)}
            for gone in [m for m, live in self.live.items() if all(live.scope.get(k) == v for k, v in scope.items())]:
                del self.live[gone]
                self.versions[gone] += 1
        return None


def entity_map(entities: list[dict[str, Any]]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for entity in entities:
        name, typ = norm(entity["name"]), entity.get("type")
        old = out.get(name)
        out[name] = typ if old is None else (old if typ is None else min(old, typ))
    return out


def relation_set(relations: list[dict[str, str]]) -> frozenset[tuple[str, str, str]]:
    return frozenset((norm(r["source"]), norm(r["relation"]), norm(r["target"])) for r in relations)


def updated(old: Live, event: dict[str, Any], version: int) -> Live:
    new = replace(old, version=version)
    if event.get("text") is not None:
        new.text = event["text"]
    if event.get("metadata") is not None:
        new.metadata = dict(event["metadata"])
    if event.get("vector") is not None:
        new.vector = f32(event["vector"])
    if event.get("entities") is not None:
        new.entities = entity_map(event["entities"])
    if event.get("relations") is not None:
        new.relations = relation_set(event["relations"])
    return new


# ---------------------------------------------------------------- strategies

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=20).map(
    lambda t: "t " + t  # never blank, never an option to the CLI
)
scopes = st.one_of(
    st.fixed_dictionaries({"user_id": st.sampled_from(USERS)}),
    st.fixed_dictionaries({"agent_id": st.sampled_from(AGENTS)}),
    st.fixed_dictionaries({"user_id": st.sampled_from(USERS), "run_id": st.sampled_from(RUNS)}),
    st.fixed_dictionaries({"agent_id": st.sampled_from(AGENTS), "run_id": st.sampled_from(RUNS)}),
    st.fixed_dictionaries({"run_id": st.sampled_from(RUNS)}),
)
delete_scopes = st.one_of(scopes, st.fixed_dictionaries({"user_id": st.sampled_from(USERS), "agent_id": st.just("x")}))
# Any finite float (Qdrant parses some 1 ulp off: the vector stores keep an exact JSON copy of the metadata,
# tests below) and 64-bit integers (the log refuses larger ones); keys with dots, quotes and backslashes.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
metadata_keys = st.sampled_from(["k", "tag", "n", "a.b", "ü", 'q"k', "b\\s"])
metadatas = st.none() | st.dictionaries(metadata_keys, json_values, max_size=3)
vectors = st.lists(st.integers(-4, 4), min_size=DIM, max_size=DIM).filter(any).map(lambda v: [x / 4 for x in v])
entities = st.lists(
    st.fixed_dictionaries({"name": st.sampled_from(NAMES)}, optional={"type": st.sampled_from(TYPES[1:])}),
    max_size=3,
)
relations = st.lists(
    st.fixed_dictionaries(
        {"source": st.sampled_from(NAMES), "relation": st.sampled_from(RELS), "target": st.sampled_from(NAMES)}
    ),
    max_size=3,
)


@st.composite
def add_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "memory.added", "memory_id": draw(st.sampled_from(IDS)), "text": draw(texts)}
    event.update(draw(scopes))
    for key, strategy in (
        ("vector", vectors),
        ("metadata", metadatas),
        ("entities", entities),
        ("relations", relations),
    ):
        value = draw(st.none() | strategy)
        if value is not None:
            event[key] = value
    return event


@st.composite
def update_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "memory.updated", "memory_id": draw(st.sampled_from(IDS))}
    fields = draw(st.sets(st.sampled_from(["text", "vector", "metadata", "entities", "relations"]), min_size=1))
    strategies = {"text": texts, "vector": vectors, "metadata": metadatas.filter(lambda m: m is not None)}
    strategies.update(entities=entities, relations=relations)
    for name in sorted(fields):
        event[name] = draw(strategies[name])
    return event


any_events = st.one_of(
    add_events(),
    update_events(),
    st.builds(lambda m: {"type": "memory.deleted", "memory_id": m}, st.sampled_from(IDS)),
    delete_scopes.map(lambda s: {"type": "memories.deleted", **s}),
    st.just({"type": "memories.reset"}),
)


# ---------------------------------------------------------------- the machine


@dataclass
class Target:
    """Where a machine runs: a config for its data directory, plus the same settings as env for the CLI."""

    make_config: Callable[[Path, int], dict[str, Any]]
    before_example: Callable[[], None] = lambda: None


def flat_env(data: dict[str, Any], prefix: str = "MEMSYNC_") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_env(value, f"{prefix}{key.upper()}__"))
        elif value is not None:
            out[f"{prefix}{key.upper()}"] = str(value)
    return out


class MemsyncMachine(RuleBasedStateMachine):
    target: Target  # set by each test before it runs the machine
    examples = 0

    def __init__(self) -> None:
        super().__init__()
        type(self).examples += 1
        self.target.before_example()
        self.dir = Path(tempfile.mkdtemp(prefix="memsync-model-"))
        self.config_data = self.target.make_config(self.dir / "data", type(self).examples)
        self.env = flat_env(self.config_data)
        self.memory = Memory(MemsyncConfig.model_validate(self.config_data), embedder=None)
        self.model = Model()
        self.projected = False  # the last step brought every projection to the head

    def teardown(self) -> None:
        self.memory.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ helpers

    @property
    def system(self) -> Any:
        return self.memory.system

    def head(self) -> int:
        return int(self.system.log.head().seq)

    def cli(self, *args: str, input: str | None = None, stores: bool = False) -> Result:
        """Run ``memsync`` in-process; ``stores``: it opens the embedded stores, which the facade must let go of."""
        if stores:
            self.system.close()  # the facade reopens them lazily
        result = CliRunner().invoke(
            main, ["--data-dir", str(self.dir / "data"), *args], input=input, env=self.env, catch_exceptions=True
        )
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"memsync {' '.join(args)} crashed:\n{result.output}") from result.exception
        return result

    def expect(self, event: dict[str, Any], call: Callable[[], Any]) -> Any:
        """Run a facade call that records ``event``; check it is refused exactly when the model refuses it."""
        trial = self.model.copy()
        refusal = trial.apply(event)
        before = self.head()
        if refusal is None:
            out = call()
            self.model = trial
            return out
        error = ConflictError if refusal == "conflict" else CommandRefused
        with pytest.raises(error):
            call()
        assert self.head() == before, "a refused command recorded something"
        return None

    def expect_cli(self, event: dict[str, Any], *args: str) -> None:
        trial = self.model.copy()
        refusal = trial.apply(event)
        before = self.head()
        result = self.cli(*args)
        if refusal is None:
            assert result.exit_code == 0, result.output
            self.model = trial
        else:
            assert result.exit_code == 2, result.output
            assert ("version conflict" if refusal == "conflict" else event["memory_id"]) in result.output
            assert self.head() == before

    def step_done(self, projected: bool = False) -> None:
        self.projected = projected

    def pick_id(self, data: st.DataObject, *, live: bool) -> str:
        """Mostly a memory that is live (``live``) or not (for adds), so commands mostly apply; sometimes any."""
        pool = sorted(m for m in IDS if (m in self.model.live) == live)
        if pool and data.draw(st.integers(0, 3), label="biased") > 0:
            return data.draw(st.sampled_from(pool), label="memory_id")
        return data.draw(st.sampled_from(IDS), label="memory_id")

    def pick_scope(self, data: st.DataObject) -> dict[str, str]:
        """Mostly the scope (or part of it) of a live memory, so delete-alls mostly delete something."""
        if self.model.live and data.draw(st.booleans(), label="biased"):
            live = self.model.live[data.draw(st.sampled_from(sorted(self.model.live)))]
            keys = data.draw(st.sets(st.sampled_from(sorted(live.scope)), min_size=1), label="scope fields")
            return {k: live.scope[k] for k in sorted(keys)}
        return data.draw(delete_scopes, label="scope")

    def pick_version(self, data: st.DataObject, memory_id: str) -> int | None:
        """No expected_version, the right one, or any."""
        right = st.just(self.model.versions.get(memory_id, 0))
        return data.draw(st.none() | right | right | st.integers(0, 4), label="expected_version")

    # ------------------------------------------------------------ facade writes

    @rule(event=add_events(), data=st.data())
    def add(self, event: dict[str, Any], data: st.DataObject) -> None:
        event["memory_id"] = self.pick_id(data, live=False)
        scope = {k: event[k] for k in ("user_id", "agent_id", "run_id") if k in event}
        self.expect(
            event,
            lambda: self.memory.add(
                event["text"],
                memory_id=event["memory_id"],
                vector=event.get("vector"),
                metadata=event.get("metadata"),
                entities=event.get("entities"),
                relations=event.get("relations"),
                actor="model",
                **scope,
            ),
        )
        self.step_done()

    @rule(event=update_events(), data=st.data())
    def update(self, event: dict[str, Any], data: st.DataObject) -> None:
        event["memory_id"] = self.pick_id(data, live=True)
        expected = self.pick_version(data, event["memory_id"])
        if expected is not None:
            event["expected_version"] = expected
        self.expect(
            event,
            lambda: self.memory.update(
                event["memory_id"],
                event.get("text"),
                vector=event.get("vector"),
                metadata=event.get("metadata"),
                entities=event.get("entities"),
                relations=event.get("relations"),
                expected_version=expected,
            ),
        )
        self.step_done()

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        memory_id = self.pick_id(data, live=True)
        self.expect({"type": "memory.deleted", "memory_id": memory_id}, lambda: self.memory.delete(memory_id))
        self.step_done()

    @rule(data=st.data())
    def delete_all(self, data: st.DataObject) -> None:
        scope = self.pick_scope(data)
        self.expect({"type": "memories.deleted", **scope}, lambda: self.memory.delete_all(**scope))
        self.step_done()

    @precondition(lambda self: len(self.model.live) > 3)
    @rule()
    def reset(self) -> None:
        self.expect({"type": "memories.reset"}, lambda: self.memory.reset(reason="model"))
        self.step_done()

    @rule(
        memory_id=st.sampled_from(IDS),
        bad=st.sampled_from(["blank text", "no scope", "wrong dimension", "nan", "empty update", "bad entity"]),
    )
    def invalid_input_records_nothing(self, memory_id: str, bad: str) -> None:
        before = self.head()
        calls: dict[str, Callable[[], Any]] = {
            "blank text": lambda: self.memory.add(" \n ", user_id="alice", memory_id=memory_id),
            "no scope": lambda: self.memory.add("text", memory_id=memory_id),
            "wrong dimension": lambda: self.memory.add("text", user_id="alice", vector=[1.0] * (DIM + 1)),
            "nan": lambda: self.memory.add("text", user_id="alice", vector=[float("nan")] * DIM),
            "empty update": lambda: self.memory.update(memory_id),
            "bad entity": lambda: self.memory.add("text", user_id="alice", entities=[{"name": "  "}]),
        }
        if bad == "wrong dimension" and self.system.log.stats().dimension is None:
            calls[bad] = lambda: self.memory.add("text", user_id="alice", vector=[])
        with pytest.raises(InputError):
            calls[bad]()
        assert self.head() == before
        self.step_done()

    # ------------------------------------------------------------ CLI writes

    @rule(event=add_events(), data=st.data())
    def cli_add(self, event: dict[str, Any], data: st.DataObject) -> None:
        event["memory_id"] = self.pick_id(data, live=False)
        args = ["add", event["text"], "--id", event["memory_id"], "--actor", "cli"]
        for key, flag in (("user_id", "--user"), ("agent_id", "--agent"), ("run_id", "--run")):
            if key in event:
                args += [flag, event[key]]
        args += self._cli_fields(event)
        self.expect_cli(event, *args)
        self.step_done()

    @rule(event=update_events(), data=st.data())
    def cli_update(self, event: dict[str, Any], data: st.DataObject) -> None:
        event["memory_id"] = self.pick_id(data, live=True)
        expected = self.pick_version(data, event["memory_id"])
        if not event.get("entities") and "entities" in event:
            del event["entities"]  # the CLI cannot say "no entities"
        if not event.get("relations") and "relations" in event:
            del event["relations"]
        if not set(event) - {"type", "memory_id"}:
            event["text"] = "t only text"
        args = ["update", event["memory_id"]]
        if "text" in event:
            args += ["--text", event["text"]]
        if expected is not None:
            event["expected_version"] = expected
            args += ["--expected-version", str(expected)]
        self.expect_cli(event, *args, *self._cli_fields(event))
        self.step_done()

    @staticmethod
    def _cli_fields(event: dict[str, Any]) -> list[str]:
        args: list[str] = []
        if event.get("vector") is not None:
            args += ["--vector", json.dumps(event["vector"])]
        if event.get("metadata") is not None:
            args += ["--metadata", json.dumps(event["metadata"])]
        for entity in event.get("entities") or []:
            args += ["--entity", entity["name"] + (f":{entity['type']}" if entity.get("type") else "")]
        for rel in event.get("relations") or []:
            args += ["--relation", f"{rel['source']},{rel['relation']},{rel['target']}"]
        if "relations" in event:  # the CLI strips each part; so does normalization
            event["relations"] = [{k: v.strip() for k, v in r.items()} for r in event["relations"]]
        return args

    @rule(data=st.data())
    def cli_delete(self, data: st.DataObject) -> None:
        memory_id = self.pick_id(data, live=True)
        expected = self.pick_version(data, memory_id)
        event: dict[str, Any] = {"type": "memory.deleted", "memory_id": memory_id}
        args = ["delete", memory_id]
        if expected is not None:
            event["expected_version"] = expected
            args += ["--expected-version", str(expected)]
        self.expect_cli(event, *args)
        self.step_done()

    @rule(data=st.data())
    def cli_delete_all(self, data: st.DataObject) -> None:
        scope = self.pick_scope(data)
        flags = {"user_id": "--user", "agent_id": "--agent", "run_id": "--run"}
        args = [a for k, v in scope.items() for a in (flags[k], v)]
        self.expect_cli({"type": "memories.deleted", **scope}, "delete-all", *args)
        self.step_done()

    @precondition(lambda self: len(self.model.live) > 3)
    @rule()
    def cli_reset(self) -> None:
        self.expect_cli({"type": "memories.reset"}, "reset", "--yes")
        self.step_done()

    recorded = Bundle("recorded")

    @rule(target=recorded, batch=st.lists(any_events, min_size=1, max_size=4), ids=st.data())
    def cli_append_batch(self, batch: list[dict[str, Any]], ids: st.DataObject) -> Any:
        """A JSONL batch is all or nothing: one refused event records none of it."""
        for event in batch:
            if ids.draw(st.booleans()):
                event["event_id"] = str(uuid.UUID(int=ids.draw(st.integers(0, 2**128 - 1))))
        trial = self.model.copy()
        outcomes, expected = [], []
        for event in batch:
            outcome = trial.apply(dict(event))
            outcomes.append(outcome)
            if outcome in (None, "duplicate"):
                expected.append(trial.recorded[event["event_id"]][0] if "event_id" in event else trial.seq)
        before = self.head()
        lines = "".join(json.dumps(e) + "\n" for e in batch)
        result = self.cli("append", "--json", input=lines)
        self.step_done()
        if any(o not in (None, "duplicate") for o in outcomes):
            assert result.exit_code == 2, result.output
            assert self.head() == before
            return multiple()
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["seqs"] == expected
        assert self.head() == trial.seq
        self.model = trial
        return multiple(*[e["event_id"] for e, o in zip(batch, outcomes, strict=True) if o is None and "event_id" in e])

    @rule(event_id=consumes(recorded), via_cli=st.booleans())
    def reappend_is_idempotent(self, event_id: str, via_cli: bool) -> None:
        """Re-appending a recorded event_id returns the original record and records nothing."""
        seq, event = self.model.recorded[event_id]
        before = self.head()
        if via_cli:
            result = self.cli("append", "--json", input=json.dumps(event) + "\n")
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)["seqs"] == [seq]
        else:
            from memsync.events import event_from_dict

            (record,) = self.system.log.append([event_from_dict(event)])
            assert record.seq == seq and record.event_id == event["event_id"]
        assert self.head() == before
        self.step_done()

    # ------------------------------------------------------------ projections

    @rule(which=st.sampled_from(["all", "vector", "graph"]), via_cli=st.booleans())
    def project(self, which: str, via_cli: bool) -> None:
        if via_cli:
            result = self.cli("project", which, "--json", stores=True)
            assert result.exit_code == 0, result.output
        else:
            outcome = self.system.project(self.system.select(which))
            assert all("error" not in r for r in outcome.values()), outcome
        for kind in self.system.select(which):
            assert self.system.store(kind).checkpoint() == self.model.seq, kind
        self.step_done(projected=which == "all")

    @rule(kind=st.sampled_from(["vector", "graph"]), data=st.data())
    def catch_up_part_way(self, kind: str, data: st.DataObject) -> None:
        runner = self.system.runner(kind)
        checkpoint, head = runner.store.checkpoint(), self.head()
        until = data.draw(st.integers(checkpoint, head))
        runner.config = runner.config.model_copy(update={"batch_size": data.draw(st.sampled_from([1, 2, 7, 1000]))})
        runner.catch_up(until=until)
        assert runner.store.checkpoint() == until
        self.step_done()

    # one rule for every kind of rebuild: each builds a fresh store, the slowest step, so keep them rare
    @rule(
        how=st.sampled_from(["fresh", "in place", "vector only", "graph in place", "to seq", "cli", "cli in place"]),
        data=st.data(),
    )
    def rebuild(self, how: str, data: st.DataObject) -> None:
        head = self.head()
        if how.startswith("cli"):
            result = self.cli("rebuild", *(["--in-place"] if "in place" in how else []), "--json", stores=True)
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout) == {"rebuilt": {k: head for k in ("vector", "graph")}}
        elif how == "to seq":
            to_seq = data.draw(st.integers(0, head))
            self.system.rebuild(to_seq=to_seq)
            for kind in self.system.kinds:
                assert self.system.store(kind).checkpoint() == to_seq
        else:
            which = {"vector only": ["vector"], "graph in place": ["graph"]}.get(how)
            done = self.system.rebuild(which, in_place="in place" in how)
            assert done == {k: head for k in which or self.system.kinds}
        self.step_done(projected=how in ("fresh", "in place", "cli", "cli in place"))

    @rule()
    def cli_verify_and_status(self) -> None:
        verify = self.cli("verify", "--json", stores=True)
        assert verify.exit_code == 0 and json.loads(verify.stdout)["ok"] is True, verify.output
        status = json.loads(self.cli("status", "--json", stores=True).stdout)
        assert status["head"]["seq"] == self.model.seq
        assert status["live_memories"] == len(self.model.live)
        for kind in ("vector", "graph"):
            entry = status["projections"][kind]
            assert entry["reachable"] is True and entry["parked"] == 0
            assert entry["lag"] == self.model.seq - entry["checkpoint"]
        self.step_done(projected=self.projected)

    # ------------------------------------------------------------ reads

    @rule(user=st.sampled_from(USERS), query=vectors)
    def search_sees_every_projected_memory_in_scope(self, user: str, query: list[float]) -> None:
        self.system.project()
        found = self.memory.search(query, user_id=user, limit=100)
        expected = {m for m, live in self.model.live.items() if live.scope.get("user_id") == user and live.vector}
        assert {hit["id"] for hit in found["results"]} == expected
        names = {n for m in expected for n in self.model.live[m].entities} | {
            n for m in expected for s, _, t in self.model.live[m].relations for n in (s, t)
        }
        facts = {
            fact
            for live in self.model.live.values()
            if live.scope.get("user_id") == user
            for fact in live.relations
            if fact[0] in names or fact[2] in names
        }
        got = {(r["source"], r["relationship"], r["destination"]) for r in found["relations"]}
        assert got == facts if len(facts) <= 50 else got <= facts
        self.step_done(projected=True)

    @rule(memory_id=st.sampled_from(IDS), user=st.sampled_from(USERS))
    def reads_from_the_log_are_exact(self, memory_id: str, user: str) -> None:
        got = self.memory.get(memory_id)
        live = self.model.live.get(memory_id)
        assert (got is None) == (live is None)
        if got is not None and live is not None:
            assert (got["memory"], got["version"], got["metadata"]) == (live.text, live.version, live.metadata)
        ids = {r["id"] for r in self.memory.get_all(user_id=user, limit=1000)["results"]}
        assert ids == {m for m, live in self.model.live.items() if live.scope.get("user_id") == user}
        history = self.memory.history(memory_id)
        assert (history[-1]["version"] if history else 0) == self.model.versions.get(memory_id, 0)

    # ------------------------------------------------------------ invariants

    @invariant()
    def log_folds_to_the_model(self) -> None:
        log = self.system.log
        assert log.head().seq == self.model.seq
        state = fold(log.read())
        assert set(state.memories) == set(self.model.live)
        for memory_id, live in self.model.live.items():
            got = state.memories[memory_id]
            scope = {k: v for k in ("user_id", "agent_id", "run_id") if (v := getattr(got, k))}
            assert (got.text, scope, got.metadata, got.version) == (live.text, live.scope, live.metadata, live.version)
            assert (tuple(unpack_vector(got.vector)) if got.vector else None) == live.vector
            assert dict(got.entities) == live.entities and frozenset(got.relations) == live.relations

    @invariant()
    def audit_ok(self) -> None:
        report = self.system.log.audit()
        assert report.ok and report.checked == self.model.seq, report

    @invariant()
    def every_store_equals_the_fold_at_its_checkpoint(self) -> None:
        head = self.model.seq
        for kind in self.system.kinds:
            store = self.system.store(kind)
            drift = verify_store(self.system.log, store)
            assert drift.ok, (kind, drift)
            assert 0 <= drift.checkpoint <= head
            if self.projected:
                assert drift.checkpoint == head, (kind, drift.checkpoint, head)
            if isinstance(store, VectorStore) and drift.checkpoint == head:
                assert store.count() == sum(1 for live in self.model.live.values() if live.vector)

    @initialize()
    def start_empty(self) -> None:
        assert self.head() == 0


# ---------------------------------------------------------------- the tests


def embedded_config(data: Path, example: int) -> dict[str, Any]:
    return {
        "data_dir": str(data),
        "sqlite_synchronous": "NORMAL",
        "vector": {"backend": "edge"},
        "graph": {"backend": "ladybug"},
        "projector": {"backoff_initial": 0.001, "backoff_max": 0.01, "max_attempts": 2},
        "facade": {"consistency": "async", "embedder": "none"},
    }


def run_machine(target: Target, *, examples: int, steps: int, shrink: bool = True) -> None:
    MemsyncMachine.target = target
    phases = list(Phase) if shrink else [p for p in Phase if p not in (Phase.shrink, Phase.explain)]
    run_state_machine_as_test(
        MemsyncMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            phases=phases,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
            print_blob=True,
        ),
    )


@pytest.mark.timeout(900)  # a failure shrinks for up to 5 minutes more
def test_model_based_embedded() -> None:
    run_machine(Target(embedded_config), examples=30, steps=35)


@pytest.mark.neo4j
@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_model_based_neo4j_and_postgres(neo4j_server: Any, pg_schema: Callable[[str], str]) -> None:
    def config(data: Path, example: int) -> dict[str, Any]:
        out = embedded_config(data, example)
        # qdrant-client local mode (the alias swap of a server); the dimension is configured (without it a
        # placeholder collection holds the checkpoint until the first vector: see the test below)
        out["vector"] = {"backend": "qdrant", "dimension": DIM}
        out["graph"] = {"backend": "neo4j", "uri": neo4j_server.uri}
        out["log_url"] = pg_schema(f"model{example}")
        return out

    # no shrinking: each step costs server round trips, and the unshrunk failing sequence is printed anyway
    run_machine(Target(config, before_example=neo4j_server.clear), examples=8, steps=25, shrink=False)


def test_qdrant_checkpoint_of_vectorless_events_survives_a_restart(tmp_path: Path) -> None:
    config = MemsyncConfig.model_validate(
        {"data_dir": str(tmp_path), "vector": {"backend": "qdrant"}, "graph": {"backend": "none"}}
    )
    memory = Memory(config, embedder=None)
    memory.add("no vector yet", user_id="alice")
    assert memory.system.store("vector").checkpoint() == 1  # inline projection reached the head
    memory.close()
    memory = Memory(config, embedder=None)
    try:
        assert memory.system.status()["projections"]["vector"]["lag"] == 0
    finally:
        memory.close()


def test_metadata_floats_round_trip_through_the_edge_store(tmp_path: Path) -> None:
    config = MemsyncConfig.model_validate({"data_dir": str(tmp_path), "graph": {"backend": "none"}})
    memory = Memory(config, embedder=None)
    try:
        memory.add("a float", user_id="u", memory_id="f", vector=[1.0, 0.0, 0.0], metadata={"x": -0.10101787042252375})
        drift = memory.system.verify()["vector"]
        assert drift.ok, drift
        hits = memory.search([1.0, 0.0, 0.0], user_id="u", filters={"x": -0.10101787042252375})["results"]
        assert [h["id"] for h in hits] == ["f"]
    finally:
        memory.close()


def test_metadata_integers_beyond_64_bits_are_refused_or_kept(tmp_path: Path) -> None:
    config = MemsyncConfig.model_validate({"data_dir": str(tmp_path), "graph": {"backend": "none"}})
    memory = Memory(config, embedder=None)
    try:
        try:
            memory.add("big", user_id="u", vector=[1.0, 0.0, 0.0], metadata={"n": -(2**63) - 1})
        except InputError:
            return  # refused at the edge: fine
        drift = memory.system.verify()["vector"]
        assert drift.ok, drift
    finally:
        memory.close()
