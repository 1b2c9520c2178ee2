"""Reference rows saved with a model: what readiness, compiled scoring, drift and explanations need.

The training split's feature rows (the population the model learned from) with the saved model's
own probabilities and logits for them, stored as a BentoML custom object next to the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wdbc.features import FEATURE_NAMES

CUSTOM_OBJECT_NAME = "reference"


class ReferenceDataError(ValueError):
    """The stored reference rows are missing or malformed."""


@dataclass(frozen=True)
class Reference:
    features: np.ndarray  # (rows, 30) float64, FEATURE_NAMES order
    probabilities: np.ndarray  # (rows,) the saved pipeline's P(malignant) for each row
    logits: np.ndarray  # (rows,) its log-odds (decision_function) for each row

    def to_custom_object(self) -> dict[str, Any]:
        return {"features": self.features, "probabilities": self.probabilities, "logits": self.logits}

    @classmethod
    def from_custom_objects(cls, custom_objects: dict[str, Any]) -> Reference:
        stored = custom_objects.get(CUSTOM_OBJECT_NAME)
        if not isinstance(stored, dict):
            raise ReferenceDataError(
                f"the model has no '{CUSTOM_OBJECT_NAME}' custom object: it was saved by another version "
                "of training; retrain it (make train)"
            )
        try:
            arrays = {
                key: np.asarray(stored[key], dtype=np.float64)
                for key in ("features", "probabilities", "logits")
            }
        except (KeyError, TypeError, ValueError) as error:
            raise ReferenceDataError(f"malformed reference rows: {error}") from None
        rows = arrays["features"].shape[0] if arrays["features"].ndim == 2 else 0
        if arrays["features"].shape != (rows, len(FEATURE_NAMES)) or rows < 2:
            raise ReferenceDataError(
                f"reference features have shape {arrays['features'].shape}, expected (rows, 30)"
            )
        for key in ("probabilities", "logits"):
            if arrays[key].shape != (rows,):
                raise ReferenceDataError(
                    f"reference {key} have shape {arrays[key].shape}, expected ({rows},)"
                )
        if not all(np.isfinite(array).all() for array in arrays.values()):
            raise ReferenceDataError("reference rows contain non-finite values")
        return cls(**arrays)
