"""The benchmarks run: ``python -m benchmarks.run --smoke`` exits 0 and writes its JSON.

The smoke mode runs every benchmark at tiny sizes; its figures mean nothing
(see docs/performance.md), so only their presence is checked here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_run_exits_0_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=570,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["settings"]["smoke"] is True
    ran = report["benchmarks"]
    assert set(ran) >= {"append_single", "append_threads", "append_batch", "rebuild_vector", "rebuild_ladybug"}
    assert set(ran) >= {"rebuild_neo4j", "follow_lag", "follow_lag_neo4j", "scale"}
    for name, result in ran.items():
        assert result["results"], name
        for figure in result["results"]:
            assert figure["kind"] == "figure", figure  # not skipped, not failed
            assert figure["value"] > 0, figure
    assert "benchmark" in done.stdout and "ratio" in done.stdout  # the table was printed
