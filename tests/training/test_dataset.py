from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from training import train as training
from training.dataset import Dataset, DatasetError, load_csv
from wdbc import FEATURE_NAMES


def test_written_csv_has_the_public_wdbc_layout(bundled_csv: Path) -> None:
    frame = pd.read_csv(bundled_csv)
    assert list(frame.columns) == ["id", "diagnosis", *FEATURE_NAMES]
    assert len(frame) == 569
    assert frame["diagnosis"].value_counts().to_dict() == {"B": 357, "M": 212}
    assert frame["id"].is_unique


def test_load_maps_malignant_to_one(bundled_csv: Path) -> None:
    data = load_csv(bundled_csv)
    assert list(data.features.columns) == list(FEATURE_NAMES)
    assert data.labels.sum() == 212
    assert len(data.sha256) == 64


def test_empty_trailing_column_of_the_public_file_is_dropped(bundled_csv: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(bundled_csv)
    frame["Unnamed: 32"] = ""
    path = tmp_path / "public-layout.csv"
    frame.to_csv(path, index=False)
    data = load_csv(path)
    assert list(data.features.columns) == list(FEATURE_NAMES)
    assert len(data) == 569


def public_layout(source: Path, target: Path) -> Path:
    """The public WDBC file as distributed (UCI / Kaggle data.csv): `concave points_*` headers spelt
    with a space, and a trailing comma, hence an empty last column, on every line, the header's too."""
    frame = pd.read_csv(source, dtype=str)
    header = [name.replace("concave_points", "concave points") for name in frame.columns]
    lines = [",".join(header), *(",".join(row) for row in frame.itertuples(index=False))]
    target.write_text("".join(f"{line},\n" for line in lines))
    return target


def test_the_public_file_is_accepted_as_distributed_and_trained_on(
    bundled_csv: Path, bundled: Dataset, tmp_path: Path
) -> None:
    path = public_layout(bundled_csv, tmp_path / "data.csv")
    header = path.read_text().splitlines()[0]
    assert header.endswith(",") and header.count("concave points_") == 3

    data = load_csv(path)

    pd.testing.assert_frame_equal(data.features, bundled.features)
    pd.testing.assert_series_equal(data.labels, bundled.labels)
    assert not training.train(data, 42).gate_failures


@pytest.mark.parametrize(
    ("bad_value", "message"),
    [
        ("1.5.2", r"line 10, column 'area_mean': expected a finite number, got '1.5.2'"),
        ("1,5", r"Expected 32 fields in line 10, saw 33"),  # a decimal comma: one field too many
    ],
)
def test_lines_are_counted_as_an_editor_counts_them(
    bundled_csv: Path, tmp_path: Path, bad_value: str, message: str
) -> None:
    lines = bundled_csv.read_text().splitlines()
    lines.insert(3, "")  # a blank line 4: the data rows after it are one line further down
    fields = lines[9].split(",")
    fields[2 + FEATURE_NAMES.index("area_mean")] = bad_value  # after id and diagnosis
    lines[9] = ",".join(fields)
    path = tmp_path / "x.csv"
    path.write_text("\n".join(lines) + "\n\n")  # and a blank line at the end
    with pytest.raises(DatasetError, match=message):
        load_csv(path)


def test_headers_that_normalise_alike_are_refused(bundled_csv: Path, tmp_path: Path) -> None:
    def edit(frame: pd.DataFrame) -> None:
        frame["concave points_mean"] = frame["concave_points_mean"]

    path = _rewrite(bundled_csv, tmp_path / "x.csv", edit)
    with pytest.raises(DatasetError, match="named twice: concave_points_mean"):
        load_csv(path)


def _rewrite(source: Path, target: Path, edit) -> Path:
    frame = pd.read_csv(source, dtype=str)
    edit(frame)
    frame.to_csv(target, index=False)
    return target


def test_missing_column_is_named(bundled_csv: Path, tmp_path: Path) -> None:
    path = _rewrite(bundled_csv, tmp_path / "x.csv", lambda f: f.drop(columns=["area_se"], inplace=True))
    with pytest.raises(DatasetError, match="missing column.*area_se"):
        load_csv(path)


@pytest.mark.parametrize("bad_value", ["abc", "", "inf", "NaN"])
def test_non_numeric_value_names_column_and_row(bundled_csv: Path, tmp_path: Path, bad_value: str) -> None:
    def edit(frame: pd.DataFrame) -> None:
        frame.loc[41, "texture_worst"] = bad_value  # data row 42, on line 43 after the header

    path = _rewrite(bundled_csv, tmp_path / "x.csv", edit)
    with pytest.raises(DatasetError, match=r"line 43, column 'texture_worst': expected a finite number"):
        load_csv(path)


def test_unknown_diagnosis_names_the_row(bundled_csv: Path, tmp_path: Path) -> None:
    def edit(frame: pd.DataFrame) -> None:
        frame.loc[6, "diagnosis"] = "X"  # data row 7, line 8

    path = _rewrite(bundled_csv, tmp_path / "x.csv", edit)
    with pytest.raises(DatasetError, match=r"line 8, column 'diagnosis': expected M or B, got 'X'"):
        load_csv(path)


def test_empty_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DatasetError, match="the file is empty"):
        load_csv(path)


def test_a_single_class_is_reported(bundled_csv: Path, tmp_path: Path) -> None:
    path = _rewrite(
        bundled_csv, tmp_path / "x.csv", lambda f: f.drop(f.index[f["diagnosis"] == "M"], inplace=True)
    )
    with pytest.raises(DatasetError, match="has 0 M rows"):
        load_csv(path)
