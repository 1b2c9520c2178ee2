"""Scoring a fitted model: cross-validation for the gate, the held-out part once for the report.

Held-out predictions and metrics are computed here, once, and handed to the metadata and the report.
What a training run produced (TrainingRun) is defined here too, so that the report can take it
without importing training.train.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import Pipeline

from training.domain import DomainFit
from wdbc import CLASS_LABELS, ModelMetadata, Reference
from wdbc.metadata import ClassScores, CrossValidated, Holdout

CV_FOLDS = 5
CV_REPEATS = 5
# Gated on the cross-validated means: the ~114-row held-out part is too small to gate on.
QUALITY_GATE = {"accuracy": 0.96, "recall_malignant": 0.95, "roc_auc": 0.99}


@dataclass(frozen=True)
class TrainedModel:
    pipeline: Pipeline
    threshold: float

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return self.pipeline.predict_proba(features)[:, 1]


def score(model: TrainedModel, features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    probabilities = model.probabilities(features)
    predictions = (probabilities >= model.threshold).astype(int)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "recall_malignant": float(recall_score(labels, predictions, pos_label=1)),
        "roc_auc": float(roc_auc_score(labels, probabilities)),
    }


def cv_folds(seed: int) -> RepeatedStratifiedKFold:
    """The gate's folds: the same seed gives the same folds, so two recipes can be compared fold by fold."""
    return RepeatedStratifiedKFold(n_splits=CV_FOLDS, n_repeats=CV_REPEATS, random_state=seed)


def fold_scores(
    fit: Callable[[np.ndarray, np.ndarray], TrainedModel], features: np.ndarray, labels: np.ndarray, seed: int
) -> pd.DataFrame:
    """One row of scores per fold; the model (threshold included) is fitted on each fold's training rows."""
    return pd.DataFrame(
        [
            score(fit(features[train], labels[train]), features[test], labels[test])
            for train, test in cv_folds(seed).split(features, labels)
        ]
    )


def summarise(scores: pd.DataFrame) -> dict[str, CrossValidated]:
    return {
        name: CrossValidated(mean=float(scores[name].mean()), std=float(scores[name].std()))
        for name in scores
    }


def gate_failures(cv_metrics: dict[str, CrossValidated]) -> list[str]:
    return [
        f"{name}: cross-validated mean {cv_metrics[name].mean:.4f} < required {minimum}"
        for name, minimum in QUALITY_GATE.items()
        if cv_metrics[name].mean < minimum
    ]


@dataclass(frozen=True)
class HoldoutEvaluation:
    features: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    predictions: np.ndarray
    metrics: Holdout
    average_precision: float  # area under the precision-recall curve (report only, not in the metadata)
    report: str  # scikit-learn's classification report, as text


def evaluate_holdout(model: TrainedModel, features: np.ndarray, labels: np.ndarray) -> HoldoutEvaluation:
    probabilities = model.probabilities(features)
    predictions = (probabilities >= model.threshold).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=[0, 1], zero_division=0
    )
    metrics = Holdout(
        rows=len(labels),
        accuracy=float(accuracy_score(labels, predictions)),
        roc_auc=float(roc_auc_score(labels, probabilities)),
        per_class={
            name: ClassScores(
                precision=float(precision[code]),
                recall=float(recall[code]),
                f1=float(f1[code]),
                support=int(support[code]),
            )
            for code, name in enumerate(CLASS_LABELS)
        },
        confusion_matrix=confusion_matrix(labels, predictions, labels=[0, 1]).tolist(),
    )
    text = classification_report(
        labels, predictions, labels=[0, 1], target_names=list(CLASS_LABELS), digits=4, zero_division=0
    )
    average_precision = float(average_precision_score(labels, probabilities))
    return HoldoutEvaluation(features, labels, probabilities, predictions, metrics, average_precision, text)


@dataclass(frozen=True)
class ThresholdChoice:
    """Why the threshold is what it is: the rule's inputs (out-of-fold probabilities of the training
    part) and parameters, kept for the report."""

    threshold: float
    beta: float  # the F-beta score's beta
    cap: float  # the threshold is never above this
    labels: np.ndarray
    probabilities: np.ndarray  # out-of-fold P(malignant) of each training row


@dataclass(frozen=True)
class TrainingRun:
    model: TrainedModel
    metadata: ModelMetadata  # saved with the model
    reference: Reference  # saved with the model (custom object); its features are the training part
    holdout: HoldoutEvaluation
    threshold_choice: ThresholdChoice
    train_labels: np.ndarray
    gate_failures: list[str]
    domain_fit: DomainFit  # the validity domain (also in metadata.domain) and the scores it was fitted on
