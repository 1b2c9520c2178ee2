"""The edge: each request's first stop in the service, before BentoML parses anything.

An ASGI middleware (BentoML's add_asgi_middleware). Framing (the request line, headers, chunked
bodies, their limits) is the HTTP parser's (bento/hooks.py); this module decides, for each request:
1. where it goes: 404 for an unknown path, 405 (with Allow) for a method the path does not take,
   400 without exactly one Host, 431 past MAX_HEADERS header fields;
2. who is calling (AUTH_ENABLED): a bearer token the route group's allow-list admits (bento/auth.py);
3. for an API: the body, read whole within BODY_TIMEOUT_SECONDS and MAX_REQUEST_BYTES, admitted by
   the work it brings (one unit while computed, one per WEIGHT_BYTES actually received, never what a
   header declares) against MAX_CONCURRENCY, then checked (bento/requests.py): every refusal is
   answered here, in the error contract's shape (bento/errors.py), and logged at a bounded rate;
4. every answer carries X-Request-ID and `Cache-Control: no-store`, and `Connection: close` when
   the pod drains or when the request's body was left unread (no gigabytes read to be thrown away);
   each is counted by route and status.
It also starts the workers' background work on the app's lifespan, and sends a two-row batch through
the app once a worker has started, to prove hooks 2 and 3 of bento/hooks.py still hold.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bento import config, errors, hooks, requests
from bento.auth import AUTHENTICATOR, Denied, allows
from bento.errors import ErrorAnswer
from bento.logs import CALLER, REQUEST_ID, Rejections
from bento.metrics import service_metrics

# A client's own X-Request-ID is kept when it looks like an id; anything else gets a fresh one.
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
_STATIC = "/static_content/"  # the Swagger UI's assets, BentoML's static files
_LOGGED_PATH = 100
DRAIN_CHECK_SECONDS = 0.1  # often enough to close keep-alive connections well within the preStop pause
# Set by the edge's start-up round trip: the API does not count or record it.
RECORDING: ContextVar[bool] = ContextVar("recording", default=True)


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    group: str | None = None  # the allow-list (config.AUTH_ALLOW) that admits callers; None: open
    body: str | None = None  # the kind of JSON body it takes (bento/requests.py), for the APIs
    body_limit: int = config.MAX_REQUEST_BYTES


ANY_GROUP = "the API description"  # open to every caller admitted by one of the allow-lists


class DrainSwitch:
    """True once the drain file exists (the chart's preStop hook creates it); checked at most every
    DRAIN_CHECK_SECONDS, so the per-request cost is a clock read."""

    def __init__(self, path: Path = config.DRAIN_FILE) -> None:
        self.path, self._draining, self._checked_at = path, False, 0.0

    def __bool__(self) -> bool:
        if not self._draining and time.monotonic() - self._checked_at >= DRAIN_CHECK_SECONDS:
            self._checked_at = time.monotonic()
            if self.path.exists():
                self._draining = True
                logger.bind(drain_file=str(self.path)).info(
                    "draining: answering with Connection: close and /readyz 503 until SIGTERM"
                )
        return self._draining


DRAINING = DrainSwitch()


class _Reply:
    """The request's `send`: our headers on the answer, its status kept for the metrics."""

    __slots__ = ("close", "headers", "send", "status")

    def __init__(self, send: Send, request_id: str) -> None:
        self.send, self.close = send, False
        self.status: int | None = None  # until the answer starts
        self.headers = [(b"x-request-id", request_id.encode()), (b"cache-control", b"no-store")]

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            extra = [*self.headers, *((b"connection", b"close"),) * (self.close or bool(DRAINING))]
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await self.send(message)

    async def error(self, answer: ErrorAnswer) -> None:
        content = answer.content()
        headers = [
            (b"content-type", errors.JSON_CONTENT_TYPE.encode()),
            (b"content-length", str(len(content)).encode()),
            *answer.headers,
        ]
        await self({"type": "http.response.start", "status": answer.status, "headers": headers})
        await self.send({"type": "http.response.body", "body": content})


class Edge:
    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: dict[str, Route],
        served: Callable[[], Any],
        unavailable: Callable[[], str],
    ) -> None:
        self.app, self.routes = app, routes
        self.served = served  # the served model (its validity domain, its answers), or None
        self.unavailable = unavailable
        self.authenticator = AUTHENTICATOR
        self.load = 0  # MAX_CONCURRENCY units held in this worker
        self.metrics = service_metrics()
        self.rejections = Rejections(self.metrics.suppressed.inc)
        self._counted: dict[tuple[str, int], Any] = {}
        self._timed: dict[str, Any] = {}
        self._tasks: set[asyncio.Task] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._on_lifespan(scope, send))
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:  # websocket: the service has none
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = _request_id(scope["headers"])
        tokens = REQUEST_ID.set(request_id), CALLER.set(None)
        reply = _Reply(send, request_id)
        path = scope["path"]
        route = self.routes.get(path)
        endpoint = path if route is not None else "other"
        try:
            answer = self._route(scope, route)
            if answer is None and route.group is not None and self.authenticator is not None:
                answer = await self._authorize(scope, route.group)
            if answer is None and route.body is not None:
                answer = await self._serve_api(scope, receive, reply, route)
            elif answer is None:
                reply.close = _declares_body(scope["headers"])
                await self.app(scope, receive, reply)
            if answer is not None:
                reply.close = reply.close or _declares_body(scope["headers"])
                self._log(scope, answer)
                await reply.error(answer)
        finally:
            self._count(endpoint, reply.status or 500, time.perf_counter() - started)
            REQUEST_ID.reset(tokens[0])
            CALLER.reset(tokens[1])

    def _route(self, scope: Scope, route: Route | None) -> ErrorAnswer | None:
        headers = scope["headers"]
        if len(headers) > config.MAX_HEADERS:
            return errors.head_too_large(f"{len(headers)} fields; at most {config.MAX_HEADERS}")
        size = len(scope["raw_path"]) + len(scope["query_string"]) + sum(len(n) + len(v) for n, v in headers)
        if size > config.MAX_HEAD_BYTES:
            return errors.head_too_large(f"{size} bytes of request line and headers; at most {config.MAX_HEAD_BYTES}")
        hosts = sum(1 for name, _ in headers if name == b"host")
        if hosts > 1 or (hosts == 0 and scope["http_version"] == "1.1"):  # the parser refuses these first
            return errors.bad_host(hosts)
        path, method = scope["path"], scope["method"]
        if route is None:
            if path.startswith(_STATIC) and method in ("GET", "HEAD"):
                return None
            return errors.not_found(path)
        if method not in route.methods:
            return errors.method_not_allowed(path, method, sorted(route.methods))
        return None

    async def _authorize(self, scope: Scope, group: str) -> ErrorAnswer | None:
        authorization = [value for name, value in scope["headers"] if name == b"authorization"]
        try:
            identity = await self.authenticator.identify(authorization)
        except Denied as denied:
            self.metrics.auth_denied.labels(reason=denied.reason).inc()
            if denied.status == 503:
                return errors.unavailable("authentication", denied.message)
            if denied.status == 403:
                return errors.ErrorAnswer(403, "forbidden", (("authorization", denied.message),))
            return errors.unauthenticated(denied.message)
        groups = config.AUTH_ALLOW.values() if group == ANY_GROUP else [config.AUTH_ALLOW[group]]
        if not any(allows(allowed, identity) for allowed in groups):
            self.metrics.auth_denied.labels(reason="forbidden").inc()
            return errors.forbidden(str(identity), group)
        CALLER.set(str(identity))
        self.metrics.auth_allowed.labels(identity=str(identity)).inc()
        return None

    async def _serve_api(self, scope: Scope, receive: Receive, reply: _Reply, route: Route) -> ErrorAnswer | None:
        model = self.served()
        if model is None:
            return errors.unavailable("model", self.unavailable())
        answer = _check_head(scope["headers"], route.body_limit)
        if answer is not None:
            return answer
        held = 0  # units this request holds: one per WEIGHT_BYTES received, one more while computed
        try:
            chunks: list[bytes] = []
            size = 0
            async with asyncio.timeout(config.BODY_TIMEOUT_SECONDS):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return errors.ErrorAnswer(400, "client disconnected")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > route.body_limit:
                        reply.close = True
                        return errors.too_large(route.body_limit)
                    if (units := size // config.WEIGHT_BYTES) > held:
                        if not self._admit(units - held, held):
                            reply.close = True
                            return errors.overloaded(config.MAX_CONCURRENCY)
                        held = units
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
            body = b"".join(chunks)
            if not body.strip():
                return errors.EMPTY_BODY
            if not self._admit(1, held):
                return errors.overloaded(config.MAX_CONCURRENCY)
            held += 1
            checked = requests.check(route.body, body, model.domain)
            if isinstance(checked, ErrorAnswer):
                return checked
            await self._forward(scope, checked, reply)
            return None
        except TimeoutError:
            reply.close = True
            return errors.body_timeout(config.BODY_TIMEOUT_SECONDS)
        finally:
            self.load -= held

    def _admit(self, units: int, held: int) -> bool:
        """Take `units` more for a request holding `held`; past the limit only while it is alone."""
        if self.load > held and self.load + units > config.MAX_CONCURRENCY:
            self.metrics.shed.inc()
            return False
        self.load += units
        return True

    async def _forward(self, scope: Scope, checked: requests.Checked, send: Send) -> None:
        """BentoML's turn, with the checked body (hook 2 of bento/hooks.py takes it from CHECKED)."""
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if delivered:  # nothing more will arrive: the body is whole
                await asyncio.Event().wait()
            delivered = True
            return {"type": "http.request", "body": checked.body, "more_body": False}

        token = requests.CHECKED.set(checked)
        try:
            async with asyncio.timeout(config.REQUEST_TIMEOUT_SECONDS):
                await self.app(scope, receive, send)
        except TimeoutError:
            if isinstance(send, _Reply) and send.status is None:
                await send.error(errors.TIMED_OUT)
        finally:
            requests.CHECKED.reset(token)

    def _log(self, scope: Scope, answer: ErrorAnswer) -> None:
        level = "WARNING" if answer.status < 500 or answer.status in (503, 504) else "ERROR"
        self.rejections.log(
            level,
            "rejected request",
            status=answer.status,
            method=scope["method"],
            path=errors.cut(scope["path"], _LOGGED_PATH),
            error=errors.cut(answer.error),
            fields=[errors.cut(field, _LOGGED_PATH) for field, _ in answer.detail[:10]],
        )

    def _count(self, endpoint: str, status: int, seconds: float) -> None:
        # Looked up once per label set: labels() costs more than the increment.
        if (counter := self._counted.get((endpoint, status))) is None:
            counter = self._counted[endpoint, status] = self.metrics.requests.labels(endpoint, str(status))
        if (timer := self._timed.get(endpoint)) is None:
            timer = self._timed[endpoint] = self.metrics.latency.labels(endpoint)
        counter.inc()
        timer.observe(seconds)

    def _on_lifespan(self, scope: Scope, send: Send) -> Send:
        async def send_after_start(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                if self.authenticator is not None:
                    self._start(self.authenticator.keep_keys_fresh())
                if (model := self.served()) is not None:
                    try:
                        await self.self_test(scope, model)
                    except Exception as error:  # noqa: BLE001 (a broken hook must leave the worker up and unready)
                        hooks.failed(hooks.RESPONSE, f"the start-up round trip failed: {type(error).__name__}: {error}")
            elif message["type"] == "lifespan.shutdown.complete":
                for task in self._tasks:
                    task.cancel()
            await send(message)

        return send_after_start

    def _start(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def self_test(self, lifespan: Scope, model: Any, path: str = "/predict_batch") -> None:
        """A two-row batch through the app as a client's would go, compared with the model's own answers."""
        from wdbc import BENIGN_EXAMPLE, MALIGNANT_EXAMPLE

        body = orjson.dumps({"instances": [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE]})
        checked = requests.check(self.routes[path].body, body, model.domain)
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "headers": [(b"host", b"self-test"), (b"content-type", b"application/json")],
            "client": None, "server": None, "state": {}, "app": lifespan.get("app"),
        }  # fmt: skip
        messages: list[Message] = []

        async def collect(message: Message) -> None:
            messages.append(message)

        reused, token = requests.reused, RECORDING.set(False)
        try:
            await self._forward(scope, checked, collect)
        finally:
            RECORDING.reset(token)
        status = next((m["status"] for m in messages if m["type"] == "http.response.start"), None)
        content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        if requests.reused == reused:
            hooks.failed(hooks.PARSE, "BentoML built the batch's input without the request model's model_validate_json")
        if status != 200 or orjson.loads(content) != {"predictions": model.answers(checked.features)}:
            hooks.failed(hooks.RESPONSE, f"the batch answered {status}: {content[:300]!r}")


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id" and _CLIENT_ID.fullmatch(value):
            return value.decode()
    return f"{random.getrandbits(64):016x}"


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    return any((name == b"content-length" and value != b"0") or name == b"transfer-encoding" for name, value in headers)


def _check_head(headers: list[tuple[bytes, bytes]], limit: int) -> ErrorAnswer | None:
    """What the headers alone say about an API request's body."""
    length = content_type = None
    for name, value in headers:
        if name == b"content-length":
            length = value
        elif name == b"content-type":
            content_type = value
    if length == b"0":
        return errors.EMPTY_BODY
    media_type = (content_type or b"").split(b";")[0].strip().decode("latin-1").lower()
    if media_type != errors.JSON_CONTENT_TYPE:
        return errors.unsupported_media_type(media_type[:100])
    if length is not None and int(length) > limit:  # the parser has checked it is a number
        return errors.too_large(limit)
    return None
