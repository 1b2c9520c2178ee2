"""The API's request and response models (pydantic), generated from the one list of feature names.

BentoML validates a request by calling the input model's `model_validate_json` and renders the
answer with the output model's `model_dump_json`. The batch models override both with the lean
array path of bento/validation.py; the schemas (and so the OpenAPI document) stay the declared ones.
"""

from __future__ import annotations

from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model
from pydantic_core import InitErrorDetails, PydanticCustomError

from bento import validation
from bento.errors import MAX_LISTED_PROBLEMS
from wdbc import (
    BENIGN_EXAMPLE,
    BENIGN_LABEL,
    FEATURE_DESCRIPTIONS,
    FEATURE_NAMES,
    MALIGNANT_EXAMPLE,
    MALIGNANT_LABEL,
    ModelMetadata,
)
from wdbc.metadata import FeatureStats

# Rows per /predict_batch request: enough for any clinical batch, small enough to bound a
# request's memory and latency (1000 rows is ~0.8 MB of JSON and a few milliseconds of model time).
MAX_BATCH_ROWS = 1000

# No WDBC measurement comes near this (the largest in the data set is area_worst = 4254); values
# beyond it are not measurements, and near float's limit they overflow the model's arithmetic.
MAX_FEATURE_VALUE = 1e6
LIMITS = validation.Limits(max_value=MAX_FEATURE_VALUE, max_rows=MAX_BATCH_ROWS)
# A validated Features row's 30 values, in model order.
feature_values = attrgetter(*FEATURE_NAMES)


def feature_description(name: str, stats: FeatureStats | None) -> str:
    described = FEATURE_DESCRIPTIONS[name]
    if stats is None:
        return described
    return f"{described}. Training range {stats.min:g} to {stats.max:g} (mean {stats.mean:g})."


class _FeaturesBase(BaseModel):
    """Single rows are validated by pydantic in Rust; only a body with more than MAX_LISTED_PROBLEMS
    problems is read again, to describe the first ones and count the rest."""

    model_config = ConfigDict(
        extra="forbid",
        # OpenAPI 3.0 (what BentoML emits) takes a single `example`; Swagger UI pre-fills it.
        json_schema_extra={"example": MALIGNANT_EXAMPLE},
    )

    @classmethod
    def model_validate_json(cls, json_data: Any, **kwargs: Any) -> Any:
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as error:
            if error.error_count() <= MAX_LISTED_PROBLEMS:
                raise
        row = validation.parse_json(json_data)
        problems, total = validation.row_problems(row, (), cls, LIMITS, MAX_LISTED_PROBLEMS)
        raise validation.problems_error(cls.__name__, problems, total)


def features_model(feature_stats: dict[str, FeatureStats] | None = None) -> type[BaseModel]:
    """The request row model; given the served model's statistics, each field documents its training range."""
    return create_model(
        "Features",
        __base__=_FeaturesBase,
        __doc__="The 30 measurements of one fine-needle aspirate (WDBC feature names, in model order). "
        "Values are JSON numbers, finite, from 0 to 1,000,000; strings are never converted.",
        **{
            name: (
                # Strict: a JSON string such as "1.5" or a boolean is rejected rather than coerced;
                # integers are accepted as floats.
                Annotated[
                    float,
                    Field(
                        strict=True,
                        ge=0,
                        le=MAX_FEATURE_VALUE,
                        allow_inf_nan=False,
                        description=feature_description(name, (feature_stats or {}).get(name)),
                    ),
                ],
                ...,
            )
            for name in FEATURE_NAMES
        },
    )


class Prediction(BaseModel):
    diagnosis: Literal[MALIGNANT_LABEL, BENIGN_LABEL]  # type: ignore[valid-type]
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


def batch_models(features: type[BaseModel]) -> tuple[type[BaseModel], type[BaseModel]]:
    """The /predict_batch request and answer models for this Features model."""

    class BatchRequest(BaseModel):
        instances: list[features] = Field(min_length=1, max_length=MAX_BATCH_ROWS)  # type: ignore[valid-type]
        _matrix: np.ndarray | None = PrivateAttr(default=None)

        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"example": {"instances": [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE]}},
        )

        @classmethod
        def model_validate_json(cls, json_data: Any, **kwargs: Any) -> BatchRequest:
            body = json_data.encode() if isinstance(json_data, str) else json_data
            matrix, payload = validation.lean_batch(body, LIMITS)
            if matrix is None:
                return cls._careful(body, payload, **kwargs)
            request = cls.model_construct(instances=[])  # the rows are the matrix; no 1000 models
            request._matrix = matrix
            return request

        def matrix(self) -> np.ndarray:
            if self._matrix is None:
                self._matrix = np.array([feature_values(row) for row in self.instances])
            return self._matrix

        @classmethod
        def _careful(cls, body: bytes, payload: Any, **kwargs: Any) -> BatchRequest:
            if payload is validation.NOT_PARSED:  # NaN, Infinity, huge integers or not JSON at all
                try:
                    payload = validation.parse_json(body)
                except ValueError:
                    return super().model_validate_json(body, **kwargs)  # pydantic names the JSON error
            if type(payload) is not dict or type(payload.get("instances")) is not list:
                return super().model_validate_json(body, **kwargs)  # one small error
            problems: list[InitErrorDetails] = [
                validation.unknown_field(name, ()) for name in payload if name != "instances"
            ]
            total = len(problems)
            rows = payload["instances"]
            if not 1 <= len(rows) <= MAX_BATCH_ROWS:
                total += 1
                problems.append(
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "too_long" if rows else "too_short",
                            "List should have 1 to {maximum} items, not {count}",
                            {"maximum": MAX_BATCH_ROWS, "count": len(rows)},
                        ),
                        loc=("instances",),
                        input=None,
                    )
                )
            for index, row in enumerate(rows):
                room = MAX_LISTED_PROBLEMS - len(problems)
                described, count = validation.row_problems(row, ("instances", index), features, LIMITS, room)
                problems += described
                total += count
            if total == 0:
                return super().model_validate_json(body, **kwargs)
            raise validation.problems_error(cls.__name__, problems, total)

    class BatchPrediction(BaseModel):
        predictions: list[Prediction]
        _rendered: bytes | None = PrivateAttr(default=None)

        @classmethod
        def from_rows(cls, rows: list[dict[str, Any]]) -> BatchPrediction:
            """Rendered straight to JSON: 1000 Prediction models are not built to be serialised."""
            answer = cls.model_construct(predictions=[])
            answer._rendered = orjson.dumps({"predictions": rows})
            return answer

        def model_dump_json(self, **kwargs: Any) -> str:
            if self._rendered is not None:
                return self._rendered.decode()
            return super().model_dump_json(**kwargs)

    return BatchRequest, BatchPrediction


class ModelInfo(ModelMetadata):
    """The served model: its tag and creation time, and the metadata training saved with it."""

    tag: str
    creation_time: datetime
    scoring: str = Field(description="how the service scores: compiled to one dot product, or the pipeline")
    feature_descriptions: dict[str, str] = Field(description="what each feature measures, in model order")
    examples: dict[str, dict[str, float]] = Field(
        description="a malignant and a benign row, to try the API with"
    )
