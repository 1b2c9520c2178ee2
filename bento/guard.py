"""The request guard: an ASGI middleware on the BentoML service that enforces bento/errors.py.

It checks the request framing (type, size, emptiness) of the service's API routes before BentoML
parses anything, answers 503 while the model is not loaded, and rewrites error responses from
BentoML (pydantic validation errors) and Starlette (404, 405) into the contract's shape. Successful
responses stream through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bento.errors import EMPTY_BODY, JSON_CONTENT_TYPE, error_body, model_unavailable, rewrite_error


class RequestGuard:
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
                rejection = model_unavailable(self.unavailable_message)
            if rejection is not None:
                await self._respond(send, scope, *rejection)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, _ErrorRewritingSend(send, scope, self._respond))

    def _check_headers(self, scope: Scope) -> tuple[int, dict[str, Any]] | None:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length == b"0":
            return EMPTY_BODY
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1").lower()
        if content_type != JSON_CONTENT_TYPE:
            return 415, error_body(
                "unsupported media type",
                [
                    {
                        "field": "content-type",
                        "message": f"expected {JSON_CONTENT_TYPE}, got {content_type or 'none'}",
                    }
                ],
            )
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> tuple[int, dict[str, Any]]:
        return 413, error_body(
            "request body too large",
            [{"field": "body", "message": f"the limit is {self.max_body_bytes} bytes"}],
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
            return body, EMPTY_BODY
        return body, None

    async def _respond(self, send: Send, scope: Scope, status: int, body: dict[str, Any]) -> None:
        if status < 500:
            logger.bind(
                status=status,
                method=scope["method"],
                path=scope["path"],
                error=body["error"],
                fields=[item["field"] for item in body["detail"]][:10],
            ).warning("rejected request")
        content = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", JSON_CONTENT_TYPE.encode()),
                    (b"content-length", str(len(content)).encode()),
                ],
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
