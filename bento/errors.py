"""One error contract for every endpoint, BentoML's and Starlette's own errors included.

Every error response is JSON of the shape
    {"error": "<short message>", "detail": [{"field": "<name or path>", "message": "..."}]}
with these status codes:
    400  the body is not JSON, or is empty
    404  no such path                    405  the path exists, the method does not
    413  the body is larger than MAX_REQUEST_BYTES
    415  the Content-Type of a POST is not application/json
    422  the JSON is well-formed but invalid (missing, unknown, wrong-typed, negative, non-finite
         or overflowing values; batch size out of bounds) — each problem names its field
    503  the model is not loaded (the pod is not ready either)
    500  a bug on our side, never something the client sent

This module is the contract itself: the shape, and the mapping of other components' errors onto it.
bento/guard.py enforces it on every request.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

JSON_CONTENT_TYPE = "application/json"


def error_body(error: str, detail: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"error": error, "detail": detail or []}


def field_path(location: list[Any] | tuple[Any, ...]) -> str:
    """pydantic's ('instances', 3, 'radius_mean') -> 'instances[3].radius_mean'."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _from_validation_errors(errors: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    if any(error.get("type") == "json_invalid" for error in errors):
        message = next(error["msg"] for error in errors if error.get("type") == "json_invalid")
        return 400, error_body("malformed JSON", [{"field": "body", "message": message}])
    detail = [
        {
            "field": field_path(error.get("loc", ())),
            "message": "unknown field" if error.get("type") == "extra_forbidden" else error.get("msg", ""),
        }
        for error in errors
    ]
    noun = "problem" if len(detail) == 1 else "problems"
    return 422, error_body(f"invalid request: {len(detail)} {noun}", detail)


def rewrite_error(status: int, body: bytes, path: str) -> tuple[int, dict[str, Any]]:
    """Map an error response produced below us (BentoML, Starlette) onto the contract."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = body.decode("utf-8", "replace").strip()
    if isinstance(payload, dict) and isinstance(payload.get("detail"), list):
        if payload["detail"] and all(isinstance(item, dict) and "loc" in item for item in payload["detail"]):
            return _from_validation_errors(payload["detail"])
        if all(isinstance(item, dict) and {"field", "message"} <= item.keys() for item in payload["detail"]):
            return status, payload  # already in shape
    if status == 404:
        return 404, error_body("not found", [{"field": "path", "message": f"no endpoint at {path}"}])
    if status == 405:
        return 405, error_body(
            "method not allowed", [{"field": "method", "message": f"not allowed on {path}"}]
        )
    if status >= 500:
        # Never leak internals; the server log has the traceback.
        return status, error_body(HTTPStatus(status).phrase.lower())
    message = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        message = payload[0].get("error")  # BentoML wraps some 4xx errors in a list
    return status, error_body(
        HTTPStatus(status).phrase.lower(), [{"field": "request", "message": str(message or payload)}]
    )


def model_unavailable(message: str) -> tuple[int, dict[str, Any]]:
    """503: the model is not loaded; the pod is not ready either."""
    return 503, error_body("model unavailable", [{"field": "model", "message": message}])


EMPTY_BODY = 400, error_body("empty request body", [{"field": "body", "message": "expected a JSON object"}])
