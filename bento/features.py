"""The model's input contract: the 30 WDBC feature names, defined once and imported everywhere.

Kept free of BentoML and scikit-learn imports so that training, the service, the benchmark and the
cluster-side clients can all import it cheaply.
"""

from __future__ import annotations

MODEL_NAME = "breast_cancer"

# The order is the column order of the public WDBC CSV and of the model's input matrix.
FEATURE_NAMES: tuple[str, ...] = tuple(
    f"{measure}_{statistic}"
    for statistic in ("mean", "se", "worst")
    for measure in (
        "radius",
        "texture",
        "perimeter",
        "area",
        "smoothness",
        "compactness",
        "concavity",
        "concave_points",
        "symmetry",
        "fractal_dimension",
    )
)

MALIGNANT_LABEL = "malignant"
BENIGN_LABEL = "benign"

# Rows 1 and 20 of the dataset (sklearn indices 0 and 19): a clearly malignant and a clearly benign
# tumour. Used as Swagger examples, in smoke tests and by the in-cluster clients.
MALIGNANT_EXAMPLE: dict[str, float] = dict(
    zip(
        FEATURE_NAMES,
        (
            17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871,
            1.095, 0.9053, 8.589, 153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193,
            25.38, 17.33, 184.6, 2019.0, 0.1622, 0.6656, 0.7119, 0.2654, 0.4601, 0.1189,
        ),
        strict=True,
    )
)
BENIGN_EXAMPLE: dict[str, float] = dict(
    zip(
        FEATURE_NAMES,
        (
            13.54, 14.36, 87.46, 566.3, 0.09779, 0.08129, 0.06664, 0.04781, 0.1885, 0.05766,
            0.2699, 0.7886, 2.058, 23.56, 0.008462, 0.0146, 0.02387, 0.01315, 0.0198, 0.0023,
            15.11, 19.26, 99.7, 711.2, 0.144, 0.1773, 0.239, 0.1288, 0.2977, 0.07259,
        ),
        strict=True,
    )
)
