"""The README's commands work as written (against the test server instead of port 3000)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from harness.paths import REPO_ROOT
from tests.conftest import require_tool

README = (REPO_ROOT / "README.md").read_text()
DEFAULT_URL = "http://127.0.0.1:3000"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_two_commands_come_first() -> None:
    first_block = code_blocks("bash")[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "serve"], ["make", "test"]]


def test_curl_examples_work(server) -> None:
    block = next(b for b in code_blocks("bash") if f"{DEFAULT_URL}/predict" in b and "curl" in b)
    commands = [c for c in re.sub(r"\\\n\s*", " ", block).splitlines() if c.startswith("curl")]
    assert len(commands) == 2
    predict = subprocess.run(
        commands[0].replace(DEFAULT_URL, server.url),
        shell=True,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(predict.stdout)["diagnosis"] == "malignant"
    info = subprocess.run(
        commands[1].replace(DEFAULT_URL, server.url),
        shell=True,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(info.stdout)["tag"].startswith("breast_cancer:")


def test_python_client_example_works_from_anywhere(server, tmp_path) -> None:
    """Run outside the repository, with nothing of it importable: only bentoml (and its httpx)."""
    (snippet,) = code_blocks("python")
    imported = set(re.findall(r"(?m)^(?:import|from) (\w+)", snippet))
    assert imported <= {"bentoml", "httpx"}, imported
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", snippet.replace(DEFAULT_URL, server.url)],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["malignant", "['malignant', 'benign']"]


def test_the_kubernetes_commands_render(helm) -> None:
    """No cluster here: the README's `helm upgrade --install` must at least render as written."""
    block = next(b for b in code_blocks("bash") if "helm upgrade --install" in b)
    (command,) = [
        line for line in re.sub(r"\\\n\s*", " ", block).splitlines() if line.startswith("helm upgrade")
    ]
    args = shlex.split(command)[3:]  # after `helm upgrade --install`
    rendered = subprocess.run(
        [helm, "template", *[arg for arg in args if arg not in ("--wait", "--create-namespace")]],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert "kind: Deployment" in rendered.stdout


@pytest.fixture(scope="module")
def helm() -> str:
    return require_tool("helm")
