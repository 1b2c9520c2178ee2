"""One error contract for every endpoint: the shape, the statuses, and each answer the service gives.

Every error answer is small JSON of one shape,
    {"error": "<short message>", "detail": [{"field": "<name or path>", "message": "..."}]},
with at most MAX_LISTED_PROBLEMS entries in `detail` (then a last entry says how many there were)
and every field and message cut to MAX_TEXT characters. The edge (bento/edge.py) gives these answers
before a request reaches BentoML; the OpenAPI document and docs/api.md list STATUSES. Framing the
HTTP parser refuses itself (a malformed request line, header or chunk) gets its plain-text 400 and a
closed connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, Field

from bento import config

JSON_CONTENT_TYPE = "application/json"
MAX_LISTED_PROBLEMS = 20
MAX_TEXT = 200
STATUSES: dict[int, str] = {
    400: "the body is not JSON (RFC 8259: no NaN or Infinity) or is empty; not exactly one Host header; more "
    "than one Content-Type; both Content-Length and Transfer-Encoding",
    401: "no valid bearer token: missing, malformed, expired, for another audience or issuer, or badly signed",
    403: "a valid token of a caller that is not allowed on this path",
    404: "no such path (a trailing slash is a different path; there are no redirects)",
    405: "the path exists, the method does not; the Allow header lists the methods",
    408: "the body did not arrive within BODY_TIMEOUT_SECONDS (e.g. shorter than its Content-Length)",
    413: f"the body is larger than MAX_REQUEST_BYTES ({config.SINGLE_ROW_BYTES} bytes for a single row)",
    415: "the Content-Type of a POST is not application/json",
    422: "well-formed JSON that is invalid: each problem names its field (batch rows by index), a duplicate "
    "key or a value outside the model's validity domain included",
    431: f"more than MAX_HEADERS header fields, or a request line and headers over {config.MAX_HEAD_BYTES} bytes",
    500: "a bug on our side, never something the client sent",
    503: "the model or the token-signing keys are not loaded (the pod is not ready either), or the worker is "
    "at MAX_CONCURRENCY: retry after Retry-After",
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
            "detail": [{"field": cut(f), "message": cut(m)} for f, m in self.detail],
        }

    def content(self) -> bytes:
        return orjson.dumps(self.body())


RETRY = (b"retry-after", str(config.RETRY_AFTER_SECONDS).encode())


def answer(status: int, error: str, field: str, message: str, *headers: tuple[bytes, bytes]) -> ErrorAnswer:
    """An answer about one field."""
    return ErrorAnswer(status, error, ((field, message),), headers)


def problems(detail: list[tuple[str, str]], total: int) -> ErrorAnswer:
    """A 422 listing at most MAX_LISTED_PROBLEMS problems, and how many there were in all."""
    listed = tuple(detail[:MAX_LISTED_PROBLEMS])
    if total > len(listed):
        summary = f"{total} problems in all; the first {len(listed)} are listed"
        return ErrorAnswer(422, f"invalid request: {summary}", (*listed, ("body", summary)))
    return ErrorAnswer(422, f"invalid request: {total} problem{'s' * (total != 1)}", listed)


def malformed_json(message: str) -> ErrorAnswer:
    return answer(400, "malformed JSON", "body", message)


def bad_request(field: str, message: str) -> ErrorAnswer:
    return answer(400, "bad request", field, message)


def too_large(limit: int) -> ErrorAnswer:
    return answer(413, "request body too large", "body", f"the limit is {limit} bytes")


def unsupported_media_type(got: str) -> ErrorAnswer:
    message = f"expected {JSON_CONTENT_TYPE}, got {got or 'none'}"
    return answer(415, "unsupported media type", "content-type", message)


def denied(status: int, message: str) -> ErrorAnswer:
    """The answer to a caller authentication refused (401), authorization refused (403), or that could
    not be checked (503: the signing keys are not loaded)."""
    if status == 503:
        return answer(503, "authentication unavailable", "authentication", message, RETRY)
    if status == 403:
        return answer(403, "forbidden", "authorization", message)
    challenge = b"Bearer" if message == "no bearer token" else b'Bearer error="invalid_token"'
    return answer(401, "unauthenticated", "authorization", message, (b"www-authenticate", challenge))


EMPTY_BODY = answer(400, "empty request body", "body", "expected a JSON object")
INTERNAL_ERROR = ErrorAnswer(500, "internal server error")
TIMED_OUT = answer(504, "timed out", "request", "the service did not answer in time; retry")
BODY_TIMEOUT = answer(
    408,
    "request body incomplete",
    "body",
    f"the body did not arrive within {config.BODY_TIMEOUT_SECONDS:g} s (is Content-Length larger than the body?)",
)
HEAD_TOO_LARGE = answer(
    431,
    "request header fields too large",
    "headers",
    f"at most {config.MAX_HEADERS} fields and {config.MAX_HEAD_BYTES} bytes of request line and headers",
)
MODEL_UNAVAILABLE = answer(
    503,
    "model unavailable",
    "model",
    f"model {config.MODEL_TAG} is not loaded; see the service's startup log",
    RETRY,
)
OVERLOADED = answer(
    503,
    "overloaded",
    "request",
    f"this worker is at its limit of {config.MAX_CONCURRENCY} (a request counts one while computed plus one per "
    f"{config.WEIGHT_BYTES // 1024} KiB of body received); retry after {config.RETRY_AFTER_SECONDS} s",
    RETRY,
)
