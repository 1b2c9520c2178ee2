"""The README's commands work as written (against the test server instead of port 3000), its sample
answers are what the service answers, and its system-package lines are the ones the checks use.
The Helm snippet is run against a real `make image` record in tests/container."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from harness.paths import REPO_ROOT
from tests.client.test_predict import public_layout
from tests.conftest import require_tool

README = (REPO_ROOT / "README.md").read_text()
DEFAULT_URL = "http://127.0.0.1:3000"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def commands(block: str) -> list[str]:
    """A block's commands, continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def apt_lines() -> list[set[str]]:
    """The packages of each `apt-get install` line of the README, in order."""
    found = []
    for block in code_blocks("bash"):
        for line in commands(block):
            words = shlex.split(line, comments=True)
            if "apt-get" in words and "install" in words:
                found.append(
                    {word for word in words[words.index("install") + 1 :] if not word.startswith("-")}
                )
    return found


def run(command: str, server_url: str) -> str:
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command.replace(DEFAULT_URL, server_url)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_same_answer(documented: dict, real: dict) -> None:
    """The README's sample is a real answer: same fields, values and diagnosis; the model version and
    the last digits of a float (another machine's arithmetic) may differ."""
    assert list(documented) == list(real)
    for key, value in documented.items():
        if key == "model_tag":
            assert value.split(":")[0] == real[key].split(":")[0]
        elif isinstance(value, float):
            assert math.isclose(value, real[key], rel_tol=1e-9, abs_tol=1e-9), (key, value, real[key])
        else:
            assert value == real[key], key


def test_two_commands_come_first() -> None:
    first_block = code_blocks("bash")[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "serve"], ["make", "test"]]


def test_one_apt_line_serves_and_one_runs_the_full_suite() -> None:
    serve, full = apt_lines()
    assert {"make", "python3-venv"} <= serve < full
    # .ci/run (a fresh CI machine) installs them too, except npm, which it installs only where the
    # machine image has none, and kubectl, which that image and GitHub's runners already have.
    ci_run = (REPO_ROOT / ".ci" / "run").read_text().replace("\\\n", " ")
    installed = set()
    for line in ci_run.splitlines():
        words = shlex.split(line, comments=True)
        if "apt-get" in words and "install" in words:
            installed |= {
                word for word in words[words.index("install") + 1 :] if not word.startswith(("-", ">"))
            }
    assert full - {"npm", "kubernetes-client"} <= installed


def test_curl_examples_answer_as_documented(server) -> None:
    require_tool("curl", "apt-get install curl")
    predict_block, batch_block = (
        b for b in code_blocks("bash") if "curl" in b and f"{DEFAULT_URL}/predict" in b
    )
    predict, model = commands(predict_block)
    (batch,) = commands(batch_block)
    documented_single, documented_batch = (json.loads(block) for block in code_blocks("json")[:2])

    assert_same_answer(documented_single, json.loads(run(predict, server.url)))
    assert json.loads(run(model, server.url))["tag"].startswith("breast_cancer:")
    real = json.loads(run(batch, server.url))
    assert len(documented_batch["predictions"]) == len(real["predictions"]) == 2
    for documented, answer in zip(documented_batch["predictions"], real["predictions"], strict=True):
        assert_same_answer(documented, answer)


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


def test_make_predict_writes_what_the_readme_shows(server, tmp_path) -> None:
    """`make predict` on the public WDBC file as distributed, against the test server."""
    (block,) = (b for b in code_blocks("bash") if "make predict" in b)
    (command,) = commands(block)
    data = public_layout(tmp_path / "rows.csv")
    port = server.url.rsplit(":", 1)[1]
    words = [word for word in shlex.split(command, comments=True) if not word.startswith("DATA=")]
    result = subprocess.run(
        [*words, f"DATA={data}", f"PORT={port}", "--no-print-directory"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    (sample,) = (b for b in code_blocks("text") if b.startswith("id,diagnosis,"))
    header, *documented = [line for line in sample.splitlines() if line != "..."]
    with (tmp_path / "rows.predictions.csv").open(newline="") as file:
        lines = list(csv.reader(file))
    assert lines[0] == header.split(",") and len(lines) == 570
    written = {line[0]: line for line in lines[1:]}
    for line in csv.reader(documented):
        real = written[line[0]]
        assert line[1] == real[1] and line[3:] == real[3:], (line, real)
        assert math.isclose(float(line[2]), float(real[2]), rel_tol=1e-9, abs_tol=1e-9), (line, real)


def test_a_run_with_skips_ends_with_the_groups_and_the_readmes_full_line(tmp_path: Path) -> None:
    """The summary tests/conftest.py adds: a bare machine sees what it did not run and how to run it."""
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "from tests.conftest import require_tool\n"
        "@pytest.mark.parametrize('n', [1, 2])\n"
        "def test_needs_a_tool(n):\n"
        "    require_tool('no-such-tool-here', 'apt-get install no-such-tool')\n"
        "def test_skips_for_another_reason():\n"
        "    pytest.skip('another reason')\n"
        "def test_runs():\n"
        "    pass\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=REPO_ROOT,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout[result.stdout.index("skipped groups") :]
    assert "   2 skipped: no-such-tool-here is not on PATH: apt-get install no-such-tool" in summary
    assert "   1 skipped: another reason" in summary
    (full_line,) = [line for line in summary.splitlines() if "apt-get install" in line and "podman" in line]
    assert set(shlex.split(full_line)) >= apt_lines()[1]
