"""Loguru logging for the service: one JSON object per line on stdout, which Kubernetes collects.

Environment:
  LOG_LEVEL  minimum level (default INFO)
  LOG_FILE   when set (e.g. logs/api.log), also write the same JSON lines to this file, rotated at
             10 MB with 5 files kept. Rotation is per process, so with several workers a rotation
             may interleave; Kubernetes deployments use stdout.

BentoML, uvicorn and circus log through the standard library; their records are routed into loguru
so that every line on stdout is JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from loguru import logger
from pydantic import ValidationError

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
LOG_FILE = os.environ.get("LOG_FILE", "")


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
            if key != "logger" and not key.startswith("_")
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


class _InterceptHandler(logging.Handler):
    """Forward standard-library records to loguru (the recipe from loguru's documentation)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], ValidationError):
            # BentoML logs client validation errors with a traceback that quotes the input;
            # bento.errors logs each rejection as a WARNING without the payload instead.
            return
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.bind(logger=record.name).opt(exception=record.exc_info).log(level, record.getMessage())


def configure() -> None:
    """Idempotent: BentoML's worker calls its own logging setup before importing the service."""
    logger.remove()
    logger.add(sys.stdout, level=LOG_LEVEL, format=_json_line, backtrace=False, diagnose=False)
    if LOG_FILE:
        os.makedirs(os.path.dirname(LOG_FILE) or ".", exist_ok=True)
        logger.add(LOG_FILE, level=LOG_LEVEL, format=_json_line, rotation="10 MB", retention=5)
    handler = _InterceptHandler()
    for name in ("", "bentoml", "uvicorn", "uvicorn.error", "circus"):
        std_logger = logging.getLogger(name)
        std_logger.handlers = [handler]
        std_logger.propagate = False
