"""The ``memsync`` command: a thin click layer over the library.

The group builds a :class:`memsync.system.MemSync` into ``ctx.obj``; each
command parses, calls the library and prints. Exit codes: 0 ok, 1 drift or
tamper found, 2 usage or input error, 3 a store or the log failed at run time.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from memsync.config import load_config
from memsync.errors import (
    CommandRefused,
    ConfigError,
    InputError,
    MemsyncError,
)
from memsync.events import (
    EVENT_TYPES,
    Entity,
    Event,
    MemoriesDeleted,
    MemoriesReset,
    MemoryDeleted,
    Relation,
    decode_event,
    encode_json,
    parse_time,
    recorded_from_dict,
    validate,
)
from memsync.facade import Memory
from memsync.history import describe_changes, memory_history
from memsync.log import LogQuery
from memsync.logs import configure_logging
from memsync.system import MemSync, ProgressFactory

EXIT_DRIFT = 1
EXIT_INPUT = 2
EXIT_RUNTIME = 3


class CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]


def fail(error: MemsyncError) -> NoReturn:
    if isinstance(error, InputError | CommandRefused | ConfigError):
        raise CliError(str(error), EXIT_INPUT) from error
    raise CliError(str(error), EXIT_RUNTIME) from error


@contextmanager
def library_errors() -> Iterator[None]:
    try:
        yield
    except MemsyncError as e:
        fail(e)


def emit(data: Any) -> None:
    sys.stdout.buffer.write(encode_json(data) + b"\n")
    sys.stdout.flush()


def app(ctx: click.Context) -> MemSync:
    obj = ctx.find_object(MemSync)
    assert obj is not None
    return obj


# ---------------------------------------------------------------- group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="TOML config file")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="embedded data directory")
@click.option("--log-url", help="sqlite:///path or postgresql://...")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", help="diagnostics on stderr")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning")
@click.pass_context
def main(
    ctx: click.Context,
    config_file: Path | None,
    data_dir: Path | None,
    log_url: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """memsync: one event log, two stores that never drift apart."""
    with library_errors():
        config = load_config(
            config_file,
            env=os.environ,
            overrides={"data_dir": str(data_dir) if data_dir else None, "log_url": log_url},
        )
    configure_logging(log_format, log_level, secrets=config.secrets())
    ctx.obj = MemSync(config)
    ctx.call_on_close(ctx.obj.close)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="machine-readable output")(fn)


# ---------------------------------------------------------------- writes


def _append(ctx: click.Context, events: list[Event], as_json: bool, lines: list[int] | None = None) -> None:
    with library_errors():
        try:
            records = app(ctx).log.append(events)
        except (InputError, CommandRefused) as e:
            if lines is not None and e.index is not None:
                raise CliError(f"line {lines[e.index]}: {e.detail}") from e
            raise
    if as_json:
        emit({"seqs": [r.seq for r in records], "records": [r.to_dict() for r in records]})
    elif records:
        first, last = records[0].seq, records[-1].seq
        click.echo(f"recorded {len(records)} event(s): seq {first}" + (f"..{last}" if last != first else ""))


@main.command()
@click.argument("source", type=click.File("rb"), default="-")
@json_option
@click.pass_context
def append(ctx: click.Context, source: Any, as_json: bool) -> None:
    """Append JSONL events from FILE (or stdin) atomically: all or none."""
    events: list[Event] = []
    lines: list[int] = []
    with library_errors():
        for number, raw in enumerate(source, start=1):
            if raw.strip():
                events.append(decode_event(raw, line=number))
                lines.append(number)
    if not events:
        raise CliError("no events in input")
    _append(ctx, events, as_json, lines)


def _json_arg(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise CliError(f"--{name}: not valid JSON ({e})") from None


def _entities(values: tuple[str, ...]) -> list[Entity] | None:
    if not values:
        return None
    out = []
    for value in values:
        name, _, typ = value.partition(":")
        out.append(Entity(name=name, type=typ or None))
    return out


def _relations(values: tuple[str, ...]) -> list[Relation] | None:
    if not values:
        return None
    out = []
    for value in values:
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 3:
            raise CliError(f"--relation: expected SOURCE,RELATION,TARGET, got {value!r}")
        out.append(Relation(source=parts[0], relation=parts[1], target=parts[2]))
    return out


def _envelope(actor: str | None, reason: str | None) -> dict[str, Any]:
    return {"actor": actor, "reason": reason}


def _checked(event: Event) -> Event:
    with library_errors():
        return validate(event)


actor_option = click.option("--actor", help="who made the change")
reason_option = click.option("--reason", help="why")


@main.command()
@click.argument("text")
@click.option("--id", "memory_id", help="memory id (default: a new UUID)")
@click.option("--user", "user_id")
@click.option("--agent", "agent_id")
@click.option("--run", "run_id")
@click.option("--metadata", help="JSON object")
@click.option("--vector", help="JSON list of floats")
@click.option("--entity", "entities", multiple=True, help="NAME or NAME:TYPE (repeatable)")
@click.option("--relation", "relations", multiple=True, help="SOURCE,RELATION,TARGET (repeatable)")
@actor_option
@reason_option
@json_option
@click.pass_context
def add(
    ctx: click.Context,
    text: str,
    memory_id: str | None,
    user_id: str | None,
    agent_id: str | None,
    run_id: str | None,
    metadata: str | None,
    vector: str | None,
    entities: tuple[str, ...],
    relations: tuple[str, ...],
    actor: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Add one memory (embedded with the configured embedder unless --vector is given)."""
    with library_errors():
        out = facade(ctx).add(
            text,
            memory_id=memory_id,
            user_id=user_id,
            agent_id=agent_id,
            run_id=run_id,
            metadata=_json_object(metadata, "metadata"),
            vector=_json_arg(vector, "vector"),
            entities=_entities(entities),
            relations=_relations(relations),
            actor=actor,
            reason=reason,
        )
    _report_write(out["results"][0], as_json)


def facade(ctx: click.Context) -> Memory:
    """The Memory facade over this command's MemSync (same log, same stores)."""
    return Memory(app(ctx).config, system=app(ctx))


def _json_object(value: str | None, name: str) -> dict[str, Any] | None:
    data = _json_arg(value, name)
    if data is not None and not isinstance(data, dict):
        raise CliError(f"--{name}: expected a JSON object")
    return data


def _report_write(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(result)
    else:
        click.echo(f"{result['event'].lower()} {result['id']}: seq {result['seq']}")


@main.command()
@click.argument("memory_id")
@click.option("--text")
@click.option("--metadata", help="JSON object (replaces the old metadata)")
@click.option("--vector", help="JSON list of floats")
@click.option("--entity", "entities", multiple=True, help="NAME or NAME:TYPE (replaces the entities)")
@click.option("--relation", "relations", multiple=True, help="SOURCE,RELATION,TARGET (replaces the relations)")
@click.option("--expected-version", type=int)
@actor_option
@reason_option
@json_option
@click.pass_context
def update(
    ctx: click.Context,
    memory_id: str,
    text: str | None,
    metadata: str | None,
    vector: str | None,
    entities: tuple[str, ...],
    relations: tuple[str, ...],
    expected_version: int | None,
    actor: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Update one memory (each given field replaces the old value; a new text is re-embedded)."""
    with library_errors():
        out = facade(ctx).update(
            memory_id,
            text,
            metadata=_json_object(metadata, "metadata"),
            vector=_json_arg(vector, "vector"),
            entities=_entities(entities),
            relations=_relations(relations),
            expected_version=expected_version,
            actor=actor,
            reason=reason,
        )
    _report_write(out, as_json)


@main.command()
@click.argument("memory_id")
@click.option("--expected-version", type=int)
@actor_option
@reason_option
@json_option
@click.pass_context
def delete(
    ctx: click.Context,
    memory_id: str,
    expected_version: int | None,
    actor: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Delete one memory."""
    event = MemoryDeleted(memory_id=memory_id, expected_version=expected_version, **_envelope(actor, reason))
    _append(ctx, [_checked(event)], as_json)


@main.command("delete-all")
@click.option("--user", "user_id")
@click.option("--agent", "agent_id")
@click.option("--run", "run_id")
@actor_option
@reason_option
@json_option
@click.pass_context
def delete_all(
    ctx: click.Context,
    user_id: str | None,
    agent_id: str | None,
    run_id: str | None,
    actor: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Delete every live memory matching all given scope fields."""
    event = MemoriesDeleted(user_id=user_id, agent_id=agent_id, run_id=run_id, **_envelope(actor, reason))
    _append(ctx, [_checked(event)], as_json)


@main.command()
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@actor_option
@reason_option
@json_option
@click.pass_context
def reset(ctx: click.Context, yes: bool, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Delete every memory (recorded as one event; history is kept)."""
    if not yes and sys.stdin.isatty():
        click.confirm("Delete every memory?", abort=True)
    _append(ctx, [MemoriesReset(**_envelope(actor, reason))], as_json)


# ---------------------------------------------------------------- reads


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    with library_errors():
        return parse_time(value, field=name)


@main.command("log")
@click.option("--memory", "memory_id", help="the memory's own events and the delete-alls and resets that ended it")
@click.option("--user", "user_id", help="events of the user's memories, delete-alls naming the user, and resets")
@click.option("--agent", "agent_id", help="as --user, for an agent")
@click.option("--run", "run_id", help="as --user, for a run")
@click.option("--type", "event_type", type=click.Choice(EVENT_TYPES))
@click.option("--since", help="RFC 3339 time")
@click.option("--until", help="RFC 3339 time")
@click.option("--after", type=int, default=0, help="only events with seq > N")
@click.option("--limit", type=int)
@click.option("--desc", is_flag=True, help="newest first")
@json_option
@click.pass_context
def log_cmd(
    ctx: click.Context,
    memory_id: str | None,
    user_id: str | None,
    agent_id: str | None,
    run_id: str | None,
    event_type: str | None,
    since: str | None,
    until: str | None,
    after: int,
    limit: int | None,
    desc: bool,
    as_json: bool,
) -> None:
    """Read the history (JSON Lines with --json).

    A scope filter matches the scope an event was recorded with: a delete-all
    for an agent that also removed some of a user's memories is listed under
    --agent, not --user (each memory's --memory history shows it).
    """
    with library_errors():
        query = LogQuery(
            memory_id=memory_id,
            user_id=user_id,
            agent_id=agent_id,
            run_id=run_id,
            type=event_type,
            since=_time(since, "since"),
            until=_time(until, "until"),
        )
        for record in app(ctx).log.query(query, after=after, limit=limit, descending=desc, vectors=as_json):
            if as_json:
                emit(record.to_dict())
            else:
                event = record.event
                who = f" by {event.actor}" if event.actor else ""
                why = f" ({event.reason})" if event.reason else ""
                target = record.memory_id or _scope_text(event)
                version = f" v{record.version}" if record.version is not None else ""
                text = getattr(event, "text", None)
                snippet = f' "{text[:60]}"' if text else ""
                click.echo(
                    f"{record.seq:>8}  {record.recorded_at:%Y-%m-%d %H:%M:%S}  {record.type:<16} "
                    f"{target}{version}{snippet}{who}{why}"
                )


def _scope_text(event: Event) -> str:
    parts = [f"{k}={getattr(event, k)}" for k in ("user_id", "agent_id", "run_id") if getattr(event, k, None)]
    return " ".join(parts) or "*"


@main.command()
@click.argument("memory_id")
@json_option
@click.pass_context
def history(ctx: click.Context, memory_id: str, as_json: bool) -> None:
    """One memory's versions with what changed, who and why."""
    with library_errors():
        entries = memory_history(memory_id, app(ctx).log.read_stream(memory_id))
    if not entries:
        raise CliError(f"no memory {memory_id!r} in the log")
    if as_json:
        emit(entries)
        return
    for entry in entries:
        who = entry["actor"] or "-"
        why = f" — {entry['reason']}" if entry["reason"] else ""
        version = entry["version"] if entry["version"] is not None else "-"
        click.echo(f"v{version}  seq {entry['seq']}  {entry['recorded_at']}  {entry['event']:<6} by {who}{why}")
        for line in describe_changes(entry):
            click.echo(f"      {line}")


@main.command()
@json_option
@click.pass_context
def audit(ctx: click.Context, as_json: bool) -> None:
    """Verify the hash chain; exit 1 with the first bad seq on tamper."""
    with library_errors():
        report = app(ctx).log.audit()
    if as_json:
        emit(
            {
                "ok": report.ok,
                "checked": report.checked,
                "head": {"seq": report.head.seq, "hash": report.head.hash},
                "first_bad_seq": report.first_bad_seq,
                "problem": report.problem,
            }
        )
    elif report.ok:
        click.echo(f"ok: {report.checked} events, head seq {report.head.seq} hash {report.head.hash}")
    else:
        where = f"first bad seq {report.first_bad_seq}" if report.first_bad_seq is not None else "integrity check"
        click.echo(f"TAMPERED: {where}: {report.problem}")
    if not report.ok:
        ctx.exit(EXIT_DRIFT)


@main.command()
@click.argument("target", type=click.File("wb"), default="-")
@click.pass_context
def export(ctx: click.Context, target: Any) -> None:
    """Write the whole log as JSON Lines (every seq, event_id, recorded_at and hash)."""
    with library_errors():
        for record in app(ctx).log.read():
            target.write(encode_json(record.to_dict()) + b"\n")


@main.command("import")
@click.argument("source", type=click.File("rb"))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["memsync", "mem0"]),
    default="memsync",
    show_default=True,
    help="memsync: an exported log; mem0: a mem0 1.x export (get_all output or a list of memories)",
)
@json_option
@click.pass_context
def import_cmd(ctx: click.Context, source: Any, fmt: str, as_json: bool) -> None:
    """Import an exported log (into an empty log, or one it continues), or a mem0 export; all or none."""
    if fmt == "mem0":
        _import_mem0(ctx, source, as_json)
        return

    def records() -> Iterator[tuple[Event, dict[str, Any]]]:
        for number, raw in enumerate(source, start=1):
            if raw.strip():
                try:
                    data = json.loads(raw)
                except (ValueError, RecursionError) as e:  # bad JSON, bytes in no UTF, nesting too deep
                    raise InputError(f"malformed JSON: {e}", line=number) from None
                if not isinstance(data, dict):
                    raise InputError("expected a JSON object", line=number)
                yield recorded_from_dict(data, line=number)

    with library_errors():
        count = app(ctx).log.import_records(list(records()))
        head = app(ctx).log.head()
    if as_json:
        emit({"imported": count, "head": {"seq": head.seq, "hash": head.hash}})
    else:
        click.echo(f"imported {count} events; head seq {head.seq} hash {head.hash}")


def _import_mem0(ctx: click.Context, source: Any, as_json: bool) -> None:
    raw = source.read()
    try:
        data: Any = json.loads(raw)
    except (ValueError, RecursionError):
        try:  # JSON Lines of memories
            data = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except (ValueError, RecursionError) as e:
            raise CliError(f"not JSON or JSON Lines: {e}") from None
    with library_errors():
        out = facade(ctx).import_mem0(data)
    if as_json:
        emit(out)
    else:
        seqs = [r["seq"] for r in out["results"]]
        click.echo(f"imported {len(seqs)} mem0 memories" + (f": seq {seqs[0]}..{seqs[-1]}" if seqs else ""))


@main.command()
@click.option("--watch", is_flag=True, help="redraw a live view until Ctrl-C")
@click.option("--interval", type=float, default=1.0, show_default=True, help="seconds between redraws")
@json_option
@click.pass_context
def status(ctx: click.Context, watch: bool, interval: float, as_json: bool) -> None:
    """Head seq and hash; per projection: checkpoint, lag, parked events, reachable."""
    if watch:
        from memsync.watch import watch_status

        with library_errors():
            watch_status(app(ctx), interval=interval, plain=as_json or not sys.stdout.isatty())
        return
    with library_errors():
        data = app(ctx).status()
    if as_json:
        emit(data)
        return
    click.echo(f"head: seq {data['head']['seq']}  hash {data['head']['hash']}  live memories {data['live_memories']}")
    for kind, entry in data["projections"].items():
        reach = "reachable" if entry.get("reachable") else "UNREACHABLE"
        extra = f"  ({entry['error']})" if entry.get("error") else ""
        click.echo(
            f"{kind:>7}: checkpoint {entry['checkpoint']}  lag {entry['lag']}  parked {entry['parked']}  {reach}{extra}"
        )


@main.command()
@click.argument("query")
@click.option("--user", "user_id")
@click.option("--agent", "agent_id")
@click.option("--run", "run_id")
@click.option("--filter", "filters", multiple=True, help="KEY=VALUE on metadata (repeatable; VALUE may be JSON)")
@click.option("--limit", type=int, default=5, show_default=True)
@click.option("--threshold", type=float)
@json_option
@click.pass_context
def search(
    ctx: click.Context,
    query: str,
    user_id: str | None,
    agent_id: str | None,
    run_id: str | None,
    filters: tuple[str, ...],
    limit: int,
    threshold: float | None,
    as_json: bool,
) -> None:
    """Query memories through the projections: TEXT (embedded) or a JSON vector."""
    parsed: Any = query
    if query.lstrip().startswith("["):
        parsed = _json_arg(query, "query")
    metadata = {}
    for item in filters:
        key, sep, raw = item.partition("=")
        if not sep:
            raise CliError(f"--filter: expected KEY=VALUE, got {item!r}")
        try:
            metadata[key] = json.loads(raw)
        except json.JSONDecodeError:
            metadata[key] = raw
    with library_errors():
        out = facade(ctx).search(
            parsed,
            user_id=user_id,
            agent_id=agent_id,
            run_id=run_id,
            filters=metadata,
            limit=limit,
            threshold=threshold,
        )
    if as_json:
        emit(out)
        return
    for hit in out["results"]:
        click.echo(f"{hit['score']:.3f}  {hit['id']}  {hit['memory']}")
    if not out["results"]:
        click.echo("no matches")
    for fact in out["relations"]:
        click.echo(f"       {fact['source']} -{fact['relationship']}-> {fact['destination']}")


# ---------------------------------------------------------------- projections


def _progress_factory(enabled: bool) -> tuple[ProgressFactory | None, Callable[[], None]]:
    """A rich progress bar (rate, ETA) on a terminal; nothing otherwise."""
    if not enabled or not sys.stderr.isatty():
        return None, lambda: None
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        transient=False,
    )
    progress.start()

    def factory(kind: str, total: int | None = None) -> Callable[[int], None]:
        task = progress.add_task(kind, total=total, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)
            state = progress.tasks[task]
            speed = state.completed / state.elapsed if state.elapsed else 0.0
            progress.update(task, rate=f"{speed:,.0f} ev/s")

        return advance

    return factory, progress.stop


@main.command()
@click.argument("which", type=click.Choice(["vector", "graph", "all"]), default="all")
@click.option("--follow", is_flag=True, help="keep applying new events until interrupted")
@click.option("--metrics-port", type=int, help="with --follow: serve Prometheus metrics on this port")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="address for --metrics-port")
@json_option
@click.pass_context
def project(
    ctx: click.Context, which: str, follow: bool, metrics_port: int | None, metrics_host: str, as_json: bool
) -> None:
    """Bring projections up to the head (or keep following it)."""
    system = app(ctx)
    if metrics_port is not None and not follow:
        raise CliError("--metrics-port needs --follow")
    with library_errors():
        kinds = system.select(which)
        if follow:
            _follow(system, kinds, metrics_port, metrics_host)
            return
        factory, stop = _progress_factory(not as_json)
        try:
            result = system.project(kinds, progress=factory)
        finally:
            stop()
    if as_json:
        emit(result)
    else:
        for kind, entry in result.items():
            if "error" in entry:
                click.echo(f"{kind}: FAILED: {entry['error']}", err=True)
            else:
                click.echo(f"{kind}: applied {entry['applied']} events, checkpoint {entry['checkpoint']}")
    if any("error" in e for e in result.values()):
        ctx.exit(EXIT_RUNTIME)


def _follow(system: MemSync, kinds: list[str], metrics_port: int | None, metrics_host: str) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if metrics_port is not None:
        from memsync.metrics import Metrics

        metrics = Metrics()
        metrics.attach(system.hooks)
        metrics.watch(system.log, system.runners)
        try:
            metrics.serve(metrics_port, metrics_host)
        except OSError as e:
            raise CliError(f"--metrics-port {metrics_port}: cannot listen on {metrics_host}: {e}") from e
        click.echo(f"metrics on http://{metrics_host}:{metrics_port}/metrics", err=True)
    click.echo(f"following {', '.join(kinds)} (Ctrl-C to stop)", err=True)

    def on_state(kind: str, state: str) -> None:
        click.echo(f"{kind}: {state}", err=True)

    threads = system.follow(kinds, stop, on_state=on_state)
    while not stop.is_set():
        stop.wait(0.5)
    for thread in threads:
        thread.join(timeout=10)


@main.command()
@click.argument("which", type=click.Choice(["vector", "graph", "all"]), default="all")
@click.option("--to-seq", type=int, help="replay up to this seq")
@click.option("--as-of", help="replay up to this time (RFC 3339)")
@click.option("--in-place", is_flag=True, help="wipe and replay into the live store instead of build-and-swap")
@json_option
@click.pass_context
def rebuild(
    ctx: click.Context, which: str, to_seq: int | None, as_of: str | None, in_place: bool, as_json: bool
) -> None:
    """Rebuild stores by replaying the log (default: build fresh, then swap)."""
    if to_seq is not None and as_of is not None:
        raise CliError("--to-seq and --as-of exclude each other")
    if to_seq is not None and to_seq < 0:
        raise CliError("--to-seq must be >= 0")
    system = app(ctx)
    factory, stop = _progress_factory(not as_json)
    with library_errors():
        try:
            result = system.rebuild(
                system.select(which), to_seq=to_seq, as_of=_time(as_of, "as-of"), in_place=in_place, progress=factory
            )
        finally:
            stop()
    if as_json:
        emit({"rebuilt": result})
    else:
        for kind, seq in result.items():
            click.echo(f"{kind}: rebuilt to seq {seq}")


@main.command()
@click.option("--repair", is_flag=True, help="fix each difference from the log")
@click.argument("which", type=click.Choice(["vector", "graph", "all"]), default="all")
@json_option
@click.pass_context
def verify(ctx: click.Context, repair: bool, which: str, as_json: bool) -> None:
    """Compare each store with fold(log); exit 1 on drift."""
    system = app(ctx)
    with library_errors():
        report = system.verify(system.select(which), repair=repair)
    ok = all(d.ok for d in report.values())
    if as_json:
        out: dict[str, Any] = {"ok": ok, "projections": {k: d.to_dict() for k, d in report.items()}}
        if repair:
            out["repaired"] = not ok
        emit(out)
    else:
        for kind, drift in report.items():
            if drift.ok:
                click.echo(f"{kind}: ok (checkpoint {drift.checkpoint})")
                continue
            click.echo(f"{kind}: DRIFT at checkpoint {drift.checkpoint}" + (" (repaired)" if repair else ""))
            for name, ids in drift.to_dict().items():
                if ids:
                    shown = ", ".join(ids[:10]) + (f" … (+{len(ids) - 10})" if len(ids) > 10 else "")
                    click.echo(f"  {name}: {shown}")
    if not ok:
        ctx.exit(EXIT_DRIFT)


@main.command()
@click.argument("action", type=click.Choice(["list", "retry", "skip"]), default="list")
@click.argument("seqs", type=int, nargs=-1)
@click.option("--projection", type=click.Choice(["vector", "graph"]))
@json_option
@click.pass_context
def parked(ctx: click.Context, action: str, seqs: tuple[int, ...], projection: str | None, as_json: bool) -> None:
    """Poison events a projection set aside: list them, retry them, or skip them for good."""
    system = app(ctx)
    with library_errors():
        entries = system.log.parked(projection)
        if action == "list":
            if as_json:
                emit(
                    [
                        {
                            "projection": p.projection,
                            "seq": p.seq,
                            "error": p.error,
                            "attempts": p.attempts,
                            "parked_at": p.parked_at,
                        }
                        for p in entries
                    ]
                )
            else:
                for p in entries:
                    click.echo(f"{p.projection:>7}  seq {p.seq}  {p.parked_at}  {p.error}")
                if not entries:
                    click.echo("no parked events")
            return
        chosen = [p for p in entries if not seqs or p.seq in seqs]
        done = []
        for p in chosen:
            runner = system.runner(p.projection)
            if action == "retry":
                runner.retry_parked(p.seq)
            else:
                runner.skip_parked(p.seq)
            done.append({"projection": p.projection, "seq": p.seq})
    if as_json:
        emit({action: done})
    else:
        for d in done:
            click.echo(f"{action}: {d['projection']} seq {d['seq']}")


if __name__ == "__main__":
    main()
