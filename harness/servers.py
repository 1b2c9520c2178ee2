"""Start an HTTP server as a child process, wait until it answers, stop it.

    with serving(start_service(bentoml_home, log_path, SERVICE_WORKERS="2")) as server: ...

One lifecycle for `bentoml serve` in the tests, the service and the reference apps in the
benchmark: start, poll a readiness path, stop with SIGTERM (SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness.paths import REPO_ROOT, SERVICE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bentoml_serve_command(port: int, service: str = SERVICE) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", service, "--host", "127.0.0.1", "--port", str(port)]


class ServerExited(RuntimeError):
    pass


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    home: Path | None = None  # BENTOML_HOME of a `bentoml serve`
    metrics_url: str | None = None  # its Prometheus endpoint (METRICS_PORT), for `bentoml serve`
    started_at: float = field(default_factory=time.monotonic)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_answering(self, path: str = "/livez", timeout: float = 120) -> float:
        """Wait until `path` answers at all (ready or not); seconds since the process started."""
        return self._wait(path, timeout, lambda status: True)

    def wait_until_ready(self, path: str = "/readyz", timeout: float = 120) -> float:
        """Wait until `path` answers 200; seconds since the process started."""
        return self._wait(path, timeout, lambda status: status == 200)

    def _wait(self, path: str, timeout: float, done) -> float:
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerExited(f"server exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            try:
                if done(httpx.get(f"{self.url}{path}", timeout=2).status_code):
                    return time.monotonic() - self.started_at
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.url}{path} not ready within {timeout} s:\n{self.log()[-5000:]}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, grace: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start(command: Sequence[str], port: int, log_path: Path, env: Mapping[str, str] | None = None) -> Server:
    """Start `command` (which listens on 127.0.0.1:port) with stdout and stderr in log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Server(f"http://127.0.0.1:{port}", process, log_path)


def start_service(bentoml_home: Path, log_path: Path, service: str = SERVICE, **env: str) -> Server:
    """`bentoml serve` of this service (or another import path) on a free port, with its own model store."""
    port, metrics_port = free_port(), free_port()
    settings = {
        "BENTOML_HOME": str(bentoml_home),
        "SERVICE_WORKERS": "1",
        "BENTOML_DO_NOT_TRACK": "true",
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(metrics_port),
        **env,
    }
    server = start(bentoml_serve_command(port, service), port, log_path, settings)
    server.home = bentoml_home
    server.metrics_url = f"http://127.0.0.1:{settings['METRICS_PORT']}/metrics"
    return server


@contextmanager
def serving(server: Server, ready_path: str | None = "/readyz", timeout: float = 120) -> Iterator[Server]:
    """Wait for `server` to be ready (or just answering, with ready_path=None); stop it on exit."""
    try:
        if ready_path is None:
            server.wait_until_answering(timeout=timeout)
        else:
            server.wait_until_ready(ready_path, timeout)
        yield server
    finally:
        server.stop()
