"""Request bodies: the models BentoML documents, and `check`, the one parse of a body into features.

The edge (bento/edge.py) calls `check` on every API body before BentoML sees it and answers the
problems itself; a body that passes is handed on with its result in CHECKED, which the request
models' `model_validate_json` takes instead of parsing the body again (bento/hooks.py, hook 2).

Valid bodies, the common case, are parsed with orjson and checked as arrays: one key comparison per
row, then type, range and validity-domain checks on the whole matrix. A body that fails them is read
again, row by row, to describe at most MAX_LISTED_PROBLEMS problems, each by row and field, and to
count the rest: the work grows with the body's size, never with its number of problems.
"""

from __future__ import annotations

import json
import re
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model

from bento import errors
from bento.config import MAX_BATCH_ROWS, MAX_FEATURE_VALUE
from bento.errors import ErrorAnswer
from wdbc import BENIGN_EXAMPLE, CLASS_LABELS, FEATURE_DESCRIPTIONS, FEATURE_NAMES, MALIGNANT_EXAMPLE
from wdbc.domain import ValidityDomain

ROW, BATCH, OUTCOMES = "row", "batch", "outcomes"
FEATURES = frozenset(FEATURE_NAMES)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_row_values = itemgetter(*FEATURE_NAMES)
_NUMBERS = (float, int)  # not bool: checked with type(), which is exact


@dataclass(frozen=True)
class Checked:
    body: bytes
    payload: dict[str, Any]  # the parsed JSON object
    features: np.ndarray  # (rows, 30) in model order


CHECKED: ContextVar[Checked | None] = ContextVar("checked", default=None)
reused = 0  # bodies BentoML took from CHECKED: the edge's start-up round trip looks for one more


def check(kind: str, body: bytes, domain: ValidityDomain) -> Checked | ErrorAnswer:
    """The body of a ROW, BATCH or OUTCOMES request as features, or the answer that refuses it."""
    try:
        payload = orjson.loads(body)  # RFC 8259: no NaN or Infinity, no number beyond a double
    except orjson.JSONDecodeError as error:
        return errors.malformed_json(str(error))
    rows = _rows(kind, payload)
    matrix = None if rows is None else _matrix(rows)
    # Each key of a valid body is followed by its one colon: more colons mean a duplicate key, or
    # colons inside strings (an outcome's time), which the careful path tells apart.
    if matrix is None or body.count(b":") != _members(kind, payload):
        if found := _problems(kind, body, payload):
            return errors.problems(found, len(found))
        if rows is None or (matrix := _matrix(rows)) is None:
            raise RuntimeError("the careful path found no problem in a body the fast path refused")
    if violations := domain.limits_violations(matrix):
        return refused(kind, violations)
    return Checked(body, payload, matrix)


def _rows(kind: str, payload: Any) -> list[Any] | None:
    """The feature rows of a well-shaped payload (values unchecked), or None."""
    if type(payload) is not dict:
        return None
    if kind == ROW:
        return [payload]
    key = "instances" if kind == BATCH else "outcomes"
    if len(payload) != 1 or type(items := payload.get(key)) is not list or not 1 <= len(items) <= MAX_BATCH_ROWS:
        return None
    if kind == BATCH:
        return items
    if not all(type(item) is dict and _outcome_problems(item, 0) == [] for item in items):
        return None
    return [item["features"] for item in items]


def _matrix(rows: list[Any]) -> np.ndarray | None:
    # Rows whose keys come in the model's order (as every example and client sends them) give their
    # values as they are, three times faster than looking up 30 keys in each.
    if all(type(row) is dict and len(row) == len(FEATURE_NAMES) and tuple(row) == FEATURE_NAMES for row in rows):
        values = [list(row.values()) for row in rows]
    elif all(type(row) is dict and row.keys() == FEATURES for row in rows):
        values = [_row_values(row) for row in rows]
    else:
        return None
    try:
        matrix = np.array(values)
    except (ValueError, TypeError):  # a list or object in place of a number
        return None
    # Strings make a text array and nulls an object array.
    if matrix.dtype.kind not in "if" or matrix.shape != (len(rows), len(FEATURE_NAMES)):
        return None
    matrix = matrix.astype(np.float64, copy=False)
    if not ((matrix >= 0) & (matrix <= MAX_FEATURE_VALUE)).all():
        return None
    # JSON's true and false pass numpy's conversion as 1.0 and 0.0: look at the few cells that hold those.
    for row, column in zip(*np.nonzero((matrix == 0) | (matrix == 1)), strict=True):
        if type(values[row][column]) is bool:
            return None
    return matrix


def _members(kind: str, payload: dict[str, Any]) -> int:
    if kind == ROW:
        return len(FEATURE_NAMES)
    if kind == BATCH:
        return 1 + len(FEATURE_NAMES) * len(payload["instances"])
    # An outcome's optional strings may hold colons themselves: those bodies take the careful path.
    return 1 + sum(len(item) + len(FEATURE_NAMES) for item in payload["outcomes"])


def refused(kind: str, violations: list[tuple[int, int, float, float, float]]) -> ErrorAnswer:
    detail = [
        (
            _location(kind, row, FEATURE_NAMES[column]),
            f"{value:g} is outside the range this model accepts, {low:g} to {high:g}: check the value "
            "and its units (GET /model gives each feature's training range)",
        )
        for row, column, value, low, high in violations
    ]
    return errors.problems(detail, len(violations))


def _location(kind: str, row: int, field: str) -> str:
    return {ROW: field, BATCH: f"instances[{row}].{field}", OUTCOMES: f"outcomes[{row}].features.{field}"}[kind]


def _problems(kind: str, body: bytes, payload: Any) -> list[tuple[str, str]]:
    """Everything wrong with a body the fast path refused (its size bounds the work)."""
    found = _duplicates(body)
    if type(payload) is not dict:
        return [*found, ("body", "expected a JSON object")]
    if kind == ROW:
        return found + _row_problems(payload, "")
    key = "instances" if kind == BATCH else "outcomes"
    found += [(name, "unknown field") for name in payload if name != key]
    items = payload.get(key)
    if type(items) is not list:
        return [*found, (key, "required: a list" if items is None else "expected a list")]
    if not 1 <= len(items) <= MAX_BATCH_ROWS:
        found.append((key, f"expected 1 to {MAX_BATCH_ROWS} items, got {len(items)}"))
    for index, item in enumerate(items[: MAX_BATCH_ROWS + 1]):
        if kind == BATCH:
            found += _row_problems(item, f"instances[{index}].")
        else:
            found += _outcome_problems(item, index)
            if type(item) is dict and type(item.get("features")) is dict:
                found += _row_problems(item["features"], f"outcomes[{index}].features.")
    return found


def _row_problems(row: Any, prefix: str) -> list[tuple[str, str]]:
    if type(row) is not dict:
        return [(prefix.rstrip(".") or "body", "expected a JSON object of the 30 features")]
    found = [(prefix + name, "unknown field") for name in row if name not in FEATURES]
    for name in FEATURE_NAMES:
        if name not in row:
            found.append((prefix + name, "required"))
        elif type(value := row[name]) not in _NUMBERS:
            found.append((prefix + name, f"expected a number, got {_json_type(value)}"))
        elif not 0 <= value <= MAX_FEATURE_VALUE:
            found.append((prefix + name, f"expected a number from 0 to {MAX_FEATURE_VALUE:g}, got {value:g}"))
    return found


def _outcome_problems(item: Any, index: int) -> list[tuple[str, str]]:
    at = f"outcomes[{index}]"
    if type(item) is not dict:
        return [(at, "expected an object with features and diagnosis")]
    found = [(f"{at}.{name}", "unknown field") for name in item if name not in OUTCOME_FIELDS]
    if type(item.get("features")) is not dict:
        found.append((f"{at}.features", "required: an object of the 30 features"))
    if item.get("diagnosis") not in CLASS_LABELS:
        found.append((f"{at}.diagnosis", f"expected one of {', '.join(CLASS_LABELS)}"))
    if "request_id" in item and not (type(item["request_id"]) is str and REQUEST_ID.fullmatch(item["request_id"])):
        found.append((f"{at}.request_id", "expected 1 to 64 letters, digits or ._:-"))
    if "predicted_at" in item and not _is_time(item["predicted_at"]):
        found.append((f"{at}.predicted_at", "expected an RFC 3339 date and time"))
    return found


def _is_time(value: Any) -> bool:
    try:
        return type(value) is str and len(value) <= 40 and datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", str: "a string", type(None): "null", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


class _Pairs(dict):
    """A JSON object that remembers its keys as sent, repeated ones included."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.sent = [key for key, _ in pairs]


def _duplicates(body: bytes) -> list[tuple[str, str]]:
    """Every key that appears twice in one object, by its path."""
    found: list[tuple[str, str]] = []

    def visit(node: Any, path: str) -> None:
        if isinstance(node, _Pairs):
            seen: set[str] = set()
            for key in node.sent:
                if key in seen:
                    found.append((f"{path}.{key}" if path else key, "duplicate key"))
                seen.add(key)
            for key, value in node.items():
                visit(value, f"{path}.{key}" if path else key)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                visit(item, f"{path}[{index}]")

    try:
        visit(json.loads(body, object_pairs_hook=_Pairs), "")
    except (ValueError, RecursionError):  # orjson parsed it; a nesting too deep for json is no row
        pass
    return found


# The request models. They describe the bodies for BentoML's OpenAPI document and clients; `check`
# above is what validates them.

Value = Annotated[float, Field(strict=True, ge=0, le=MAX_FEATURE_VALUE, allow_inf_nan=False)]


class _FromTheEdge(BaseModel):
    """A request model built from what the edge checked (hook 2 in bento/hooks.py)."""

    _features: np.ndarray | None = PrivateAttr(default=None)

    @classmethod
    def model_validate_json(cls, json_data: Any, **kwargs: Any) -> Any:
        checked = CHECKED.get()
        if checked is None or not (checked.body is json_data or checked.body == json_data):
            return super().model_validate_json(json_data, **kwargs)
        global reused
        reused += 1
        model = cls.model_construct(**checked.payload)  # pydantic's constructor for validated data
        model._features = checked.features
        return model

    @property
    def features(self) -> np.ndarray:
        """The rows as a (rows, 30) matrix in model order."""
        if self._features is None:
            self._features = np.array([_row_values(row) for row in self.rows()], dtype=np.float64)
        return self._features

    def rows(self) -> list[dict[str, float]]:
        raise NotImplementedError


class _FeaturesBase(_FromTheEdge):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": MALIGNANT_EXAMPLE})

    def rows(self) -> list[dict[str, float]]:
        return [self.model_dump()]


Features = create_model(
    "Features",
    __base__=_FeaturesBase,
    __doc__="The 30 measurements of one fine-needle aspirate (WDBC feature names, in model order). "
    f"Values are JSON numbers from 0 to {MAX_FEATURE_VALUE:,.0f}, inside the model's validity domain "
    "(GET /model); strings are never converted.",
    **{name: (Annotated[Value, Field(description=FEATURE_DESCRIPTIONS[name])], ...) for name in FEATURE_NAMES},
)


class BatchRequest(_FromTheEdge):
    instances: list[Features] = Field(min_length=1, max_length=MAX_BATCH_ROWS)  # type: ignore[valid-type]

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"instances": [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE]}}
    )

    def rows(self) -> list[dict[str, float]]:
        return [row if isinstance(row, dict) else row.model_dump() for row in self.instances]


class Outcome(BaseModel):
    """A confirmed diagnosis (the pathology result) of a sample the service may have diagnosed."""

    features: Features  # type: ignore[valid-type]
    diagnosis: Literal[CLASS_LABELS] = Field(description="the confirmed diagnosis")  # type: ignore[valid-type]
    request_id: str | None = Field(default=None, pattern=REQUEST_ID.pattern, description="the prediction's X-Request-ID")
    predicted_at: datetime | None = Field(default=None, description="when the prediction was made (RFC 3339)")

    model_config = ConfigDict(extra="forbid")


OUTCOME_FIELDS = frozenset(Outcome.model_fields)


class OutcomeBatch(_FromTheEdge):
    outcomes: list[Outcome] = Field(min_length=1, max_length=MAX_BATCH_ROWS)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"outcomes": [{"features": MALIGNANT_EXAMPLE, "diagnosis": "malignant"}]}},
    )

    def rows(self) -> list[dict[str, float]]:
        return [item["features"] if isinstance(item, dict) else item.features.model_dump() for item in self.outcomes]

    def confirmed(self) -> list[str]:
        return [item["diagnosis"] if isinstance(item, dict) else item.diagnosis for item in self.outcomes]

    def predicted_times(self) -> list[datetime]:
        """When each prediction given was made."""
        times = [item.get("predicted_at") if isinstance(item, dict) else item.predicted_at for item in self.outcomes]
        return [datetime.fromisoformat(when) if isinstance(when, str) else when for when in times if when is not None]
