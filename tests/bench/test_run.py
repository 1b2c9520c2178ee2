"""`make bench`: how rounds become the reported figures (no server needed), and its quick pass (1-second
runs) against real servers. The numbers are printed, never asserted: speed is measured, not tested."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import load, run
from bench.run import HAND_WRITTEN, HAND_WRITTEN_H11, LIMIT, SERVICE, SERVICE_AUTH
from harness.paths import REPO_ROOT
from tests.conftest import require_tool

SINGLE_VS_HAND_WRITTEN = "single-row /predict, 8 connections: service / hand-written"


def _measured(answers: int, cpu_s: float, errors: int = 0) -> run.Measured:
    """One server's round: `answers` 200s (and `errors` 500s) in one second, using `cpu_s` of CPU."""
    latencies = {200: [1.0] * answers, 500: [1.0] * errors}
    return run.Measured(load.Run(duration_s=1.0, latencies_ms=latencies), cpu_s, [0.5, 0.5])


def test_a_comparison_is_the_median_of_per_round_figures_so_one_disturbed_round_does_not_move_it() -> None:
    point = run.Point("/predict", 1, 8, b"{}", (HAND_WRITTEN, SERVICE))
    rounds = [
        {HAND_WRITTEN: _measured(1000, 0.5), SERVICE: _measured(900, 0.6)},
        {HAND_WRITTEN: _measured(1000, 0.5), SERVICE: _measured(950, 0.6)},
        # Something else took the cores while the hand-written app ran.
        {HAND_WRITTEN: _measured(100, 0.5), SERVICE: _measured(900, 0.6)},
    ]
    [comparison] = run.compare(point, rounds)
    assert (comparison.server, comparison.baseline) == (SERVICE, HAND_WRITTEN)
    assert comparison.rounds_ratios == [0.9, 0.95, 9.0] and comparison.ratio == 0.95
    # 0.6 s / 950 answers against 0.5 s / 1000: 632 - 500 µs.
    assert comparison.cpu_us_added == 132


def test_authentication_is_measured_on_single_rows_against_the_service_alone() -> None:
    names = [HAND_WRITTEN, HAND_WRITTEN_H11, LIMIT, SERVICE, SERVICE_AUTH]
    single, batch = run.plan(run.parse_args([]), names)
    rounds = [{name: _measured(1000, 0.5) for name in names}]
    assert {(c.server, c.baseline) for c in run.compare(single, rounds)} == set(run.COMPARISONS)
    assert (SERVICE_AUTH, SERVICE) not in {(c.server, c.baseline) for c in run.compare(batch, rounds)}
    assert SERVICE_AUTH not in batch.servers and len(json.loads(batch.body)["instances"]) == batch.rows


def test_a_point_reports_its_median_round_with_the_errors_of_every_round() -> None:
    point = run.Point("/predict", 1, 8, b"{}", (SERVICE,))
    rounds = [_measured(500, 0.5, errors=1), _measured(1000, 0.5), _measured(2000, 0.5, errors=2)]
    result = run.summarise(SERVICE, point, rounds)
    assert (result.requests_per_s, result.server_cpu_us_per_request, result.errors) == (1000, 500, 3)


@pytest.mark.parametrize("ratio", [0.85, 0.95])
def test_a_target_is_met_only_when_what_was_measured_reaches_its_goal(ratio: float) -> None:
    comparison = run.Comparison(SERVICE, HAND_WRITTEN, "/predict", 8, 1, ratio, [ratio], 100)
    targets = {t["target"]: t for t in run.evaluate_targets([], [comparison], {})}
    assert targets[SINGLE_VS_HAND_WRITTEN]["value"] == ratio
    assert targets[SINGLE_VS_HAND_WRITTEN]["met"] is (ratio >= run.TARGET_SINGLE_VS_HAND_WRITTEN)
    # Nothing else was measured: neither met nor missed.
    assert {(t["met"], t["measured"]) for name, t in targets.items() if name != SINGLE_VS_HAND_WRITTEN} == {
        (None, "not measured")
    }


def _section(stdout: str, title: str) -> list[list[str]]:
    """The body rows of the Markdown table under `### title`, as lists of cells."""
    table = []
    for line in stdout.split(f"### {title}\n", 1)[1].lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table[2:]  # after the header and the alignment row


def test_a_child_that_has_exited_but_is_not_yet_reaped_is_skipped_when_workers_are_listed() -> None:
    # The parent starts a short-lived child and never waits for it, so the child stays a zombie,
    # whose command line the kernel no longer gives.
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['true']); time.sleep(30)"]
    )
    try:
        server = run.Server("zombie parent", "http://127.0.0.1:1", parent, 0.0, 1)
        for _ in range(100):
            children = server.processes()[1:]
            if children and all(child.status() == run.psutil.STATUS_ZOMBIE for child in children):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the child never became a zombie")
        assert server.worker_processes() == [] and server.worker_memory_mb() == []
        assert run.check_sessions({server.name: server}) == []
    finally:
        parent.kill()
        parent.wait()


@pytest.fixture(scope="module")
def quick(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """`python -m bench.run --quick`: its printed tables and its raw JSON."""
    require_tool("wrk", "apt-get install wrk (.ci/run does)")
    results_dir = tmp_path_factory.mktemp("bench-results")
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--results-dir", str(results_dir)],
        check=False,
        cwd=REPO_ROOT,
        env={**os.environ, "BENTOML_HOME": str(model_store)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    # It exits 1 without measuring when a server's answers differ from the service's, when the
    # authenticated service answers a request that carries no token, or when a worker shares a session.
    assert result.returncode == 0, result.stdout + result.stderr
    raw = json.loads((results_dir / result.stdout.split("raw results: ")[1].strip()).read_text())
    return result.stdout, raw


@pytest.mark.slow
def test_quick_benchmark_measures_every_server_at_every_point_without_errors(quick: tuple[str, dict]) -> None:
    stdout, raw = quick
    single = [HAND_WRITTEN, HAND_WRITTEN_H11, LIMIT, SERVICE, SERVICE_AUTH]
    expected = [("/predict", "1", name) for name in single]
    expected += [("/predict_batch", "1000", name) for name in single if name != SERVICE_AUTH]
    load_rows = _section(stdout, "Load")
    assert [(row[0], row[1], row[3]) for row in load_rows] == expected
    assert all(row[9] == "0" for row in load_rows), "errors under normal load"
    assert [row[0] for row in _section(stdout, "Servers")] == single
    for name in single:
        info = raw["servers"][name]
        assert len(info["worker_memory_mb"]) == info["workers"] == raw["settings"]["workers"], info


@pytest.mark.slow
def test_quick_benchmark_judges_targets_by_the_comparisons_of_the_same_rounds(
    quick: tuple[str, dict],
) -> None:
    stdout, raw = quick
    compared = {(row[0], row[3], row[4]): float(row[5]) for row in _section(stdout, "Comparisons")}
    assert set(compared) == {
        (endpoint, server, baseline)
        for endpoint in ("/predict", "/predict_batch")
        for server, baseline in run.COMPARISONS
        if endpoint == "/predict" or SERVICE_AUTH not in (server, baseline)
    }
    assert all(ratio > 0 for ratio in compared.values())
    target = next(t for t in raw["targets"] if t["target"] == SINGLE_VS_HAND_WRITTEN)
    wanted = ("/predict", SERVICE, HAND_WRITTEN)
    [ratio] = [
        c["ratio"] for c in raw["comparisons"] if (c["endpoint"], c["server"], c["baseline"]) == wanted
    ]
    assert target["value"] == ratio
    assert target["met"] is (ratio >= run.TARGET_SINGLE_VS_HAND_WRITTEN)


@pytest.mark.slow
def test_under_overload_every_answer_is_a_success_or_the_service_s_503(quick: tuple[str, dict]) -> None:
    _, raw = quick
    assert [(o["server"], o["endpoint"]) for o in raw["overload"]] == [
        (SERVICE, "/predict"),
        (HAND_WRITTEN, "/predict"),
        (SERVICE, "/predict_batch"),
        (HAND_WRITTEN, "/predict_batch"),
    ]
    for o in raw["overload"]:
        assert o["other_statuses"] == {} and o["socket_errors"] == o["timeouts"] == 0, o
        assert o["shed"] == 0 or o["server"] == SERVICE, o
        # In one second, 256 connections of 1000-row batches may all still be queued; single rows not.
        assert o["accepted"] > 0 or o["endpoint"] == "/predict_batch", o
