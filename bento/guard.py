"""The guards that enforce bento/errors.py, at the two places a request can be stopped.

EdgeGuard wraps BentoML's whole ASGI app, so it sees a request before BentoML labels its metrics
with the path: unknown paths (404) and disallowed methods (405, with Allow) are answered there and
never become a metric series; requests past MAX_CONCURRENCY in this worker (a batch weighing one
more per WEIGHT_BYTES of body) are shed with a 503 and Retry-After before BentoML parses anything
(a shed batch also closes its connection);
every answer carries X-Request-ID, and `Connection: close` once the pod drains;
every error answer from below (BentoML's validation errors and 504 timeouts, Starlette's, FastAPI's)
is rewritten into the contract's shape and logged once.

RequestGuard runs inside BentoML's middleware (so its answers are counted per endpoint): for the
service's API routes it checks the framing before BentoML parses anything (415 type, 413 size, 400
empty, 408 a body that stops arriving) and answers 503 while the model is not loaded.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field

from loguru import logger
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bento import errors
from bento.errors import ErrorAnswer

# The request's id on every log line about it (bento/logs.py reads it) and in the X-Request-ID answer header.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# A client's own X-Request-ID is kept when it looks like an id; anything else gets a fresh one.
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
# Error bodies from below are small; a larger one is not ours to parse.
_MAX_ERROR_BODY = 64 * 1024
_LOGGED_PATH = 100
WEIGHT_BYTES = 256 * 1024
_CLOSE = (b"connection", b"close")


@dataclass
class RouteTable:
    """The app's paths and their methods, read from its routes once (mounted apps included)."""

    exact: dict[str, frozenset[str]] = field(default_factory=dict)
    patterns: list[tuple[re.Pattern[str], frozenset[str]]] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)  # mounted static files: GET and HEAD below them

    @classmethod
    def of(cls, routes: Iterable[BaseRoute]) -> RouteTable:
        table = cls()
        table._add(routes)
        return table

    def _add(self, routes: Iterable[BaseRoute]) -> None:
        for route in routes:
            if isinstance(route, Mount):
                inner = getattr(route.app, "routes", None)
                if route.path in ("", "/") and inner is not None:
                    self._add(inner)  # BentoML's passive mount of an ASGI app at the root
                else:
                    self.prefixes.append(route.path.rstrip("/") + "/")
            elif isinstance(route, Route):
                methods = frozenset(route.methods or {"GET", "HEAD"})
                if "{" in route.path:
                    self.patterns.append((route.path_regex, methods))
                else:
                    self.exact[route.path] = self.exact.get(route.path, frozenset()) | methods

    def methods(self, path: str) -> frozenset[str] | None:
        """The methods `path` answers, or None for a path the app does not serve."""
        if (methods := self.exact.get(path)) is not None:
            return methods
        for pattern, methods in self.patterns:
            if pattern.match(path):
                return methods
        if any(path.startswith(prefix) for prefix in self.prefixes):
            return frozenset({"GET", "HEAD"})
        return None


async def respond(send: Send, answer: ErrorAnswer, headers: list[tuple[bytes, bytes]] = ()) -> None:
    content = answer.content()
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [
                (b"content-type", errors.JSON_CONTENT_TYPE.encode()),
                (b"content-length", str(len(content)).encode()),
                *answer.headers,
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


def log_answer(scope: Scope, answer: ErrorAnswer) -> None:
    bound = logger.bind(
        status=answer.status,
        method=scope["method"],
        path=errors.cut(scope["path"], _LOGGED_PATH),
        error=errors.cut(answer.error),
        fields=[errors.cut(field, _LOGGED_PATH) for field, _ in answer.detail[:10]],
    )
    if answer.status == 504:
        bound.warning("request timed out")
    elif answer.status >= 500 and answer.status != 503:
        bound.error("request failed")
    else:
        bound.warning("rejected request")


def _weight(scope: Scope) -> int:
    """A request's share of MAX_CONCURRENCY: one, plus one per WEIGHT_BYTES of declared body, so a
    1000-row batch (~0.8 MB, the work of a few dozen single rows) counts as four."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return 1 + int(value) // WEIGHT_BYTES if value.isdigit() else 1
    return 1


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _CLIENT_ID.fullmatch(value):
            return value.decode()
    return f"{random.getrandbits(64):016x}"


class EdgeGuard:
    def __init__(
        self,
        app: ASGIApp,
        routes: RouteTable,
        *,
        limited_paths: frozenset[str],
        max_concurrency: int,
        draining: Callable[[], bool],
        on_shed: Callable[[], None],
        on_unrouted: Callable[[], None],
    ) -> None:
        self.app = app
        self.routes = routes
        self.limited_paths = limited_paths
        self.max_concurrency = max_concurrency
        self.draining = draining
        self.on_shed = on_shed
        self.on_unrouted = on_unrouted
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = REQUEST_ID.set(request_id)
        draining = self.draining()
        headers = [(b"x-request-id", request_id.encode()), *([_CLOSE] if draining else [])]
        try:
            path, method = scope["path"], scope["method"]
            methods = self.routes.methods(path)
            answer = None
            if methods is None:
                answer = errors.not_found(path)
            elif method not in methods:
                answer = errors.method_not_allowed(path, method, sorted(methods))
            if answer is not None:
                self.on_unrouted()
                log_answer(scope, answer)
                await respond(send, answer, headers)
                return
            if path not in self.limited_paths:
                await self.app(scope, receive, _RewritingSend(send, scope, headers))
                return
            weight = _weight(scope)
            if self.in_progress + weight > self.max_concurrency and self.in_progress:
                self.on_shed()
                # Closing costs the client a reconnect; keeping the connection would cost this worker
                # reading and discarding the unread body, which for a batch is most of its work.
                close = [_CLOSE] if weight > 1 and not draining else []
                await respond(send, errors.overloaded(self.max_concurrency), [*headers, *close])
                return
            self.in_progress += weight
            try:
                await self.app(scope, receive, _RewritingSend(send, scope, headers))
            finally:
                self.in_progress -= weight
        finally:
            REQUEST_ID.reset(token)


class _RewritingSend:
    """Pass 1xx-3xx answers through with our headers; buffer 4xx/5xx ones and rewrite them."""

    __slots__ = ("chunks", "headers", "kept", "scope", "send", "size", "status")
    # Headers of an error answer from below that mean something to the client, kept in the rewrite.
    KEPT = frozenset({b"allow", b"retry-after", b"connection"})

    def __init__(self, send: Send, scope: Scope, headers: list[tuple[bytes, bytes]]) -> None:
        self.send, self.scope, self.headers = send, scope, headers
        self.status: int | None = None
        self.kept: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] < 400:
                await self.send({**message, "headers": [*message.get("headers", ()), *self.headers]})
            else:
                self.status = message["status"]
                self.kept = [
                    (name, value) for name, value in message.get("headers", ()) if name.lower() in self.KEPT
                ]
            return
        if self.status is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if self.size <= _MAX_ERROR_BODY:
            self.chunks.append(chunk)
        if not message.get("more_body", False):
            answer = errors.rewrite_error(self.status, b"".join(self.chunks), self.scope["path"])
            log_answer(self.scope, answer)
            await respond(self.send, answer, [*self.kept, *self.headers])


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_paths: frozenset[str],
        body_limits: dict[str, int],
        body_timeout: float,
        model_ready: Callable[[], bool],
        unavailable_message: Callable[[], str],
    ) -> None:
        self.app = app
        self.api_paths = api_paths
        self.body_limits = body_limits
        self.body_timeout = body_timeout
        self.model_ready = model_ready
        self.unavailable_message = unavailable_message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in self.api_paths or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        limit = self.body_limits.get(path, max(self.body_limits.values()))
        answer = self._check_headers(scope, limit)
        body = b""
        if answer is None:
            body, answer = await self._read_body(receive, limit)
        if answer is None and not self.model_ready():
            answer = errors.model_unavailable(self.unavailable_message())
        if answer is not None:
            await respond(send, answer)
            return
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    def _check_headers(scope: Scope, limit: int) -> ErrorAnswer | None:
        length = content_type = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                content_type = value
        if length == b"0":
            return errors.EMPTY_BODY
        media_type = (content_type or b"").split(b";")[0].strip().decode("latin-1").lower()
        if media_type != errors.JSON_CONTENT_TYPE:
            return errors.unsupported_media_type(media_type[:100])
        if length is not None and length.isdigit() and int(length) > limit:
            return errors.too_large(limit)
        return None

    async def _read_body(self, receive: Receive, limit: int) -> tuple[bytes, ErrorAnswer | None]:
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return b"", errors.ErrorAnswer(400, "client disconnected")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:  # chunked uploads carry no Content-Length
                        return b"", errors.too_large(limit)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return b"", errors.body_timeout(self.body_timeout)
        body = b"".join(chunks)
        if not body.strip():
            return body, errors.EMPTY_BODY
        return body, None


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
