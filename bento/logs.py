"""Loguru logging for the service: one JSON object per line on stdout, which Kubernetes collects.

Settings (LOG_LEVEL, LOG_FILE, PREDICTION_SUMMARY_SECONDS) are described in k8s/runtime-contract.yaml.
Every line about a request carries its `request_id` and, for an authenticated caller, its `caller`
(both set by bento/edge.py). Predictions are logged one line each at DEBUG and summarised at INFO
every PREDICTION_SUMMARY_SECONDS per worker; rejected requests (the edge's refusals, and the
parser's) are logged at most REJECTIONS_PER_SECOND a second each per worker, the rest counted.
BentoML, uvicorn and circus log through the standard library; their records are routed into loguru,
so every line on stdout is JSON, with messages cut to MAX_MESSAGE characters (they can quote what a
client sent).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from loguru import logger
from pydantic import ValidationError

from bento import config
from bento.errors import cut

MAX_MESSAGE = 2000
REJECTIONS_PER_SECOND = 20
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
CALLER: ContextVar[str | None] = ContextVar("caller", default=None)
# uvicorn warns at every upgrade offer it declines (`h2c`, which some clients make on every request;
# `websocket`, which the service never takes: bento/hooks.py), the start of each message quiets it.
_QUIET = ("Unsupported upgrade request.", "No supported WebSocket library detected")
_PARSER_REFUSAL = "Invalid HTTP request received."  # uvicorn's, for each request its parser refuses


def _json_line(record: dict[str, Any]) -> str:
    extra = record["extra"]
    entry = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "logger": extra.get("logger", record["name"]),
        "message": record["message"],
        "pid": record["process"].id,
        **{
            key: value
            for key, value in extra.items()
            if key != "logger" and not key.startswith("_") and value is not None
        },
    }
    if record["exception"] is not None:
        import traceback

        exception = record["exception"]
        entry["exception"] = "".join(
            traceback.format_exception(exception.type, exception.value, exception.traceback)
        )
    # Stored in extra so the format string below needs no escaping of braces.
    extra["_json"] = json.dumps(entry, default=str)
    return "{extra[_json]}\n"


def _add_request(record: dict[str, Any]) -> None:
    # A line bound with request_id=None (a summary) is about no single request.
    extra = record["extra"]
    if "request_id" not in extra:
        extra["request_id"] = REQUEST_ID.get()
        extra.setdefault("caller", CALLER.get())


class _InterceptHandler(logging.Handler):
    """Forward standard-library records to loguru (the recipe from loguru's documentation)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], ValidationError):
            return  # BentoML logs a client's validation error with a traceback quoting the input
        if isinstance(record.msg, str) and record.msg.startswith(_QUIET):
            return
        if record.msg == _PARSER_REFUSAL:  # a client's malformed request: rate-limited as the edge's refusals
            _parser_refusals.log("WARNING", record.msg, logger=record.name)
            return
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.bind(logger=record.name).opt(exception=record.exc_info).log(
            level, cut(record.getMessage(), MAX_MESSAGE)
        )


def configure() -> None:
    """Idempotent: BentoML's worker calls its own logging setup before importing the service."""
    logger.remove()
    logger.configure(patcher=_add_request)
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


class Rejections:
    """Log lines about rejected requests, at most `per_second` a second; the rest are counted, and
    the next line logged says how many were left out."""

    def __init__(self, on_suppressed: Callable[[], None], per_second: int = REJECTIONS_PER_SECOND) -> None:
        self.per_second = per_second
        self.on_suppressed = on_suppressed
        self.second = 0
        self.logged = self.suppressed = 0

    def log(self, level: str, message: str, exception: BaseException | None = None, **fields: Any) -> None:
        second = int(time.monotonic())
        if second != self.second:
            self.second, self.logged = second, 0
        if self.logged >= self.per_second:
            self.suppressed += 1
            self.on_suppressed()
            return
        self.logged += 1
        if self.suppressed:
            fields["suppressed_before"], self.suppressed = self.suppressed, 0
        logger.bind(**fields).opt(exception=exception).log(level, message)


def _count_suppressed() -> None:
    from bento.metrics import service_metrics

    service_metrics().suppressed.inc()


_parser_refusals = Rejections(_count_suppressed)


class PredictionLog:
    """One DEBUG line per prediction (when enabled), and an INFO summary per interval in each worker."""

    def __init__(self) -> None:
        self.each = logger.level(config.LOG_LEVEL).no <= logger.level("DEBUG").no
        self.since, self.labels, self.latencies = time.monotonic(), Counter(), []

    def record(self, labels: list[str], latency_ms: float) -> None:
        if self.each:
            logger.bind(rows=len(labels), **Counter(labels), latency_ms=round(latency_ms, 3)).debug(
                "predicted"
            )
        self.labels.update(labels)
        if len(self.latencies) < 10_000:  # the summary's percentiles come from at most these
            self.latencies.append(latency_ms)
        if (now := time.monotonic()) - self.since >= config.PREDICTION_SUMMARY_SECONDS:
            latencies = sorted(self.latencies)
            logger.bind(
                request_id=None,  # about no single request
                seconds=round(now - self.since, 1),
                requests=len(latencies),
                rows=sum(self.labels.values()),
                **self.labels,
                latency_ms={
                    f"p{p}": round(latencies[min(len(latencies) - 1, len(latencies) * p // 100)], 3)
                    for p in (50, 99)
                }
                | {"max": round(latencies[-1], 3)},
            ).info("predictions served: {} requests, {} rows", len(latencies), sum(self.labels.values()))
            self.since, self.labels, self.latencies = now, Counter(), []
