"""Shared fixtures: a model trained into a throw-away BentoML store, and `bentoml serve` on a free port.

Training and serving run as subprocesses, exactly as a user runs them, with BENTOML_HOME pointing at
a temporary store so the tests never touch the project's own store. The server lifecycle itself
lives in harness/servers.py, shared with the benchmark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from harness.paths import REPO_ROOT, SERVICE
from harness.servers import Server, serving, start_service


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


def run_training(bentoml_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.train", *args],
        check=False,
        cwd=REPO_ROOT,
        env={**os.environ, "BENTOML_HOME": str(bentoml_home)},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BentoML home with one breast_cancer model trained on the bundled data."""
    home = tmp_path_factory.mktemp("bentoml-home")
    workdir = tmp_path_factory.mktemp("training")
    csv = workdir / "breast-cancer.csv"
    subprocess.run(
        [sys.executable, "-m", "training.dataset", "--output", str(csv)], cwd=REPO_ROOT, check=True
    )
    # An empty registry of its own: the project's registry/ (if any) must not leak into the tests.
    result = run_training(
        home,
        "--data",
        str(csv),
        "--reports-dir",
        str(workdir / "reports"),
        "--registry",
        str(workdir / "registry"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return home


@contextmanager
def own_server(
    model_store: Path,
    tmp_path_factory: pytest.TempPathFactory,
    ready: bool = True,
    service: str = SERVICE,
    **env: str,
) -> Iterator[Server]:
    """`bentoml serve` on its own copy of the store (BentoML empties a home's metrics at every start,
    so servers never share one), stopped afterwards."""
    workdir = tmp_path_factory.mktemp("server")
    home = workdir / "bentoml"
    shutil.copytree(model_store, home, ignore=shutil.ignore_patterns("prometheus_multiproc_dir", "pod-*"))
    server = start_service(home, workdir / "serve.log", service, **env)
    with serving(server, ready_path="/readyz" if ready else None):
        yield server


@pytest.fixture(scope="session")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session server's LOG_FILE (in a directory that does not exist yet: the service creates it)."""
    return tmp_path_factory.mktemp("serve") / "logs" / "api.log"


@pytest.fixture(scope="session")
def server(model_store: Path, log_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # LOG_FILE on, as a user asking for the rotating file would: tests read both stdout and the file.
    # Summaries every second and drift evaluations as often, so the tests see them.
    settings = {"PREDICTION_SUMMARY_SECONDS": "1", "DRIFT_EVALUATION_SECONDS": "1"}
    with own_server(model_store, tmp_path_factory, LOG_FILE=str(log_file), **settings) as server:
        yield server


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Skipped tests, grouped by reason, and the command that installs what they need: a bare machine
    otherwise passes with whole groups (the container image, the browser, Prometheus) silently unrun."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if not reasons:
        return
    terminalreporter.section("skipped groups")
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{count:4d} skipped: {reason}")
    # README.md's line for the full suite: the one apt-get install line naming the most packages.
    readme = (REPO_ROOT / "README.md").read_text()
    lines = [line.split("#")[0].strip() for line in readme.splitlines() if "apt-get install" in line]
    if lines:
        terminalreporter.write_line("To run them: install what the full suite uses, then make test again:")
        terminalreporter.write_line(f"  {max(lines, key=lambda line: len(line.split()))}")
