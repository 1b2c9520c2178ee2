"""The service's Prometheus metrics, the pod's metrics port, and the cleanup after a dead worker.

BentoML's own request metrics are off (bento/service.py): they label requests by the raw path, a
series for every path a client invents. The edge counts requests by route instead, and every label
here takes values from a fixed set (routes, status codes, feature names, diagnoses, test names, the
served model's tag, allowed callers), never from what a client sends.

Workers are separate processes, so prometheus_client runs in multiprocess mode in the directory
BentoML prepares (PROMETHEUS_MULTIPROC_DIR), and the pod's first worker serves the sum of all workers
on METRICS_PORT. The chart's alert rules and dashboard use these names.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from loguru import logger

from bento import config

# cgroup v2 counts the kernel's out-of-memory kills of this container's processes here.
MEMORY_EVENTS = Path("/sys/fs/cgroup/memory.events")


class ServiceMetrics:
    """Created in the worker, after BentoML has pointed prometheus_client at the multiprocess directory."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def drift(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(
                name, documentation, labels, multiprocess_mode="mostrecent"
            )  # the evaluator's values

        self.requests = Counter(
            "http_requests", "Requests answered, by route and status", ["endpoint", "code"]
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer, by route",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.shed = Counter(
            "requests_shed", "Requests answered 503 because the worker was at MAX_CONCURRENCY"
        )
        # A pod is ready only if all its live workers are: livemin.
        self.model_ready = Gauge(
            "model_ready",
            "1 when this worker serves a model that passed its load-time checks",
            multiprocess_mode="livemin",
        )
        self.predictions = Counter("predictions", "Rows answered, by diagnosis", ["diagnosis"])
        self.out_of_range = Counter(
            "out_of_range_features", "Feature values outside the range seen in training", ["feature", "side"]
        )
        self.refused = Counter(
            "refused_values", "Values refused: outside the model's hard limits", ["feature", "side"]
        )
        self.outcomes = Counter(
            "confirmed_outcomes",
            "Confirmed diagnoses received, by what the served model answers for the row",
            ["model_tag", "predicted", "confirmed"],
        )
        self.outcome_delay = Histogram(
            "confirmed_outcome_delay_seconds",
            "Time from a prediction to its confirmed diagnosis, for outcomes that give predicted_at",
            buckets=tuple(days * 86400 for days in (1 / 24, 1 / 4, 1, 3, 7, 14, 30, 90)),
        )
        self.auth_denied = Counter(
            "auth_denied", "Requests refused by authentication or authorization", ["reason"]
        )
        self.auth_allowed = Counter("auth_allowed", "Authenticated requests of allowed callers", ["identity"])
        self.suppressed = Counter("log_lines_suppressed", "Rejection log lines left out by the rate limit")
        self.drift_status = drift(
            "input_drift_status", "1 when the last drift evaluation found drift, else 0"
        )
        self.drift_p_value = drift(
            "input_drift_p_value", "p-value of each drift test (uncorrected)", ("test",)
        )
        self.drift_statistic = drift("input_drift_statistic", "statistic of each drift test", ("test",))
        self.drift_window_rows = drift("input_drift_window_rows", "live rows in the pod's drift window")
        self.drift_malignant_share = drift(
            "input_drift_malignant_share", "share of malignant predictions in the window"
        )
        self.drift_evaluated_at = drift(
            "input_drift_last_evaluation_timestamp_seconds", "Unix time of the last drift evaluation"
        )


@functools.cache
def service_metrics() -> ServiceMetrics:
    return ServiceMetrics()


class _MetricsServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection, as prometheus_client's own server, but at most METRICS_CONNECTIONS of
    them: a connection beyond is closed at once."""

    daemon_threads = True
    slots = threading.BoundedSemaphore(config.METRICS_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: the slot is free again
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # A connection has METRICS_CLIENT_SECONDS in all, silent or trickling (a socket timeout is per read).
        deadline = threading.Timer(config.METRICS_CLIENT_SECONDS, _cut, (request,))
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self.slots.release()


def _cut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already
        connection.shutdown(socket.SHUT_RDWR)


class _Head:
    """A connection's reader that ends, as if the client had closed, after MAX_HEAD_BYTES: the port
    takes GETs, and the standard library would read a head of 100 lines of 64 KiB."""

    def __init__(self, reader: Any) -> None:
        self.reader, self.left = reader, config.MAX_HEAD_BYTES

    def readline(self, size: int = -1) -> bytes:
        line = self.reader.readline(self.left if size < 0 else min(size, self.left)) if self.left > 0 else b""
        self.left -= len(line)
        return line

    def read(self, size: int = -1) -> bytes:
        return b""  # a GET has no body

    def close(self) -> None:
        self.reader.close()


class _MetricsHandler(WSGIRequestHandler):
    def setup(self) -> None:
        super().setup()
        self.rfile = _Head(self.rfile)

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing: Prometheus scrapes are not worth a line each."""


def _paced(app: Callable) -> Callable:
    """The WSGI app, making one scrape at a time and at most one per METRICS_SCRAPE_SECONDS: scrapes in
    a loop wait their turn (Prometheus scrapes every 10 s or more)."""
    lock, last = threading.Lock(), [0.0]

    def paced(environ: dict, start_response: Callable) -> Any:
        with lock:
            time.sleep(max(0.0, last[0] + config.METRICS_SCRAPE_SECONDS - time.monotonic()))
            last[0] = time.monotonic()
            return app(environ, start_response)

    return paced


def serve_pod_metrics() -> None:
    """Serve every worker's metrics, summed, on METRICS_PORT (threads of this worker): prometheus_client's
    WSGI app, behind a server that bounds what a client can hold (its own server does not)."""
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    _MetricsServer.address_family = socket.AF_INET6 if ":" in config.METRICS_HOST else socket.AF_INET
    server = make_server(
        config.METRICS_HOST,
        config.METRICS_PORT,
        _paced(make_wsgi_app(registry)),
        _MetricsServer,
        _MetricsHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    logger.info("metrics on {}:{}/metrics", config.METRICS_HOST, config.METRICS_PORT)


def forget_dead_workers() -> None:
    """Remove the gauges of workers that ended without shutting down, and say so. Their counters and
    histograms stay: they are part of the pod's totals, which must never go down."""
    directory = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""))
    for pid in sorted({int(path.stem.rpartition("_")[2]) for path in directory.glob("gauge_*_*.db")}):
        try:
            os.kill(pid, 0)
            continue  # alive (this worker included)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        for path in directory.glob(f"gauge_*_{pid}.db"):
            path.unlink(missing_ok=True)
        why = "the kernel killed a process of this pod for memory" if _oom_killed() else "killed or crashed"
        logger.bind(previous_pid=pid).warning("a worker (pid {}) ended without shutting down: {}", pid, why)


def _oom_killed() -> bool:
    try:
        fields = dict(line.split(" ", 1) for line in MEMORY_EVENTS.read_text().splitlines())
        return int(fields.get("oom_kill", "0")) > 0
    except (OSError, ValueError):
        return False
