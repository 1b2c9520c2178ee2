"""Train, gate and save the breast-cancer diagnosis model.

    python -m training.train [--data data/breast-cancer.csv] [--seed 42]

Steps: read and validate the CSV (written from scikit-learn's copy when the default path is
absent); stratified train/test split; gate on repeated stratified cross-validation of the training
part; fit StandardScaler + LogisticRegression on the whole training part with a decision threshold
chosen from cross-validated probabilities; report on the held-out part; save to the BentoML model
store with metadata. A failed gate exits 1 and saves nothing.
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import (
    RepeatedStratifiedKFold,
    StratifiedKFold,
    cross_val_predict,
    train_test_split,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from bento.features import BENIGN_LABEL, FEATURE_NAMES, MALIGNANT_LABEL, MODEL_NAME
from training import report
from training.dataset import DEFAULT_CSV, Dataset, DatasetError, load_csv, write_csv

DEFAULT_SEED = 42
TEST_SIZE = 0.2
CV_FOLDS = 5
CV_REPEATS = 5
# Missing a malignant tumour costs far more than a false alarm, so the threshold maximises the F-beta
# score with beta = 2 (recall weighs twice precision), and is never above the usual 0.5.
THRESHOLD_F_BETA = 2.0
QUALITY_GATE = {"accuracy": 0.96, "recall_malignant": 0.95, "roc_auc": 0.99}
CLASS_NAMES = [BENIGN_LABEL, MALIGNANT_LABEL]  # index = label code


@dataclass(frozen=True)
class TrainedModel:
    pipeline: Pipeline
    threshold: float


@dataclass(frozen=True)
class TrainingRun:
    model: TrainedModel
    metadata: dict[str, Any]  # saved with the model
    gate_failures: list[str]
    holdout_labels: np.ndarray  # for the report's plots
    holdout_probabilities: np.ndarray


def make_pipeline(seed: int) -> Pipeline:
    return Pipeline(
        [
            ("scaler", StandardScaler()),
            ("classifier", LogisticRegression(max_iter=5000, random_state=seed)),
        ]
    )


def choose_threshold(features: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """The threshold maximising F2 on out-of-fold probabilities of these rows only."""
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(
        make_pipeline(seed), features, labels, cv=folds, method="predict_proba"
    )[:, 1]
    return best_f_beta_threshold(probabilities, labels)


def best_f_beta_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float:
    # Sweep every candidate threshold at once: sorted descending, "predict malignant" for the
    # first k rows gives the true and false positives as cumulative sums.
    order = np.argsort(-probabilities, kind="stable")
    ranked, positives = probabilities[order], labels[order] == 1
    true_pos = np.cumsum(positives)
    false_pos = np.cumsum(~positives)
    false_neg = positives.sum() - true_pos
    beta2 = THRESHOLD_F_BETA**2
    f_beta = (1 + beta2) * true_pos / ((1 + beta2) * true_pos + beta2 * false_neg + false_pos)
    # A threshold only makes sense at the last row of a run of equal probabilities.
    last_of_tie = np.append(ranked[1:] != ranked[:-1], True)
    candidates = last_of_tie & (ranked <= 0.5)
    if not candidates.any():
        return 0.5
    return float(ranked[np.flatnonzero(candidates)[np.argmax(f_beta[candidates])]])


def fit(features: np.ndarray, labels: np.ndarray, seed: int) -> TrainedModel:
    threshold = choose_threshold(features, labels, seed)
    return TrainedModel(make_pipeline(seed).fit(features, labels), threshold)


def score(model: TrainedModel, features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    probabilities = model.pipeline.predict_proba(features)[:, 1]
    predictions = (probabilities >= model.threshold).astype(int)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "recall_malignant": float(recall_score(labels, predictions, pos_label=1)),
        "roc_auc": float(roc_auc_score(labels, probabilities)),
    }


def cross_validate(features: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, dict[str, float]]:
    """Repeated stratified CV; the threshold is chosen inside each fit, from its own training folds."""
    folds = RepeatedStratifiedKFold(n_splits=CV_FOLDS, n_repeats=CV_REPEATS, random_state=seed)
    scores = [
        score(fit(features[train], labels[train], seed), features[test], labels[test])
        for train, test in folds.split(features, labels)
    ]
    frame = pd.DataFrame(scores)
    return {name: {"mean": float(frame[name].mean()), "std": float(frame[name].std())} for name in frame}


def gate_failures(cv_metrics: dict[str, dict[str, float]]) -> list[str]:
    return [
        f"{name}: cross-validated mean {cv_metrics[name]['mean']:.4f} < required {minimum}"
        for name, minimum in QUALITY_GATE.items()
        if cv_metrics[name]["mean"] < minimum
    ]


def evaluate_holdout(model: TrainedModel, features: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    probabilities = model.pipeline.predict_proba(features)[:, 1]
    predictions = (probabilities >= model.threshold).astype(int)
    per_class = classification_report(
        labels, predictions, labels=[0, 1], target_names=CLASS_NAMES, output_dict=True, zero_division=0
    )
    return {
        "rows": len(labels),
        "accuracy": float(accuracy_score(labels, predictions)),
        "roc_auc": float(roc_auc_score(labels, probabilities)),
        "per_class": {
            name: {metric: float(per_class[name][metric]) for metric in ("precision", "recall", "f1-score", "support")}
            for name in CLASS_NAMES
        },
        # rows: true benign, true malignant; columns: predicted benign, predicted malignant
        "confusion_matrix": confusion_matrix(labels, predictions, labels=[0, 1]).tolist(),
        "classification_report": classification_report(
            labels, predictions, labels=[0, 1], target_names=CLASS_NAMES, digits=4, zero_division=0
        ),
        "probabilities": probabilities,
    }


def feature_statistics(features: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-feature training ranges and moments, for range checks and drift monitoring."""
    columns = {
        "min": features.min(axis=0),
        "max": features.max(axis=0),
        "mean": features.mean(axis=0),
        "std": features.std(axis=0, ddof=1),
    }
    return {
        name: {key: float(values[index]) for key, values in columns.items()}
        for index, name in enumerate(FEATURE_NAMES)
    }


def train(data: Dataset, seed: int) -> TrainingRun:
    """Everything but the side effects (saving, reporting)."""
    # The matrices are tiny: BLAS threads only add contention (measured 5x slower when on).
    with threadpool_limits(limits=1):
        return _train(data, seed)


def _train(data: Dataset, seed: int) -> TrainingRun:
    # Plain arrays in FEATURE_NAMES order: the service feeds the model the same way.
    train_x, test_x, train_y, test_y = train_test_split(
        data.features.to_numpy(), data.labels.to_numpy(), test_size=TEST_SIZE, stratify=data.labels, random_state=seed
    )
    cv_metrics = cross_validate(train_x, train_y, seed)
    failures = gate_failures(cv_metrics)
    model = fit(train_x, train_y, seed)
    holdout = evaluate_holdout(model, test_x, test_y)
    metadata = {
        "threshold": model.threshold,
        "feature_names": list(FEATURE_NAMES),
        "metrics": {
            "cross_validation": cv_metrics,
            "holdout": {key: value for key, value in holdout.items() if key != "probabilities"},
        },
        "quality_gate": QUALITY_GATE,
        "feature_stats": feature_statistics(train_x),
        "dataset_sha256": data.sha256,
        "dataset_rows": len(data),
        "train_rows": len(train_y),
        "test_rows": len(test_y),
        "seed": seed,
        "sklearn_version": sklearn.__version__,
        "bentoml_version": bentoml.__version__,
        "python_version": platform.python_version(),
    }
    return TrainingRun(model, metadata, failures, test_y, holdout["probabilities"])


def save(model: TrainedModel, metadata: dict[str, Any]) -> bentoml.Model:
    return bentoml.sklearn.save_model(
        MODEL_NAME,
        model.pipeline,
        metadata=metadata,
        labels={"framework": "scikit-learn", "task": "binary-classification"},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_CSV, help="WDBC-layout CSV (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)

    if not args.data.exists() and args.data == DEFAULT_CSV:
        print(f"{args.data} not found: writing it from scikit-learn's bundled copy")
        write_csv(args.data)
    try:
        data = load_csv(args.data)
    except (DatasetError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    run = train(data, args.seed)
    print(report.summary(run.metadata))
    if run.gate_failures:
        print("quality gate FAILED, nothing saved:\n  " + "\n  ".join(run.gate_failures), file=sys.stderr)
        return 1

    saved = save(run.model, run.metadata)
    report_dir = report.write(args.reports_dir / saved.tag.version, str(saved.tag), run)
    print(f"quality gate passed; saved {saved.tag} to {bentoml.models.get(saved.tag).path}")
    print(f"report: {report_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
