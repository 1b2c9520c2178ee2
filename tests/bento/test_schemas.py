"""Hypothesis properties of the pydantic request models and the lean batch path, without a server."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bento import schemas
from bento.errors import MAX_LISTED_PROBLEMS, TOO_MANY_PROBLEMS
from bento.schemas import MAX_BATCH_ROWS, MAX_FEATURE_VALUE

Features = schemas.features_model()
BatchRequest, BatchPrediction = schemas.batch_models(Features)
from wdbc import FEATURE_NAMES, MALIGNANT_EXAMPLE

valid_value = st.one_of(
    st.floats(min_value=0, max_value=MAX_FEATURE_VALUE, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=int(MAX_FEATURE_VALUE)),
)
valid_row = st.fixed_dictionaries({name: valid_value for name in FEATURE_NAMES})
invalid_value = st.one_of(
    st.floats(max_value=-1e-300, allow_nan=False),  # negative, including -inf
    st.floats(min_value=MAX_FEATURE_VALUE, exclude_min=True),  # not a measurement, including inf
    st.just(math.nan),
    st.just(math.inf),
    st.integers(max_value=-1),
    st.text(),  # strings are never coerced, even "1.5"
    st.booleans(),
    st.none(),
    st.lists(st.floats(min_value=0, max_value=10), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@given(valid_row)
def test_any_non_negative_finite_row_is_accepted(row: dict) -> None:
    features = Features.model_validate(row)
    assert [getattr(features, name) for name in FEATURE_NAMES] == [float(row[name]) for name in FEATURE_NAMES]


@given(valid_row, st.sampled_from(FEATURE_NAMES), invalid_value)
def test_one_bad_value_is_rejected_and_named(row: dict, field: str, value: object) -> None:
    with pytest.raises(ValidationError) as error:
        Features.model_validate({**row, field: value})
    assert [e["loc"] for e in error.value.errors()] == [(field,)]


@given(valid_row, st.text(min_size=1).filter(lambda key: key not in FEATURE_NAMES))
def test_unknown_fields_are_rejected(row: dict, key: str) -> None:
    with pytest.raises(ValidationError) as error:
        Features.model_validate({**row, key: 1.0})
    assert error.value.errors()[0]["type"] == "extra_forbidden"


@given(valid_row, st.sampled_from(FEATURE_NAMES))
def test_a_missing_field_is_named(row: dict, field: str) -> None:
    del row[field]
    with pytest.raises(ValidationError) as error:
        Features.model_validate(row)
    assert [e["loc"] for e in error.value.errors()] == [(field,)]


@settings(max_examples=25)
@given(st.integers(min_value=0, max_value=MAX_BATCH_ROWS + 50), st.integers(min_value=0))
def test_batch_size_bounds(size: int, bad_index: int) -> None:
    rows = [MALIGNANT_EXAMPLE] * size
    if 1 <= size <= MAX_BATCH_ROWS:
        assert len(BatchRequest.model_validate({"instances": rows}).instances) == size
        bad_index %= size
        rows = [*rows[:bad_index], {**MALIGNANT_EXAMPLE, "radius_mean": -1}, *rows[bad_index + 1 :]]
        with pytest.raises(ValidationError) as error:
            BatchRequest.model_validate({"instances": rows})
        assert error.value.errors()[0]["loc"] == ("instances", bad_index, "radius_mean")
    else:
        with pytest.raises(ValidationError):
            BatchRequest.model_validate({"instances": rows})


def test_json_nan_and_overflow_are_rejected() -> None:
    for token in ("NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400):
        text = (
            Features(**MALIGNANT_EXAMPLE)
            .model_dump_json()
            .replace('"radius_mean":17.99', f'"radius_mean":{token}')
        )
        with pytest.raises(ValidationError):
            Features.model_validate_json(text)


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


@settings(max_examples=50)
@given(st.lists(valid_row, min_size=1, max_size=20))
def test_the_lean_batch_path_reads_what_pydantic_reads(rows: list[dict]) -> None:
    lean = BatchRequest.model_validate_json(_json({"instances": rows})).matrix()
    careful = BatchRequest.model_validate({"instances": rows}).matrix()
    np.testing.assert_array_equal(lean, careful)
    assert lean.shape == (len(rows), len(FEATURE_NAMES)) and lean.dtype == np.float64


@settings(max_examples=100)
@given(st.lists(valid_row, min_size=1, max_size=5), st.data())
def test_the_lean_batch_path_names_the_same_problems_as_pydantic(rows: list[dict], data) -> None:
    index = data.draw(st.integers(0, len(rows) - 1))
    field = data.draw(st.sampled_from(FEATURE_NAMES))
    value = data.draw(invalid_value)
    rows[index] = {**rows[index], field: value}
    body = json.dumps({"instances": rows}, allow_nan=True).encode()
    with pytest.raises(ValidationError) as lean:
        BatchRequest.model_validate_json(body)
    with pytest.raises(ValidationError) as plain:
        BatchRequest.model_validate({"instances": rows})
    assert [e["loc"] for e in lean.value.errors()] == [e["loc"] for e in plain.value.errors()]
    assert [e["msg"] for e in lean.value.errors()] == [e["msg"] for e in plain.value.errors()]


def test_many_problems_are_counted_and_the_first_twenty_described() -> None:
    rows = [{**MALIGNANT_EXAMPLE, "radius_mean": -1, "extra": 1}] * 50
    with pytest.raises(ValidationError) as error:
        BatchRequest.model_validate_json(_json({"instances": rows}))
    errors = error.value.errors()
    assert len(errors) == MAX_LISTED_PROBLEMS + 1
    assert errors[0]["loc"] == ("instances", 0, "radius_mean") and errors[1]["loc"] == (
        "instances",
        0,
        "extra",
    )
    assert errors[-1]["type"] == TOO_MANY_PROBLEMS and errors[-1]["msg"].startswith("100 problems in all")


def test_a_rendered_batch_answer_is_the_models_json() -> None:
    rows = [
        {
            "diagnosis": "malignant",
            "probability_malignant": 0.9,
            "threshold": 0.2,
            "model_tag": "m:1",
            "warnings": [],
        }
    ]
    rendered = json.loads(BatchPrediction.from_rows(rows).model_dump_json())
    assert rendered == BatchPrediction(predictions=rows).model_dump(mode="json")
