"""Crash loop: SIGKILL the appending process and the projector at random points; nothing is lost or drifts.

Run the long version by hand (it prints a JSON report and exits 1 on the first violation)::

    .venv/bin/python -m tests.crashloop --points 200 --events 20000

``tests/test_crashloop.py`` runs a short one in the suite.

Two kinds of child process work on one data directory (SQLite log, Qdrant Edge, LadybugDB):

* the **appender** (``python -m tests.crashloop appender …``) appends a long seeded
  :func:`tests.streams.random_stream` in random chunks. Every event has a deterministic
  ``event_id`` (UUIDv5 of the seed and its index), so a restarted appender can simply
  resume after the last *acknowledged* event: an event that was committed but not
  acknowledged before the kill is appended again, and the log must return the original
  record instead of recording it twice. An acknowledgement is a line ``index seq event_id``
  written to the ack file and fsynced **after** ``append`` returned — the promise being
  tested is "a call that returned is durable";
* the **projector**: ``memsync project --follow`` with a random batch size, or now and then
  ``memsync rebuild`` (fresh build and swap) or ``memsync rebuild --in-place``.

At each point the harness kills the appender, the projector or both with SIGKILL, then checks:

* the log: ``audit`` passes; it holds exactly the first ``head`` events of the stream, in
  order, each once, with the appender's event_ids and payloads; every acknowledged event is
  there at its acknowledged seq (nothing acknowledged was lost, nothing was duplicated);
* the stores, once the projector is dead, after a crash mid-batch, mid-checkpoint or
  mid-rebuild (a killed fresh rebuild must leave the old store intact): the graph store
  equals ``fold(log)`` at its checkpoint exactly (batch and checkpoint commit together); the
  vector store may be ahead of its checkpoint by the batches in flight, and each memory it
  differs on must hold its folded state at some seq within them. After a killed
  ``rebuild --in-place``, whose wipe gives up that promise by design, only the catch-up is checked;
* now and then, and at the end: after catching up, ``verify`` is clean at the head.

A restarted appender first re-appends its last acknowledged chunk and checks the log
returns the acknowledged seqs (idempotent retry).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgspec

from memsync.config import MemsyncConfig
from memsync.errors import MemsyncError
from memsync.events import Event, payload_bytes
from memsync.fold import fold
from memsync.projector import ProjectionRunner
from memsync.stores import VectorStore, vector_payload
from memsync.system import MemSync, open_log
from memsync.verify import Drift, verify_store
from tests.streams import random_stream

ROOT = Path(__file__).resolve().parent.parent
MEMSYNC = str(Path(sys.executable).with_name("memsync"))
NAMESPACE = uuid.UUID("0b5f3c1e-3d57-4c1a-9a0e-7d1f6a2b9c44")
EXIT_VIOLATION = 3
MEAN_POINT_SECONDS = 0.9  # the mean pause before a kill point


class Violation(AssertionError):
    """A guarantee was broken; the message says which and where."""


def event_id(seed: int, index: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{seed}:{index}"))


def stream(n: int, seed: int) -> list[Event]:
    """The appender's events: ``random_stream`` with deterministic event_ids."""
    return [msgspec.structs.replace(e, event_id=event_id(seed, i)) for i, e in enumerate(random_stream(n, seed=seed))]


def config(data: Path) -> MemsyncConfig:
    return MemsyncConfig(data_dir=data)  # the defaults: SQLite with synchronous=FULL, Qdrant Edge, LadybugDB


# ---------------------------------------------------------------- acknowledgements


def read_acks(path: Path, *, repair: bool = False) -> list[tuple[int, int, str]]:
    """``(index, seq, event_id)`` per acknowledged event; a torn last line (killed mid-write) is not an ack."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if repair and len(complete) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
            os.fsync(f.fileno())
    acks = []
    for line in complete.decode().splitlines():
        index, seq, eid = line.split()
        acks.append((int(index), int(seq), eid))
    return acks


def appender(data: Path, ack_path: Path, n: int, seed: int, rate: float) -> int:
    """Append the stream from the last acknowledged event on; acknowledge each call after it returns.

    ``rate`` (events per second, 0: as fast as it can) spreads the stream over the whole run, so
    kills keep landing on a live appender; it appends in bursts, so some land mid-call.
    """
    events = stream(n, seed)
    acks = read_acks(ack_path, repair=True)
    log = open_log(config(data))
    fd = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    if acks:  # an idempotent retry of the last acknowledged call: the same seqs, nothing new
        tail = acks[-min(len(acks), 5) :]
        head_before = log.head().seq
        records = log.append([events[index] for index, _, _ in tail])
        if [r.seq for r in records] != [seq for _, seq, _ in tail] or log.head().seq != head_before:
            print(f"re-append of acknowledged events returned {[r.seq for r in records]}, acked {tail}", flush=True)
            return EXIT_VIOLATION
    position = acks[-1][0] + 1 if acks else 0
    start, started = position, time.monotonic()
    while position < n:
        ahead = (position - start) / rate - (time.monotonic() - started) if rate else 0
        if ahead > 0:
            time.sleep(ahead)
        size = random.Random(f"{seed}:{position}").choice([1, 1, 2, 3, 5, 8, 20])
        chunk = events[position : position + size]
        records = log.append(chunk)
        if [r.event_id for r in records] != [e.event_id for e in chunk]:
            print(f"append at index {position} returned other events", flush=True)
            return EXIT_VIOLATION
        lines = "".join(f"{position + i} {r.seq} {r.event_id}\n" for i, r in enumerate(records))
        os.write(fd, lines.encode())
        os.fsync(fd)  # the acknowledgement is durable only after the append returned
        position += len(chunk)
    os.close(fd)
    log.close()
    return 0


def unexplained(system: MemSync, store: VectorStore, drift: Drift, window: int) -> set[str]:
    """Drifted memories whose stored point is not their folded state at any seq in ``checkpoint .. +window``.

    A killed batch leaves each memory it had written at its state after that batch, the others at
    their state at the checkpoint; so every drifted memory must match some later state.
    """
    drifted = set(drift.missing + drift.extra + drift.stale)
    points = {p.memory_id: p for p in store.points() if p.memory_id in drifted}
    state = fold(system.log.read(limit=drift.checkpoint))
    explained: set[str] = set()
    for record in system.log.read(after=drift.checkpoint, limit=window):
        for memory_id in state.apply(record):
            if memory_id not in drifted or memory_id in explained:
                continue
            memory, point = state.memories.get(memory_id), points.get(memory_id)
            if memory is None or memory.vector is None:
                matches = point is None
            else:
                matches = (
                    point is not None
                    and point.payload == vector_payload(memory)
                    and store.same_vector(point.vector, memory.vector)
                )
            if matches:
                explained.add(memory_id)
    return drifted - explained


# ---------------------------------------------------------------- the harness


@dataclass
class Report:
    points: int
    events: int
    seed: int
    kills: dict[str, int] = field(default_factory=lambda: {"appender": 0, "projector": 0})
    projector_modes: dict[str, int] = field(default_factory=dict)
    store_checks: int = 0
    catch_up_checks: int = 0
    log_checks: int = 0
    acknowledged: int = 0
    head: int = 0
    seconds: float = 0.0
    ok: bool = False


class Harness:
    def __init__(
        self,
        workdir: Path,
        events: int,
        seed: int,
        rate: float,
        verbose: bool = False,
        evidence: bool = False,
        in_place: bool = True,
    ) -> None:
        self.data = workdir / "data"
        self.evidence = workdir / "evidence" if evidence else None  # the data as the last kill left it
        self.acks = workdir / "acks.txt"
        self.n = events
        self.seed = seed
        self.rate = rate
        self.in_place = int(in_place)  # weight of `rebuild --in-place` among the projector's modes
        self.rng = random.Random(seed)
        self.verbose = verbose
        self.events = stream(events, seed)
        self.payloads = [payload_bytes(e) for e in self.events]
        self.appender: subprocess.Popen[bytes] | None = None
        self.projector: subprocess.Popen[bytes] | None = None
        self.projector_mode = ""
        self.ahead_bound = 0  # events the live vector store may hold beyond its checkpoint (see check_stores)
        self.appender_done = False
        self.report = Report(points=0, events=events, seed=seed)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "MEMSYNC_DATA_DIR": str(self.data)}
        self.env.pop("MEMSYNC_SQLITE_SYNCHRONOUS", None)  # the default, FULL, is what is promised

    def say(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    # ------------------------------------------------------------ processes

    def start_appender(self) -> None:
        if self.appender_done or (self.appender is not None and self.appender.poll() is None):
            return
        command = [sys.executable, "-m", "tests.crashloop", "appender", str(self.data), str(self.acks)]
        command += [str(self.n), str(self.seed), str(self.rate)]
        self.appender = subprocess.Popen(
            command, env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def start_projector(self) -> None:
        if self.projector is not None and self.projector.poll() is None:
            return
        mode = self.rng.choices(["follow", "rebuild", "rebuild --in-place"], weights=[8, 1, self.in_place])[0]
        self.projector_mode = mode
        self.report.projector_modes[mode] = self.report.projector_modes.get(mode, 0) + 1
        command = [MEMSYNC, "project", "--follow"] if mode == "follow" else [MEMSYNC, *mode.split()]
        batch = self.rng.choice([1, 7, 13, 64, 500])
        if mode == "follow":  # a fresh rebuild writes beside the live store; an in-place one is caught up after
            self.ahead_bound = max(self.ahead_bound, batch)
        env = {**self.env, "MEMSYNC_PROJECTOR__BATCH_SIZE": str(batch)}
        self.projector = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def kill(self, proc: subprocess.Popen[bytes] | None, name: str) -> bool:
        """SIGKILL ``proc`` if it still runs; check it did not fail on its own before."""
        if proc is None:
            return False
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(60)
            self.report.kills[name] += 1
            return True
        self.finished(proc, name)
        return False

    def finished(self, proc: subprocess.Popen[bytes], name: str) -> None:
        out, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise Violation(f"the {name} failed on its own (exit {proc.returncode}):\n{out.decode()}\n{err.decode()}")
        if name == "appender":
            self.appender_done = True

    # ------------------------------------------------------------ checks

    def check_log(self) -> int:
        """Audit, then: the log is exactly a prefix of the stream and holds every acknowledged event once."""
        acks = read_acks(self.acks)
        with open_log(config(self.data)) as log:
            audit = log.audit()
            if not audit.ok:
                raise Violation(f"audit failed at seq {audit.first_bad_seq}: {audit.problem}")
            head = 0
            for row in log.stored_rows():
                index = row.seq - 1
                if index >= self.n or row.event_id != self.events[index].event_id:
                    raise Violation(f"seq {row.seq} holds event {row.event_id}, expected index {index} of the stream")
                if row.payload != self.payloads[index]:
                    raise Violation(f"seq {row.seq} holds other content than the appender sent")
                head = row.seq
        for index, seq, eid in acks:
            if seq != index + 1 or eid != self.events[index].event_id or seq > head:
                raise Violation(f"acknowledged event {index} (seq {seq}, {eid}) is not in the log (head {head})")
        if acks and [a[0] for a in acks] != list(range(len(acks))):
            raise Violation("acknowledgements are not one per event in stream order")
        self.report.log_checks += 1
        self.report.acknowledged = len(acks)
        self.report.head = head
        return head

    def check_stores(self, *, catch_up: bool, at_checkpoint: bool = True, mode: str = "") -> None:
        try:
            self._check_stores(catch_up=catch_up, at_checkpoint=at_checkpoint, mode=mode)
        except MemsyncError as e:  # e.g. a store the kill left unopenable: the projection is stranded
            raise Violation(f"after killing the projector ({mode!r}): {type(e).__name__}: {e}") from e

    def _check_stores(self, *, catch_up: bool, at_checkpoint: bool, mode: str) -> None:
        """With no projector running, each store equals fold(log) at its checkpoint; then (maybe) catch up.

        The graph store commits a batch and its checkpoint in one transaction, so it must equal the fold
        at its checkpoint exactly. The vector store has no transactions: it writes a batch, then its
        checkpoint, so a kill in between leaves it *ahead* of its checkpoint — by at most the batches
        in flight since it was last caught up — and only in the memories those batches touch.
        """
        if self.evidence is not None:
            shutil.rmtree(self.evidence, ignore_errors=True)
            shutil.copytree(self.data, self.evidence)
        with MemSync(config(self.data)) as system:
            for kind in system.kinds:
                store = system.store(kind)
                before = store.checkpoint()
                if at_checkpoint:
                    drift = verify_store(system.log, store)
                    if isinstance(store, VectorStore):
                        bad = unexplained(system, store, drift, self.ahead_bound)
                    else:
                        bad = set() if drift.ok else {"(any)"}
                    if bad:
                        raise Violation(
                            f"{kind} store drifted at its checkpoint {drift.checkpoint} "
                            f"(beyond the {self.ahead_bound} events a killed batch may have written): {drift}"
                        )
                    self.report.store_checks += 1
                if catch_up:
                    target = system.log.head().seq
                    ProjectionRunner(system.log, store, system.config.projector).catch_up(until=target)
                    drift = verify_store(system.log, store)
                    if not drift.ok or drift.checkpoint != target:
                        raise Violation(
                            f"{kind} store after catching up from {before} to {target} (the killed projector "
                            f"ran {mode!r}): {drift}"
                        )
                    self.report.catch_up_checks += 1
            if catch_up:
                self.ahead_bound = 0

    # ------------------------------------------------------------ the loop

    def run(self, points: int) -> Report:
        started = time.monotonic()
        self.start_appender()
        self.start_projector()
        for point in range(points):
            time.sleep(self.rng.uniform(0.2, 1.6))
            victims = self.rng.choice([["appender"], ["projector"], ["appender", "projector"]])
            if self.appender_done:
                victims = ["projector"]
            mode = self.projector_mode
            if "appender" in victims:
                self.kill(self.appender, "appender")
            if "projector" in victims:
                self.kill(self.projector, "projector")
            head = self.check_log()
            if "projector" in victims:
                in_place = mode == "rebuild --in-place"
                catch_up = in_place or self.rng.random() < 0.25
                self.check_stores(catch_up=catch_up, at_checkpoint=not in_place, mode=mode)
            self.say(f"point {point + 1}/{points}: killed {'+'.join(victims)} ({mode}), head {head}")
            self.report.points = point + 1
            self.start_appender()
            self.start_projector()
        self.finish()
        self.report.seconds = round(time.monotonic() - started, 1)
        self.report.ok = True
        return self.report

    def finish(self) -> None:
        """Let the appender complete, stop the projector, catch up, and check everything once more."""
        while not self.appender_done:
            self.start_appender()
            assert self.appender is not None
            self.appender.wait(600)
            self.finished(self.appender, "appender")
        self.kill(self.projector, "projector")
        head = self.check_log()
        if head != self.n or self.report.acknowledged != self.n:
            raise Violation(f"the appender finished but the log has {head} of {self.n} events")
        done = subprocess.run([MEMSYNC, "project", "--json"], env=self.env, capture_output=True, timeout=600)
        if done.returncode != 0:
            raise Violation(f"memsync project failed: {done.stderr.decode()}")
        verify = subprocess.run([MEMSYNC, "verify", "--json"], env=self.env, capture_output=True, timeout=600)
        report = json.loads(verify.stdout)
        if verify.returncode != 0 or not report["ok"]:
            raise Violation(f"memsync verify after the final catch-up: {report}")
        status = json.loads(subprocess.run([MEMSYNC, "status", "--json"], env=self.env, capture_output=True).stdout)
        lags = {k: v["lag"] for k, v in status["projections"].items()}
        if any(lags.values()) or status["head"]["seq"] != self.n:
            raise Violation(f"status after the final catch-up: {status}")
        audit = subprocess.run([MEMSYNC, "audit"], env=self.env, capture_output=True)
        if audit.returncode != 0:
            raise Violation(f"memsync audit: {audit.stdout.decode()}")

    def close(self) -> None:
        for proc in (self.appender, self.projector):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)


def run(
    points: int,
    events: int,
    *,
    seed: int = 1,
    workdir: Path | None = None,
    verbose: bool = False,
    evidence: bool = False,
    in_place: bool = True,
) -> Report:
    """Run the crash loop; raises :class:`Violation` on the first broken guarantee."""
    rate = events / (points * MEAN_POINT_SECONDS)  # the appender lasts about as long as the kill points
    with tempfile.TemporaryDirectory(prefix="memsync-crashloop-") as tmp:
        harness = Harness(workdir or Path(tmp), events, seed, rate, verbose, evidence, in_place)
        try:
            return harness.run(points)
        finally:
            harness.close()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "appender":
        data, acks, n, seed, rate = args[1:6]
        return appender(Path(data), Path(acks), int(n), int(seed), float(rate))
    parser = argparse.ArgumentParser(prog="python -m tests.crashloop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=200, help="number of kill points")
    parser.add_argument("--events", type=int, default=20000, help="length of the random stream")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="keep the data here (default: a temporary directory)")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument(
        "--evidence", action="store_true", help="keep a copy of the data as each kill left it in WORKDIR/evidence"
    )
    options = parser.parse_args(args)
    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = run(
            options.points,
            options.events,
            seed=options.seed,
            workdir=options.workdir,
            verbose=not options.quiet,
            evidence=options.evidence,
        )
    except Violation as e:
        print(f"VIOLATION: {e}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
