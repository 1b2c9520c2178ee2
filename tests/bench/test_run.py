"""`make bench` works: its quick pass (1-second runs) against real servers. The numbers are printed,
never asserted: this checks the harness's shape, that every server answered, and the raw JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.paths import REPO_ROOT
from tests.conftest import require_tool

SERVERS = ("hand-written", "limit", "service")
# The quick pass: single-row /predict at 8 connections, then 100- and 1000-row batches.
POINTS = [("/predict", 1, 8), ("/predict_batch", 100, 8), ("/predict_batch", 1000, 8)]


def _section(stdout: str, title: str) -> list[list[str]]:
    """The body rows of the Markdown table under `### title`, as lists of cells."""
    table = []
    for line in stdout.split(f"### {title}\n", 1)[1].lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table[2:]  # after the header and the alignment row


@pytest.mark.slow
def test_quick_benchmark_prints_both_ratios_and_writes_the_raw_results(
    model_store: Path, tmp_path: Path
) -> None:
    require_tool("wrk", "apt-get install wrk (.ci/run does)")
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--results-dir", str(tmp_path)],
        check=False,
        cwd=REPO_ROOT,
        env={**os.environ, "BENTOML_HOME": str(model_store)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    load = _section(result.stdout, "Load")
    assert [(row[0], int(row[1]), int(row[2]), row[3]) for row in load] == [
        (endpoint, rows, connections, server) for endpoint, rows, connections in POINTS for server in SERVERS
    ]
    for row in load:
        server, errors, vs_hand_written, vs_limit = row[3], row[9], row[-2], row[-1]
        # Both ratios on the service's rows; the limit's row gives its own ratio to the hand-written app.
        assert bool(vs_hand_written) == (server != "hand-written") and bool(vs_limit) == (
            server == "service"
        ), row
        assert all(float(ratio) > 0 for ratio in (vs_hand_written, vs_limit) if ratio), row
        assert errors == "0", f"errors under normal load: {row}"
    targets = _section(result.stdout, "Targets")
    assert len(targets) == 8 and all(row[3] in ("yes", "**no**", "n/a") for row in targets)
    assert [row[0] for row in _section(result.stdout, "Servers")] == list(SERVERS)
    overload = _section(result.stdout, "Overload")
    assert [(row[0], row[1]) for row in overload] == [
        ("service", "/predict"),
        ("hand-written", "/predict"),
        ("service", "/predict_batch"),
        ("hand-written", "/predict_batch"),
    ]

    raw = json.loads((tmp_path / result.stdout.split("raw results: ")[1].strip()).read_text())
    assert raw["settings"]["quick"] is True
    assert [
        (r["endpoint"], r["rows_per_request"], r["connections"], r["server"]) for r in raw["results"]
    ] == [
        (endpoint, rows, connections, server) for endpoint, rows, connections in POINTS for server in SERVERS
    ]
    for r in raw["results"]:
        assert r["errors"] == 0 and r["requests_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0, r
        assert (r["vs_hand_written"] is not None) == (r["server"] != "hand-written"), r
        assert (r["vs_limit"] is not None) == (r["server"] == "service"), r
    for name in SERVERS:
        info = raw["servers"][name]
        assert info["workers"] == raw["settings"]["workers"] and info["cold_start_s"] > 0
        assert len(info["worker_memory_mb"]) == info["workers"], info
    assert {t["met"] for t in raw["targets"]} <= {True, False, None}
    for o in raw["overload"]:
        # Only the service sheds, and only with 503: no other status, no socket error, no timeout.
        assert o["other_statuses"] == {} and o["socket_errors"] == o["timeouts"] == 0, o
        assert o["shed"] == 0 or o["server"] == "service", o
        # In one second, 256 connections of 1000-row batches may all still be queued; single rows not.
        assert o["accepted"] > 0 or o["endpoint"] == "/predict_batch", o
        assert (o["max_concurrency_per_worker"] is not None) == (o["server"] == "service"), o
