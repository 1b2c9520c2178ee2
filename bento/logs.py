"""Loguru logging for the service: one JSON object per line on stdout, which Kubernetes collects.

Settings (LOG_LEVEL, LOG_FILE, PREDICTION_SUMMARY_SECONDS) are described in k8s/runtime-contract.yaml.
Every line about a request carries its `request_id` (bento/guard.py). Predictions are logged one line
each at DEBUG and summarised at INFO every PREDICTION_SUMMARY_SECONDS per worker, so `kubectl logs`
stays readable at thousands of requests a second. BentoML, uvicorn and circus log through the
standard library; their records are routed into loguru so that every line on stdout is JSON, with
messages cut to MAX_MESSAGE characters (they can quote what a client sent).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from loguru import logger
from pydantic import ValidationError

from bento import config
from bento.errors import cut
from bento.guard import REQUEST_ID

MAX_MESSAGE = 2000
# A summary's latency percentiles come from at most this many samples per interval.
_MAX_SAMPLES = 10_000


def _json_line(record: dict[str, Any]) -> str:
    entry = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "logger": record["extra"].get("logger", record["name"]),
        "message": record["message"],
        "pid": record["process"].id,
        **{
            key: value
            for key, value in record["extra"].items()
            if key != "logger" and not key.startswith("_") and not (key == "request_id" and value is None)
        },
    }
    if record["exception"] is not None:
        entry["exception"] = "".join(_format_exception(record["exception"]))
    # Stored in extra so the format string below needs no escaping of braces.
    record["extra"]["_json"] = json.dumps(entry, default=str)
    return "{extra[_json]}\n"


def _format_exception(exception: Any) -> list[str]:
    import traceback

    return traceback.format_exception(exception.type, exception.value, exception.traceback)


def _add_request_id(record: dict[str, Any]) -> None:
    # A line bound with request_id=None (a summary) is about no single request: no id.
    if "request_id" not in record["extra"] and (request_id := REQUEST_ID.get()) is not None:
        record["extra"]["request_id"] = request_id


class _InterceptHandler(logging.Handler):
    """Forward standard-library records to loguru (the recipe from loguru's documentation)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], ValidationError):
            # BentoML logs client validation errors with a traceback that quotes the input;
            # bento/guard.py logs each rejection as a WARNING without the payload instead.
            return
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        message = cut(record.getMessage(), MAX_MESSAGE)
        logger.bind(logger=record.name).opt(exception=record.exc_info).log(level, message)


def configure() -> None:
    """Idempotent: BentoML's worker calls its own logging setup before importing the service."""
    logger.remove()
    logger.configure(patcher=_add_request_id)
    logger.add(sys.stdout, level=config.LOG_LEVEL, format=_json_line, backtrace=False, diagnose=False)
    if config.LOG_FILE:
        try:
            os.makedirs(os.path.dirname(config.LOG_FILE) or ".", exist_ok=True)
            logger.add(
                config.LOG_FILE, level=config.LOG_LEVEL, format=_json_line, rotation="10 MB", retention=5
            )
        except OSError as error:
            config.fatal(
                f"LOG_FILE {config.LOG_FILE} cannot be written: {error.strerror or error}",
                setting="LOG_FILE",
                path=config.LOG_FILE,
            )
    handler = _InterceptHandler()
    for name in ("", "bentoml", "uvicorn", "uvicorn.error", "circus"):
        std_logger = logging.getLogger(name)
        std_logger.handlers = [handler]
        std_logger.propagate = False


class PredictionLog:
    """One DEBUG line per prediction (when enabled), and an INFO summary per interval in each worker."""

    def __init__(self, interval: float = config.PREDICTION_SUMMARY_SECONDS) -> None:
        self.interval = interval
        self.each = logger.level(config.LOG_LEVEL).no <= logger.level("DEBUG").no
        self._reset(time.monotonic())

    def _reset(self, now: float) -> None:
        self.since = now
        self.requests = self.rows = self.malignant = 0
        self.latencies: list[float] = []

    def record(self, rows: int, malignant: int, latency_ms: float) -> None:
        if self.each:
            logger.bind(rows=rows, malignant=malignant, latency_ms=round(latency_ms, 3)).debug("predicted")
        self.requests += 1
        self.rows += rows
        self.malignant += malignant
        if len(self.latencies) < _MAX_SAMPLES:
            self.latencies.append(latency_ms)
        now = time.monotonic()
        if now - self.since >= self.interval:
            self._summarise(now)

    def _summarise(self, now: float) -> None:
        ordered = sorted(self.latencies)

        def percentile(share: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)

        logger.bind(
            request_id=None,
            seconds=round(now - self.since, 1),
            requests=self.requests,
            rows=self.rows,
            malignant=self.malignant,
            latency_ms={"p50": percentile(0.5), "p99": percentile(0.99), "max": round(ordered[-1], 3)},
        ).info(
            "predictions served: {} requests, {} rows, {} malignant", self.requests, self.rows, self.malignant
        )
        self._reset(now)
