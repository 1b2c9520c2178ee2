"""The API's request and response models (pydantic), generated from the one list of feature names."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from wdbc import BENIGN_EXAMPLE, FEATURE_NAMES, MALIGNANT_EXAMPLE, MALIGNANT_LABEL, ModelMetadata

# Rows per /predict_batch request: enough for any clinical batch, small enough to bound a
# request's memory and latency (1000 rows is ~0.8 MB of JSON and a few milliseconds of model time).
MAX_BATCH_ROWS = 1000

# No WDBC measurement comes near this (the largest in the data set is area_worst = 4254); values
# beyond it are not measurements, and near float's limit they overflow the model's arithmetic.
MAX_FEATURE_VALUE = 1e6

# Strict: a JSON string such as "1.5" or a boolean is rejected rather than coerced; integers are
# accepted as floats. Measurements are never negative, never NaN or infinite.
FeatureValue = Annotated[float, Field(strict=True, ge=0, le=MAX_FEATURE_VALUE, allow_inf_nan=False)]

Features = create_model(
    "Features",
    __config__=ConfigDict(
        extra="forbid",
        # OpenAPI 3.0 (what BentoML emits) takes a single `example`; Swagger UI pre-fills it.
        json_schema_extra={"example": MALIGNANT_EXAMPLE},
    ),
    __doc__="The 30 measurements of one fine-needle aspirate (WDBC feature names).",
    **{name: (FeatureValue, ...) for name in FEATURE_NAMES},
)


class Prediction(BaseModel):
    diagnosis: Literal["malignant", "benign"]
    probability_malignant: float = Field(ge=0, le=1)
    threshold: float = Field(ge=0, le=1, description="malignant when probability_malignant >= threshold")
    model_tag: str
    warnings: list[str] = Field(
        default_factory=list,
        description="Features outside the range seen in training: the model is extrapolating.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "diagnosis": MALIGNANT_LABEL,
                "probability_malignant": 1.0,
                "threshold": 0.19,
                "model_tag": "breast_cancer:abc123",
                "warnings": [],
            }
        }
    )


class BatchRequest(BaseModel):
    instances: list[Features] = Field(min_length=1, max_length=MAX_BATCH_ROWS)  # type: ignore[valid-type]

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"instances": [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE]}},
    )


class BatchPrediction(BaseModel):
    predictions: list[Prediction]


class ModelInfo(ModelMetadata):
    """The served model: its tag and creation time, and the metadata training saved with it."""

    tag: str
    creation_time: datetime
