"""The breast-cancer CSV: write it from scikit-learn's bundled copy, read and validate any CSV of its layout.

The layout is that of the widely used public WDBC CSV: `id`, `diagnosis` (M/B), then the 30 features.
The public file also carries an empty trailing column; columns without any data are dropped on read.

    python -m training.dataset --output data/breast-cancer.csv
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

from wdbc import FEATURE_NAMES

DEFAULT_CSV = Path("data/breast-cancer.csv")
LABEL_COLUMN = "diagnosis"
ID_COLUMN = "id"
# The CSV's letters and the model's classes: malignant is the positive class.
LABEL_CODES = {"M": 1, "B": 0}
# Enough of each class for a stratified 80/20 split and 5-fold cross-validation of the 80 %.
MIN_ROWS_PER_CLASS = 10


class DatasetError(ValueError):
    """The CSV does not have the expected layout or content."""


@dataclass(frozen=True)
class Dataset:
    features: pd.DataFrame  # the 30 FEATURE_NAMES columns, float64, in order
    labels: pd.Series  # 1 = malignant, 0 = benign
    sha256: str  # of the file's bytes, recorded with the model

    def __len__(self) -> int:
        return len(self.labels)


def write_csv(path: Path = DEFAULT_CSV) -> Path:
    """Write scikit-learn's bundled Wisconsin diagnostic data in the public WDBC layout (no download)."""
    bundled = load_breast_cancer()
    frame = pd.DataFrame(bundled.data, columns=list(FEATURE_NAMES))
    # scikit-learn codes malignant as 0; the CSV spells the diagnosis out as M/B.
    diagnosis = np.where(bundled.target == 0, "M", "B")
    frame.insert(0, LABEL_COLUMN, diagnosis)
    # The bundled copy has no patient ids, so number the rows.
    frame.insert(0, ID_COLUMN, np.arange(1, len(frame) + 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def load_csv(path: Path) -> Dataset:
    """Read a WDBC-layout CSV; raise DatasetError naming the column and row of the first problem."""
    raw = path.read_bytes()
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: the file is empty") from None
    frame = frame.loc[:, [column for column in frame.columns if _has_data(frame[column])]]

    missing = [column for column in (LABEL_COLUMN, *FEATURE_NAMES) if column not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s): {', '.join(missing)}")
    if frame.empty:
        raise DatasetError(f"{path}: no data rows")

    labels = frame[LABEL_COLUMN].str.strip().str.upper()
    unknown = ~labels.isin(LABEL_CODES.keys())
    if unknown.any():
        row = _first_row(unknown)
        raise DatasetError(
            f"{path}: column '{LABEL_COLUMN}', row {row}: "
            f"expected M or B, got {frame[LABEL_COLUMN].iloc[row - 1]!r}"
        )

    counts = labels.value_counts()
    for letter in LABEL_CODES:
        if counts.get(letter, 0) < MIN_ROWS_PER_CLASS:
            raise DatasetError(
                f"{path}: column '{LABEL_COLUMN}' has {counts.get(letter, 0)} {letter} rows; "
                f"training needs at least {MIN_ROWS_PER_CLASS} of each of M and B"
            )

    features = pd.DataFrame({name: _numeric_column(frame, name, path) for name in FEATURE_NAMES})
    return Dataset(
        features=features,
        labels=labels.map(LABEL_CODES).astype(int).rename(LABEL_COLUMN),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _has_data(column: pd.Series) -> bool:
    return bool(column.str.strip().ne("").any())


def _numeric_column(frame: pd.DataFrame, name: str, path: Path) -> pd.Series:
    text = frame[name].str.strip()
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna() | ~np.isfinite(values)
    if bad.any():
        row = _first_row(bad)
        raise DatasetError(
            f"{path}: column '{name}', row {row}: expected a finite number, got {text.iloc[row - 1]!r}"
        )
    return values.astype("float64")


def _first_row(mask: pd.Series) -> int:
    """1-based data row number (the header is row 0) of the first True in mask."""
    return int(np.flatnonzero(mask.to_numpy())[0]) + 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_CSV)
    args = parser.parse_args()
    print(f"wrote {write_csv(args.output)}")


if __name__ == "__main__":
    main()
