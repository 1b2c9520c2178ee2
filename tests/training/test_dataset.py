from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from training.dataset import DatasetError, load_csv, write_csv
from wdbc import FEATURE_NAMES


@pytest.fixture(scope="module")
def bundled_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "breast-cancer.csv")


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
        frame.loc[41, "texture_worst"] = bad_value  # 0-based index 41 is data row 42

    path = _rewrite(bundled_csv, tmp_path / "x.csv", edit)
    with pytest.raises(DatasetError, match=r"column 'texture_worst', row 42"):
        load_csv(path)


def test_unknown_diagnosis_names_the_row(bundled_csv: Path, tmp_path: Path) -> None:
    def edit(frame: pd.DataFrame) -> None:
        frame.loc[6, "diagnosis"] = "X"

    path = _rewrite(bundled_csv, tmp_path / "x.csv", edit)
    with pytest.raises(DatasetError, match=r"column 'diagnosis', row 7: expected M or B, got 'X'"):
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
