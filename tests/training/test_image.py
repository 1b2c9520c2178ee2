"""What scripts/build-image.sh packages (training/image.py): the exact model tag, the generated bentofile.

Building the image itself is tests/container's job; here the tag resolution runs against real
stores, and the generated bentofile is built into a bento (no image) by `bentoml build`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest
import yaml

from harness.paths import REPO_ROOT
from tests.training.conftest import bentoml_store
from training import image
from training import train as training
from training.evaluation import TrainingRun
from training.registry import Registry


def test_tag_resolution_prefers_model_tag_then_the_promoted_model_then_the_latest(
    store: Path, tmp_path: Path, runs: dict[str, TrainingRun], capsys
) -> None:
    registry = Registry(tmp_path / "registry")
    with pytest.raises(image.ImageError, match="no breast_cancer model in the store"):
        image.resolve_model_tag(None, registry)

    older = str(training.save(runs["seed 1"]).tag)
    assert image.resolve_model_tag(None, registry) == (older, f"latest in {image.store_location()}")
    registry.promote(bentoml.models.get(older))
    newer = str(training.save(runs["seed 2"]).tag)
    assert str(bentoml.models.get("breast_cancer:latest").tag) == newer

    assert image.resolve_model_tag(None, registry)[0] == older  # promoted beats latest
    assert image.resolve_model_tag(newer, registry)[0] == newer  # MODEL_TAG beats both
    assert image.resolve_model_tag("breast_cancer:latest", registry)[0] == newer  # resolved to its version
    with pytest.raises(image.ImageError, match="breast_cancer:absent: no such model"):
        image.resolve_model_tag("breast_cancer:absent", registry)

    # A promoted model this store lacks: the store's latest, with a warning saying how to import it.
    bentoml.models.delete(older)
    assert image.resolve_model_tag(None, registry)[0] == newer
    assert f"the promoted model {older} is not in the store" in capsys.readouterr().err


def test_generated_bentofile_names_exactly_one_model_and_sets_model_tag(tmp_path: Path) -> None:
    source = yaml.safe_load(image.BENTOFILE.read_text())
    generated = yaml.safe_load(image.write_bentofile("breast_cancer:abc123", tmp_path / "b.yaml").read_text())

    assert generated["models"] == ["breast_cancer:abc123"]
    assert generated["envs"] == [*source["envs"], {"name": "MODEL_TAG", "value": "breast_cancer:abc123"}]
    assert {k: v for k, v in generated.items() if k not in ("models", "envs")} == {
        k: v for k, v in source.items() if k not in ("models", "envs")
    }
    # Generating from a generated file replaces MODEL_TAG rather than adding a second one.
    again = image.bentofile(generated, "breast_cancer:def456")
    assert [env for env in again["envs"] if env["name"] == "MODEL_TAG"] == [
        {"name": "MODEL_TAG", "value": "breast_cancer:def456"}
    ]
    for inexact in ("breast_cancer:latest", "breast_cancer"):
        with pytest.raises(image.ImageError, match="exact model version"):
            image.bentofile(source, inexact)


def test_the_bento_carries_exactly_the_resolved_model(tmp_path: Path, runs: dict[str, TrainingRun]) -> None:
    """The build steps of scripts/build-image.sh up to containerize, as it runs them."""
    home = tmp_path / "bentoml-home"
    with bentoml_store(home):
        wanted = str(training.save(runs["seed 1"]).tag)
        training.save(runs["seed 2"])  # the store's latest, which the image must not pick up
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "MODEL_TAG": wanted}
    tag = _run(env, sys.executable, "-m", "training.image", "model-tag").stdout.strip()
    assert tag == wanted
    bentofile = tmp_path / "bentofile.yaml"
    _run(env, sys.executable, "-m", "training.image", "bentofile", tag, str(bentofile))
    bentoml_cli = str(Path(sys.executable).with_name("bentoml"))
    built = _run(env, bentoml_cli, "build", ".", "--bentofile", str(bentofile), "--output", "tag")
    bento_tag = built.stdout.strip().rpartition("__tag__:")[2]

    name, version = bento_tag.split(":")
    bento = yaml.safe_load((home / "bentos" / name / version / "bento.yaml").read_text())
    assert [model["tag"] for model in bento["models"]] == [wanted]
    assert {"name": "MODEL_TAG", "value": wanted, "stage": "all"} in bento["envs"]


def _run(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result
