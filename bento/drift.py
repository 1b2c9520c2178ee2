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

One window per pod, not per worker: every worker appends its rows to a ring buffer in a shared
memory-mapped file, under an exclusive lock, so the window is the pod's last N rows whatever worker
served them. Evaluation runs in whichever worker finds the last one older than the interval.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from loguru import logger
from pydantic import BaseModel, Field

from bento.metrics import ServiceMetrics
from bento.pod import replace_file
from wdbc import FEATURE_NAMES

LOGIT = "logit"
MALIGNANT_SHARE = "malignant_share"
# Below this many rows an evaluation has too little power to mean anything: status "collecting".
MIN_WINDOW_ROWS = 30
_COLUMNS = len(FEATURE_NAMES) + 2  # the features, the logit, 1.0 if predicted malignant
_HEADER = 16  # uint64 rows ever appended, uint64 capacity


class SharedWindow:
    """The pod's last `capacity` rows, in a file every worker maps; appends take an exclusive flock."""

    def __init__(self, path: Path, capacity: int) -> None:
        self.capacity = capacity
        size = _HEADER + capacity * _COLUMNS * 8
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        with self._locked(fcntl.LOCK_EX):
            header = os.pread(self._fd, _HEADER, 0)
            if len(header) < _HEADER or int(np.frombuffer(header, np.uint64)[1]) != capacity:
                os.ftruncate(self._fd, 0)  # a new pod, or a window of another size: start empty
                os.ftruncate(self._fd, size)
                os.pwrite(self._fd, np.array([0, capacity], np.uint64).tobytes(), 0)
        self._map = mmap.mmap(self._fd, size)
        self._count = np.ndarray((2,), np.uint64, buffer=self._map)
        self._rows = np.ndarray((capacity, _COLUMNS), np.float64, buffer=self._map, offset=_HEADER)

    @contextmanager
    def _locked(self, operation: int) -> Iterator[None]:
        fcntl.flock(self._fd, operation)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def append(self, features: np.ndarray, logits: np.ndarray, malignant: np.ndarray) -> None:
        rows = np.column_stack(
            (features[-self.capacity :], logits[-self.capacity :], malignant[-self.capacity :])
        )
        with self._locked(fcntl.LOCK_EX):
            start = int(self._count[0]) % self.capacity
            first = min(len(rows), self.capacity - start)
            self._rows[start : start + first] = rows[:first]
            self._rows[: len(rows) - first] = rows[first:]
            self._count[0] += len(rows)

    def snapshot(self) -> tuple[np.ndarray, int]:
        """(the window's rows, oldest first; how many rows the pod has ever appended)."""
        with self._locked(fcntl.LOCK_SH):
            total = int(self._count[0])
            rows = self._rows.copy()
        if total < self.capacity:
            return rows[:total], total
        start = total % self.capacity
        return np.concatenate((rows[start:], rows[:start])), total


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


class DriftMonitor:
    """The pod's window, its periodic evaluation, the report file and the gauges.

    A worker buffers its rows and writes them to the shared window FLUSH_ROWS at a time, or every
    FLUSH_SECONDS (`flush_if_due`, also called by the worker's background loop when idle): one lock
    and one write per batch of requests instead of per request, at the cost of a window that lags
    the requests by a fraction of a second.
    """

    FLUSH_ROWS = 64
    FLUSH_SECONDS = 0.25

    def __init__(
        self,
        directory: Path,
        reference_features: np.ndarray,
        reference_logits: np.ndarray,
        expected_share: float,
        capacity: int,
        interval: float,
        alpha: float,
        metrics: ServiceMetrics,
    ) -> None:
        self.window = SharedWindow(directory / "drift-window", capacity)
        self.report_path = directory / "drift-report.json"
        self._lock_path = directory / "drift-evaluation.lock"
        self.reference_features = reference_features
        self.reference_logits = reference_logits
        self.expected_share = expected_share
        self.interval = interval
        self.alpha = alpha
        self.metrics = metrics
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self._flushed_at = time.monotonic()

    def record(self, features: np.ndarray, logits: np.ndarray, malignant: np.ndarray) -> None:
        self._pending.append((features, logits, malignant))
        self._pending_rows += len(features)
        if self._pending_rows >= self.FLUSH_ROWS or time.monotonic() - self._flushed_at >= self.FLUSH_SECONDS:
            self.flush()

    def flush_if_due(self) -> None:
        if self._pending and time.monotonic() - self._flushed_at >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        pending, self._pending, self._pending_rows = self._pending, [], 0
        self._flushed_at = time.monotonic()
        if pending:
            self.window.append(*(np.concatenate(part) for part in zip(*pending, strict=True)))

    def latest(self) -> DriftReport | None:
        try:
            return DriftReport.model_validate_json(self.report_path.read_bytes())
        except (OSError, ValueError):
            return None

    def report(self) -> DriftReport:
        """The latest report, evaluating first if it is older than the interval (or missing). Runs in a
        thread: call flush() first, on the event loop, so this worker's latest rows are in it."""
        latest = self.latest()
        if latest is None or time.time() - latest.evaluated_at >= self.interval:
            latest = self.evaluate_if_due() or self.latest() or latest
        # Only None while another worker runs the very first evaluation: do it here too.
        return latest or self._evaluate(None)

    def evaluate_if_due(self) -> DriftReport | None:
        """Evaluate unless another worker is doing it or did it less than an interval ago."""
        with open(self._lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # another worker is evaluating
            previous = self.latest()
            if previous is not None and time.time() - previous.evaluated_at < self.interval:
                return None
            return self._evaluate(previous)

    def _evaluate(self, previous: DriftReport | None) -> DriftReport:
        rows, seen = self.window.snapshot()
        common = {
            "evaluated_at": time.time(),
            "window_rows": len(rows),
            "window_capacity": self.window.capacity,
            "rows_seen": seen,
            "reference_rows": len(self.reference_features),
            "alpha": self.alpha,
            "method": "two-sample Cramér–von Mises per feature and on the logit, exact binomial test of "
            "the malignant share, Holm correction over all of them",
        }
        if len(rows) < MIN_WINDOW_ROWS:
            report = DriftReport(status="collecting", features={}, logit=None, malignant_share=None, **common)
        else:
            features, logit, share, drifted = evaluate(
                self.reference_features, self.reference_logits, rows, self.expected_share, self.alpha
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
        replace_file(self.report_path, report.model_dump_json())
        publish(report, self.metrics)
        if previous is None or previous.status != report.status:
            bound = logger.bind(
                status=report.status,
                previous_status=previous.status if previous else None,
                window_rows=report.window_rows,
                drifted=report.drifted,
            )
            log = bound.warning if report.status == "drift" else bound.info
            log(
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
