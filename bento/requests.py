"""Request bodies: `check`, the one parse of a body into features, and the models that document them.

The edge (bento/edge.py) checks every API body before BentoML sees it and answers the problems
itself; a body that passes is handed on in CHECKED, which the request models' `model_validate_json`
takes instead of parsing the body again (bento/hooks.py, hook 2).

Valid rows and batches, the common case, are parsed with orjson and checked as arrays: one key
comparison per row, then type and range checks on the whole matrix, and a count of colons, one per
key, which a duplicate key (JSON parsers keep one of the two) would exceed. Anything else is read
again, row by row, to name every problem by row and field: the work grows with the body's size,
never with its number of problems, and at most MAX_LISTED_PROBLEMS are listed.
"""

from __future__ import annotations

import gc
import json
import re
import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model

from bento import errors
from bento.config import CLOCK_SKEW_SECONDS, MAX_BATCH_ROWS, MAX_FEATURE_VALUE, OUTCOME_MAX_AGE_DAYS
from bento.errors import ErrorAnswer
from wdbc import BENIGN_EXAMPLE, CLASS_LABELS, FEATURE_DESCRIPTIONS, FEATURE_NAMES, MALIGNANT_EXAMPLE
from wdbc.domain import Violation

ROW, BATCH, OUTCOMES = "row", "batch", "outcomes"
LISTS = {BATCH: "instances", OUTCOMES: "outcomes"}
FEATURES = frozenset(FEATURE_NAMES)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_RFC_3339 = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")
_row_values = itemgetter(*FEATURE_NAMES)
# The objects and lists a valid body holds at most: the batch, its list, a row per item (and an
# outcome's features).
_MOST_CONTAINERS = {ROW: 1, BATCH: 2 + MAX_BATCH_ROWS, OUTCOMES: 2 + 2 * MAX_BATCH_ROWS}


@dataclass(frozen=True)
class Checked:
    body: bytes
    payload: dict[str, Any]  # the parsed JSON object
    features: np.ndarray  # (rows, 30) in model order


CHECKED: ContextVar[weakref.ref[Checked] | None] = ContextVar("checked", default=None)
reused = 0  # bodies BentoML took from CHECKED: the start-up round trip looks for one more


def check(kind: str, body: bytes) -> Checked | ErrorAnswer:
    """The body of a ROW, BATCH or OUTCOMES request as features, or the answer refusing it. (The model's
    hard limits are the edge's next check; `refused` words that answer.)"""
    # A parsed body holds no reference cycles, yet the garbage collector tracks each of its lists and
    # objects: its passes over a megabyte of tiny lists cost twice the parse. Paused while checking.
    if not gc.isenabled():
        return _check(kind, body)
    gc.disable()
    try:
        return _check(kind, body)
    finally:
        gc.enable()


def _check(kind: str, body: bytes) -> Checked | ErrorAnswer:
    try:
        payload = orjson.loads(body)  # RFC 8259: no NaN or Infinity, no number beyond a double
    except orjson.JSONDecodeError as error:
        return errors.malformed_json(str(error))
    rows = [payload] if kind == ROW else payload.get(LISTS[kind]) if type(payload) is dict else None
    if kind == BATCH and not (type(rows) is list and 1 <= len(rows) <= MAX_BATCH_ROWS and len(payload) == 1):
        rows = None
    # An outcome's time has colons of its own: outcomes, few, always take the careful path.
    matrix = None if rows is None or kind == OUTCOMES else _matrix(rows)
    if matrix is None or body.count(b":") != len(FEATURE_NAMES) * len(rows) + (kind == BATCH):
        # What the parser kept first, then what it dropped: the keys sent twice.
        if found := _problems(kind, payload) or _duplicates(kind, body):
            return errors.problems(found, len(found))
        matrix = _matrix([item["features"] for item in rows] if kind == OUTCOMES else rows)
    return Checked(body, payload, matrix)


def _matrix(rows: list[Any]) -> np.ndarray | None:
    """The rows as a float matrix in model order, or None if one is not 30 numbers from 0 to MAX_FEATURE_VALUE."""
    # Rows whose keys come in the model's order (as every example and client sends them) give their
    # values as they are, three times faster than looking up 30 keys in each.
    if all(type(row) is dict and len(row) == len(FEATURES) and tuple(row) == FEATURE_NAMES for row in rows):
        values = [list(row.values()) for row in rows]
    elif all(type(row) is dict and row.keys() == FEATURES for row in rows):
        values = [_row_values(row) for row in rows]
    else:
        return None
    if len(values) <= 4:  # a few rows: checking each value in Python beats numpy's fixed costs
        numbers = (float, int)  # not bool: type() is exact
        if all(type(v) in numbers and 0 <= v <= MAX_FEATURE_VALUE for row in values for v in row):
            return np.array(values, dtype=np.float64)
        return None
    try:
        matrix = np.array(values)
    except (ValueError, TypeError):  # a list or object in place of a number
        return None
    if matrix.dtype.kind not in "if" or matrix.shape != (len(rows), len(FEATURES)):  # strings, nulls
        return None
    matrix = matrix.astype(np.float64, copy=False)
    if not ((matrix >= 0) & (matrix <= MAX_FEATURE_VALUE)).all():
        return None
    # JSON's true and false pass numpy's conversion as 1.0 and 0.0: look at the few cells holding those.
    for row, column in zip(*np.nonzero((matrix == 0) | (matrix == 1)), strict=True):
        if type(values[row][column]) is bool:
            return None
    return matrix


def refused(kind: str, violations: list[Violation]) -> ErrorAnswer:
    """The answer to values outside the model's hard limits (wdbc/domain.py)."""
    where = {ROW: "{1}", BATCH: "instances[{0}].{1}", OUTCOMES: "outcomes[{0}].features.{1}"}[kind]
    detail = [
        (
            where.format(row, FEATURE_NAMES[column]),
            (
                f"{value:g} is outside the range this model accepts, {low:g} to {high:g}: check the value "
                "and its units (GET /model gives each feature's training range)"
            ),
        )
        for row, column, value, low, high in violations
    ]
    return errors.problems(detail, len(violations))


def _problems(kind: str, payload: Any) -> list[tuple[str, str]]:
    """Everything wrong with a parsed body, each by its field."""
    if type(payload) is not dict:
        return [("body", "expected a JSON object")]
    if kind == ROW:
        return _row_problems(payload, "")
    key = LISTS[kind]
    found = [(name, "unknown field") for name in payload if name != key]
    items = payload.get(key)
    if type(items) is not list:
        return [*found, (key, "required: a list" if items is None else "expected a list")]
    if not 1 <= len(items) <= MAX_BATCH_ROWS:
        found.append((key, f"expected 1 to {MAX_BATCH_ROWS} items, got {len(items)}"))
    if kind == BATCH:
        for index, item in enumerate(items[: MAX_BATCH_ROWS + 1]):
            found += _row_problems(item, f"instances[{index}].")
        return found
    now, first_with_id = datetime.now(UTC), {}
    for index, item in enumerate(items[: MAX_BATCH_ROWS + 1]):
        found += _outcome_problems(item, index, now, first_with_id)
    return found


def _row_problems(row: Any, prefix: str) -> list[tuple[str, str]]:
    if type(row) is not dict:
        return [(prefix.rstrip(".") or "body", "expected a JSON object of the 30 features")]
    found = [(prefix + name, "unknown field") for name in row if name not in FEATURES]
    for name in FEATURE_NAMES:
        value = row.get(name)
        if name not in row:
            found.append((prefix + name, "required"))
        elif type(value) not in (float, int):  # not bool: type() is exact
            kind = {bool: "a boolean", str: "a string", type(None): "null", list: "a list", dict: "an object"}
            found.append((prefix + name, f"expected a number, got {kind[type(value)]}"))
        elif not 0 <= value <= MAX_FEATURE_VALUE:
            found.append((prefix + name, f"expected a number from 0 to {MAX_FEATURE_VALUE:g}, got {value:g}"))
    return found


def _outcome_problems(
    item: Any, index: int, now: datetime, first_with_id: dict[str, int]
) -> list[tuple[str, str]]:
    """An outcome's problems; `first_with_id` holds the index of the first outcome with each request_id."""
    at = f"outcomes[{index}]"
    if type(item) is not dict:
        return [(at, "expected an object with features and diagnosis")]
    found = [(f"{at}.{name}", "unknown field") for name in item if name not in Outcome.model_fields]
    found += _row_problems(item.get("features"), f"{at}.features.")
    if item.get("diagnosis") not in CLASS_LABELS:
        found.append((f"{at}.diagnosis", f"expected one of {', '.join(CLASS_LABELS)}"))
    # request_id and predicted_at are optional: absent or null
    if item.get("request_id") is not None and not (
        type(item["request_id"]) is str and REQUEST_ID.fullmatch(item["request_id"])
    ):
        found.append((f"{at}.request_id", "expected 1 to 64 letters, digits or ._:-"))
    elif (request_id := item.get("request_id")) is not None and (
        first := first_with_id.setdefault(request_id, index)
    ) != index:
        found.append((f"{at}.request_id", f"repeats outcomes[{first}]'s: each is counted once"))
    if item.get("predicted_at") is not None:
        if (when := _time(item["predicted_at"])) is None:
            found.append((f"{at}.predicted_at", "expected an RFC 3339 date and time with its offset"))
        elif not -timedelta(days=OUTCOME_MAX_AGE_DAYS) <= when - now <= timedelta(seconds=CLOCK_SKEW_SECONDS):
            found.append(
                (f"{at}.predicted_at", f"expected a time within the last {OUTCOME_MAX_AGE_DAYS} days")
            )
    return found


def _time(value: Any) -> datetime | None:
    """An RFC 3339 date and time (datetime.fromisoformat alone also takes week dates, no seconds...)."""
    if type(value) is not str or not _RFC_3339.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # a day or hour that does not exist
        return None


class _Pairs(dict):
    """A JSON object that remembers its keys as sent, repeated ones included."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.sent = [key for key, _ in pairs]


def _duplicates(kind: str, body: bytes) -> list[tuple[str, str]]:
    """Every key that appears twice in one object, by its path, in a body whose parsed value is valid."""
    # A valid body has no brackets in its strings, and at most these objects and lists; more come from
    # the earlier values of repeated keys, which are then not worth reading again (they can be megabytes
    # of small objects, each a call into Python).
    if body.count(b"{") + body.count(b"[") > _MOST_CONTAINERS[kind]:
        return [("body", "duplicate key: an object or list is given and then replaced by a later value")]
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
    except RecursionError:  # orjson takes deeper nesting than json; no valid body nests more than 4
        return [("body", "duplicate key: a value nested too deeply, then replaced by a later value")]
    except ValueError:  # orjson parsed it; json's reading differs (an encoding it guesses otherwise)
        pass
    return found


class _Checked(BaseModel):
    """A request model, built from what the edge checked (hook 2 in bento/hooks.py)."""

    KIND: ClassVar[str]
    _checked: Checked | None = PrivateAttr(default=None)

    @classmethod
    def model_validate_json(cls, json_data: Any, **kwargs: Any) -> Any:
        checked = ref() if (ref := CHECKED.get()) is not None else None
        if checked is None or not (checked.body is json_data or checked.body == json_data):
            return super().model_validate_json(json_data, **kwargs)
        global reused
        reused += 1
        model = cls.model_construct(**checked.payload)  # pydantic's constructor for validated data
        model._checked = checked
        return model

    @property
    def checked(self) -> Checked:
        """The body as the edge checked it; checked again if pydantic built this (hook 2 out of effect)."""
        if self._checked is None:
            found = check(self.KIND, orjson.dumps(self.model_dump(mode="json", exclude_none=True)))
            if isinstance(found, ErrorAnswer):
                raise ValueError(f"a validated request fails the edge's check: {found.detail}")
            self._checked = found
        return self._checked

    @property
    def features(self) -> np.ndarray:
        """The rows as a (rows, 30) matrix in model order."""
        return self.checked.features


class _Row(_Checked):
    KIND: ClassVar[str] = ROW
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": MALIGNANT_EXAMPLE})


Value = Annotated[float, Field(strict=True, ge=0, le=MAX_FEATURE_VALUE, allow_inf_nan=False)]
Features = create_model(
    "Features",
    __base__=_Row,
    __doc__="The 30 measurements of one fine-needle aspirate (WDBC feature names, in model order). "
    f"Values are JSON numbers from 0 to {MAX_FEATURE_VALUE:,.0f}, inside the model's validity domain "
    "(GET /model); strings are never converted.",
    **{
        name: (Annotated[Value, Field(description=FEATURE_DESCRIPTIONS[name])], ...) for name in FEATURE_NAMES
    },
)


class BatchRequest(_Checked):
    KIND: ClassVar[str] = BATCH
    instances: list[Features] = Field(min_length=1, max_length=MAX_BATCH_ROWS)  # type: ignore[valid-type]
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"instances": [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE]}}
    )


class Outcome(BaseModel):
    """A confirmed diagnosis (the pathology result) of a sample the service may have diagnosed."""

    features: Features  # type: ignore[valid-type]
    diagnosis: Literal[CLASS_LABELS] = Field(description="the confirmed diagnosis")  # type: ignore[valid-type]
    request_id: str | None = Field(
        default=None, pattern=REQUEST_ID.pattern, description="the prediction's X-Request-ID"
    )
    predicted_at: datetime | None = Field(default=None, description="when the prediction was made (RFC 3339)")
    model_config = ConfigDict(extra="forbid")


class OutcomeBatch(_Checked):
    KIND: ClassVar[str] = OUTCOMES
    outcomes: list[Outcome] = Field(min_length=1, max_length=MAX_BATCH_ROWS)
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"outcomes": [{"features": MALIGNANT_EXAMPLE, "diagnosis": "malignant"}]}
        },
    )

    def confirmed(self) -> list[str]:
        return [item["diagnosis"] for item in self.checked.payload["outcomes"]]

    def predicted_times(self) -> list[datetime]:
        items = self.checked.payload["outcomes"]
        return [_time(item["predicted_at"]) for item in items if item.get("predicted_at") is not None]
