"""Promotion, export and import with real models trained into temporary stores (training/promote.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest

from harness.paths import REPO_ROOT
from tests.training.conftest import bentoml_store
from training import promote
from training import train as training
from training.dataset import Dataset, load_csv
from training.evaluation import QUALITY_GATE, TrainingRun
from training.registry import Registry, RegistryError
from wdbc import ModelMetadata


def saved(run: TrainingRun) -> str:
    """Save a run into the current store, gate or no gate (training.train.save); its exact tag."""
    return str(training.save(run).tag)


def decisions(registry: Registry) -> list[str]:
    return [f"{entry['outcome']} {entry['candidate']}" for entry in registry.history()]


def scores(holdout_recall: float, **means: float) -> promote.Scores:
    """Scores whose every fold has the given value of each metric (default: comfortably past the gate)."""
    values = {name: means.get(name, minimum + 0.02) for name, minimum in QUALITY_GATE.items()}
    return promote.Scores("breast_cancer:x", pd.DataFrame([values] * 25), holdout_recall)


def test_the_rule_forgives_a_shortfall_within_the_tolerance_only() -> None:
    promoted = scores(0.95, accuracy=0.975)
    assert promote.refusals(scores(0.95, accuracy=0.975), promoted) == []
    assert promote.refusals(scores(0.96, accuracy=0.98), promoted) == []
    assert promote.refusals(scores(0.95, accuracy=0.971), promoted) == []  # 0.004 below
    (reason,) = promote.refusals(scores(0.95, accuracy=0.969), promoted)  # 0.006 below
    assert reason.startswith("accuracy: cross-validated mean 0.9690 is 0.0060 below")
    # Held-out recall: no tolerance (one malignant row of ~42 more missed is refused).
    (reason,) = promote.refusals(scores(0.95 - 1 / 42, accuracy=0.975), promoted)
    assert reason.startswith("held-out malignant recall")


def test_the_gate_applies_with_or_without_a_promoted_model() -> None:
    failing = scores(0.99, accuracy=0.95)
    assert promote.refusals(failing, None) == ["accuracy: cross-validated mean 0.9500 < required 0.96"]
    assert "accuracy: cross-validated mean 0.9500 < required 0.96" in promote.refusals(failing, scores(0.9))
    assert promote.refusals(scores(0.9), None) == []


@pytest.mark.slow
def test_first_model_is_promoted_and_an_equal_one_replaces_it(
    store: Path, tmp_path: Path, runs: dict[str, TrainingRun], bundled_csv: Path
) -> None:
    registry = Registry(tmp_path / "registry")
    first, second = saved(runs["seed 1"]), saved(runs["seed 2"])

    assert promote.promote(first, bundled_csv, registry) == 0
    assert registry.promoted_tag() == first
    (line,) = registry.history_file.read_text().splitlines()
    entry = json.loads(line)
    assert entry["outcome"] == "promoted" and entry["promoted_before"] is None
    assert set(entry["cross_validation"]["candidate"]) == set(QUALITY_GATE)
    assert entry["dataset_sha256"] == runs["seed 1"].metadata.lineage.dataset_sha256
    # The same recipe with another seed is scored on the candidate's folds: equal, so promoted.
    assert promote.promote(second, bundled_csv, registry) == 0
    assert registry.promoted_tag() == second
    assert decisions(registry) == [f"promoted {first}", f"promoted {second}"]
    last = registry.history()[-1]
    assert last["promoted_before"] == first and last["seed"] == 2
    assert last["cross_validation"]["candidate"] == last["cross_validation"]["promoted"]
    assert last["cross_validation"]["folds"] == 25
    # Promoting the promoted model again changes nothing.
    assert promote.promote(second, bundled_csv, registry) == 0
    assert len(registry.history()) == 2


@pytest.mark.slow
def test_a_worse_candidate_is_refused_and_the_promoted_model_stays(
    store: Path, tmp_path: Path, runs: dict[str, TrainingRun], bundled_csv: Path
) -> None:
    registry = Registry(tmp_path / "registry")
    strong, default = saved(runs["strong, seed 1"]), saved(runs["seed 2"])
    assert promote.promote(strong, bundled_csv, registry) == 0

    # Training's own recipe passes the gate, yet scores lower than the promoted recipe on the same folds.
    assert not runs["seed 2"].gate_failures
    assert promote.promote(default, bundled_csv, registry) == 1
    assert registry.promoted_tag() == strong
    refused = registry.history()[-1]
    assert refused["outcome"] == "refused" and refused["promoted_before"] == strong
    assert any(reason.startswith("accuracy: cross-validated mean") for reason in refused["reasons"])
    means = refused["cross_validation"]
    assert means["candidate"]["accuracy"] < means["promoted"]["accuracy"] - promote.TOLERANCE


@pytest.mark.slow
def test_a_model_trained_on_shuffled_labels_is_refused(
    store: Path, tmp_path: Path, runs: dict[str, TrainingRun], bundled_csv: Path, bundled: Dataset
) -> None:
    frame = pd.read_csv(bundled_csv)
    frame["diagnosis"] = frame["diagnosis"].sample(frac=1, random_state=0).to_numpy()
    shuffled_csv = tmp_path / "shuffled.csv"
    frame.to_csv(shuffled_csv, index=False)
    run = training.train(load_csv(shuffled_csv), 3)
    assert run.gate_failures
    shuffled = saved(run)  # bypassing the gate, as a careless or hostile save would
    registry = Registry(tmp_path / "registry")
    promoted = saved(runs["seed 1"])
    assert promote.promote(promoted, bundled_csv, registry) == 0

    # On the real data nothing is compared: it is not the data the model was trained on.
    assert promote.promote(shuffled, bundled_csv, registry) == 2
    # On its own data both recipes are scored, and the candidate fails the gate.
    assert promote.promote(shuffled, shuffled_csv, registry) == 1
    assert registry.promoted_tag() == promoted
    assert decisions(registry) == [f"promoted {promoted}", f"refused {shuffled}"]
    reasons = registry.history()[-1]["reasons"]
    assert any("< required" in reason for reason in reasons)


def test_a_model_its_recipe_does_not_reproduce_is_not_compared(
    store: Path, tmp_path: Path, runs: dict[str, TrainingRun], bundled_csv: Path, capsys
) -> None:
    run = runs["seed 2"]
    # The same pipeline saved with another threshold: not what training gives on these rows.
    altered = dataclasses.replace(run, metadata=run.metadata.model_copy(update={"threshold": 0.45}))
    registry = Registry(tmp_path / "registry")
    assert promote.promote(saved(altered), bundled_csv, registry) == 2
    assert "is not what its own recipe gives" in capsys.readouterr().err
    assert registry.promoted_tag() is None and registry.history() == []


@pytest.mark.slow
def test_training_records_the_promoted_model_it_was_trained_beside(
    store: Path, tmp_path: Path, runs: dict[str, TrainingRun], bundled_csv: Path
) -> None:
    registry = Registry(tmp_path / "registry")
    common = ["--data", str(bundled_csv), "--reports-dir", str(tmp_path / "reports"), "--registry"]
    assert training.main([*common, str(registry.path)]) == 0
    first = bentoml.models.get("breast_cancer:latest")
    assert ModelMetadata.parse(first.info.metadata).lineage.compared_with is None

    assert promote.promote(str(first.tag), bundled_csv, registry) == 0
    assert training.main([*common, str(registry.path), "--seed", "5"]) == 0
    second = bentoml.models.get("breast_cancer:latest")
    assert second.tag != first.tag
    assert ModelMetadata.parse(second.info.metadata).lineage.compared_with == str(first.tag)


@pytest.mark.slow
def test_export_then_import_into_an_empty_store_gives_the_same_model(
    tmp_path: Path, runs: dict[str, TrainingRun], bundled_csv: Path, bundled: Dataset
) -> None:
    registry = Registry(tmp_path / "registry")
    with bentoml_store(tmp_path / "training-store"):
        tag = saved(runs["seed 1"])
        assert promote.promote(tag, bundled_csv, registry) == 0
        original = bentoml.models.get(tag)
        expected = bentoml.sklearn.load_model(original).predict_proba(bundled.features.to_numpy())
    serving_store = tmp_path / "serving-store"

    # As a user runs it: the store is the one BENTOML_HOME names.
    imported = _import(serving_store, registry)
    assert imported.returncode == 0, imported.stderr
    assert f"imported {tag}" in imported.stdout
    with bentoml_store(serving_store):
        (model,) = bentoml.models.list()
        assert registry.import_promoted() == (model, False)  # already there: nothing imported
        assert str(model.tag) == tag
        assert model.info.metadata == original.info.metadata
        predictions = bentoml.sklearn.load_model(model).predict_proba(bundled.features.to_numpy())
    np.testing.assert_array_equal(predictions, expected)


def test_a_changed_export_is_not_imported(
    store: Path, tmp_path: Path, runs: dict[str, TrainingRun], bundled_csv: Path
) -> None:
    registry = Registry(tmp_path / "registry")
    with bentoml_store(tmp_path / "training-store"):
        assert promote.promote(saved(runs["seed 1"]), bundled_csv, registry) == 0
    exported = registry.path / registry.promoted().file
    exported.write_bytes(exported.read_bytes() + b"\0")
    with pytest.raises(RegistryError, match="sha256 differs"):
        registry.import_promoted()
    assert bentoml.models.list() == []


def _import(home: Path, registry: Registry) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.promote", "import", "--registry", str(registry.path)],
        check=False,
        cwd=REPO_ROOT,
        env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"},
        capture_output=True,
        text=True,
        timeout=300,
    )
