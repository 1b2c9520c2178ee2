"""The service's settings, read once from the environment, and the limits that are not settings.

Every variable is documented in k8s/runtime-contract.yaml (`env`), the one place that describes
them; tests/bento checks that this module reads exactly those, with the defaults stated there.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from wdbc import MODEL_NAME

# Limits that are properties of the API, not settings; the docs and the OpenAPI document read them here.
SINGLE_ROW_BYTES = 64 * 1024  # a row is under 2 KB of JSON even pretty-printed
MAX_BATCH_ROWS = 1000  # ~0.8 MB of JSON and a few milliseconds of model time
# An outcome's predicted_at lies within this many days before its receipt (and at most a few minutes
# after it, for clocks that disagree): the delay histogram's range, and then some.
OUTCOME_MAX_AGE_DAYS, CLOCK_SKEW_SECONDS = 366, 300
# No WDBC measurement comes near this (the largest in the data is area_worst = 4254); near float's
# limit values would overflow the model's arithmetic. The model's validity domain is far tighter.
MAX_FEATURE_VALUE = 1e6
# A request's share of MAX_CONCURRENCY grows by one per this many body bytes received.
WEIGHT_BYTES = 256 * 1024
# A chunked body may come in one piece per read plus this many, and one more per CHUNK_BYTES of it:
# h11 parses each chunk in Python (about 5 µs, what 500 bytes of a valid body cost), so a body in
# one-byte chunks would cost 100 times a valid one (bento/hooks.py).
FREE_BODY_PIECES, CHUNK_BYTES = 64, 256
RETRY_AFTER_SECONDS = 1
# A request's line and headers, at most: the HTTP parser holds a head this size while it arrives,
# and the edge refuses a larger one that arrived at once.
MAX_HEAD_BYTES = 16 * 1024
# An API request still computing after this long is answered 504.
REQUEST_TIMEOUT_SECONDS = 10
# The metrics port (bento/metrics.py) serves this many connections at once, each on a thread of the
# pod's first worker, for this many seconds at most. A scrape sums every
# worker's files (milliseconds of that worker's CPU): at most one is made per METRICS_SCRAPE_SECONDS.
METRICS_CONNECTIONS, METRICS_CLIENT_SECONDS, METRICS_SCRAPE_SECONDS = 8, 5, 0.1
# BentoML's own request timeout (its traffic setting), a backstop behind the edge's. It keeps a timer
# for every request until this long after the request began, finished or not: at a worker's full rate
# that is about 20 MB, a plateau reached after this many seconds.
BACKSTOP_TIMEOUT_SECONDS = REQUEST_TIMEOUT_SECONDS + 5


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


def _flag(name: str) -> bool:
    raw = os.environ.get(name, "false").strip().lower()
    if raw not in ("true", "false"):
        fatal(f"{name}={raw!r} must be true or false", setting=name)
    return raw == "true"


def _callers(name: str) -> frozenset[str]:
    """An allow-list: comma-separated `namespace/serviceaccount` or `namespace/*`."""
    entries = frozenset(entry.strip() for entry in os.environ.get(name, "").split(",") if entry.strip())
    for entry in entries:
        namespace, _, account = entry.partition("/")
        if not namespace or not account or "/" in account:
            fatal(f"{name}: {entry!r} is not namespace/serviceaccount or namespace/*", setting=name)
    return entries


MODEL_TAG = os.environ.get("MODEL_TAG") or f"{MODEL_NAME}:latest"
_workers = os.environ.get("SERVICE_WORKERS", "cpu_count")
WORKERS: int | str = int(_workers) if _workers.isdigit() else _workers
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
LOG_FILE = os.environ.get("LOG_FILE", "")
PREDICTION_SUMMARY_SECONDS = _number("PREDICTION_SUMMARY_SECONDS", 60)
MAX_REQUEST_BYTES = int(_number("MAX_REQUEST_BYTES", 2 * 1024 * 1024))
MAX_CONCURRENCY = int(_number("MAX_CONCURRENCY", 64))
BODY_TIMEOUT_SECONDS = _number("BODY_TIMEOUT_SECONDS", 5)
HEADER_TIMEOUT_SECONDS = _number("HEADER_TIMEOUT_SECONDS", 5)
MAX_HEADERS = int(_number("MAX_HEADERS", 100))
METRICS_PORT = int(_number("METRICS_PORT", 3001))
METRICS_HOST = os.environ.get("METRICS_HOST") or "0.0.0.0"
DRIFT_WINDOW_ROWS = int(_number("DRIFT_WINDOW_ROWS", 200))
DRIFT_EVALUATION_SECONDS = _number("DRIFT_EVALUATION_SECONDS", 30)
DRIFT_ALPHA = _number("DRIFT_ALPHA", 0.05)
# BentoML reads BENTOML_HOME itself; the service keeps its per-pod state beside BentoML's.
BENTOML_HOME = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
DRAIN_FILE = Path(os.environ.get("DRAIN_FILE") or BENTOML_HOME / "draining")
# Kubernetes sets this in every pod: error messages then name the chart's values, not make targets.
IN_KUBERNETES = "KUBERNETES_SERVICE_HOST" in os.environ

_SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
AUTH_ENABLED = _flag("AUTH_ENABLED")
AUTH_AUDIENCE = os.environ.get("AUTH_AUDIENCE") or "breast-cancer-classifier"
AUTH_ISSUER = os.environ.get("AUTH_ISSUER", "")
AUTH_DISCOVERY_URL = (
    os.environ.get("AUTH_DISCOVERY_URL") or "https://kubernetes.default.svc/.well-known/openid-configuration"
)
AUTH_JWKS_URL = os.environ.get("AUTH_JWKS_URL") or "https://kubernetes.default.svc/openid/v1/jwks"
AUTH_CREDENTIALS_FILE = Path(os.environ.get("AUTH_CREDENTIALS_FILE") or _SERVICE_ACCOUNT / "token")
AUTH_CA_FILE = Path(os.environ.get("AUTH_CA_FILE") or _SERVICE_ACCOUNT / "ca.crt")
AUTH_JWKS_REFRESH_SECONDS = _number("AUTH_JWKS_REFRESH_SECONDS", 300)
AUTH_ALLOW = {
    "diagnosis": _callers("AUTH_ALLOW_DIAGNOSIS"),
    "outcomes": _callers("AUTH_ALLOW_OUTCOMES"),
    "model data": _callers("AUTH_ALLOW_MODEL_DATA"),
}
