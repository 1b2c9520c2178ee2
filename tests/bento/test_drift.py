"""Input drift: the statistics measured honestly on the real rows, the pod's window, and the service.

The acceptance figures use disjoint samples of the 569 real rows, drawn without replacement: in each
trial a model is trained on a reference of the training split's size (455 rows) and a 100-row window
is drawn from the other 114 rows, so window rows are never rows the model or the reference saw.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from bento.drift import LOGIT, MALIGNANT_SHARE, WorkerRows, evaluate, holm, pod_window
from harness.servers import Server
from tests.conftest import own_server
from training.train import DEFAULT_SEED, TEST_SIZE, make_pipeline
from wdbc import FEATURE_NAMES

TRIALS = 200
WINDOW = 100
ALPHA = 0.05
THRESHOLD = 0.19  # about the trained model's; the test of the malignant share needs one
SIZE_FEATURES = [f"{m}_{s}" for m in ("radius", "perimeter", "area") for s in ("mean", "se", "worst")]


@pytest.fixture(scope="module")
def trials() -> list[tuple[np.ndarray, np.ndarray, float, Callable[[np.ndarray], np.ndarray], np.ndarray]]:
    """(reference rows, their logits, expected malignant share, window -> window with logits, window rows)."""
    features, target = load_breast_cancer(return_X_y=True)
    labels = 1 - target  # malignant = 1, as training codes it
    rng = np.random.default_rng(20261128)
    made = []
    with threadpool_limits(limits=1):
        for _ in range(TRIALS):
            order = rng.permutation(len(features))
            reference, rest = order[:455], order[455:]
            window = rng.choice(rest, WINDOW, replace=False)
            model = make_pipeline(0).fit(features[reference], labels[reference])

            def with_outputs(rows: np.ndarray, model=model) -> np.ndarray:
                malignant = model.predict_proba(rows)[:, 1] >= THRESHOLD
                return np.column_stack((rows, model.decision_function(rows), malignant))

            expected = float(np.mean(model.predict_proba(features[reference])[:, 1] >= THRESHOLD))
            made.append(
                (
                    features[reference],
                    model.decision_function(features[reference]),
                    expected,
                    with_outputs,
                    features[window],
                )
            )
    return made


def drifted(trial, change: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> list[str]:
    reference, logits, expected, with_outputs, window = trial
    rows = window.copy() if change is None else change(window.copy(), reference)
    return evaluate(reference, logits, with_outputs(rows), expected, ALPHA)[3]


def shift(name: str, sds: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    index = FEATURE_NAMES.index(name)

    def change(rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
        rows[:, index] += sds * reference[:, index].std(ddof=1)
        return rows

    return change


def scale(names: list[str], factor: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def change(rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
        for name in names:
            rows[:, FEATURE_NAMES.index(name)] *= factor
        return rows

    return change


@pytest.mark.slow
def test_false_alarms_stay_under_five_percent(trials) -> None:
    alarms = [bool(drifted(trial)) for trial in trials]
    rate = sum(alarms) / len(alarms)
    print(f"false alarms: {sum(alarms)} of {len(alarms)} undrifted windows ({rate:.1%})")
    assert rate <= ALPHA


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smoothness_mean", "radius_mean"])
def test_half_a_standard_deviation_is_caught_and_named(trials, name: str) -> None:
    found = [drifted(trial, shift(name, 0.5)) for trial in trials]
    named = sum(name in result for result in found) / len(found)
    others = sum(bool(set(result) - {name, LOGIT, MALIGNANT_SHARE}) for result in found) / len(found)
    print(
        f"{name} + 0.5 sd: flagged and named in {named:.1%} of windows; another feature named in {others:.1%}"
    )
    assert named >= 0.80
    assert others <= ALPHA


@pytest.mark.slow
def test_scaled_size_features_flag_those_features_and_the_logit(trials) -> None:
    found = [drifted(trial, scale(SIZE_FEATURES, 1.3)) for trial in trials]
    logit = sum(LOGIT in result for result in found) / len(found)
    size = {name: sum(name in result for result in found) / len(found) for name in SIZE_FEATURES}
    print(f"radius/perimeter/area x 1.3: logit flagged in {logit:.1%}; per feature {size}")
    assert logit >= 0.80
    assert min(size[f"{m}_mean"] for m in ("radius", "perimeter", "area")) >= 0.95
    assert all(set(result) <= {*SIZE_FEATURES, LOGIT, MALIGNANT_SHARE, *FEATURE_NAMES} for result in found)


def test_holm_rejects_what_the_step_down_rule_says() -> None:
    assert holm([0.01, 0.04, 0.03, 0.2], 0.05) == [True, False, False, False]  # 0.01 <= .05/4; .03 > .05/3
    assert holm([0.001, 0.011, 0.02], 0.05) == [True, True, True]  # .001<=.0167, .011<=.025, .02<=.05
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = list(rng.random(8) ** 3)
        rejected = holm(p, 0.05)
        order = sorted(range(8), key=p.__getitem__)
        stop = next((rank for rank, i in enumerate(order) if p[i] > 0.05 / (8 - rank)), 8)
        assert rejected == [order.index(i) < stop for i in range(8)]


def _record(directory: str, capacity: int, worker: int, rounds: int) -> None:
    rows = WorkerRows(Path(directory) / f"worker-{worker}.npy", capacity, pod_started=0)
    for round_ in range(rounds):
        values = np.full((3, len(FEATURE_NAMES)), worker * 1000 + round_, dtype=float)
        rows.record(values, np.full(3, float(worker)), np.zeros(3))
        if round_ % 7 == 0:
            rows.flush()
    rows.flush()


@pytest.mark.slow
def test_the_window_is_the_newest_rows_of_every_worker(tmp_path: Path) -> None:
    processes = [
        multiprocessing.get_context("spawn").Process(target=_record, args=(str(tmp_path), 50, worker, 200))
        for worker in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    rows, seen = pod_window(tmp_path, 50, pod_started=0)
    assert seen == 3 * 200 * 3 and rows.shape == (50, len(FEATURE_NAMES) + 3)
    assert (np.diff(rows[:, -1]) >= 0).all(), "oldest first"
    # Each row is one record's: the same value in every feature column, its worker in the logit column.
    assert all(len(set(row[: len(FEATURE_NAMES)])) == 1 for row in rows)
    assert {int(row[len(FEATURE_NAMES)]) for row in rows} <= {0, 1, 2}


def test_a_replaced_worker_keeps_its_predecessors_rows_and_an_earlier_run_is_ignored(tmp_path: Path) -> None:
    first = WorkerRows(tmp_path / "worker-1.npy", 10, pod_started=0)
    first.record(np.ones((4, len(FEATURE_NAMES))), np.ones(4), np.ones(4))
    first.flush()
    assert WorkerRows(tmp_path / "worker-1.npy", 10, pod_started=0).seen == 4
    later = os.stat(tmp_path / "worker-1.npy").st_mtime + 1
    assert WorkerRows(tmp_path / "worker-1.npy", 10, pod_started=later).seen == 0
    assert pod_window(tmp_path, 10, pod_started=later)[1] == 0


@pytest.fixture(scope="module")
def drift_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two workers sharing one window, evaluated every half second."""
    with own_server(
        model_store,
        tmp_path_factory,
        SERVICE_WORKERS="2",
        DRIFT_WINDOW_ROWS="100",
        DRIFT_EVALUATION_SECONDS="0.5",
    ) as server:
        yield server


def held_out_rows() -> list[dict[str, float]]:
    """The rows the session's model held out (training's own split, default seed): never trained on."""
    features, target = load_breast_cancer(return_X_y=True)
    _, held_out = train_test_split(
        features, test_size=TEST_SIZE, stratify=1 - target, random_state=DEFAULT_SEED
    )
    return [dict(zip(FEATURE_NAMES, row.tolist(), strict=True)) for row in held_out]


def report(server: Server, wait_for: Callable[[dict], bool], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(f"{server.url}/drift").json()
        if wait_for(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.3)


@pytest.mark.slow
def test_the_service_reports_ok_then_drift_and_says_so(drift_server: Server) -> None:
    rows = held_out_rows()[:100]
    with httpx.Client(base_url=drift_server.url) as client:
        for start in range(0, 100, 10):  # many requests, so both workers append to the window
            assert (
                client.post("/predict_batch", json={"instances": rows[start : start + 10]}).status_code == 200
            )
        healthy = report(drift_server, lambda r: r["window_rows"] == 100 and r["rows_seen"] == 100)
        assert healthy["status"] == "ok", healthy["drifted"]
        assert healthy["reference_rows"] == 455 and healthy["window_capacity"] == 100
        assert set(healthy["features"]) == set(FEATURE_NAMES) and healthy["logit"]["p_value"] > 0

        scaled = [{**row, **{name: row[name] * 1.3 for name in SIZE_FEATURES}} for row in rows]
        for start in range(0, 100, 10):
            client.post("/predict_batch", json={"instances": scaled[start : start + 10]})
        shifted = report(drift_server, lambda r: r["rows_seen"] == 200 and r["status"] == "drift")
    assert shifted["status"] == "drift"
    assert {"radius_mean", "area_mean", "perimeter_mean"} <= set(shifted["drifted"]), shifted["drifted"]
    assert (
        shifted["features"]["radius_mean"]["drift"] and shifted["features"]["radius_mean"]["p_value"] < 1e-4
    )
    metrics = httpx.get(drift_server.metrics_url).text
    assert "input_drift_status 1.0" in metrics and 'input_drift_p_value{test="radius_mean"}' in metrics
    assert "input_drift_window_rows 100.0" in metrics
    lines = [json.loads(line) for line in drift_server.log().splitlines() if line.startswith("{")]
    changes = [line for line in lines if line["message"].startswith("input drift status is now")]
    assert [line["status"] for line in changes][-2:] == ["ok", "drift"] or changes[-1]["status"] == "drift"
    assert changes[-1]["level"] == "WARNING" and "radius_mean" in changes[-1]["drifted"]
