"""Random but valid event streams (seeded), shared by projector, reliability and benchmark code."""

from __future__ import annotations

import random
from collections.abc import Iterator

from memsync.events import (
    Entity,
    Event,
    MemoriesDeleted,
    MemoriesReset,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    Relation,
)

USERS = ("alice", "bob", "carol")
AGENTS = ("planner", "coder")
RUNS = ("r1", "r2")
NAMES = ("Alice", "bob", "  Green  Tea ", "coffee", "Lisbon", "ACME", "peanuts", "chess", "Paris", "x")
TYPES = (None, "person", "place", "thing")
RELATIONS = ("likes", "works at", "lives in", "allergic to")


def random_stream(
    n: int,
    *,
    seed: int = 0,
    dim: int = 4,
    vector_rate: float = 0.85,
    bulk_rate: float = 0.02,
    reset_rate: float = 0.003,
) -> Iterator[Event]:
    """``n`` events that the log accepts in order: adds, updates, deletes, delete-alls, resets."""
    rng = random.Random(seed)
    live: dict[str, tuple[str | None, str | None, str | None]] = {}
    counter = 0

    def vec() -> list[float]:
        return [rng.uniform(-1, 1) for _ in range(dim)]

    def ents() -> list[Entity]:
        return [Entity(name=rng.choice(NAMES), type=rng.choice(TYPES)) for _ in range(rng.randint(0, 3))]

    def rels() -> list[Relation]:
        return [
            Relation(source=rng.choice(NAMES), relation=rng.choice(RELATIONS), target=rng.choice(NAMES))
            for _ in range(rng.randint(0, 2))
        ]

    for _ in range(n):
        r = rng.random()
        if r < reset_rate and live:
            live.clear()
            yield MemoriesReset(actor="test")
        elif r < reset_rate + bulk_rate and live:
            scope = rng.choice(
                [
                    {"user_id": rng.choice(USERS)},
                    {"agent_id": rng.choice(AGENTS)},
                    {"user_id": rng.choice(USERS), "run_id": rng.choice(RUNS)},
                ]
            )
            for memory_id, (u, a, run) in list(live.items()):
                have = {"user_id": u, "agent_id": a, "run_id": run}
                if all(have[k] == v for k, v in scope.items()):
                    del live[memory_id]
            yield MemoriesDeleted(**scope)
        elif r < 0.5 or not live:
            counter += 1
            memory_id = f"m{counter}" if rng.random() < 0.8 else f"{rng.getrandbits(128):032x}"[:8] + f"-{counter}"
            user = rng.choice((*USERS, None))
            agent = rng.choice((*AGENTS, None)) if user else rng.choice(AGENTS)
            run = rng.choice((*RUNS, None))
            live[memory_id] = (user, agent, run)
            yield MemoryAdded(
                memory_id=memory_id,
                text=f"memory {counter} about {rng.choice(NAMES).strip()}",
                user_id=user,
                agent_id=agent,
                run_id=run,
                vector=vec() if rng.random() < vector_rate else None,
                metadata={"n": counter, "tag": rng.choice(["a", "b"])} if rng.random() < 0.5 else None,
                entities=ents() or None,
                relations=rels() or None,
            )
        elif r < 0.85:
            memory_id = rng.choice(list(live))
            fields = rng.sample(["text", "vector", "metadata", "entities", "relations"], rng.randint(1, 3))
            yield MemoryUpdated(
                memory_id=memory_id,
                text=f"updated {rng.random():.4f}" if "text" in fields else None,
                vector=vec() if "vector" in fields else None,
                metadata={"u": rng.randint(0, 9)} if "metadata" in fields else None,
                entities=ents() if "entities" in fields else None,
                relations=rels() if "relations" in fields else None,
            )
        else:
            memory_id = rng.choice(list(live))
            del live[memory_id]
            yield MemoryDeleted(memory_id=memory_id)
