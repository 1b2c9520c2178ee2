"""Load during a rollout: run in-cluster by the Job in k8s/load-job.yaml, with the service image's python3.

    SERVICE_URL=http://<service>.<namespace>.svc:80 EXAMPLE_FILE=row.json python3 load_test.py

scripts/e2e-kind.sh starts it, upgrades the release to another model while it runs, and fails when
it exits non-zero. It waits for GET /readyz to answer 200, prints "load: running ...", then keeps
CONNECTIONS keep-alive connections busy with POST /predict (the row in EXAMPLE_FILE) for
DURATION_SECONDS, and prints a progress line every PROGRESS_SECONDS and a last line
"summary: {json}": requests, non-2xx answers, errors by kind, reconnections, models served.

With TOKEN_FILE set (the Job's projected ServiceAccount token), every POST /predict carries
`Authorization: Bearer <token>`, read from the file for each request: the kubelet replaces the token
before it expires. /readyz needs no token.

What counts as a failure, and exits 1: an answer that is not 2xx; a 2xx answer without the expected
diagnosis (EXPECTED_DIAGNOSIS, default malignant); a connection reset or refused; the server closing
a connection without answering (http.client.RemoteDisconnected, the race a keep-alive client loses
when a pod shuts down under it); a timeout (TIMEOUT_SECONDS per request). What does not: an answer
with `Connection: close`, which a draining pod sends (k8s/runtime-contract.yaml, drainFile). The
client closes that connection and opens a new one through the Service, which no longer routes to
the draining pod; those reconnections are counted.

Standard library only: the service image is the only image the cluster can be assumed to have.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time
import urllib.request
from collections import Counter
from urllib.parse import urlsplit

# After an error a connection waits this long before the next request, so a dead service does not
# turn into a busy loop of failures (each one is still counted).
ERROR_PAUSE_SECONDS = 0.1
# Kept for the summary: enough to see when and how things broke, few enough to stay readable.
MAX_SAMPLES = 20


def error_kind(error: BaseException) -> str:
    """A short name for a failed request. RemoteDisconnected is a ConnectionResetError subclass,
    so it is tested first."""
    if isinstance(error, http.client.RemoteDisconnected):
        return "remote_disconnected"
    if isinstance(error, ConnectionResetError):
        return "reset"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, BrokenPipeError):
        return "broken_pipe"
    if isinstance(error, TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
        return "timeout"
    return type(error).__name__


class Stats:
    """Counters shared by the connection threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.requests = 0
        self.ok = 0
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.wrong_answers = 0
        self.connects = 0
        self.closed_by_server = 0
        self.models: Counter[str] = Counter()
        self.samples: list[str] = []

    def _sample(self, message: str) -> None:
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(f"t={time.monotonic() - self.started:.1f}s {message}")

    def connected(self) -> None:
        with self.lock:
            self.connects += 1

    def answered(self, status: int, body: bytes, will_close: bool, expected: str) -> None:
        with self.lock:
            self.requests += 1
            self.statuses[status] += 1
            self.closed_by_server += will_close
            if not 200 <= status < 300:
                self._sample(f"HTTP {status}: {body[:200]!r}")
                return
            try:
                answer = json.loads(body)
                diagnosis, model = answer["diagnosis"], answer.get("model_tag", "unknown")
            except (ValueError, KeyError, TypeError):
                diagnosis, model = None, "unknown"
            if diagnosis != expected:
                self.wrong_answers += 1
                self._sample(f"HTTP {status} without diagnosis {expected!r}: {body[:200]!r}")
                return
            self.ok += 1
            self.models[str(model)] += 1

    def failed(self, error: BaseException) -> None:
        with self.lock:
            self.requests += 1
            self.errors[error_kind(error)] += 1
            self._sample(f"{error_kind(error)}: {error!r}")

    def failures(self) -> int:
        with self.lock:
            non_2xx = sum(n for status, n in self.statuses.items() if not 200 <= status < 300)
            return non_2xx + self.wrong_answers + sum(self.errors.values())

    def summary(self, url: str, connections: int) -> dict:
        with self.lock:
            seconds = time.monotonic() - self.started
            return {
                "url": url,
                "connections": connections,
                "seconds": round(seconds, 1),
                "requests": self.requests,
                "ok": self.ok,
                "requests_per_second": round(self.requests / seconds, 1) if seconds else 0.0,
                "statuses": {str(status): n for status, n in sorted(self.statuses.items())},
                "non_2xx": sum(n for status, n in self.statuses.items() if not 200 <= status < 300),
                "wrong_answers": self.wrong_answers,
                "errors": dict(self.errors),
                "connects": self.connects,
                "closed_by_server": self.closed_by_server,
                "models": dict(self.models),
                "samples": list(self.samples),
            }


def request_headers(token_file: str | None) -> dict[str, str]:
    """The headers of one POST /predict; the token, if any, as the file holds it now."""
    headers = {"Content-Type": "application/json"}
    if token_file:
        with open(token_file, encoding="ascii") as token:
            headers["Authorization"] = f"Bearer {token.read().strip()}"
    return headers


def keep_busy(
    url: str,
    body: bytes,
    expected: str,
    deadline: float,
    timeout: float,
    stats: Stats,
    token_file: str | None,
) -> None:
    """One keep-alive connection, used request after request until the deadline."""
    parts = urlsplit(url)
    path = (parts.path.rstrip("/") or "") + "/predict"
    connection: http.client.HTTPConnection | None = None
    while time.monotonic() < deadline:
        if connection is None:
            connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
            stats.connected()
        try:
            connection.request("POST", path, body=body, headers=request_headers(token_file))
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as error:
            stats.failed(error)
            connection.close()
            connection = None
            time.sleep(ERROR_PAUSE_SECONDS)
            continue
        stats.answered(response.status, answer, response.will_close, expected)
        if response.will_close:  # `Connection: close` (a draining pod): reconnect, not an error
            connection.close()
            connection = None
    if connection is not None:
        connection.close()


def wait_until_ready(url: str, timeout: float) -> str | None:
    """None once GET /readyz answers 200, else the last problem when the timeout has passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return None
                problem = f"HTTP {response.status}"
        except OSError as error:  # URLError, HTTPError, timeouts and DNS failures are all OSErrors
            problem = repr(error)
        if time.monotonic() > deadline:
            return problem
        time.sleep(2)


def main() -> int:
    url = os.environ["SERVICE_URL"].rstrip("/")
    with open(os.environ["EXAMPLE_FILE"], "rb") as example_file:
        body = example_file.read()
    expected = os.environ.get("EXPECTED_DIAGNOSIS", "malignant")
    duration = float(os.environ.get("DURATION_SECONDS", "180"))
    connections = int(os.environ.get("CONNECTIONS", "8"))
    timeout = float(os.environ.get("TIMEOUT_SECONDS", "10"))
    progress = float(os.environ.get("PROGRESS_SECONDS", "10"))
    token_file = os.environ.get("TOKEN_FILE") or None

    problem = wait_until_ready(url, float(os.environ.get("READY_TIMEOUT_SECONDS", "120")))
    if problem is not None:
        print(f"load: FAILED: {url}/readyz did not answer 200: {problem}", flush=True)
        return 2
    print(
        f"load: running: {connections} keep-alive connections to {url}/predict for {duration:.0f} s",
        flush=True,
    )

    stats = Stats()
    deadline = time.monotonic() + duration
    threads = [
        threading.Thread(
            target=keep_busy, args=(url, body, expected, deadline, timeout, stats, token_file), daemon=True
        )
        for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    next_report = time.monotonic() + progress
    while True:
        for thread in threads:
            thread.join(timeout=max(0.0, next_report - time.monotonic()))
        if not any(thread.is_alive() for thread in threads):
            break
        next_report += progress
        now = stats.summary(url, connections)
        print(
            f"load: t={now['seconds']:.0f}s requests={now['requests']} failures={stats.failures()} "
            f"reconnects={now['closed_by_server']} models={now['models']}",
            flush=True,
        )

    summary = stats.summary(url, connections)
    print("summary: " + json.dumps(summary, sort_keys=True), flush=True)
    failures = stats.failures()
    if summary["requests"] == 0 or failures:
        print(f"load: FAILED: {failures} of {summary['requests']} requests failed", flush=True)
        return 1
    print(f"load: OK: {summary['requests']} requests, none failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
