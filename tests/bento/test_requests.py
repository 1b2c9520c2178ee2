"""Properties of the one parse of request bodies (bento/requests.py), without a server: it accepts
exactly what the documented request models accept, reads the same numbers, and names the same fields."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bento import requests
from bento.config import MAX_BATCH_ROWS, MAX_FEATURE_VALUE
from bento.errors import MAX_LISTED_PROBLEMS, ErrorAnswer
from bento.requests import BATCH, OUTCOMES, ROW, BatchRequest, Checked, Features
from wdbc import FEATURE_NAMES, MALIGNANT_EXAMPLE

valid_value = st.one_of(
    st.floats(min_value=0, max_value=MAX_FEATURE_VALUE, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=int(MAX_FEATURE_VALUE)),
)
valid_row = st.fixed_dictionaries({name: valid_value for name in FEATURE_NAMES})
invalid_value = st.one_of(
    st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=False),  # negative
    st.floats(min_value=MAX_FEATURE_VALUE, exclude_min=True, allow_infinity=False),  # not a measurement
    st.integers(max_value=-1, min_value=-(2**63)),
    st.text(),  # strings are never coerced, even "1.5"
    st.booleans(),
    st.none(),
    st.lists(st.floats(min_value=0, max_value=10), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def check(kind: str, payload: object) -> Checked | ErrorAnswer:
    return requests.check(kind, json.dumps(payload).encode())


def fields(answer: Checked | ErrorAnswer) -> list[str]:
    assert isinstance(answer, ErrorAnswer) and answer.status == 422, answer
    return [field for field, _ in answer.detail]


@given(valid_row)
def test_any_row_the_model_accepts_is_read_as_its_numbers(row: dict) -> None:
    checked = check(ROW, row)
    documented = Features.model_validate(row)
    assert isinstance(checked, Checked)
    assert checked.features.tolist() == [[getattr(documented, name) for name in FEATURE_NAMES]]


@given(valid_row, st.randoms(use_true_random=False))
def test_the_order_of_keys_does_not_matter(row: dict, order: random.Random) -> None:
    keys = list(row)
    order.shuffle(keys)
    assert check(ROW, {key: row[key] for key in keys}).features.tolist() == check(ROW, row).features.tolist()


@given(valid_row, st.sampled_from(FEATURE_NAMES), invalid_value)
def test_one_bad_value_is_refused_and_named_as_the_model_names_it(
    row: dict, field: str, value: object
) -> None:
    with pytest.raises(ValidationError) as documented:
        Features.model_validate({**row, field: value})
    assert fields(check(ROW, {**row, field: value})) == [field]
    assert [".".join(map(str, e["loc"])) for e in documented.value.errors()] == [field]


@given(valid_row, st.text(min_size=1).filter(lambda key: key not in FEATURE_NAMES))
def test_unknown_fields_are_refused_and_named(row: dict, key: str) -> None:
    assert fields(check(ROW, {**row, key: 1.0})) == [key]


@given(valid_row, st.sampled_from(FEATURE_NAMES))
def test_a_missing_field_is_named(row: dict, field: str) -> None:
    del row[field]
    assert fields(check(ROW, row)) == [field]


@given(valid_row, st.sampled_from(FEATURE_NAMES), valid_value, st.integers(min_value=0, max_value=30))
def test_a_duplicate_key_anywhere_is_refused_and_named(row: dict, field: str, value: float, at: int) -> None:
    """A repeated key, even with a valid value, wherever it stands: JSON parsers keep one of the two."""
    items = [json.dumps(key) + ": " + json.dumps(value) for key, value in row.items()]
    items.insert(at, json.dumps(field) + ": " + json.dumps(value))
    answer = requests.check(ROW, ("{" + ", ".join(items) + "}").encode())
    assert (field, "duplicate key") in answer.detail


@settings(max_examples=25)
@given(st.integers(min_value=0, max_value=MAX_BATCH_ROWS + 50), st.integers(min_value=0))
def test_batch_size_bounds_and_the_bad_row_is_named(size: int, bad_index: int) -> None:
    rows = [MALIGNANT_EXAMPLE] * size
    if not 1 <= size <= MAX_BATCH_ROWS:
        assert fields(check(BATCH, {"instances": rows})) == ["instances"]
        return
    assert check(BATCH, {"instances": rows}).features.shape == (size, len(FEATURE_NAMES))
    bad_index %= size
    rows = [*rows[:bad_index], {**MALIGNANT_EXAMPLE, "radius_mean": -1}, *rows[bad_index + 1 :]]
    assert fields(check(BATCH, {"instances": rows})) == [f"instances[{bad_index}].radius_mean"]


@settings(max_examples=50)
@given(st.lists(valid_row, min_size=1, max_size=20))
def test_a_batch_is_read_as_the_model_reads_it(rows: list[dict]) -> None:
    checked = check(BATCH, {"instances": rows})
    documented = BatchRequest.model_validate({"instances": rows})
    np.testing.assert_array_equal(checked.features, documented.features)
    assert checked.features.dtype == np.float64


@settings(max_examples=50)
@given(st.lists(valid_row, min_size=1, max_size=5), st.data())
def test_a_batch_names_the_same_problems_as_the_model(rows: list[dict], data) -> None:
    index = data.draw(st.integers(0, len(rows) - 1))
    field = data.draw(st.sampled_from(FEATURE_NAMES))
    rows[index] = {**rows[index], field: data.draw(invalid_value)}
    with pytest.raises(ValidationError) as documented:
        BatchRequest.model_validate({"instances": rows})
    located = [f"instances[{e['loc'][1]}].{e['loc'][2]}" for e in documented.value.errors()]
    assert fields(check(BATCH, {"instances": rows})) == located


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400])
def test_tokens_that_are_not_json_numbers_are_malformed_json(token: str) -> None:
    text = json.dumps(MALIGNANT_EXAMPLE).replace("17.99", token, 1)
    answer = requests.check(ROW, text.encode())
    assert answer.status == 400 and answer.error == "malformed JSON"


def test_many_problems_are_counted_and_the_first_twenty_described() -> None:
    answer = check(BATCH, {"instances": [{**MALIGNANT_EXAMPLE, "radius_mean": -1, "extra": 1}] * 50})
    assert len(answer.detail) == MAX_LISTED_PROBLEMS + 1
    assert fields(answer)[:2] == ["instances[0].extra", "instances[0].radius_mean"]
    assert answer.detail[-1] == ("body", "100 problems in all; the first 20 are listed")


def test_outcomes_carry_their_labels_and_times() -> None:
    day = (datetime.now(UTC) - timedelta(days=3)).date().isoformat()  # a prediction of three days ago
    outcome = {
        "features": MALIGNANT_EXAMPLE,
        "diagnosis": "benign",
        "request_id": "a:1",
        "predicted_at": f"{day}T10:00:00Z",
    }
    checked = check(
        OUTCOMES, {"outcomes": [outcome, {"features": MALIGNANT_EXAMPLE, "diagnosis": "malignant"}]}
    )
    assert checked.features.shape == (2, len(FEATURE_NAMES))
    assert fields(check(OUTCOMES, {"outcomes": [{**outcome, "request_id": "x" * 65}]})) == [
        "outcomes[0].request_id"
    ]
    for not_rfc_3339 in (day, "2026-W01-1T00:00Z", f"{day}T10:00Z", f"{day}T10:00:00"):
        assert fields(check(OUTCOMES, {"outcomes": [{**outcome, "predicted_at": not_rfc_3339}]})) == [
            "outcomes[0].predicted_at"
        ], not_rfc_3339
    for rfc_3339 in (f"{day}T10:00:00.123456+01:00", f"{day} 10:00:00Z"):
        assert check(OUTCOMES, {"outcomes": [{**outcome, "predicted_at": rfc_3339}]}).features.shape == (
            1,
            30,
        )
    # Optional means absent or null, as the OpenAPI document says.
    nulls = check(OUTCOMES, {"outcomes": [{**outcome, "request_id": None, "predicted_at": None}]})
    assert nulls.features.shape == (1, len(FEATURE_NAMES))


def test_nothing_a_body_holds_is_a_server_error() -> None:
    for body in (
        b"[" * 5000,
        b'{"instances": ' + b"[" * 1020 + b"]" * 1020 + b"}",
        b"\xff\xfe",
        b'"\\ud800"',
        b"{" * 3,
    ):
        for kind in (ROW, BATCH, OUTCOMES):
            answer = requests.check(kind, body)
            assert isinstance(answer, ErrorAnswer) and answer.status in (400, 422), (kind, body[:20], answer)
