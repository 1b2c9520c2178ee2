"""The README's commands work as written (against the test server instead of port 3000)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT

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


def test_python_client_example_works(server) -> None:
    (snippet,) = code_blocks("python")
    result = subprocess.run(
        [sys.executable, "-c", snippet.replace(DEFAULT_URL, server.url)],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["malignant", "['malignant', 'benign']"]
