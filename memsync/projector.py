"""The projector: one independent runner per projection.

A :class:`ProjectionRunner` reads the log after its store's checkpoint, folds
each batch into its net effect per memory (:func:`plan_batch`) and hands the
store the resulting ops with the batch's last seq as the new checkpoint.

Failures: a :class:`~memsync.errors.StoreUnavailable` store is retried with
exponential backoff and jitter (forever when following, ``max_attempts`` times
when catching up once). A batch the store *rejects* is retried, then split into
single events; a single event that still fails after ``max_attempts`` is
**parked** in the log (with its error), skipped, and counted, so one poison
event never blocks the stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from typing import Any

import msgspec
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from memsync.config import ProjectorConfig
from memsync.errors import MemsyncError, StoreError, StoreUnavailable
from memsync.events import MemoriesDeleted, MemoriesReset, MemoryDeleted, MemoryUpdated, RecordedEvent
from memsync.fold import MemoryState, State, fold, scope_of
from memsync.hooks import Hooks
from memsync.log import EventLog
from memsync.stores import Delete, DeleteScope, Op, Projection, Reset, Upsert

logger = logging.getLogger("memsync.projector")

Progress = Callable[[int], None]  # called with the number of events just applied


def plan_batch(log: EventLog, records: Sequence[RecordedEvent], *, unsure: Container[str] = ()) -> list[Op]:
    """The net effect of ``records`` (consecutive, in seq order) as store ops.

    Memory events are coalesced per memory into one Upsert or Delete of the
    memory's state after the run; a scoped delete-all or a reset ends a run
    and becomes its own op, so ops stay in log order where order matters. The
    state a memory had before the batch is folded from its own stream.

    An Upsert or a Delete carries that state as ``before`` when the batch has
    no bulk event and the memory is not in ``unsure`` (memories the store may
    not hold as the log says, e.g. those with a parked event).
    """
    ops: list[Op] = []
    state = State()
    known: set[str] = set()  # ids whose entry in `state` (present or absent) is authoritative
    touched: dict[str, None] = {}
    bases: dict[str, MemoryState] | None = {}  # the states before the batch (None: a bulk event, not used)
    for start, run in _runs(records):
        if isinstance(run, RecordedEvent):
            _flush(state, touched, ops, None)
            bases = None
            event = run.event
            state.apply(run)
            ops.append(Reset() if isinstance(event, MemoriesReset) else DeleteScope(scope_of(event)))  # type: ignore[arg-type]
            continue
        loaded = _load_bases(log, run, start, state, known)
        if bases is not None:
            bases.update((m, s) for m, s in loaded.items() if m not in unsure)
        for record in run:
            for memory_id in state.apply(record):
                touched[memory_id] = None
                known.add(memory_id)
    _flush(state, touched, ops, bases)
    return ops


def _runs(records: Sequence[RecordedEvent]) -> Iterator[tuple[int, Any]]:
    """Split into runs of memory events and single bulk events."""
    run: list[RecordedEvent] = []
    for record in records:
        if isinstance(record.event, MemoriesDeleted | MemoriesReset):
            if run:
                yield run[0].seq, run
                run = []
            yield record.seq, record
        else:
            run.append(record)
    if run:
        yield run[0].seq, run


def _load_bases(
    log: EventLog, run: list[RecordedEvent], start: int, state: State, known: set[str]
) -> dict[str, MemoryState]:
    """Fold the pre-run state of memories the run updates or deletes before (re-)adding them; return it."""
    needed: dict[str, None] = {}
    for record in run:
        memory_id = record.memory_id
        if memory_id is None or memory_id in known:
            continue
        known.add(memory_id)  # from here on, `state` is right about it
        if isinstance(record.event, MemoryUpdated | MemoryDeleted):  # an add has nothing before it
            needed[memory_id] = None
    if not needed:
        return {}
    base = fold(log.replay_streams(list(needed), until_seq=start - 1))
    found = {memory_id: memory for memory_id in needed if (memory := base.memories.get(memory_id)) is not None}
    for memory in found.values():
        state.put(memory)
    return found


def _flush(state: State, touched: dict[str, None], ops: list[Op], bases: dict[str, MemoryState] | None) -> None:
    for memory_id in touched:
        memory = state.memories.get(memory_id)
        before = bases.get(memory_id) if bases is not None else None
        ops.append(Upsert(memory, before) if memory is not None else Delete(memory_id, before))
    touched.clear()


def states_at(log: EventLog, memory_ids: Sequence[str], seq: int) -> dict[str, MemoryState | None]:
    """Each memory's state as of ``seq`` (None when not live)."""
    base = fold(log.replay_streams(list(memory_ids), until_seq=seq))
    return {m: base.memories.get(m) for m in memory_ids}


class BatchRejected(MemsyncError):
    """A batch kept failing; carries the last store error."""


class ProjectionRunner:
    """Keeps one store equal to ``fold(log)`` up to its checkpoint."""

    def __init__(
        self,
        log: EventLog,
        store: Projection,
        config: ProjectorConfig | None = None,
        hooks: Hooks | None = None,
        name: str | None = None,
    ) -> None:
        self.log = log
        self.store = store
        self.config = config or ProjectorConfig()
        self.hooks = hooks or Hooks()
        self.name = name or store.kind
        self.applied = 0
        self.parked_count = 0
        self.checkpoint_seen: int | None = None  # last checkpoint read or written by this runner
        self._unsure: set[str] | None = None  # memories with a parked event, read from the log when first needed

    # ------------------------------------------------------------ public

    def catch_up(
        self,
        until: int | None = None,
        *,
        progress: Progress | None = None,
        patient: bool = False,
        keep_going: Callable[[], bool] | None = None,
    ) -> int:
        """Apply every event after the checkpoint up to ``until`` (default: head).

        Returns the number of events applied. Raises StoreUnavailable if the
        store stays unreachable (unless ``patient``, which waits forever).
        ``keep_going`` is asked before each batch (a follower that lost its
        leadership stops at once rather than at the end of a long catch-up).
        """
        done = 0
        checkpoint = self._call(self.store.checkpoint, patient=patient)
        self.checkpoint_seen = checkpoint
        target = until if until is not None else self.log.head().seq
        while checkpoint < target and (keep_going is None or keep_going()):
            limit = min(self.config.batch_size, target - checkpoint)
            records = list(self.log.replay(after=checkpoint, limit=limit))
            if not records:
                break
            self._apply_batch(records, patient=patient)
            checkpoint = self.checkpoint_seen = records[-1].seq
            done += len(records)
            if progress is not None:
                progress(len(records))
        return done

    def follow(
        self,
        stop: threading.Event,
        *,
        on_idle: Callable[[], None] | None = None,
        keep_going: Callable[[], bool] | None = None,
    ) -> None:
        """Catch up, then apply new events as they are appended, until ``stop`` is set
        (or ``keep_going`` returns False, e.g. when leadership is lost)."""
        while not stop.is_set() and (keep_going is None or keep_going()):
            try:
                self.catch_up(patient=False, keep_going=keep_going)
            except StoreUnavailable as e:
                logger.warning(
                    "%s store unavailable, will retry: %s",
                    self.name,
                    e,
                    extra={"projection": self.name, "error_class": type(e).__name__},
                )
                stop.wait(min(self.config.backoff_max, 1.0))
                continue
            if on_idle is not None:
                on_idle()
            checkpoint = self.checkpoint_seen  # catch_up read it and moved it with each batch: no second read
            if checkpoint is not None:
                self.log.wait(checkpoint, timeout=min(0.5, self.config.poll_interval * 100))

    # ------------------------------------------------------------ batches

    def _apply_batch(self, records: list[RecordedEvent], *, patient: bool) -> None:
        try:
            self._apply_records(records, patient=patient)
        except BatchRejected:
            if len(records) == 1:
                self._park(records[0], patient=patient)
                return
            for record in records:  # find the poison event, keep the rest
                try:
                    self._apply_records([record], patient=patient)
                except BatchRejected:
                    self._park(record, patient=patient)

    def _apply_records(self, records: list[RecordedEvent], *, patient: bool) -> None:
        ops = plan_batch(self.log, records, unsure=self._unsure_memories())
        first, last = records[0].seq, records[-1].seq
        self.hooks.emit("before_batch", projection=self.name, first_seq=first, last_seq=last, ops=ops)
        started = time.perf_counter()
        self._call(lambda: self.store.apply(ops, last), patient=patient, rejected=True)
        self.applied += len(records)
        logger.debug(
            "%s: applied seq %d..%d (%d ops)",
            self.name,
            first,
            last,
            len(ops),
            extra={"projection": self.name, "first_seq": first, "last_seq": last},
        )
        self.hooks.emit(
            "after_batch",
            projection=self.name,
            first_seq=first,
            last_seq=last,
            ops=ops,
            seconds=time.perf_counter() - started,
        )

    def _unsure_memories(self) -> set[str]:
        """Memories with a parked event: the store may not hold them as the log says (see plan_batch).

        Read from the log once; a memory stays here for the runner's life, even
        after its event is skipped (the store still lacks that event's effect).
        """
        if self._unsure is None:
            unsure = set()
            for parked in self.log.parked(self.name):
                record = next(iter(self.log.replay(after=parked.seq - 1, limit=1)), None)
                if record is not None and record.memory_id is not None:
                    unsure.add(record.memory_id)
            self._unsure = unsure
        return self._unsure

    def _park(self, record: RecordedEvent, *, patient: bool) -> None:
        error = getattr(self, "_last_error", None)
        message = f"{type(error).__name__}: {error}" if error is not None else "rejected"
        if record.memory_id is not None:
            self._unsure_memories().add(record.memory_id)
        self.log.park(self.name, record.seq, message, self.config.max_attempts)
        self._call(lambda: self.store.apply([], record.seq), patient=patient)
        self.parked_count += 1
        logger.error(
            "%s: parked seq %d (%s)",
            self.name,
            record.seq,
            message,
            extra={
                "projection": self.name,
                "seq": record.seq,
                "memory_id": record.memory_id,
                "error_class": type(error).__name__ if error is not None else None,
            },
        )
        self.hooks.emit("parked", projection=self.name, seq=record.seq, error=message)

    def _call(self, fn: Callable[[], Any], *, patient: bool, rejected: bool = False) -> Any:
        """Run a store call with backoff and jitter.

        An unreachable store is retried (forever when ``patient``) and then
        re-raised: an outage is never the event's fault. With ``rejected``, any
        other failure is retried ``max_attempts`` times and becomes BatchRejected.
        """
        cfg = self.config

        def stop(state: RetryCallState) -> bool:
            error = state.outcome.exception() if state.outcome is not None else None
            if patient and isinstance(error, StoreUnavailable):
                return False
            return state.attempt_number >= cfg.max_attempts

        def guarded() -> Any:
            try:
                return fn()
            except MemsyncError:
                raise
            except Exception as e:  # a store adapter let a raw error through: treat it as a rejection
                raise StoreError(f"{type(e).__name__}: {e}") from e

        retrying = Retrying(
            retry=retry_if_exception_type(StoreError if rejected else StoreUnavailable),
            stop=stop,
            wait=wait_exponential_jitter(
                multiplier=cfg.backoff_initial, max=cfg.backoff_max, jitter=cfg.backoff_initial
            ),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            return retrying(guarded)
        except StoreUnavailable:
            raise
        except StoreError as e:
            if not rejected:
                raise
            self._last_error: StoreError | None = e
            raise BatchRejected(str(e)) from e

    def _before_sleep(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "%s: store call failed (%s), retry %d in %.3fs",
            self.name,
            error,
            state.attempt_number,
            delay,
            extra={
                "projection": self.name,
                "attempt": state.attempt_number,
                "delay": round(delay, 4),
                "error_class": type(error).__name__,
            },
        )
        self.hooks.emit("retry", projection=self.name, attempt=state.attempt_number, error=error, delay=delay)

    # ------------------------------------------------------------ parked

    def retry_parked(self, seq: int) -> None:
        """Apply a parked event's effect as of the store's checkpoint, then unpark it.

        The memory is brought to its state at the checkpoint (later events were
        already applied around it), which is exactly what the event would have
        left had it not been parked.
        """
        record = next(iter(self.log.read(after=seq - 1, limit=1)), None)
        if record is None or record.seq != seq:
            raise MemsyncError(f"seq {seq} is not in the log")
        checkpoint = self.store.checkpoint()
        if record.memory_id is None:
            raise MemsyncError(
                f"seq {seq} is a {record.type}; retrying a bulk event needs `memsync rebuild {self.name}`"
            )
        states = states_at(self.log, [record.memory_id], checkpoint)
        memory = states[record.memory_id]
        op: Op = Upsert(memory) if memory is not None else Delete(record.memory_id)
        self._call(lambda: self.store.apply([op], checkpoint), patient=False)
        self.log.unpark(self.name, seq)

    def skip_parked(self, seq: int) -> None:
        self.log.unpark(self.name, seq)


def strip_vectors(records: Iterable[RecordedEvent]) -> Iterator[RecordedEvent]:
    """The same records without vectors (a graph never needs them)."""
    for record in records:
        if record.vector_f32 is None:
            yield record
        else:
            event = msgspec.structs.replace(record.event, vector=None)
            yield msgspec.structs.replace(record, event=event, vector_f32=None)


def rebuild(
    log: EventLog,
    store: Projection,
    *,
    to_seq: int | None = None,
    in_place: bool = False,
    config: ProjectorConfig | None = None,
    progress: Progress | None = None,
) -> int:
    """Rebuild ``store`` by replaying the log up to ``to_seq`` (default: head).

    Default: build a fresh store readers do not see and swap it in when
    complete (a crash leaves the old store intact). ``in_place`` wipes the
    store and replays into it. Returns the checkpoint reached.

    The store is empty, so only the live memories' final states are written,
    each once, through its bulk load: they are folded from their own streams,
    a chunk of memories at a time, so memory use does not grow with the log.
    """
    target = to_seq if to_seq is not None else log.head().seq
    if in_place:
        store.wipe()
        fresh = store
    else:
        fresh = store.begin_rebuild()
    try:
        chunk = max((config or ProjectorConfig()).batch_size, 5000)
        states = final_states(
            log, target, vectors=store.kind != "graph", graph=store.kind != "vector", chunk=chunk, progress=progress
        )
        fresh.bulk_load(states, target)
        # and the checkpoint as every batch records it: a bulk load that wrote nothing may keep it only in
        # memory (the qdrant-client store before it has a collection)
        fresh.apply([], target)
    except BaseException:
        if fresh is not store:
            store.abort_rebuild(fresh)
        raise
    if fresh is not store:
        store.commit_rebuild(fresh)
    return target


def final_states(
    log: EventLog,
    seq: int,
    *,
    vectors: bool = True,
    graph: bool = True,
    chunk: int = 5000,
    progress: Progress | None = None,
) -> Iterator[MemoryState]:
    """Every memory live at ``seq``, in its state then, folded from its stream ``chunk`` memories at a time.

    ``vectors=False`` leaves the vectors out, ``graph=False`` the entities and relations.

    ``progress`` advances in events, in proportion to the memories done, up to ``seq``.
    """
    ids = log.memory_ids(seq)
    total = len(ids)
    # one NUL-joined string per chunk (no id holds a NUL), taken as the chunks are folded: a str object
    # per id costs ~3x its text (at 1M events 409k ids: 48 MB as a list, 15 MB so) for the whole load
    pages = ["\0".join(ids[start : start + chunk]) for start in range(0, total, chunk)][::-1]
    del ids
    folded = reported = 0
    while pages:
        page = pages.pop().split("\0")
        records = log.replay_streams(page, until_seq=seq, vectors=vectors)
        yield from fold(records, State(graph=graph))
        folded += len(page)
        if progress is not None:
            done = seq * folded // total
            progress(done - reported)
            reported = done
    if progress is not None and reported < seq:
        progress(seq - reported)
