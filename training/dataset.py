"""The breast-cancer CSV: write it from scikit-learn's bundled copy, read and validate any CSV of its layout.

The layout is that of the widely used public WDBC CSV: `id`, `diagnosis` (M/B), then the 30 features.
The public file is accepted as distributed: its headers `concave points_mean`, `concave points_se` and
`concave points_worst` are normalised (spaces to underscores), and its empty trailing column (a
trailing comma on every line) is dropped with any other column without data. Problems are reported
by line as an editor numbers them: the header is line 1, the first data row line 2.

    python -m training.dataset --output data/breast-cancer.csv
"""

from __future__ import annotations

import argparse
import hashlib
import re
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
    """Read a WDBC-layout CSV; raise DatasetError naming the column and line of the first problem."""
    raw = path.read_bytes()
    try:
        # Blank lines are kept (and dropped below) so that a row's index still gives its line;
        # index_col=False: a trailing comma on data lines only must not turn `id` into the index.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, index_col=False)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as error:  # e.g. a row with more fields than the header
        raise DatasetError(f"{path}: {error}".strip()) from None
    frame.index = frame.index + 2  # the line each row is on: the header is line 1
    frame.columns = [normalise_header(column) for column in frame.columns]
    duplicated = sorted({column for column in frame.columns if list(frame.columns).count(column) > 1})
    if duplicated:
        raise DatasetError(f"{path}: column(s) named twice: {', '.join(duplicated)}")
    frame = frame.loc[:, [column for column in frame.columns if _has_data(frame[column])]]
    frame = frame.loc[frame.apply(lambda column: column.str.strip().ne("")).any(axis=1)]

    missing = [column for column in (LABEL_COLUMN, *FEATURE_NAMES) if column not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s): {', '.join(missing)}")
    if frame.empty:
        raise DatasetError(f"{path}: no data rows")

    labels = frame[LABEL_COLUMN].str.strip().str.upper()
    unknown = ~labels.isin(LABEL_CODES.keys())
    if unknown.any():
        line = _first_line(unknown)
        raise DatasetError(
            f"{path}: line {line}, column '{LABEL_COLUMN}': "
            f"expected M or B, got {frame.at[line, LABEL_COLUMN]!r}"
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
        features=features.reset_index(drop=True),
        labels=labels.map(LABEL_CODES).astype(int).rename(LABEL_COLUMN).reset_index(drop=True),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def normalise_header(name: str) -> str:
    """`concave points_mean` (the public file's spelling) -> `concave_points_mean`."""
    return re.sub(r"\s+", "_", name.strip())


def _has_data(column: pd.Series) -> bool:
    return bool(column.str.strip().ne("").any())


def _numeric_column(frame: pd.DataFrame, name: str, path: Path) -> pd.Series:
    text = frame[name].str.strip()
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna() | ~np.isfinite(values)
    if bad.any():
        line = _first_line(bad)
        raise DatasetError(
            f"{path}: line {line}, column '{name}': expected a finite number, got {text.at[line]!r}"
        )
    return values.astype("float64")


def _first_line(mask: pd.Series) -> int:
    """The line of the first True in mask (rows are indexed by their line, see load_csv)."""
    return int(mask.index[mask.to_numpy()][0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_CSV)
    args = parser.parse_args()
    print(f"wrote {write_csv(args.output)}")


if __name__ == "__main__":
    main()
