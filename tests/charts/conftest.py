"""Fixtures for the chart tests: helm on PATH, the runtime contract, and renders cached per session.

helm and checkov come from scripts/install-tools.sh (`make tools`, which `make test` runs); make puts
.tools/bin on PATH. Without helm the chart tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.paths import CHART, runtime_contract
from tests.conftest import require_tool

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# "default" plus one entry per ci/ values file: the configurations every check runs on.
VALUES_FILES: dict[str, Path | None] = {"default": None} | {
    path.name.removesuffix("-values.yaml"): path for path in CI_VALUES
}
NAMESPACE = "ml-serving"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking `config` runs once per configuration: default values and each ci/ file."""
    if "config" in metafunc.fixturenames:
        metafunc.parametrize("config", list(VALUES_FILES))


def run_helm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["helm", *map(str, args)], capture_output=True, text=True, check=False)


@functools.cache
def _render(config: str, *extra: str) -> str:
    values = VALUES_FILES[config]
    result = run_helm(
        "template", "bcc", CHART, "--namespace", NAMESPACE, *(["--values", values] if values else []), *extra
    )
    assert result.returncode == 0, f"helm template ({config} {' '.join(extra)}) failed:\n{result.stderr}"
    return result.stdout


def _objects(config: str, *extra: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(_render(config, *extra)) if doc]


def _one(docs: list[dict], kind: str, component: str | None = None) -> dict:
    found = [
        doc
        for doc in docs
        if doc["kind"] == kind
        and (component is None or doc["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]
    assert len(found) == 1, f"expected one {kind}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


# Helpers are handed out as fixtures (not imported from this file) so the tests work under any
# pytest import mode.
@pytest.fixture(scope="session")
def helm() -> str:
    return require_tool("helm")


@pytest.fixture(scope="session")
def checkov() -> str:
    return require_tool("checkov")


@pytest.fixture(scope="session")
def render(helm):
    """render(config, *helm_args) -> `helm template` text of a VALUES_FILES configuration, cached."""
    return _render


@pytest.fixture(scope="session")
def objects(helm):
    """objects(config, *helm_args) -> the rendered objects, parsed."""
    return _objects


@pytest.fixture(scope="session")
def one():
    """one(objects, kind, component=None) -> the single object of that kind."""
    return _one


@pytest.fixture(scope="session")
def helm_run(helm):
    """helm_run(*args) -> CompletedProcess of helm (never raises)."""
    return run_helm


@pytest.fixture(scope="session")
def chart() -> Path:
    return CHART


@pytest.fixture(scope="session")
def values_files() -> dict[str, Path | None]:
    return VALUES_FILES


@pytest.fixture(scope="session")
def contract() -> dict:
    return runtime_contract()
