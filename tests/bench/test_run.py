"""`make bench` works: a one-second-per-run pass of the harness (numbers are printed, never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.paths import REPO_ROOT
from tests.conftest import require_tool


@pytest.mark.slow
def test_benchmark_harness_prints_the_table(model_store: Path) -> None:
    require_tool("wrk", "apt-get install wrk (.ci/run does)")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--duration",
            "1",
            "--repeats",
            "1",
            "--connections",
            "8",
            "--no-container",
        ],
        check=False,
        cwd=REPO_ROOT,
        env={**os.environ, "BENTOML_HOME": str(model_store)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| /predict")]
    assert len(rows) == 6  # (1 single-row + 2 batch sizes) x (reference, service)
    service_rows = [row for row in rows if "| service |" in row]
    assert all(row.rstrip(" |").split("|")[-1].strip() for row in service_rows), "missing ratio"
    raw = json.loads((REPO_ROOT / result.stdout.split("raw results: ")[1].strip()).read_text())
    assert {r["server"] for r in raw["results"]} == {"reference", "service"}
    assert all(r["errors"] == 0 and r["requests_per_s"] > 0 for r in raw["results"])
