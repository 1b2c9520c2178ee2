"""The metadata training saves with a model, typed: training writes it, the service validates it.

A model saved by an older training run (or by something else) fails validation with a message that
names what is missing or wrong, instead of a KeyError deep in the service.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from wdbc.domain import ValidityDomain
from wdbc.features import CLASS_LABELS, FEATURE_NAMES

# Bump when the shape below changes; the service refuses other versions by name.
# 3: the validity domain (`domain`).
METADATA_VERSION = 3


class MetadataError(ValueError):
    """The model's metadata is missing, from another version, or inconsistent."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CrossValidated(_Frozen):
    mean: float
    std: float


class ClassScores(_Frozen):
    precision: float
    recall: float
    f1: float
    support: int


class Holdout(_Frozen):
    rows: int
    accuracy: float
    roc_auc: float
    per_class: dict[str, ClassScores]
    # rows: true benign, true malignant; columns: predicted benign, predicted malignant
    confusion_matrix: list[list[int]]


class Metrics(_Frozen):
    cross_validation: dict[str, CrossValidated] = Field(
        description="repeated stratified CV of the training part"
    )
    holdout: Holdout = Field(description="the held-out part, scored once")


class FeatureStats(_Frozen):
    min: float
    max: float
    mean: float
    std: float


class Lineage(_Frozen):
    dataset_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    dataset_rows: int
    train_rows: int
    test_rows: int
    seed: int
    source_commit: str = Field(description="git describe of the training code, or 'unknown'")
    compared_with: str | None = Field(
        default=None, description="the promoted model it was compared with, if any"
    )
    sklearn_version: str
    bentoml_version: str
    python_version: str


class ModelMetadata(_Frozen):
    version: Literal[3] = METADATA_VERSION
    threshold: float = Field(gt=0, le=1, description="malignant when probability_malignant >= threshold")
    threshold_rule: str
    feature_names: tuple[str, ...]
    class_labels: tuple[str, str] = CLASS_LABELS
    training_prevalence: float = Field(ge=0, le=1, description="share of malignant rows in the training part")
    metrics: Metrics
    quality_gate: dict[str, float]
    feature_stats: dict[str, FeatureStats]
    domain: ValidityDomain = Field(description="the inputs the model can speak to (wdbc.domain)")
    lineage: Lineage

    @field_validator("feature_names")
    @classmethod
    def _same_features(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if names != FEATURE_NAMES:
            raise ValueError("the model was trained on other features (or in another order)")
        return names

    @field_validator("class_labels")
    @classmethod
    def _same_labels(cls, labels: tuple[str, str]) -> tuple[str, str]:
        if labels != CLASS_LABELS:
            raise ValueError(f"expected class labels {CLASS_LABELS}")
        return labels

    @field_validator("feature_stats")
    @classmethod
    def _stats_for_every_feature(cls, stats: dict[str, FeatureStats]) -> dict[str, FeatureStats]:
        if list(stats) != list(FEATURE_NAMES):
            raise ValueError("expected statistics for each feature, in feature order")
        return stats

    @classmethod
    def parse(cls, metadata: dict[str, Any]) -> ModelMetadata:
        """Validate a model's stored metadata; MetadataError says what does not fit."""
        version = metadata.get("version")
        if version != METADATA_VERSION:
            raise MetadataError(
                f"metadata version {version!r}, expected {METADATA_VERSION}: the model was saved by another "
                "version of training; retrain it (make train) or serve a model trained by this version"
            )
        try:
            return cls.model_validate(metadata)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'metadata'}: {e['msg']}" for e in error.errors()[:5]
            )
            raise MetadataError(
                f"invalid model metadata ({error.error_count()} problems): {problems}"
            ) from None

    def to_bentoml(self) -> dict[str, Any]:
        """Plain JSON types without nulls, which is what BentoML stores in model.yaml."""
        return self.model_dump(mode="json", exclude_none=True)
