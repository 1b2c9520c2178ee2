"""The 30 WDBC features, what they measure, the two classes and two example rows.

Each fine-needle aspirate image is segmented into cell nuclei; ten measurements are taken of every
nucleus and summarised over the image three ways, giving the 30 features `<measurement>_<statistic>`
(Street, Wolberg & Mangasarian, 1993; the UCI "Breast Cancer Wisconsin (Diagnostic)" data set).
"""

from __future__ import annotations

MODEL_NAME = "breast_cancer"

# The order is the public WDBC CSV's column order and the model's input order.
MEASUREMENTS: dict[str, str] = {
    "radius": "mean distance from the centre of a nucleus to points on its perimeter",
    "texture": "standard deviation of the grey-scale values inside a nucleus",
    "perimeter": "perimeter of a nucleus",
    "area": "area of a nucleus",
    "smoothness": "local variation in radius lengths",
    "compactness": "perimeter² / area − 1.0",
    "concavity": "severity of the concave portions of the contour",
    "concave_points": "number of concave portions of the contour",
    "symmetry": "symmetry of a nucleus",
    "fractal_dimension": "'coastline approximation' − 1 of the contour",
}
STATISTICS: dict[str, str] = {
    "mean": "mean over the nuclei in the image",
    "se": "standard error over the nuclei in the image",
    "worst": "mean of the three largest values in the image",
}


def feature_name(measurement: str, statistic: str) -> str:
    return f"{measurement}_{statistic}"


FEATURE_NAMES: tuple[str, ...] = tuple(
    feature_name(measurement, statistic) for statistic in STATISTICS for measurement in MEASUREMENTS
)
FEATURE_DESCRIPTIONS: dict[str, str] = {
    feature_name(measurement, statistic): f"{meaning}: {summary}"
    for statistic, summary in STATISTICS.items()
    for measurement, meaning in MEASUREMENTS.items()
}

MALIGNANT_LABEL = "malignant"
BENIGN_LABEL = "benign"
# Index = the model's class code: malignant is the positive class.
CLASS_LABELS: tuple[str, str] = (BENIGN_LABEL, MALIGNANT_LABEL)


def _row(values: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, values, strict=True))


# Rows 1 and 20 of the data set (scikit-learn indices 0 and 19): a clearly malignant and a clearly
# benign tumour. Swagger examples, smoke tests and in-cluster clients use them.
MALIGNANT_EXAMPLE = _row((
    17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871,
    1.095, 0.9053, 8.589, 153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193,
    25.38, 17.33, 184.6, 2019.0, 0.1622, 0.6656, 0.7119, 0.2654, 0.4601, 0.1189,
))  # fmt: skip
BENIGN_EXAMPLE = _row((
    13.54, 14.36, 87.46, 566.3, 0.09779, 0.08129, 0.06664, 0.04781, 0.1885, 0.05766,
    0.2699, 0.7886, 2.058, 23.56, 0.008462, 0.0146, 0.02387, 0.01315, 0.0198, 0.0023,
    15.11, 19.26, 99.7, 711.2, 0.144, 0.1773, 0.239, 0.1288, 0.2977, 0.07259,
))  # fmt: skip
