"""Shared fixtures: a model trained into a throw-away BentoML store, and `bentoml serve` on a free port.

Training and serving run as subprocesses, exactly as a user runs them, with BENTOML_HOME pointing at
a temporary store so the tests never touch the project's own store.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICE = "bento.service:BreastCancerClassifier"


def skip_or_fail(message: str) -> NoReturn:
    """A missing tool skips the test on a laptop, and fails it in CI (.ci/run installs everything)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str, how_to_install: str = "run `make tools` and put .tools/bin on PATH") -> str:
    """The tool's path on PATH, or skip/fail (see skip_or_fail)."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not on PATH: {how_to_install}")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_training(bentoml_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.train", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "BENTOML_HOME": str(bentoml_home)},
        capture_output=True,
        text=True,
        timeout=600,
    )


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


def start_server(bentoml_home: Path, log_path: Path, **env: str) -> Server:
    port = free_port()
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env={**os.environ, "BENTOML_HOME": str(bentoml_home), "SERVICE_WORKERS": "1", **env},
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Server(f"http://127.0.0.1:{port}", process, log_path)


def wait_until_listening(server: Server, timeout: float = 120) -> None:
    """Wait until the server answers HTTP at all (ready or not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {server.process.returncode}:\n{server.log()}")
        try:
            httpx.get(f"{server.url}/livez", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError(f"bentoml serve did not start within {timeout} s:\n{server.log()}")


def wait_until_ready(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    wait_until_listening(server, timeout)
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
            return
        time.sleep(0.2)
    raise TimeoutError(f"bentoml serve was not ready within {timeout} s:\n{server.log()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BentoML home with one breast_cancer model trained on the bundled data."""
    home = tmp_path_factory.mktemp("bentoml-home")
    workdir = tmp_path_factory.mktemp("training")
    csv = workdir / "breast-cancer.csv"
    subprocess.run([sys.executable, "-m", "training.dataset", "--output", str(csv)], cwd=REPO_ROOT, check=True)
    result = run_training(home, "--data", str(csv), "--reports-dir", str(workdir / "reports"))
    assert result.returncode == 0, result.stdout + result.stderr
    return home


@pytest.fixture(scope="session")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    logs = tmp_path_factory.mktemp("serve")
    # LOG_FILE on, as a user asking for the rotating file would: tests read both stdout and the file.
    server = start_server(model_store, logs / "serve.log", LOG_FILE=str(logs / "logs" / "api.log"))
    try:
        wait_until_ready(server)
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
