from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import fbeta_score

from harness.paths import REPO_ROOT
from tests.conftest import run_training
from training import report
from training import train as training
from training.dataset import write_csv
from wdbc import FEATURE_NAMES, MALIGNANT_LABEL, ModelMetadata


@pytest.mark.slow
def test_gate_passes_for_most_seeds(bundled) -> None:
    """The gate is a property of the method, not of a lucky seed."""
    passed = [seed for seed in range(10) if not training.train(bundled, seed).gate_failures]
    assert len(passed) >= 8, f"gate passed only for seeds {passed}"


def test_same_data_and_seed_give_the_same_model(bundled) -> None:
    first, second = training.train(bundled, 7), training.train(bundled, 7)
    assert first.metadata == second.metadata
    np.testing.assert_array_equal(
        first.model.pipeline.predict_proba(bundled.features.to_numpy()),
        second.model.pipeline.predict_proba(bundled.features.to_numpy()),
    )


def test_metadata_records_what_later_stages_need(bundled) -> None:
    run = training.train(bundled, 3)
    metadata = run.metadata
    assert metadata.feature_names == FEATURE_NAMES
    assert metadata.lineage.dataset_sha256 == bundled.sha256
    assert metadata.lineage.seed == 3
    assert 0 < metadata.threshold <= 0.5
    stats = metadata.feature_stats["area_worst"]
    assert stats.min < stats.mean < stats.max and stats.std > 0
    holdout = metadata.metrics.holdout
    assert holdout.rows == 114
    assert sum(map(sum, holdout.confusion_matrix)) == 114
    assert set(holdout.per_class) == {"benign", "malignant"}
    for name in training.QUALITY_GATE:
        assert 0 <= metadata.metrics.cross_validation[name].mean <= 1
    # What readiness, drift and explanations need: the training rows and the model's own answers.
    assert run.reference.features.shape == (metadata.lineage.train_rows, len(FEATURE_NAMES))
    np.testing.assert_allclose(run.reference.probabilities, run.model.probabilities(run.reference.features))
    # The validity domain: fitted on the training part only, every training row within its limits.
    assert metadata.domain == run.domain_fit.domain
    assert metadata.domain.calibration.out_of_fold_rows == metadata.lineage.train_rows
    assert metadata.domain.calibration.held_out_rows == holdout.rows
    assert metadata.domain.limits_violations(run.reference.features) == []
    assert ModelMetadata.parse(metadata.to_bentoml()) == metadata


def test_threshold_search_maximises_f2() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        probabilities = np.round(rng.random(60), 2)
        labels = (rng.random(60) < probabilities).astype(int)
        threshold = training.best_f_beta_threshold(probabilities, labels)
        candidates = [t for t in np.unique(probabilities) if t <= 0.5]
        best = max(fbeta_score(labels, probabilities >= t, beta=2, zero_division=0) for t in candidates)
        assert fbeta_score(labels, probabilities >= threshold, beta=2) == pytest.approx(best)
        assert threshold <= 0.5


def test_shuffled_labels_fail_the_gate_and_save_nothing(tmp_path: Path) -> None:
    frame = pd.read_csv(write_csv(tmp_path / "good.csv"))
    frame["diagnosis"] = frame["diagnosis"].sample(frac=1, random_state=0).to_numpy()
    degraded = tmp_path / "shuffled.csv"
    frame.to_csv(degraded, index=False)
    home = tmp_path / "home"

    result = run_training(home, "--data", str(degraded), "--reports-dir", str(tmp_path / "reports"))

    assert result.returncode == 1
    assert "quality gate FAILED" in result.stderr
    assert not (home / "models" / "breast_cancer").exists()
    assert not (tmp_path / "reports").exists()


def test_training_cli_saves_model_and_report(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "data.csv")
    home = tmp_path / "home"
    result = run_training(
        home,
        *("--data", str(csv), "--reports-dir", str(tmp_path / "reports"), "--seed", "1"),
        *("--registry", str(tmp_path / "registry")),
    )
    assert result.returncode == 0, result.stderr
    versions = os.listdir(home / "models" / "breast_cancer")
    version = next(v for v in versions if v != "latest")
    report_dir = tmp_path / "reports" / version
    assert f"report: {report_dir / 'report.md'}" in result.stdout
    assert f"make promote MODEL=breast_cancer:{version}" in result.stdout
    images = (
        "roc_curve.png",
        "precision_recall.png",
        "confusion_matrix.png",
        "probabilities.png",
        "threshold.png",
        "coefficients.png",
        "domain_scores.png",
        "domain_limits.png",
    )
    for name in ("report.md", "classification_report.txt", *images):
        assert (report_dir / name).stat().st_size > 0
    assert MALIGNANT_LABEL in (report_dir / "classification_report.txt").read_text()
    report_md = (report_dir / "report.md").read_text()
    for name in images:
        assert f"]({name})" in report_md
    for section in (
        "## Class balance",
        "## Why the threshold is",
        "## Standardized coefficients",
        "## Validity domain",
    ):
        assert section in report_md
    assert "| all | 455 | 114 | 569 |" in report_md
    assert "almost collinear" in report_md and "average precision" in report_md
    assert training.THRESHOLD_RULE in report_md


def test_report_explains_the_threshold_training_chose(runs) -> None:
    run = runs["seed 1"]
    choice = run.threshold_choice
    assert choice.threshold == run.metadata.threshold
    chosen = report.threshold_scores(choice, choice.threshold)
    assert chosen["f_beta"] == pytest.approx(
        fbeta_score(choice.labels, choice.probabilities >= choice.threshold, beta=2)
    )
    # No threshold the rule allows scores a higher F2 on the same out-of-fold probabilities.
    allowed = np.unique(choice.probabilities[choice.probabilities <= choice.cap])
    best = max(fbeta_score(choice.labels, choice.probabilities >= t, beta=2) for t in allowed)
    assert chosen["f_beta"] == pytest.approx(best)


def test_report_names_size_features_almost_collinear(runs) -> None:
    correlations = report.size_correlations(runs["seed 1"].reference.features)
    assert set(correlations) == {"mean", "se", "worst"}
    assert all(0.9 < low <= high <= 1 for low, high in correlations.values())
    coefficients = report.standardized_coefficients(runs["seed 1"])
    assert list(coefficients) == list(FEATURE_NAMES)


def test_report_does_not_import_train() -> None:
    check = "import sys, training.report; sys.exit('training.train' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], cwd=REPO_ROOT, check=False).returncode == 0


def test_invalid_csv_is_reported_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,diagnosis\n1,M\n")
    result = run_training(tmp_path / "home", "--data", str(bad))
    assert result.returncode == 2
    assert "missing column(s): radius_mean" in result.stderr
    assert "Traceback" not in result.stderr
