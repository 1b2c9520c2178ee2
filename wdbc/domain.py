"""The model's validity domain: the inputs it can speak to, saved with it and applied by the service.

Two checks, both fitted by training (training/domain.py) on the training part only:

- **Hard limits per feature.** Every measurement is non-negative, and a value beyond
  min - k * range or max + k * range of the training part is one no nucleus in the data comes near:
  most likely a unit or typing mistake. The service refuses such a value (422).
- **A multivariate out-of-distribution score** for rows within every limit that still look like no
  training case: the robust Mahalanobis distance of log(value + offset) from the training part's
  robust centre (Minimum Covariance Determinant). Above `threshold` the row is outside the domain
  and the service answers `indeterminate` instead of a diagnosis.

A third check is not fitted: what the features' definitions rule out (`contradictions`). The worst
value of a measurement is the mean of its three largest nuclei, so it is never below the mean of all of
them, and equals it exactly when every nucleus measures the same, which is when the standard error is
0; a contour has concave points exactly where it has concavity. A row that contradicts these is a
mistake (a column copied or swapped) that the score need not notice, and is outside the domain too.

Applying it is pure numpy on precomputed arrays (a whitening matrix W with Wᵀ W the inverse
covariance), so scoring one row costs a few microseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from wdbc.features import FEATURE_NAMES, MEASUREMENTS, STATISTICS, feature_name

# Bump when the shape or the meaning of the fields below changes.
DOMAIN_VERSION = 1

# (row, feature index, value, lowest accepted, highest accepted)
Violation = tuple[int, int, float, float, float]
# FEATURE_NAMES runs statistic by statistic (wdbc/features.py): the columns of each, as slices (views,
# cheaper than index arrays on the single-row path), one per measurement in MEASUREMENTS order.
_COLUMNS = {
    statistic: slice(i * len(MEASUREMENTS), (i + 1) * len(MEASUREMENTS))
    for i, statistic in enumerate(STATISTICS)
}
_MEAN, _SE, _WORST = _COLUMNS["mean"], _COLUMNS["se"], _COLUMNS["worst"]
_CONCAVITY, _CONCAVE_POINTS = (  # each one's mean and worst
    slice(FEATURE_NAMES.index(feature_name(m, "mean")), None, _WORST.start - _MEAN.start)
    for m in ("concavity", "concave_points")
)


class DomainCalibration(BaseModel):
    """How the score's threshold was chosen, and how the training run's held-out part fared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folds: int = Field(ge=2, description="the training part was cut into this many folds")
    out_of_fold_rows: int = Field(
        ge=1, description="training rows scored by a domain fitted without their fold"
    )
    quantile: float = Field(gt=0, le=1, description="the threshold is this quantile of those scores")
    support_fraction: float = Field(
        gt=0, le=1, description="share of the rows the Minimum Covariance Determinant fits its core to"
    )
    held_out_rows: int = Field(ge=0, description="rows of the held-out part, never used to fit or calibrate")
    held_out_refused: int = Field(ge=0, description="held-out rows outside a hard limit")
    held_out_indeterminate: int = Field(
        ge=0, description="held-out rows within the limits whose score is above the threshold"
    )


class ValidityDomain(BaseModel):
    """Where the model's answers hold; see the module docstring. Arrays are in FEATURE_NAMES order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = DOMAIN_VERSION
    feature_names: tuple[str, ...] = FEATURE_NAMES
    range_factor: float = Field(gt=0, description="k: the hard limits are min - k·range and max + k·range")
    low: tuple[float, ...] = Field(description="lowest accepted value of each feature (never below 0)")
    high: tuple[float, ...] = Field(description="highest accepted value of each feature")
    log_offset: tuple[float, ...] = Field(description="the score reads log(value + log_offset)")
    log_offset_rule: str = Field(description="how log_offset was chosen")
    center: tuple[float, ...] = Field(description="robust centre of log(value + log_offset) in training")
    whitening: tuple[tuple[float, ...], ...] = Field(
        description="W, 30 x 30: the score is |W (log(value + log_offset) - center)|"
    )
    threshold: float = Field(gt=0, description="a row whose score is above it is outside the domain")
    threshold_rule: str
    calibration: DomainCalibration

    @field_validator("feature_names")
    @classmethod
    def _same_features(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if names != FEATURE_NAMES:
            raise ValueError("the domain was fitted on other features (or in another order)")
        return names

    @field_validator("low", "high", "log_offset", "center")
    @classmethod
    def _one_finite_value_per_feature(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if len(values) != len(FEATURE_NAMES) or not np.isfinite(values).all():
            raise ValueError(f"expected {len(FEATURE_NAMES)} finite values, one per feature")
        return values

    @field_validator("whitening")
    @classmethod
    def _square_and_finite(cls, rows: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
        size = len(FEATURE_NAMES)
        if len(rows) != size or any(len(row) != size for row in rows) or not np.isfinite(rows).all():
            raise ValueError(f"expected a finite {size} x {size} matrix")
        return rows

    @model_validator(mode="after")
    def _consistent(self) -> ValidityDomain:
        arrays = self._arrays  # compiled here, once: the methods below only read these arrays
        if (arrays.low < 0).any() or (arrays.low >= arrays.high).any():
            raise ValueError("hard limits must satisfy 0 <= low < high for every feature")
        if (arrays.offset <= 0).any():
            raise ValueError("log offsets must be positive")
        if not (arrays.column_norms > 0).all():
            raise ValueError("the whitening matrix has a zero column")
        return self

    @cached_property
    def _arrays(self) -> _Arrays:
        whitening = np.array(self.whitening)
        return _Arrays(
            low=np.array(self.low),
            high=np.array(self.high),
            offset=np.array(self.log_offset),
            center=np.array(self.center),
            whitening=whitening,
            whitening_t=np.ascontiguousarray(whitening.T),
            # sqrt of the inverse covariance's diagonal, for deviations()
            column_norms=np.linalg.norm(whitening, axis=0),
        )

    def __eq__(self, other: object) -> bool:
        # Fields only: the cached arrays are derived from them.
        if not isinstance(other, ValidityDomain):
            return NotImplemented
        return all(self.__dict__[name] == other.__dict__[name] for name in type(self).model_fields)

    __hash__ = None  # type: ignore[assignment]

    def limits_violations(self, matrix: np.ndarray | Sequence[Sequence[float]]) -> list[Violation]:
        """Every value outside its feature's hard limits (non-finite values included), as
        (row, feature index, value, low, high), in row then feature order."""
        values, arrays = _rows(matrix), self._arrays
        outside = ~((values >= arrays.low) & (values <= arrays.high))
        rows, features = np.nonzero(outside)
        return [
            (int(row), int(feature), float(values[row, feature]), self.low[feature], self.high[feature])
            for row, feature in zip(rows, features, strict=True)
        ]

    def scores(self, matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """One out-of-distribution score per row: the robust Mahalanobis distance (float64).

        Above `threshold` means outside the domain. A row outside a hard limit (or with a non-finite
        value) scores +inf, so a caller that skips limits_violations still never trusts it.
        """
        values, arrays = _rows(matrix), self._arrays
        inside = ((values >= arrays.low) & (values <= arrays.high)).all(axis=1)
        if not inside.all():  # finite logs for the rows scored inf below
            values = np.clip(values, arrays.low, arrays.high)
        whitened = (np.log(values + arrays.offset) - arrays.center) @ arrays.whitening_t
        distances = np.sqrt(np.einsum("ij,ij->i", whitened, whitened))
        if not inside.all():
            distances[~inside] = np.inf
        return distances

    def outside(self, matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """True for each row outside the domain: beyond a hard limit, scoring above the threshold, or
        contradicting the features' definitions."""
        outside = self.scores(matrix) > self.threshold
        outside[list(contradictions(matrix))] = True
        return outside

    def deviations(self, row: np.ndarray | Sequence[float]) -> np.ndarray:
        """Per feature, how far the row's value is from what its other 29 values predict, in robust
        standard deviations (on the log scale); 0 for a value the rest of the row explains.

        This is the standardized residual of each feature regressed on the others under the fitted
        covariance: (P d)_j / sqrt(P_jj), with P = Wᵀ W the inverse covariance and d the row's
        offset from the centre. Its square is how much the squared score would drop if that one
        value were replaced by the best value given the others. A value outside its hard limit (or
        not finite) is taken as the centre's, so that it does not distort the others' deviations.
        """
        values, arrays = _rows(row), self._arrays
        if values.shape[0] != 1:
            raise ValueError("deviations takes one row")
        values = values[0]
        inside = (values >= arrays.low) & (values <= arrays.high)
        offset = np.log(np.clip(values, arrays.low, arrays.high) + arrays.offset) - arrays.center
        offset[~inside] = 0.0
        return (arrays.whitening_t @ (arrays.whitening @ offset)) / arrays.column_norms

    def unusual_features(self, row: np.ndarray | Sequence[float], count: int = 3) -> list[str]:
        """The features that put the row outside the domain, most telling first: those beyond a hard
        limit (furthest first, in ranges), then those whose values the rest of the row least explains
        (largest |deviations|). At most `count` names."""
        values, arrays = _rows(row)[0], self._arrays
        beyond = np.maximum(arrays.low - values, values - arrays.high) / (arrays.high - arrays.low)
        beyond = np.where(np.isfinite(values), beyond, np.inf)
        refused = [int(i) for i in np.argsort(-beyond, kind="stable") if not beyond[i] <= 0]
        ranked = np.argsort(-np.abs(self.deviations(values)), kind="stable")
        order = refused + [int(i) for i in ranked if int(i) not in refused]
        return [FEATURE_NAMES[i] for i in order[: max(count, 0)]]

    def describe(self) -> dict[str, Any]:
        """What GET /model and the model card show: the limits, the score, its threshold and how it
        was calibrated (not the fitted matrices)."""
        return {
            "version": self.version,
            "hard_limits": {
                "rule": (
                    f"every value must be within [max(0, min - {self.range_factor:g}·range), "
                    f"max + {self.range_factor:g}·range] of the training part; outside: refused (422)"
                ),
                "range_factor": self.range_factor,
                "features": {
                    name: {"low": low, "high": high}
                    for name, low, high in zip(FEATURE_NAMES, self.low, self.high, strict=True)
                },
            },
            "score": {
                "name": "robust Mahalanobis distance",
                "space": f"log(value + log_offset), log_offset = {self.log_offset_rule}",
                "estimator": (
                    "Minimum Covariance Determinant of the training part, support fraction "
                    f"{self.calibration.support_fraction:g}"
                ),
                "threshold": self.threshold,
                "threshold_rule": self.threshold_rule,
                "above_threshold": "indeterminate: no diagnosis",
            },
            "consistency": {
                "rule": (
                    "each measurement's worst is above its mean exactly when its se is above 0 (equal otherwise), "
                    "and concavity is 0 exactly where concave points are (mean and worst): what the features' "
                    "definitions allow; otherwise indeterminate"
                ),
            },
            "calibration": self.calibration.model_dump(),
        }


def contradictions(matrix: np.ndarray | Sequence[Sequence[float]] | Sequence[float]) -> dict[int, list[str]]:
    """For each row that has any, what its values say that the features' definitions rule out (see the
    module docstring), one sentence each. Not fitted: it holds for every model of these features."""
    values = _rows(matrix)
    mean, se, worst = values[:, _MEAN], values[:, _SE], values[:, _WORST]
    # worst - mean has the sign of se (0 only together), and concavity that of concave points.
    spread = np.sign(worst - mean) != np.sign(se)
    concave = np.sign(values[:, _CONCAVITY]) != np.sign(values[:, _CONCAVE_POINTS])
    found: dict[int, list[str]] = {}
    for row in np.flatnonzero(spread.any(1) | concave.any(1)).tolist():
        found[row] = []
        for m in np.flatnonzero(spread[row]).tolist():
            w, a, e = (FEATURE_NAMES[columns.start + m] for columns in (_WORST, _MEAN, _SE))
            if worst[row, m] < mean[row, m]:
                said = f"{w} {worst[row, m]:g} is below {a} {mean[row, m]:g}, as the mean of the three "
                said += "largest nuclei never is"
            else:
                said = f"{w} {'equals' if worst[row, m] == mean[row, m] else 'differs from'} {a} while {e} "
                said += f"is {se[row, m]:g}; they are equal exactly when the standard error is 0"
            found[row].append(said)
        for column in np.flatnonzero(concave[row]).tolist():
            concavity, points = (
                FEATURE_NAMES[c.start + column * c.step] for c in (_CONCAVITY, _CONCAVE_POINTS)
            )
            found[row].append(
                f"{concavity} is {values[row, _CONCAVITY][column]:g} and {points} "
                f"{values[row, _CONCAVE_POINTS][column]:g}; a contour has concave points exactly where it "
                "has concavity"
            )
    return found


class _Arrays(NamedTuple):
    low: np.ndarray
    high: np.ndarray
    offset: np.ndarray
    center: np.ndarray
    whitening: np.ndarray
    whitening_t: np.ndarray
    column_norms: np.ndarray


def _rows(matrix: np.ndarray | Sequence[Sequence[float]] | Sequence[float]) -> np.ndarray:
    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim == 1:
        values = values[np.newaxis, :]
    if values.ndim != 2 or values.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"expected rows of {len(FEATURE_NAMES)} values, got shape {values.shape}")
    return values
