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

An ASGI middleware, registered on the BentoML service: it checks the request framing (type, size,
emptiness) before BentoML parses anything, and rewrites error responses from BentoML (pydantic
validation errors) and Starlette (404, 405) into the shape above. Successful responses stream
through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
        return 405, error_body("method not allowed", [{"field": "method", "message": f"not allowed on {path}"}])
    if status >= 500:
        # Never leak internals; the server log has the traceback.
        return status, error_body(HTTPStatus(status).phrase.lower())
    message = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        message = payload[0].get("error")  # BentoML wraps some 4xx errors in a list
    return status, error_body(HTTPStatus(status).phrase.lower(), [{"field": "request", "message": str(message or payload)}])


_EMPTY_BODY = 400, error_body("empty request body", [{"field": "body", "message": "expected a JSON object"}])


class ErrorContractMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_paths: frozenset[str],
        max_body_bytes: int,
        model_ready: Callable[[], bool],
        unavailable_message: str,
    ) -> None:
        self.app = app
        self.api_paths = api_paths
        self.max_body_bytes = max_body_bytes
        self.model_ready = model_ready
        self.unavailable_message = unavailable_message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in self.api_paths and scope["method"] == "POST":
            rejection = self._check_headers(scope)
            if rejection is None:
                body, rejection = await self._read_body(receive)
            if rejection is None and not self.model_ready():
                rejection = 503, error_body("model unavailable", [{"field": "model", "message": self.unavailable_message}])
            if rejection is not None:
                await self._respond(send, scope, *rejection)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, _ErrorRewritingSend(send, scope, self._respond))

    def _check_headers(self, scope: Scope) -> tuple[int, dict[str, Any]] | None:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length == b"0":
            return _EMPTY_BODY
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1").lower()
        if content_type != JSON_CONTENT_TYPE:
            return 415, error_body(
                "unsupported media type",
                [{"field": "content-type", "message": f"expected {JSON_CONTENT_TYPE}, got {content_type or 'none'}"}],
            )
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> tuple[int, dict[str, Any]]:
        return 413, error_body(
            "request body too large", [{"field": "body", "message": f"the limit is {self.max_body_bytes} bytes"}]
        )

    async def _read_body(self, receive: Receive) -> tuple[bytes, tuple[int, dict[str, Any]] | None]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", (400, error_body("client disconnected"))
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:  # chunked uploads carry no Content-Length
                return b"", self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not body.strip():
            return body, _EMPTY_BODY
        return body, None

    async def _respond(self, send: Send, scope: Scope, status: int, body: dict[str, Any]) -> None:
        if status < 500:
            logger.bind(
                status=status, method=scope["method"], path=scope["path"], error=body["error"],
                fields=[item["field"] for item in body["detail"]][:10],
            ).warning("rejected request")
        content = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", JSON_CONTENT_TYPE.encode()), (b"content-length", str(len(content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": content})


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hand the already-read body to the app, then fall back to the real channel (disconnects)."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class _ErrorRewritingSend:
    """Pass 1xx-3xx responses straight through; buffer 4xx/5xx ones and rewrite them."""

    def __init__(self, send: Send, scope: Scope, respond: Callable[..., Any]) -> None:
        self.send, self.scope, self.respond = send, scope, respond
        self.status: int | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] < 400:
                self.status = None
                await self.send(message)
            else:
                self.status = message["status"]
            return
        if self.status is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            status, body = rewrite_error(self.status, b"".join(self.chunks), self.scope["path"])
            await self.respond(self.send, self.scope, status, body)
