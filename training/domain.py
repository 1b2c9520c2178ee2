"""Fit the model's validity domain (wdbc.domain.ValidityDomain) on the training part.

Hard limits per feature, and a robust Mahalanobis distance with a threshold calibrated on real rows
the fit has not seen (out-of-fold rows of the training part). The choices, measured on the 569 real
rows over the 50 resplits of tests/training/test_domain.py, which measures them again on every run:

- k = RANGE_FACTOR = 3. The furthest a held-out value lies beyond its training part's range is 1.58
  ranges (the long right tails of the standard-error features). k = 3 keeps real measurements well
  clear of the limit, so a 422 means a value no case in the data comes near (a negative
  measurement, fractal_dimension_se = 1000, every feature = 1e6); milder unit mix-ups are the
  score's job.
- The score reads log(value + a tenth of the feature's median). The measurements are positive and
  right-skewed (area_se: median 24, maximum 542); on the log scale they are close to symmetric, and a
  unit mix-up (x 10, x 0.1) is the same shift on every feature it touches, whatever the row. The
  offset keeps the zeros of the concavity features finite. In the standardized linear space, the
  long tails put the calibrated threshold at about 10 times the median distance (3.4 on the log
  scale), and 70 % of rows with every feature x 0.1 go unnoticed.
- Minimum Covariance Determinant with a support fraction of 0.75: a covariance that up to a quarter
  of odd or mis-entered training rows cannot inflate. The default (about half the rows) treats much
  of the real tail as outlying, which raises the calibrated threshold and misses more single-value
  slips (one feature x 0.1: 83 % caught instead of 88 %).
- Threshold: the 99.5 % quantile of the out-of-fold distances of the training part (5 folds, each
  scored by a domain fitted on the other four). Real rows are heavy-tailed: the chi-square quantile
  a Gaussian would call for puts about a third of them outside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.covariance import MinCovDet
from sklearn.model_selection import KFold

from wdbc.domain import DomainCalibration, ValidityDomain

RANGE_FACTOR = 3.0
LOG_OFFSET_SHARE = 0.1
LOG_OFFSET_RULE = f"{LOG_OFFSET_SHARE:g} x the median of the feature's positive training values"
SUPPORT_FRACTION = 0.75
CALIBRATION_FOLDS = 5
CALIBRATION_QUANTILE = 0.995
THRESHOLD_RULE = (
    f"the {CALIBRATION_QUANTILE:.1%} quantile of the training part's out-of-fold distances "
    f"({CALIBRATION_FOLDS} folds, each scored by a domain fitted on the others)"
)


class DomainFitError(ValueError):
    """The training part does not allow a validity domain (e.g. a constant feature)."""


@dataclass(frozen=True)
class DomainFit:
    """The fitted domain and the scores it was calibrated and checked on, for the report."""

    domain: ValidityDomain
    out_of_fold: np.ndarray  # each training row scored by a domain fitted without its fold
    training: np.ndarray  # each training row scored by the final domain (in-sample)
    held_out: np.ndarray  # each held-out row scored by the final domain (inf: outside a hard limit)


@dataclass(frozen=True)
class _Ellipsoid:
    offset: np.ndarray
    center: np.ndarray
    whitening: np.ndarray

    def distances(self, features: np.ndarray) -> np.ndarray:
        whitened = (np.log(np.maximum(features, 0) + self.offset) - self.center) @ self.whitening.T
        return np.sqrt(np.einsum("ij,ij->i", whitened, whitened))


def hard_limits(features: np.ndarray, range_factor: float = RANGE_FACTOR) -> tuple[np.ndarray, np.ndarray]:
    """max(0, min - k·range) and max + k·range of each column."""
    low, high = features.min(axis=0), features.max(axis=0)
    spread = high - low
    return np.maximum(low - range_factor * spread, 0.0), high + range_factor * spread


def _ellipsoid(features: np.ndarray, seed: int) -> _Ellipsoid:
    offset = np.array(
        [
            LOG_OFFSET_SHARE * np.median(column[column > 0]) if (column > 0).any() else 1.0
            for column in features.T
        ]
    )
    logs = np.log(features + offset)
    robust = MinCovDet(support_fraction=SUPPORT_FRACTION, random_state=seed).fit(logs)
    eigenvalues, eigenvectors = np.linalg.eigh(robust.covariance_)
    if eigenvalues.min() <= eigenvalues.max() * 1e-12:
        raise DomainFitError(
            "the training part's robust covariance is singular: a feature is constant, or an exact "
            "combination of others, among the core rows"
        )
    # W with Wᵀ W = covariance⁻¹: |W (x - centre)| is the Mahalanobis distance.
    whitening = (eigenvectors / np.sqrt(eigenvalues)).T
    return _Ellipsoid(offset, robust.location_, whitening)


def fit_domain(train_features: np.ndarray, held_out_features: np.ndarray, seed: int) -> DomainFit:
    """The domain of the training part, calibrated out-of-fold; the held-out part is only scored."""
    out_of_fold = np.empty(len(train_features))
    folds = KFold(n_splits=CALIBRATION_FOLDS, shuffle=True, random_state=seed)
    for fitted, scored in folds.split(train_features):
        out_of_fold[scored] = _ellipsoid(train_features[fitted], seed).distances(train_features[scored])
    ellipsoid = _ellipsoid(train_features, seed)
    low, high = hard_limits(train_features)
    threshold = float(np.quantile(out_of_fold, CALIBRATION_QUANTILE))

    def build(held_out_refused: int, held_out_indeterminate: int) -> ValidityDomain:
        return ValidityDomain(
            range_factor=RANGE_FACTOR,
            low=tuple(map(float, low)),
            high=tuple(map(float, high)),
            log_offset=tuple(map(float, ellipsoid.offset)),
            log_offset_rule=LOG_OFFSET_RULE,
            center=tuple(map(float, ellipsoid.center)),
            whitening=tuple(tuple(map(float, row)) for row in ellipsoid.whitening),
            threshold=threshold,
            threshold_rule=THRESHOLD_RULE,
            calibration=DomainCalibration(
                folds=CALIBRATION_FOLDS,
                out_of_fold_rows=len(train_features),
                quantile=CALIBRATION_QUANTILE,
                support_fraction=SUPPORT_FRACTION,
                held_out_rows=len(held_out_features),
                held_out_refused=held_out_refused,
                held_out_indeterminate=held_out_indeterminate,
            ),
        )

    # The held-out counts are recorded in the domain, and counted by the domain itself.
    held_out = build(0, 0).scores(held_out_features) if len(held_out_features) else np.empty(0)
    refused = int(np.isinf(held_out).sum())
    domain = build(refused, int((held_out > threshold).sum()) - refused)
    return DomainFit(domain, out_of_fold, domain.scores(train_features), held_out)
