"""The repository's files, named once."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "charts" / "breast-cancer-classifier"
RUNTIME_CONTRACT = REPO_ROOT / "k8s" / "runtime-contract.yaml"
SERVICE = "bento.service:BreastCancerClassifier"


@functools.cache
def runtime_contract() -> dict[str, Any]:
    """k8s/runtime-contract.yaml: what the image promises the chart (port, uid, probes, paths, env)."""
    return yaml.safe_load(RUNTIME_CONTRACT.read_text())


@functools.cache
def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


@functools.cache
def project_version() -> str:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
