"""One error contract for every endpoint, BentoML's and Starlette's own errors included.

Every error answer is small JSON of one shape,
    {"error": "<short message>", "detail": [{"field": "<name or path>", "message": "..."}]},
with at most MAX_LISTED_PROBLEMS entries in `detail` (then a last entry says how many there were)
and every field and message cut to MAX_TEXT characters. Statuses (STATUSES below, which the OpenAPI
document and the README's API page repeat from here):

This module is the contract: the shape, the answers, and the mapping of other components' errors
onto it. bento/guard.py enforces it on every request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from pydantic import BaseModel, Field

JSON_CONTENT_TYPE = "application/json"
MAX_LISTED_PROBLEMS = 20
MAX_TEXT = 200
# The error type of the last, summarising entry of a list cut at MAX_LISTED_PROBLEMS (bento/validation.py).
TOO_MANY_PROBLEMS = "too_many_problems"
RETRY_AFTER_SECONDS = 1

STATUSES: dict[int, str] = {
    400: "the body is not JSON, or is empty",
    404: "no such path (a trailing slash is a different path; there are no redirects)",
    405: "the path exists, the method does not; the Allow header lists the methods",
    408: "the body did not arrive within BODY_TIMEOUT_SECONDS (e.g. shorter than its Content-Length)",
    413: "the body is larger than the limit (MAX_REQUEST_BYTES; 64 KiB for a single row)",
    415: "the Content-Type of a POST is not application/json",
    422: "well-formed JSON that is invalid: each problem names its field (batch rows by index)",
    500: "a bug on our side, never something the client sent",
    501: "the served model cannot be explained feature by feature (it is not linear)",
    503: "the model is not loaded (the pod is not ready either), or the worker is at MAX_CONCURRENCY "
    "(with Retry-After): retry",
    504: "the request took longer than the service's timeout",
}


class ErrorDetail(BaseModel):
    field: str = Field(
        description="the field, path or header the problem is about, e.g. instances[2].radius_mean"
    )
    message: str


class ErrorResponse(BaseModel):
    """Every error answer, from every endpoint."""

    error: str = Field(description="what went wrong, in a few words")
    detail: list[ErrorDetail] = Field(description=f"the problems, at most {MAX_LISTED_PROBLEMS + 1} entries")


def cut(text: str, limit: int = MAX_TEXT) -> str:
    """Client-chosen text (names, paths, messages quoting them), bounded: in answers and in logs."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@dataclass(frozen=True)
class ErrorAnswer:
    status: int
    error: str
    detail: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def body(self) -> dict[str, Any]:
        return {
            "error": cut(self.error),
            "detail": [{"field": cut(field), "message": cut(message)} for field, message in self.detail],
        }

    def content(self) -> bytes:
        return orjson.dumps(self.body())


def malformed_json(message: str) -> ErrorAnswer:
    return ErrorAnswer(400, "malformed JSON", (("body", message),))


EMPTY_BODY = ErrorAnswer(400, "empty request body", (("body", "expected a JSON object"),))


def not_found(path: str) -> ErrorAnswer:
    return ErrorAnswer(404, "not found", (("path", f"no endpoint at {path}"),))


def method_not_allowed(path: str, method: str, allowed: list[str]) -> ErrorAnswer:
    allow = ", ".join(allowed)
    return ErrorAnswer(
        405,
        "method not allowed",
        (("method", f"{method} is not allowed on {path}; allowed: {allow}"),),
        ((b"allow", allow.encode()),),
    )


def body_timeout(seconds: float) -> ErrorAnswer:
    return ErrorAnswer(
        408,
        "request body incomplete",
        (
            (
                "body",
                f"the body did not arrive within {seconds:g} s (is Content-Length larger than the body?)",
            ),
        ),
        ((b"connection", b"close"),),
    )


def too_large(limit: int) -> ErrorAnswer:
    return ErrorAnswer(413, "request body too large", (("body", f"the limit is {limit} bytes"),))


def unsupported_media_type(got: str) -> ErrorAnswer:
    return ErrorAnswer(
        415,
        "unsupported media type",
        (("content-type", f"expected {JSON_CONTENT_TYPE}, got {got or 'none'}"),),
    )


def model_unavailable(message: str) -> ErrorAnswer:
    return ErrorAnswer(503, "model unavailable", (("model", message),))


def overloaded(limit: int) -> ErrorAnswer:
    message = (
        f"this worker is at its limit of {limit} requests in progress (a batch counts one more per "
        f"256 KiB); retry after {RETRY_AFTER_SECONDS} s"
    )
    return ErrorAnswer(
        503, "overloaded", (("request", message),), ((b"retry-after", str(RETRY_AFTER_SECONDS).encode()),)
    )


def not_explainable(reason: str) -> ErrorAnswer:
    return ErrorAnswer(501, "explanations unavailable", (("model", reason),))


def from_validation_errors(errors: list[dict[str, Any]]) -> ErrorAnswer:
    """pydantic's errors (as BentoML reports them) as a 400 (not JSON) or a 422 (invalid values)."""
    if invalid := next((error for error in errors if error.get("type") == "json_invalid"), None):
        return malformed_json(invalid.get("msg", ""))
    summary = next((error for error in errors if error.get("type") == TOO_MANY_PROBLEMS), None)
    detail = tuple(
        (
            field_path(error.get("loc", ())),
            "unknown field" if error.get("type") == "extra_forbidden" else str(error.get("msg", "")),
        )
        for error in errors
        if error is not summary
    )[:MAX_LISTED_PROBLEMS]
    if summary is not None:
        return ErrorAnswer(
            422, f"invalid request: {summary.get('msg', '')}", (*detail, ("body", summary.get("msg", "")))
        )
    noun = "problem" if len(detail) == 1 else "problems"
    return ErrorAnswer(422, f"invalid request: {len(detail)} {noun}", detail)


def field_path(location: list[Any] | tuple[Any, ...]) -> str:
    """pydantic's ('instances', 3, 'radius_mean') -> 'instances[3].radius_mean'."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def rewrite_error(status: int, body: bytes, path: str) -> ErrorAnswer:
    """Map an error answer produced below the guard (BentoML, Starlette, FastAPI) onto the contract."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = body.decode("utf-8", "replace").strip()
    if isinstance(payload, dict) and isinstance(payload.get("detail"), list):
        items = payload["detail"]
        if items and all(isinstance(item, dict) and "loc" in item for item in items):
            return from_validation_errors(items)
        if all(isinstance(item, dict) and {"field", "message"} <= item.keys() for item in items):
            detail = tuple(
                (str(item["field"]), str(item["message"])) for item in items[: MAX_LISTED_PROBLEMS + 1]
            )
            return ErrorAnswer(status, str(payload.get("error", HTTPStatus(status).phrase.lower())), detail)
    if status == 404:
        return not_found(path)
    if status == 504:
        return ErrorAnswer(504, "timed out", (("request", "the service did not answer in time; retry"),))
    if status >= 500:
        # Never leak internals; the server log has the traceback.
        return ErrorAnswer(status, HTTPStatus(status).phrase.lower())
    message = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        message = payload[0].get("error")  # BentoML wraps some 4xx errors in a list
    return ErrorAnswer(status, HTTPStatus(status).phrase.lower(), (("request", str(message or payload)),))
