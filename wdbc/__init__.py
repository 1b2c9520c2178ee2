"""The model's contract, shared by training, the service, the verifier and the benchmark.

Feature names and meanings, class labels, example rows, and the typed metadata (with the model's
validity domain) and reference data that training saves with a model and the service validates
when it loads one. Nothing here imports the service or training; they import this.
"""

from wdbc.domain import DOMAIN_VERSION, ValidityDomain
from wdbc.features import (
    BENIGN_EXAMPLE,
    BENIGN_LABEL,
    CLASS_LABELS,
    FEATURE_DESCRIPTIONS,
    FEATURE_NAMES,
    MALIGNANT_EXAMPLE,
    MALIGNANT_LABEL,
    MEASUREMENTS,
    MODEL_NAME,
    STATISTICS,
    feature_name,
)
from wdbc.metadata import METADATA_VERSION, MetadataError, ModelMetadata
from wdbc.reference import Reference, ReferenceDataError

__all__ = [
    "BENIGN_EXAMPLE",
    "BENIGN_LABEL",
    "CLASS_LABELS",
    "DOMAIN_VERSION",
    "FEATURE_DESCRIPTIONS",
    "FEATURE_NAMES",
    "MALIGNANT_EXAMPLE",
    "MALIGNANT_LABEL",
    "MEASUREMENTS",
    "METADATA_VERSION",
    "MODEL_NAME",
    "STATISTICS",
    "MetadataError",
    "ModelMetadata",
    "Reference",
    "ReferenceDataError",
    "ValidityDomain",
    "feature_name",
]
