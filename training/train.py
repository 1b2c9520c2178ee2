"""Train, gate and save the breast-cancer diagnosis model.

    python -m training.train [--data data/breast-cancer.csv] [--seed 42]

Steps: read and validate the CSV (written from scikit-learn's copy when the default path is
absent); stratified train/test split; gate on repeated stratified cross-validation of the training
part; fit StandardScaler + LogisticRegression on the whole training part with a decision threshold
chosen from cross-validated probabilities; score the held-out part once; fit the validity domain
on the training part (training/domain.py); save the pipeline to the BentoML model store with its
typed metadata (wdbc.ModelMetadata, the domain included) and reference rows (wdbc.Reference); write
the report. A failed gate exits 1 and saves nothing.

The model's lineage records the registry's promoted model at training time (compared_with; see
training/registry.py): `python -m training.promote promote <tag>` then decides whether it replaces it.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import sklearn
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from training import report
from training.dataset import DEFAULT_CSV, Dataset, DatasetError, load_csv, write_csv
from training.domain import fit_domain
from training.evaluation import (
    CV_FOLDS,
    QUALITY_GATE,
    ThresholdChoice,
    TrainedModel,
    TrainingRun,
    evaluate_holdout,
    fold_scores,
    gate_failures,
    summarise,
)
from training.registry import Registry, RegistryError
from wdbc import FEATURE_NAMES, MODEL_NAME, ModelMetadata, Reference
from wdbc.metadata import FeatureStats, Lineage, Metrics
from wdbc.reference import CUSTOM_OBJECT_NAME

DEFAULT_SEED = 42
TEST_SIZE = 0.2
# Missing a malignant tumour costs far more than a false alarm, so the threshold maximises the F-beta
# score with beta = 2 (recall weighs twice precision), and is never above the usual 0.5.
THRESHOLD_F_BETA = 2.0
THRESHOLD_CAP = 0.5
THRESHOLD_RULE = (
    f"maximises F{THRESHOLD_F_BETA:g} (malignant recall weighs {THRESHOLD_F_BETA:g}x precision) on "
    f"{CV_FOLDS}-fold out-of-fold probabilities of the training part, capped at {THRESHOLD_CAP}"
)


def make_pipeline(seed: int) -> Pipeline:
    return Pipeline(
        [
            ("scaler", StandardScaler()),
            ("classifier", LogisticRegression(max_iter=5000, random_state=seed)),
        ]
    )


def threshold_choice(
    features: np.ndarray, labels: np.ndarray, seed: int, recipe: BaseEstimator | None = None
) -> ThresholdChoice:
    """The threshold maximising F2 on out-of-fold probabilities of these rows only.

    recipe: the pipeline whose parameters to fit (cloned, so a fitted one serves as well; default
    make_pipeline(seed)). Promotion passes two models' stored pipelines, to refit each as training did.
    """
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(
        _recipe(recipe, seed), features, labels, cv=folds, method="predict_proba"
    )[:, 1]
    return ThresholdChoice(
        threshold=best_f_beta_threshold(probabilities, labels),
        beta=THRESHOLD_F_BETA,
        cap=THRESHOLD_CAP,
        labels=labels,
        probabilities=probabilities,
    )


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
    candidates = last_of_tie & (ranked <= THRESHOLD_CAP)
    if not candidates.any():
        return THRESHOLD_CAP
    return float(ranked[np.flatnonzero(candidates)[np.argmax(f_beta[candidates])]])


def fit(
    features: np.ndarray, labels: np.ndarray, seed: int, recipe: BaseEstimator | None = None
) -> TrainedModel:
    return _fit(features, labels, seed, recipe)[0]


def _fit(
    features: np.ndarray, labels: np.ndarray, seed: int, recipe: BaseEstimator | None
) -> tuple[TrainedModel, ThresholdChoice]:
    choice = threshold_choice(features, labels, seed, recipe)
    return TrainedModel(_recipe(recipe, seed).fit(features, labels), choice.threshold), choice


def _recipe(recipe: BaseEstimator | None, seed: int) -> BaseEstimator:
    """A fresh unfitted copy: fitting never touches the caller's (possibly stored, fitted) pipeline."""
    return make_pipeline(seed) if recipe is None else clone(recipe)


def split(data: Dataset, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training features, held-out features, training labels, held-out labels: the same for the same
    data and seed, so promotion can rebuild the split a model was trained and scored on."""
    # Plain arrays in FEATURE_NAMES order: the service feeds the model the same way.
    return train_test_split(
        data.features.to_numpy(),
        data.labels.to_numpy(),
        test_size=TEST_SIZE,
        stratify=data.labels,
        random_state=seed,
    )


def feature_statistics(features: np.ndarray) -> dict[str, FeatureStats]:
    """Per-feature training ranges and moments, for range checks and the API documentation."""
    return {
        name: FeatureStats(
            min=float(features[:, index].min()),
            max=float(features[:, index].max()),
            mean=float(features[:, index].mean()),
            std=float(features[:, index].std(ddof=1)),
        )
        for index, name in enumerate(FEATURE_NAMES)
    }


def source_commit() -> str:
    """The training code's commit, as `git describe` says it (dirty included), or 'unknown'."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            check=False,
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return "unknown"
    return described.stdout.strip() if described.returncode == 0 else "unknown"


def train(
    data: Dataset, seed: int, compared_with: str | None = None, recipe: BaseEstimator | None = None
) -> TrainingRun:
    """Everything but the side effects (saving, reporting). recipe: see threshold_choice."""
    # The matrices are tiny: BLAS threads only add contention (measured 5x slower when on).
    with threadpool_limits(limits=1):
        return _train(data, seed, compared_with, recipe)


def recipe_fold_scores(
    features: np.ndarray, labels: np.ndarray, seed: int, recipe: BaseEstimator | None = None
) -> pd.DataFrame:
    """The gate's folds scored for a recipe (training's own when None), fitted as training fits."""
    return fold_scores(lambda x, y: fit(x, y, seed, recipe), features, labels, seed)


def _train(data: Dataset, seed: int, compared_with: str | None, recipe: BaseEstimator | None) -> TrainingRun:
    train_x, test_x, train_y, test_y = split(data, seed)
    cv_metrics = summarise(recipe_fold_scores(train_x, train_y, seed, recipe))
    model, choice = _fit(train_x, train_y, seed, recipe)
    holdout = evaluate_holdout(model, test_x, test_y)
    domain_fit = fit_domain(train_x, test_x, seed)
    metadata = ModelMetadata(
        threshold=model.threshold,
        threshold_rule=THRESHOLD_RULE,
        feature_names=FEATURE_NAMES,
        training_prevalence=float(train_y.mean()),
        metrics=Metrics(cross_validation=cv_metrics, holdout=holdout.metrics),
        quality_gate=QUALITY_GATE,
        feature_stats=feature_statistics(train_x),
        domain=domain_fit.domain,
        lineage=Lineage(
            dataset_sha256=data.sha256,
            dataset_rows=len(data),
            train_rows=len(train_y),
            test_rows=len(test_y),
            seed=seed,
            source_commit=source_commit(),
            compared_with=compared_with,
            sklearn_version=sklearn.__version__,
            bentoml_version=bentoml.__version__,
            python_version=platform.python_version(),
        ),
    )
    reference = Reference(
        features=train_x,
        probabilities=model.probabilities(train_x),
        logits=model.pipeline.decision_function(train_x),
    )
    return TrainingRun(
        model, metadata, reference, holdout, choice, train_y, gate_failures(cv_metrics), domain_fit
    )


def save(run: TrainingRun) -> bentoml.Model:
    return bentoml.sklearn.save_model(
        MODEL_NAME,
        run.model.pipeline,
        metadata=run.metadata.to_bentoml(),
        custom_objects={CUSTOM_OBJECT_NAME: run.reference.to_custom_object()},
        labels={"framework": "scikit-learn", "task": "binary-classification"},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_CSV, help="WDBC-layout CSV (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"))
    parser.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="the registry whose promoted model is recorded as compared_with (default: $REGISTRY or "
        "registry/ at the repository root)",
    )
    args = parser.parse_args(argv)

    if not args.data.exists() and args.data == DEFAULT_CSV:
        print(f"{args.data} not found: writing it from scikit-learn's bundled copy")
        write_csv(args.data)
    try:
        data = load_csv(args.data)
    except (DatasetError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    try:
        promoted = Registry.at(args.registry).promoted_tag()
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    run = train(data, args.seed, compared_with=promoted)
    print(report.summary(run))
    if run.gate_failures:
        print("quality gate FAILED, nothing saved:\n  " + "\n  ".join(run.gate_failures), file=sys.stderr)
        return 1

    saved = save(run)
    report_dir = report.write(args.reports_dir / saved.tag.version, str(saved.tag), run)
    print(f"quality gate passed; saved {saved.tag} to {bentoml.models.get(saved.tag).path}")
    print(f"report: {report_dir / 'report.md'}")
    if promoted is None:
        print(f"no model promoted yet; promote this one with: make promote MODEL={saved.tag}")
    else:
        print(f"promoted model: {promoted}; compare and promote with: make promote MODEL={saved.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
