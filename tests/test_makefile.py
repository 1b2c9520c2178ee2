"""The Makefile makes its virtual environment or says the one command that lets it: a Python without
the venv module (Debian without python3-venv) gets the apt-get line, a venv left half-made by a run
that failed or was interrupted is made again, and a failed run leaves none behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.paths import REPO_ROOT

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def make_venv(
    venv: Path, *, pythonpath: Path | None = None, python: Path | str = sys.executable
) -> subprocess.CompletedProcess[str]:
    """`make <venv>/.made`, the step every target that needs the venv starts with."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(venv.parent)}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        ["make", "--no-print-directory", f"VENV={venv}", f"PYTHON={python}", f"{venv}/.made"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def without_ensurepip(directory: Path) -> Path:
    """A PYTHONPATH entry without ensurepip, as Debian's Python is without python3-venv."""
    package = directory / "ensurepip"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ensurepip'\")\n")
    return directory


def test_a_python_without_the_venv_module_gets_the_command_that_adds_it(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    result = make_venv(venv, pythonpath=without_ensurepip(tmp_path / "path"))
    assert result.returncode != 0
    assert (
        f"cannot make a virtual environment (no ensurepip); on Debian or Ubuntu: sudo apt-get install python{VERSION}-venv"
        in result.stderr
    )
    assert not venv.exists()


def test_a_failed_venv_leaves_nothing_behind(tmp_path: Path) -> None:
    """Debian's venv module without its ensurepip wheels writes bin/python, then fails: a Python
    that does the same, and otherwise is the real one."""
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        f'if [ "$1 $2" = "-m venv" ]; then {sys.executable} -m venv --without-pip "$3"; '
        "echo 'Error: ensurepip is not available' >&2; exit 1; fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    venv = tmp_path / "venv"
    result = make_venv(venv, python=python)
    assert result.returncode != 0
    assert "ensurepip is not available" in result.stderr
    assert not venv.exists(), "a half-made venv would make the next run fail with 'No module named pip'"


@pytest.mark.slow
def test_a_half_made_venv_is_made_again(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert (venv / "bin" / "python").exists()  # what a stopped `python -m venv` leaves: no pip

    result = make_venv(venv)

    assert result.returncode == 0, result.stderr
    assert f"{venv} has no pip (an earlier run stopped halfway): making it again" in result.stdout
    subprocess.run([venv / "bin" / "python", "-m", "pip", "--version"], check=True, capture_output=True)
    again = make_venv(venv)  # made now: nothing to do
    assert again.returncode == 0 and "making it again" not in again.stdout
