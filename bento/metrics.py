"""The service's own Prometheus metrics, beside BentoML's `bentoml_service_request_*`.

Created in the worker (the service's __init__), after BentoML has pointed prometheus_client at the
pod's multiprocess directory. Every label takes values from a fixed set (feature names, diagnoses,
test names), never from what a client sends, so the series count is bounded whatever arrives.
The chart's alert rules and dashboard use these names (tests/monitoring checks each one exists).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any


@dataclass
class ServiceMetrics:
    model_ready: Any
    predictions: Any
    out_of_range: Any
    shed: Any
    unrouted: Any
    drift_status: Any
    drift_p_value: Any
    drift_statistic: Any
    drift_window_rows: Any
    drift_malignant_share: Any
    drift_evaluated_at: Any

    @classmethod
    def create(cls) -> ServiceMetrics:
        from prometheus_client import Counter, Gauge

        def drift_gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Any:
            # The evaluating worker's last values win pod-wide.
            return Gauge(name, documentation, list(labels), multiprocess_mode="mostrecent")

        return cls(
            # A pod is ready only if all its live workers are: livemin.
            model_ready=Gauge(
                "model_ready",
                "1 when this worker serves a model that passed its load-time checks",
                multiprocess_mode="livemin",
            ),
            predictions=Counter("predictions", "Rows diagnosed, by diagnosis", ["diagnosis"]),
            out_of_range=Counter(
                "out_of_range_features",
                "Feature values outside the range seen in training (the model extrapolates)",
                ["feature", "side"],
            ),
            shed=Counter("requests_shed", "Requests answered 503 because the worker was at MAX_CONCURRENCY"),
            unrouted=Counter(
                "requests_unrouted", "Requests to unknown paths or with a method a path does not allow"
            ),
            drift_status=drift_gauge(
                "input_drift_status", "1 when the last drift evaluation found drift, else 0"
            ),
            drift_p_value=drift_gauge(
                "input_drift_p_value", "p-value of each drift test (uncorrected)", ("test",)
            ),
            drift_statistic=drift_gauge("input_drift_statistic", "statistic of each drift test", ("test",)),
            drift_window_rows=drift_gauge("input_drift_window_rows", "live rows in the pod's drift window"),
            drift_malignant_share=drift_gauge(
                "input_drift_malignant_share", "share of malignant predictions in the drift window"
            ),
            drift_evaluated_at=drift_gauge(
                "input_drift_last_evaluation_timestamp_seconds", "Unix time of the last drift evaluation"
            ),
        )


@functools.cache
def service_metrics() -> ServiceMetrics:
    """This worker's metrics, created on first use (after BentoML has set up Prometheus' multiprocess mode)."""
    return ServiceMetrics.create()
