"""The edge: each request's first stop in the service, an ASGI middleware (BentoML's add_asgi_middleware).

The HTTP parser frames requests (bento/hooks.py); the edge decides, before BentoML parses anything:
1. where a request goes: 404 for an unknown path, 405 (with Allow) for a method the path does not
   take, 431 past MAX_HEADERS fields or MAX_HEAD_BYTES (the parser answers a request without exactly
   one Host);
2. who is calling, when AUTH_ENABLED: a token the route group's allow-list admits (kubeauth/);
3. whether a model is served, for the routes that need one (503 otherwise);
4. for an API, its body: read whole within BODY_TIMEOUT_SECONDS and the route's limit; admitted by
   the work it brings, never by what its headers declare (one MAX_CONCURRENCY unit while computed, one
   per WEIGHT_BYTES received); checked (bento/requests.py) and held to the model's hard limits.
Every refusal is answered here in the error contract's shape and logged at a bounded rate. Every
answer carries X-Request-ID and `Cache-Control: no-store`, and `Connection: close` when the pod drains
or a request's body larger than a row was left unread: no connection is kept to read gigabytes for
nothing.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bento import config, errors, hooks, requests
from bento.errors import ErrorAnswer
from bento.logs import CALLER, REQUEST_ID, Rejections
from bento.metrics import service_metrics
from kubeauth import Authenticator, Denied, Source, allows
from wdbc import FEATURE_NAMES

_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")  # a client's X-Request-ID is kept when it looks like one
# Set around the edge's start-up round trip (bento/hooks.py): the API does not count or record it.
RECORDING: ContextVar[bool] = ContextVar("recording", default=True)


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    group: str | None = None  # the allow-list in config.AUTH_ALLOW admitting callers; None: open to all
    body: str | None = None  # for an API, the kind of JSON body it takes (bento/requests.py)
    body_limit: int = config.MAX_REQUEST_BYTES
    model: bool = False  # answered 503 while no model is served, as every API is


ANY_GROUP = "any"  # open to every caller one of the allow-lists admits
# This worker's: the edge asks it who is calling, readiness waits for its keys. None: AUTH_ENABLED is false.
AUTHENTICATOR = (
    Authenticator(
        Source(
            config.AUTH_AUDIENCE,
            config.AUTH_ISSUER,
            config.AUTH_DISCOVERY_URL,
            config.AUTH_JWKS_URL,
            config.AUTH_CREDENTIALS_FILE,
            config.AUTH_CA_FILE,
            config.AUTH_JWKS_REFRESH_SECONDS,
        )
    )
    if config.AUTH_ENABLED
    else None
)


class DrainSwitch:
    """True once DRAIN_FILE exists (the chart's preStop hook creates it); looked for at most every
    0.1 s, often enough to close keep-alive connections within the preStop pause."""

    def __init__(self) -> None:
        self.draining, self.checked_at = False, 0.0

    def __bool__(self) -> bool:
        if not self.draining and time.monotonic() - self.checked_at >= 0.1:
            self.checked_at = time.monotonic()
            if config.DRAIN_FILE.exists():
                self.draining = True
                logger.info("draining: answering with Connection: close and /readyz 503 until SIGTERM")
        return self.draining


DRAINING = DrainSwitch()


class Reply:
    """The request's `send`: the edge's headers on the answer, its status kept for the metrics."""

    def __init__(self, send: Send, request_id: str) -> None:
        self.send, self.close, self.status = send, False, None
        self.headers = [(b"x-request-id", request_id.encode()), (b"cache-control", b"no-store")]

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            close = [(b"connection", b"close")] if self.close or DRAINING else []
            message = {**message, "headers": [*message.get("headers", ()), *self.headers, *close]}
        await self.send(message)

    async def error(self, answer: ErrorAnswer) -> None:
        content = answer.content()
        length = (b"content-length", str(len(content)).encode())
        headers = [(b"content-type", errors.JSON_CONTENT_TYPE.encode()), length, *answer.headers]
        await self({"type": "http.response.start", "status": answer.status, "headers": headers})
        await self.send({"type": "http.response.body", "body": content})


class Edge:
    def __init__(self, app: ASGIApp, *, routes: dict[str, Route], served: Callable[[], Any]) -> None:
        self.app, self.routes, self.authenticator = app, routes, AUTHENTICATOR
        self.served = served  # the served model (bento/api.py), or None while there is none
        self.load = 0  # MAX_CONCURRENCY units held in this worker
        self.metrics = service_metrics()
        self.rejections = Rejections(self.metrics.suppressed.inc)
        self._counters: dict[tuple[str, int], Any] = {}  # labels() costs more than the increment
        self._timers: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._on_lifespan(scope, send))
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:  # websocket: the service has none
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started, path = time.perf_counter(), scope["path"]
        tokens = REQUEST_ID.set(_request_id(scope["headers"])), CALLER.set(None)
        reply = Reply(send, REQUEST_ID.get())
        route = self.routes.get(path)
        endpoint = path if route else "other"
        try:
            answer = self._route(scope, route)
            if answer is None and route.group and self.authenticator:
                answer = await self._authorize(scope, route.group)
            if answer is None and (route.model or route.body) and (model := self.served()) is None:
                answer = errors.MODEL_UNAVAILABLE
            if answer is None and route.body:
                answer = await self._serve_api(scope, receive, reply, route, model)
            elif answer is None:
                reply.close = _large_body(scope["headers"])  # a GET with a body: not read, not kept
                await self.app(scope, receive, reply)
            if answer is not None:
                reply.close = reply.close or _large_body(scope["headers"])
                self._log(scope, answer)
                await reply.error(answer)
        # A bug of ours: answered in the contract's shape, logged at a bounded rate.
        except Exception as error:
            if reply.status is not None:  # the answer has begun: the server closes the connection
                raise
            reply.close = True
            self.rejections.log(
                "ERROR", "failed to answer a request", exception=error, path=errors.cut(path, 100)
            )
            await reply.error(errors.INTERNAL_ERROR)
        finally:
            self._count(endpoint, reply.status or 500, time.perf_counter() - started)
            REQUEST_ID.reset(tokens[0])
            CALLER.reset(tokens[1])

    def _route(self, scope: Scope, route: Route | None) -> ErrorAnswer | None:
        headers = scope["headers"]
        size = sum(len(n) + len(v) for n, v in headers) + len(scope["method"]) + len(scope["raw_path"])
        if len(headers) > config.MAX_HEADERS or size + len(scope["query_string"]) > config.MAX_HEAD_BYTES:
            return errors.HEAD_TOO_LARGE
        framing = {name for name, _ in headers if name in (b"content-length", b"transfer-encoding")}
        if len(framing) == 2:  # RFC 9112 6.3: a smuggling attempt, perhaps; refused, and closed
            return errors.bad_request(
                "transfer-encoding", "a request gives Content-Length or Transfer-Encoding, not both"
            )
        if route is None:
            return errors.answer(404, "not found", "path", f"no endpoint at {scope['path']}")
        if scope["method"] not in route.methods:
            allow = ", ".join(sorted(route.methods))
            message = f"{scope['method']} is not allowed on {scope['path']}; allowed: {allow}"
            return errors.answer(405, "method not allowed", "method", message, (b"allow", allow.encode()))
        return None

    async def _authorize(self, scope: Scope, group: str) -> ErrorAnswer | None:
        try:
            identity = await self.authenticator.identify(
                [v for n, v in scope["headers"] if n == b"authorization"]
            )
            lists = config.AUTH_ALLOW.values() if group == ANY_GROUP else [config.AUTH_ALLOW[group]]
            if not any(allows(allowed, identity) for allowed in lists):
                raise Denied(403, "forbidden", f"{identity} may not call the {group} endpoints")
        except Denied as denied:
            self.metrics.auth_denied.labels(denied.reason).inc()
            return errors.denied(denied.status, denied.message)
        CALLER.set(str(identity))
        self.metrics.auth_allowed.labels(str(identity)).inc()
        return None

    async def _serve_api(
        self, scope: Scope, receive: Receive, reply: Reply, route: Route, model: Any
    ) -> ErrorAnswer | None:
        if answer := _check_head(scope["headers"], route.body_limit):
            return answer
        held, size, chunks = 0, 0, []  # held: the units this request holds
        try:
            async with asyncio.timeout(config.BODY_TIMEOUT_SECONDS):
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return errors.bad_request("body", "the client disconnected")
                    chunks.append(message.get("body", b""))
                    size, more = size + len(chunks[-1]), message.get("more_body", False)
                    if size > route.body_limit:
                        reply.close = True
                        return errors.too_large(route.body_limit)
                    if size // config.WEIGHT_BYTES > held:
                        if not self._admit(size // config.WEIGHT_BYTES - held, held):
                            reply.close = True
                            return errors.OVERLOADED
                        held = size // config.WEIGHT_BYTES
            body = b"".join(chunks)
            if not body.strip():
                return errors.EMPTY_BODY
            if not self._admit(1, held):
                return errors.OVERLOADED
            held += 1
            checked = requests.check(route.body, body)
            if isinstance(checked, ErrorAnswer):
                return checked
            if violations := model.domain.limits_violations(checked.features):
                for _, column, value, low, _ in violations:
                    self.metrics.refused.labels(
                        FEATURE_NAMES[column], "below" if value < low else "above"
                    ).inc()
                return requests.refused(route.body, violations)
            await self.forward(scope, checked, reply)
            return None
        except TimeoutError:
            reply.close = True
            return errors.BODY_TIMEOUT
        finally:
            self.load -= held

    def _admit(self, units: int, held: int) -> bool:
        """Take `units` more for a request holding `held`; past the limit only while it is alone."""
        if self.load > held and self.load + units > config.MAX_CONCURRENCY:
            self.metrics.shed.inc()
            return False
        self.load += units
        return True

    async def forward(self, scope: Scope, checked: requests.Checked, send: Send) -> None:
        """BentoML's turn, with the checked body (hook 2 of bento/hooks.py takes it from CHECKED).

        Neither the context nor `receive` keeps the body or its parse once BentoML has them: the timers
        a request starts (its timeouts, BentoML's, the connection's next deadline) hold a copy of the
        context, and with it what it refers to, for seconds after the request is answered."""
        body = [checked.body]

        async def receive() -> Message:
            if not body:  # nothing more will arrive: the body is whole
                await asyncio.Event().wait()
            return {"type": "http.request", "body": body.pop(), "more_body": False}

        token = requests.CHECKED.set(weakref.ref(checked))
        try:
            async with asyncio.timeout(config.REQUEST_TIMEOUT_SECONDS):
                await self.app(scope, receive, send)
        except TimeoutError:
            if isinstance(send, Reply) and send.status is None:
                await send.error(errors.TIMED_OUT)
        finally:
            requests.CHECKED.reset(token)

    def _on_lifespan(self, scope: Scope, send: Send) -> Send:
        """Once the worker has started, before it takes connections: the signing keys fetched (a worker
        serving without them would answer 503) and kept fresh, and the hooks' round trip."""

        async def send_after(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                if self.authenticator is not None:
                    await self.authenticator.refresh()
                    self._keys = asyncio.ensure_future(self.authenticator.keep_keys_fresh())
                if (model := self.served()) is not None:
                    await hooks.check_round_trip(self, scope, model)
            elif message["type"] == "lifespan.shutdown.complete" and hasattr(self, "_keys"):
                self._keys.cancel()
            await send(message)

        return send_after

    def _log(self, scope: Scope, answer: ErrorAnswer) -> None:
        self.rejections.log(
            "ERROR" if answer.status in (500, 501) else "WARNING",
            "rejected request",
            status=answer.status,
            method=errors.cut(scope["method"], 20),
            path=errors.cut(scope["path"], 100),
            error=errors.cut(answer.error),
            fields=[errors.cut(field, 100) for field, _ in answer.detail[:10]],
        )

    def _count(self, endpoint: str, status: int, seconds: float) -> None:
        if (counter := self._counters.get((endpoint, status))) is None:
            counter = self._counters[endpoint, status] = self.metrics.requests.labels(endpoint, str(status))
        if (timer := self._timers.get(endpoint)) is None:
            timer = self._timers[endpoint] = self.metrics.latency.labels(endpoint)
        counter.inc()
        timer.observe(seconds)


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id" and _CLIENT_ID.fullmatch(value):
            return value.decode()
    return f"{random.getrandbits(64):016x}"


def _large_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a body left unread may be larger than a row: then the connection is closed rather than
    kept, which would make the parser read it to throw it away."""
    for name, value in headers:
        if name == b"transfer-encoding" or (
            name == b"content-length" and int(value) > config.SINGLE_ROW_BYTES
        ):
            return True
    return False


def _check_head(headers: list[tuple[bytes, bytes]], limit: int) -> ErrorAnswer | None:
    """What the headers alone say about an API request's body."""
    fields = {name: value for name, value in headers if name in (b"content-length", b"content-type")}
    if (types := sum(1 for name, _ in headers if name == b"content-type")) > 1:  # BentoML reads the first
        return errors.bad_request("content-type", f"expected one Content-Type header, got {types}")
    length = fields.get(b"content-length")
    if length == b"0":
        return errors.EMPTY_BODY
    media_type = fields.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1").lower()
    if media_type != errors.JSON_CONTENT_TYPE:
        return errors.unsupported_media_type(media_type[:100])
    if length is not None and int(length) > limit:  # the parser has made sure it is a number
        return errors.too_large(limit)
    return None
