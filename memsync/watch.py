"""``memsync status --watch``: a compact live view of the log and its projections.

On a terminal it redraws a table (rich) with each projection's checkpoint, a lag
bar, the apply rate and parked events; otherwise it prints one plain line per
interval. Stores are opened for each reading and closed again, so the view
never holds an embedded store that a follower needs.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from memsync.system import MemSync


class _Rates:
    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def update(self, name: str, value: int | None) -> float | None:
        now = time.monotonic()
        previous = self._last.get(name)
        if value is None:
            return None
        self._last[name] = (now, value)
        if previous is None or now <= previous[0]:
            return None
        return max(0.0, (value - previous[1]) / (now - previous[0]))


def _reading(system: MemSync) -> dict[str, Any]:
    try:
        return system.status()
    finally:
        system.close_stores()


def plain_line(data: dict[str, Any], rates: dict[str, float | None]) -> str:
    parts = [time.strftime("%H:%M:%S"), f"head={data['head']['seq']}"]
    for kind, entry in data["projections"].items():
        rate = rates.get(kind)
        reach = "" if entry.get("reachable") else " UNREACHABLE"
        parts.append(
            f"{kind}={entry['checkpoint']} lag={entry['lag']} parked={entry['parked']}"
            + (f" rate={rate:.0f}/s" if rate is not None else "")
            + reach
        )
    return "  ".join(parts)


def render(data: dict[str, Any], rates: dict[str, float | None]) -> Group:
    head = data["head"]["seq"]
    title = Text.assemble(
        ("memsync  ", "bold"),
        f"head seq {head}  ",
        (f"{data['head']['hash'][:16]}…", "dim"),
        f"  live memories {data['live_memories']}",
    )
    table = Table(box=None, pad_edge=False)
    for column in ("projection", "checkpoint", "lag", "", "rate", "parked", "store"):
        table.add_column(column)
    for kind, entry in data["projections"].items():
        lag = entry["lag"]
        bar = ProgressBar(total=max(head, 1), completed=entry["checkpoint"] or 0, width=24)
        rate = rates.get(kind)
        store = Text("ok", style="green") if entry.get("reachable") else Text("UNREACHABLE", style="bold red")
        table.add_row(
            kind,
            str(entry["checkpoint"]),
            str(lag),
            bar,
            f"{rate:,.0f}/s" if rate is not None else "-",
            str(entry["parked"]),
            store,
        )
    head_rate = rates.get("head")
    footer = Text(f"appends {head_rate:,.0f}/s" if head_rate is not None else "", style="dim")
    return Group(title, table, footer)


def watch_status(system: MemSync, *, interval: float = 1.0, plain: bool = False) -> None:
    """Redraw until Ctrl-C (which ends the view cleanly)."""
    rates = _Rates()

    def read() -> tuple[dict[str, Any], dict[str, float | None]]:
        data = _reading(system)
        current = {"head": rates.update("head", data["head"]["seq"])}
        for kind, entry in data["projections"].items():
            current[kind] = rates.update(kind, entry["checkpoint"])
        return data, current

    try:
        if plain:
            while True:
                print(plain_line(*read()), flush=True)
                time.sleep(interval)
        with Live(render(*read()), auto_refresh=False, transient=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(*read()), refresh=True)
    except KeyboardInterrupt:
        return
