"""Exact explanations of one diagnosis, for a clinician to review.

For StandardScaler + LogisticRegression the logit is a sum, so no approximation (and no SHAP) is
needed:

    logit = baseline + sum over features of coefficient_i * standardized value_i

where the baseline is the logit of an average training case (every standardized value 0) and each
term is that feature's contribution. Features are grouped by measurement (radius, texture, ...:
mean, standard error and worst of each), sorted by the size of their contribution, with the value's
percentile among the training rows. The answer also says where the row stands against the model's
validity domain and which features put it outside. Radius, perimeter and area are almost collinear (r ≈ 0.99):
the model splits their joint effect between them in ways that look odd one by one, so read their
contributions as a group.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from bento.scoring import LinearScorer
from wdbc import FEATURE_NAMES, MEASUREMENTS, STATISTICS, feature_name
from wdbc.domain import ValidityDomain, contradictions

COLLINEAR_NOTE = (
    "radius, perimeter and area are almost collinear (r ≈ 0.99): read their contributions as a group, "
    "not one by one"
)
TOWARDS_MALIGNANT = "towards malignant"
TOWARDS_BENIGN = "towards benign"


class FeatureContribution(BaseModel):
    feature: str
    value: float
    percentile: float = Field(description="share of training rows with a value at or below this one, in %")
    standardized: float = Field(description="(value - training mean) / training standard deviation")
    contribution: float = Field(
        description="coefficient x standardized value: this feature's share of the logit"
    )
    direction: str = Field(description=f"'{TOWARDS_MALIGNANT}' or '{TOWARDS_BENIGN}'")


class MeasurementContribution(BaseModel):
    measurement: str
    description: str
    contribution: float = Field(description="the sum of its three features' contributions")
    direction: str
    features: list[FeatureContribution] = Field(description="mean, se and worst, largest contribution first")


class Baseline(BaseModel):
    logit: float
    probability_malignant: float


class Domain(BaseModel):
    inside: bool = Field(description="false: the diagnosis is indeterminate")
    score: float = Field(description="how unlike the training data the row is (the model's validity domain)")
    threshold: float = Field(description="rows scoring above it are outside the domain")
    unusual_features: list[str] = Field(description="the features that contribute most to the score")
    contradictions: list[str] = Field(
        description="what the row's values say that the features' definitions rule out; any: outside"
    )


class Explanation(BaseModel):
    diagnosis: str = Field(description="malignant, benign or indeterminate, as POST /predict answers")
    probability_malignant: float | None
    threshold: float
    model_tag: str
    warnings: list[str]
    reason: str | None
    logit: float = Field(description="baseline.logit plus every contribution")
    baseline: Baseline = Field(description="an average training case: every standardized value 0")
    measurements: list[MeasurementContribution] = Field(description="largest total contribution first")
    domain: Domain = Field(description="where the row stands against the model's validity domain")
    note: str = COLLINEAR_NOTE


def _direction(contribution: float) -> str:
    return TOWARDS_MALIGNANT if contribution >= 0 else TOWARDS_BENIGN


class Explainer:
    def __init__(self, scorer: LinearScorer, reference_features: np.ndarray) -> None:
        self.scorer = scorer
        self.sorted_reference = np.sort(reference_features, axis=0)  # per column, for percentiles

    def explain(self, row: np.ndarray, domain: ValidityDomain) -> dict:
        """The explanation's fields (all but the diagnosis') for one row of 30 values."""
        from scipy.special import expit  # in the worker: the arbiter imports this module, never explains

        contributions = self.scorer.contributions(row)
        standardized = (row - self.scorer.means) / self.scorer.scales
        count = len(self.sorted_reference)
        percentiles = [
            100.0 * float(np.searchsorted(self.sorted_reference[:, index], row[index], side="right")) / count
            for index in range(len(FEATURE_NAMES))
        ]
        measurements = []
        for measurement, description in MEASUREMENTS.items():
            indices = [FEATURE_NAMES.index(feature_name(measurement, statistic)) for statistic in STATISTICS]
            features = sorted(
                (
                    {"feature": FEATURE_NAMES[i], "value": float(row[i]), "percentile": round(percentiles[i], 1),
                     "standardized": float(standardized[i]), "contribution": float(contributions[i]),
                     "direction": _direction(float(contributions[i]))}
                    for i in indices
                ),
                key=lambda feature: -abs(feature["contribution"]),
            )  # fmt: skip
            total = sum(feature["contribution"] for feature in features)
            measurements.append(
                {"measurement": measurement, "description": description, "contribution": total,
                 "direction": _direction(total), "features": features}
            )  # fmt: skip
        measurements.sort(key=lambda item: -abs(item["contribution"]))
        baseline = self.scorer.baseline_logit
        score = float(domain.scores(row[np.newaxis])[0])
        contradicted = contradictions(row).get(0, [])
        return {
            "logit": baseline + float(contributions.sum()),
            "baseline": {"logit": baseline, "probability_malignant": float(expit(baseline))},
            "measurements": measurements,
            "domain": {
                "inside": score <= domain.threshold and not contradicted,
                "score": score,
                "threshold": domain.threshold,
                "unusual_features": domain.unusual_features(row),
                "contradictions": contradicted,
            },
            "note": COLLINEAR_NOTE,
        }
