"""Scoring: the stored pipeline, StandardScaler then LogisticRegression, compiled to one dot product.

scikit-learn's `Pipeline.predict_proba` spends ~0.5 ms on validation and dispatch for a 30-number
row; the scaler and the regression are one affine map, folded into the coefficients once, at load:

    logit(x) = sum_i coef_i * (x_i - mean_i) / scale_i + intercept = x @ w + b

and P(malignant) = expit(logit), scipy's numerically safe sigmoid. `load_scorer` first proves the
artifact is this model (it reproduces training's own probabilities for the reference rows saved with
it), then the compiled scorer equal to it; anything else raises ModelCheckFailed with the reason.
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

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, P(malignant)) of each row. einsum, not `@`: BLAS sums in an order that depends on
        the batch's shape, so a row's answer would differ in its last bits between /predict and
        /predict_batch; einsum's loop gives every row the same answer whatever the batch."""
        from scipy.special import expit  # a dictionary lookup once loaded; the arbiter never scores

        logits = np.einsum("ij,j->i", features, self.weights) + self.bias
        return logits, expit(logits)

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """Each feature's share of the logit, coefficient x standardized value; the rest is the bias
        on the standardized scale (the logit of an average training case)."""
        return self.coefficients * (features - self.means) / self.scales

    @property
    def baseline_logit(self) -> float:
        """The logit at the training mean, where every standardized value is 0."""
        return float(self.bias + self.means @ self.weights)


def load_scorer(pipeline: object, reference: Reference) -> LinearScorer:
    """The compiled scorer of a pipeline proven to be the model training saved."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [type(step) for _, step in pipeline.steps] if isinstance(pipeline, Pipeline) else [type(pipeline)]
    if steps != [StandardScaler, LogisticRegression]:
        names = " + ".join(step.__name__ for step in steps)
        raise ModelCheckFailed(f"the artifact is a {names}, not StandardScaler + LogisticRegression")
    try:
        expected = np.asarray(pipeline.predict_proba(reference.features), dtype=np.float64)[:, 1]
    except Exception as error:  # noqa: BLE001 (whatever the artifact raises, it cannot serve)
        raise ModelCheckFailed(
            f"predicting the reference rows failed: {type(error).__name__}: {error}"
        ) from None
    worst = float(np.max(np.abs(expected - reference.probabilities)))
    if not worst <= REFERENCE_TOLERANCE:
        raise ModelCheckFailed(
            f"the artifact predicts the {len(expected)} reference rows differently from training "
            f"(largest difference in P(malignant): {worst:.3g})"
        )
    (_, scaler), (_, classifier) = pipeline.steps
    if classifier.coef_.shape != (1, len(FEATURE_NAMES)) or list(classifier.classes_) != [0, 1]:
        raise ModelCheckFailed(
            f"coefficients {classifier.coef_.shape} for classes {list(classifier.classes_)}"
        )
    means = np.asarray(scaler.mean_ if scaler.with_mean else np.zeros(len(FEATURE_NAMES)), dtype=np.float64)
    scales = np.asarray(scaler.scale_ if scaler.with_std else np.ones(len(FEATURE_NAMES)), dtype=np.float64)
    coefficients = classifier.coef_[0].astype(np.float64)
    weights = coefficients / scales
    scorer = LinearScorer(
        weights, float(classifier.intercept_[0] - means @ weights), coefficients, means, scales
    )
    worst = float(np.max(np.abs(scorer.score(reference.features)[1] - expected)))
    if not worst <= COMPILED_TOLERANCE:
        raise ModelCheckFailed(f"the compiled scorer differs from the pipeline by {worst:.3g}")
    return scorer
