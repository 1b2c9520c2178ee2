"""The service's settings, read once from the environment.

Every variable is documented in k8s/runtime-contract.yaml (`env`), the one place that describes
them; tests/bento checks that this module reads exactly those.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from wdbc import MODEL_NAME


def fatal(message: str, **fields: object) -> NoReturn:
    """One JSON log line (the shape bento/logs.py writes) and exit 2: for settings that cannot work."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "level": "CRITICAL", "logger": __name__}
    print(json.dumps({**entry, "message": message, "pid": os.getpid(), **fields}), flush=True)
    sys.exit(2)


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        fatal(f"{name}={raw!r} is not a number", setting=name)
    if not value > 0:
        fatal(f"{name}={raw!r} must be positive", setting=name)
    return value


MODEL_TAG = os.environ.get("MODEL_TAG") or f"{MODEL_NAME}:latest"
_workers = os.environ.get("SERVICE_WORKERS", "cpu_count")
WORKERS: int | str = int(_workers) if _workers.isdigit() else _workers
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
LOG_FILE = os.environ.get("LOG_FILE", "")
PREDICTION_SUMMARY_SECONDS = _number("PREDICTION_SUMMARY_SECONDS", 60)
MAX_REQUEST_BYTES = int(_number("MAX_REQUEST_BYTES", 2 * 1024 * 1024))
MAX_CONCURRENCY = int(_number("MAX_CONCURRENCY", 64))
BODY_TIMEOUT_SECONDS = _number("BODY_TIMEOUT_SECONDS", 5)
DRIFT_WINDOW_ROWS = int(_number("DRIFT_WINDOW_ROWS", 200))
DRIFT_EVALUATION_SECONDS = _number("DRIFT_EVALUATION_SECONDS", 30)
DRIFT_ALPHA = _number("DRIFT_ALPHA", 0.05)
# BentoML reads BENTOML_HOME itself; the service keeps its per-pod state beside BentoML's.
BENTOML_HOME = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
DRAIN_FILE = Path(os.environ.get("DRAIN_FILE") or BENTOML_HOME / "draining")
# Kubernetes sets this in every pod: error messages then name the chart's values, not make targets.
IN_KUBERNETES = "KUBERNETES_SERVICE_HOST" in os.environ
