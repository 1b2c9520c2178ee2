"""Scoring: the stored scikit-learn pipeline, compiled to one dot product when it is linear.

scikit-learn's `Pipeline.predict_proba` spends ~0.5 ms on validation and dispatch for a 30-number
row; StandardScaler followed by LogisticRegression is a single affine map, so the scaler is folded
into the coefficients once, at load:

    logit(x) = sum_i coef_i * (x_i - mean_i) / scale_i + intercept = x @ w + b

and P(malignant) = expit(logit), scipy's numerically safe sigmoid. `load_scorer` proves the
compiled scorer equal to the pipeline on the reference rows saved with the model before it is used,
and falls back to the pipeline itself for a model it cannot compile. Both answer `score(features)`
with logits and probabilities; the linear one also gives per-feature contributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdbc import FEATURE_NAMES, Reference

# The stored pipeline must reproduce training's own probabilities for the reference rows; BLAS and
# platform differences stay far below this.
REFERENCE_TOLERANCE = 1e-9
# The compiled scorer must match the pipeline it was compiled from to the last few bits.
COMPILED_TOLERANCE = 1e-12


class ModelCheckFailed(Exception):
    """The artifact loads but is not a working model of this contract; the message says why."""


@dataclass(frozen=True)
class LinearScorer:
    """logit = features @ weights + bias, on raw (unscaled) features."""

    weights: np.ndarray  # (30,)
    bias: float
    coefficients: np.ndarray  # (30,) on the standardized scale: the explanation's contributions
    means: np.ndarray  # (30,) the scaler's centre
    scales: np.ndarray  # (30,) the scaler's scale
    compiled = True

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, P(malignant)) of each row. einsum, not `@`: BLAS sums in an order that depends on
        the batch's shape, so a row's answer would differ in its last bits between /predict and
        /predict_batch; einsum's loop gives every row the same answer whatever the batch."""
        logits = np.einsum("ij,j->i", features, self.weights) + self.bias
        return logits, _expit(logits)

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """Each feature's share of the logit, coefficient x standardized value; the rest is the bias
        on the standardized scale (the logit of an average training case)."""
        return self.coefficients * (features - self.means) / self.scales

    @property
    def baseline_logit(self) -> float:
        """The logit at the training mean, where every standardized value is 0."""
        return float(self.bias + self.means @ self.weights)


@dataclass(frozen=True)
class PipelineScorer:
    """Any scikit-learn classifier with predict_proba, used as it is."""

    pipeline: object
    compiled = False

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, P(malignant)) of each row; the logit is the decision function when there is one."""
        probabilities = np.asarray(self.pipeline.predict_proba(features), dtype=np.float64)[:, 1]
        if hasattr(self.pipeline, "decision_function"):
            return np.asarray(self.pipeline.decision_function(features), dtype=np.float64), probabilities
        from scipy.special import logit

        return logit(np.clip(probabilities, 1e-300, 1 - 1e-16)), probabilities


Scorer = LinearScorer | PipelineScorer


def _expit(logits: np.ndarray) -> np.ndarray:
    # Imported here (a dictionary lookup once loaded): `bentoml serve` also imports this module in its
    # arbiter, which never scores, and scipy.special was an eighth of a second of that import.
    from scipy.special import expit

    return expit(logits)


def compile_linear(pipeline: object) -> LinearScorer:
    """Fold StandardScaler into LogisticRegression; TypeError or ValueError says why it cannot be."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        raise TypeError(f"not a two-step Pipeline but {type(pipeline).__name__}")
    (_, scaler), (_, classifier) = pipeline.steps
    if not isinstance(scaler, StandardScaler) or not isinstance(classifier, LogisticRegression):
        raise TypeError(f"steps are {type(scaler).__name__}, {type(classifier).__name__}")
    if classifier.coef_.shape != (1, len(FEATURE_NAMES)) or list(classifier.classes_) != [0, 1]:
        raise ValueError(f"coefficients {classifier.coef_.shape} for classes {list(classifier.classes_)}")
    means = scaler.mean_ if scaler.with_mean else np.zeros(len(FEATURE_NAMES))
    scales = scaler.scale_ if scaler.with_std else np.ones(len(FEATURE_NAMES))
    coefficients = classifier.coef_[0].astype(np.float64)
    weights = coefficients / scales
    bias = float(classifier.intercept_[0] - means @ weights)
    return LinearScorer(weights, bias, coefficients, np.asarray(means, float), np.asarray(scales, float))


def check_pipeline(pipeline: object, reference: Reference) -> np.ndarray:
    """The pipeline's P(malignant) for the reference rows, if they are the ones training recorded.

    This is the load-time proof that the artifact is this model: an estimator for other features, a
    regressor, a pickled string, or a model trained on other data fails here with the reason.
    """
    if not hasattr(pipeline, "predict_proba"):
        raise ModelCheckFailed(f"the artifact is a {type(pipeline).__name__}, which has no predict_proba")
    try:
        probabilities = np.asarray(pipeline.predict_proba(reference.features), dtype=np.float64)
    except Exception as error:  # noqa: BLE001 (whatever the artifact raises, it cannot serve)
        raise ModelCheckFailed(
            f"predicting the reference rows failed: {type(error).__name__}: {error}"
        ) from None
    if probabilities.shape != (len(reference.features), 2):
        raise ModelCheckFailed(f"predict_proba returned shape {probabilities.shape}, expected (rows, 2)")
    worst = float(np.max(np.abs(probabilities[:, 1] - reference.probabilities)))
    if not worst <= REFERENCE_TOLERANCE:
        raise ModelCheckFailed(
            f"the artifact predicts the {len(reference.features)} reference rows differently from training "
            f"(largest difference in P(malignant): {worst:.3g})"
        )
    return probabilities[:, 1]


def load_scorer(pipeline: object, reference: Reference) -> tuple[Scorer, str]:
    """The fastest scorer proven equal to the checked pipeline, and a note saying which and why."""
    expected = check_pipeline(pipeline, reference)
    try:
        linear = compile_linear(pipeline)
    except (TypeError, ValueError) as reason:
        return PipelineScorer(pipeline), f"serving the pipeline as it is: it cannot be compiled ({reason})"
    worst = float(np.max(np.abs(linear.score(reference.features)[1] - expected)))
    if not worst <= COMPILED_TOLERANCE:
        return PipelineScorer(pipeline), f"serving the pipeline: the compiled scorer differs by {worst:.3g}"
    return linear, f"compiled to one dot product (largest difference on the reference rows {worst:.1e})"
