"""The docs run: every memsync call in the mem0 side-by-side table, and the quickstart's code."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import memsync

DOCS = Path(__file__).resolve().parent.parent / "docs"


def table_calls() -> list[str]:
    text = (DOCS / "migrating-from-mem0.md").read_text()
    calls = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[1].startswith("`") and cells[1].endswith("`"):
            calls.append(cells[1].strip("`"))
    return calls


def test_every_memsync_call_in_the_mem0_table_runs(tmp_path: Path) -> None:
    calls = table_calls()
    assert len(calls) >= 15
    namespace: dict[str, Any] = {
        "Memory": memsync.Memory,
        "AsyncMemory": memsync.AsyncMemory,
        "DATA": str(tmp_path / "data"),
    }
    opened: list[Any] = []
    for call in calls:
        if call.startswith(("m = ", "am = ")):
            if "m" in namespace and call.startswith("m = "):
                namespace["m"].close()
            exec(call, namespace)
            opened.append(namespace[call.split(" = ")[0]])
        else:
            result = eval(call, namespace) if "=" not in call.split("(")[0] else exec(call, namespace)
            assert result is None or isinstance(result, dict | list), call
    m = namespace["m"]
    assert m.history(namespace["mid"])[-1]["event"] == "DELETE"
    asyncio.run(opened[-1].close())
    m.close()


def test_quickstart_code_blocks_run(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    text = (DOCS / "quickstart.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    namespace: dict[str, Any] = {}
    for block in blocks:
        exec(block, namespace)
    for value in namespace.values():
        if isinstance(value, memsync.Memory):
            value.close()


def test_readme_example_runs(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    text = (DOCS.parent / "README.md").read_text()
    block = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    namespace: dict[str, Any] = {}
    exec(block, namespace)
    namespace["m"].close()
