"""Input drift: the pod's most recent live rows tested against the rows the model was trained on.

Statistics that hold at this data size (a ~455-row reference, windows of ~100-200 rows):
- each of the 30 features and the model's logit (for a linear model, the one projection of the
  inputs that moves predictions) with a two-sample Cramér–von Mises test, which measured more
  powerful than Kolmogorov–Smirnov on shifts of this size;
- the share of malignant predictions against the share the model predicts malignant among its
  training rows (the training prevalence as seen through the model's threshold), with an exact
  binomial test;
- Holm's step-down correction over those 32 p-values, so one evaluation of an undrifted window
  raises `drift` with probability at most DRIFT_ALPHA (tests/bento/test_drift.py measures it on
  disjoint samples of the real rows). No PSI with fixed thresholds: at these sizes its sampling
  noise alone crosses them.

One window per pod, not per worker. A worker keeps its latest rows in memory (appending is all a
request does) and saves them, a few times a second, to a file of its own under the pod's
BENTOML_HOME; the window is the newest DRIFT_WINDOW_ROWS rows of all those files, written since the
pod started. Whichever worker evaluates reads the same files, and the report is one file that
every worker answers /drift from. The pod's first worker evaluates every DRIFT_EVALUATION_SECONDS
and publishes the gauges; /drift evaluates first when the report is older than that.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import Literal

import numpy as np
from loguru import logger
from pydantic import BaseModel, Field

from bento import config
from bento.metrics import ServiceMetrics
from wdbc import FEATURE_NAMES, Reference

LOGIT = "logit"
MALIGNANT_SHARE = "malignant_share"
# Below this many rows an evaluation has too little power to mean anything: status "collecting".
MIN_WINDOW_ROWS = 30
# A row: the 30 features, the logit, 1.0 if predicted malignant, the Unix time it was recorded.
_COLUMNS = len(FEATURE_NAMES) + 3
# How often a worker saves its latest rows for the pod's window: the window lags the requests by that.
FLUSH_SECONDS = 1.0


class TestResult(BaseModel):
    statistic: float
    p_value: float = Field(description="uncorrected")
    drift: bool = Field(description="rejected by Holm's procedure at the family-wise alpha")


class ShareResult(BaseModel):
    observed: float = Field(description="share of the window's rows predicted malignant")
    expected: float = Field(description="share of the training rows the model predicts malignant")
    p_value: float = Field(description="exact two-sided binomial test, uncorrected")
    drift: bool


class DriftReport(BaseModel):
    status: Literal["collecting", "ok", "drift"] = Field(
        description=f"collecting: fewer than {MIN_WINDOW_ROWS} rows in the window yet"
    )
    evaluated_at: float = Field(description="Unix time of the evaluation")
    window_rows: int
    window_capacity: int
    rows_seen: int = Field(description="rows the pod has diagnosed since it started")
    reference_rows: int
    alpha: float = Field(description="family-wise false-alarm rate of one evaluation")
    method: str
    features: dict[str, TestResult] = Field(description="one test per feature, in model order")
    logit: TestResult | None
    malignant_share: ShareResult | None
    drifted: list[str] = Field(
        default_factory=list, description="what drifted: features, logit, malignant_share"
    )


def evaluate(
    reference_features: np.ndarray,
    reference_logits: np.ndarray,
    window: np.ndarray,
    expected_share: float,
    alpha: float,
) -> tuple[dict[str, TestResult], TestResult, ShareResult, list[str]]:
    """Test a window (rows of features, logit, malignant flag) against the reference, Holm-corrected."""
    from scipy.stats import binomtest, cramervonmises_2samp

    names = [*FEATURE_NAMES, LOGIT]
    columns = [*reference_features.T, reference_logits]
    results = [cramervonmises_2samp(window[:, index], reference) for index, reference in enumerate(columns)]
    statistics = [float(result.statistic) for result in results]
    p_values = [float(result.pvalue) for result in results]
    malignant = int(window[:, -1].sum())
    share_p = float(binomtest(malignant, len(window), expected_share).pvalue)
    flagged = holm([*p_values, share_p], alpha)
    tests = {
        name: TestResult(statistic=statistic, p_value=p_value, drift=drift)
        for name, statistic, p_value, drift in zip(names, statistics, p_values, flagged, strict=False)
    }
    share = ShareResult(
        observed=malignant / len(window), expected=expected_share, p_value=share_p, drift=flagged[-1]
    )
    drifted = [name for name, result in tests.items() if result.drift] + [MALIGNANT_SHARE] * flagged[-1]
    return {name: tests[name] for name in FEATURE_NAMES}, tests[LOGIT], share, drifted


def holm(p_values: list[float], alpha: float) -> list[bool]:
    """Holm's step-down procedure: which hypotheses to reject at family-wise error rate alpha."""
    order = np.argsort(p_values, kind="stable")
    rejected = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        rejected[index] = True
    return rejected


def _replace(path: Path, write) -> None:
    """Write a shared file whole, so a worker reading it never sees half of another's write."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    write(temporary)
    temporary.replace(path)


class WorkerRows:
    """This worker's latest rows: appended in memory, saved to its own file by `flush`."""

    def __init__(self, path: Path, capacity: int, pod_started: float) -> None:
        self.path, self.capacity = path, capacity
        self.rows, self.seen = np.empty((0, _COLUMNS)), 0
        # What came since the last flush: only its newest `capacity` rows are kept, whatever the load.
        self._pending: deque[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = deque()
        self._pending_rows = self._unsaved = 0
        saved = _load(path, pod_started)  # a replaced worker's rows are this one's to keep
        if saved is not None:
            self.rows, self.seen = saved

    def record(self, features: np.ndarray, logits: np.ndarray, malignant: np.ndarray) -> None:
        self._pending.append(
            (features[-self.capacity :], logits[-self.capacity :], malignant[-self.capacity :], time.time())
        )
        self._pending_rows += min(len(features), self.capacity)
        self._unsaved += len(features)
        while self._pending_rows - len(self._pending[0][0]) >= self.capacity:
            self._pending_rows -= len(self._pending.popleft()[0])

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending, self._pending_rows = self._pending, deque(), 0
        new = np.vstack([np.column_stack((f, lg, m, np.full(len(f), t))) for f, lg, m, t in pending])
        self.rows = np.vstack((self.rows, new))[-self.capacity :]
        self.seen, self._unsaved = self.seen + self._unsaved, 0
        _replace(self.path, self._save)

    def _save(self, path: Path) -> None:
        with path.open("wb") as file:  # the first row holds the count of rows seen
            np.save(file, np.vstack((np.full((1, _COLUMNS), float(self.seen)), self.rows)))


def _load(path: Path, pod_started: float) -> tuple[np.ndarray, int] | None:
    """A worker's saved rows, if it was written by this pod (not by an earlier run)."""
    try:
        if path.stat().st_mtime < pod_started:
            return None
        saved = np.load(path)
    except (OSError, ValueError):
        return None
    if saved.ndim != 2 or saved.shape[1] != _COLUMNS or len(saved) < 1:
        return None
    return saved[1:], int(saved[0, 0])


def pod_window(directory: Path, capacity: int, pod_started: float) -> tuple[np.ndarray, int]:
    """(the newest `capacity` rows of every worker of this pod, oldest first; how many it has ever seen)."""
    saved = [found for path in directory.glob("worker-*.npy") if (found := _load(path, pod_started))]
    if not saved:
        return np.empty((0, _COLUMNS)), 0
    rows = np.vstack([rows for rows, _ in saved])
    return rows[np.argsort(rows[:, -1], kind="stable")][-capacity:], sum(seen for _, seen in saved)


class DriftMonitor:
    """The pod's window, its evaluation, the report file and the gauges."""

    def __init__(
        self,
        directory: Path,
        worker: int,
        reference: Reference,
        expected_share: float,
        metrics: ServiceMetrics,
    ) -> None:
        import psutil

        directory.mkdir(parents=True, exist_ok=True)
        # Files older than this pod's `bentoml serve` are an earlier run's.
        self.directory, self.pod_started = directory, psutil.Process(os.getppid()).create_time()
        self.rows = WorkerRows(directory / f"worker-{worker}.npy", config.DRIFT_WINDOW_ROWS, self.pod_started)
        self.report_path = directory / "report.json"
        self.reference, self.expected_share, self.metrics = reference, expected_share, metrics

    def latest(self) -> DriftReport | None:
        try:
            if self.report_path.stat().st_mtime >= self.pod_started:
                return DriftReport.model_validate_json(self.report_path.read_bytes())
        except (OSError, ValueError):
            pass
        return None

    def report(self) -> DriftReport:
        """The latest report, evaluated first if it is older than the interval (runs in a thread)."""
        latest = self.latest()
        if latest is None or time.time() - latest.evaluated_at >= config.DRIFT_EVALUATION_SECONDS:
            return self.evaluate()
        return latest

    def evaluate(self) -> DriftReport:
        previous = self.latest()
        rows, seen = pod_window(self.directory, config.DRIFT_WINDOW_ROWS, self.pod_started)
        common = {
            "evaluated_at": time.time(),
            "window_rows": len(rows),
            "window_capacity": config.DRIFT_WINDOW_ROWS,
            "rows_seen": seen,
            "reference_rows": len(self.reference.features),
            "alpha": config.DRIFT_ALPHA,
            "method": "two-sample Cramér–von Mises per feature and on the logit, exact binomial test of "
            "the malignant share, Holm correction over all of them",
        }
        if len(rows) < MIN_WINDOW_ROWS:
            report = DriftReport(status="collecting", features={}, logit=None, malignant_share=None, **common)
        else:
            features, logit, share, drifted = evaluate(
                self.reference.features,
                self.reference.logits,
                rows[:, :-1],
                self.expected_share,
                config.DRIFT_ALPHA,
            )
            status = "drift" if drifted else "ok"
            report = DriftReport(
                status=status,
                features=features,
                logit=logit,
                malignant_share=share,
                drifted=drifted,
                **common,
            )
        _replace(self.report_path, lambda path: path.write_text(report.model_dump_json()))
        publish(report, self.metrics)
        if previous is None or previous.status != report.status:
            log = logger.bind(status=report.status, previous_status=previous.status if previous else None,
                              window_rows=report.window_rows, drifted=report.drifted)  # fmt: skip
            (log.warning if report.status == "drift" else log.info)(
                "input drift status is now {}{}",
                report.status,
                f": {', '.join(report.drifted)}" * bool(report.drifted),
            )
        return report


def publish(report: DriftReport, metrics: ServiceMetrics) -> None:
    """The report as the pod's drift gauges (bento/metrics.py)."""
    metrics.drift_status.set(1 if report.status == "drift" else 0)
    metrics.drift_window_rows.set(report.window_rows)
    metrics.drift_evaluated_at.set(report.evaluated_at)
    tests = {**report.features, **({LOGIT: report.logit} if report.logit else {})}
    for name, result in tests.items():
        metrics.drift_p_value.labels(test=name).set(result.p_value)
        metrics.drift_statistic.labels(test=name).set(result.statistic)
    if report.malignant_share is not None:
        metrics.drift_p_value.labels(test=MALIGNANT_SHARE).set(report.malignant_share.p_value)
        metrics.drift_malignant_share.set(report.malignant_share.observed)
