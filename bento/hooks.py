"""Every place the service relies on a library's internals rather than its public API: what, why,
and the check, in each worker, that it still holds after an upgrade.

1. The HTTP protocol. BentoML starts uvicorn with `http="auto"` and has no setting for it, and
   uvicorn's "auto" is httptools when that is installed: httptools drops the body after an
   `Upgrade: h2c` offer (what Java clients send) and does not bound a request's head. uvicorn's h11
   protocol frames strictly (chunked bodies, one Host, trailers kept apart, a 16 KiB head) but waits
   forever for a head that never ends. `install()` points "auto" at DeadlineH11Protocol, h11 with a
   deadline for the head. Checked: each connection marks it in use; until one has (the first
   readiness probe), `missing()` names it, as it does when uvicorn no longer keeps the two
   attributes replaced below where the protocol sets them. The protocol also
   - takes no WebSocket upgrade (the service has none): uvicorn would hand such a request, body
     and all, to its WebSocket protocol, outside the edge and the deadline;
   - parses with BoundedH11Connection, h11's connection refusing a chunked body cut into so many
     small chunks that parsing them costs more than the body is worth (h11 parses each in Python).
2. BentoML's JSON input. BentoML builds an API's input with the input model's
   `model_validate_json(body)`. The edge has parsed and checked that body already, so the request
   models (bento/requests.py) take the edge's result: validating a 1000-row batch again halves the
   batch throughput. Without the hook pydantic validates again: slower, not wrong.
3. BentoML passes a Starlette Response an API returns through unchanged, so the APIs render with
   orjson (building 1000 pydantic answers costs more than all the rest of a batch's answer).
   2 and 3 are checked by `check_round_trip`: once a worker has started, a two-row batch goes through
   the app as a client's would and must come back as the model's own answers.

A worker with a hook out of effect stays unready (bento/api.py), and its log names the hook.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import orjson
from uvicorn.protocols.http import auto
from uvicorn.protocols.http.h11_impl import H11Protocol

from bento import config, requests

PROTOCOL = "uvicorn's HTTP protocol (bento.hooks.DeadlineH11Protocol)"
PARSE = "BentoML's JSON input parsing (the request models' model_validate_json)"
RESPONSE = "BentoML's pass-through of an API's Starlette Response"
_failed: dict[str, str] = {}


class BoundedH11Connection(h11.Connection):
    """h11's server connection, refusing (400, close) a body whose pieces cost more to parse than it
    brings: beyond one piece per read and a few more, each must bring CHUNK_BYTES of body."""

    def __init__(self) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=config.MAX_HEAD_BYTES)
        self.reads = self.pieces = self.body_bytes = 0

    def receive_data(self, data: bytes) -> None:
        self.reads += 1
        super().receive_data(data)

    def next_event(self) -> Any:
        event = super().next_event()
        if type(event) is h11.Request:
            self.reads, self.pieces, self.body_bytes = 1, 0, 0
        elif type(event) is h11.Data:
            self.pieces, self.body_bytes = self.pieces + 1, self.body_bytes + len(event.data)
            allowed = config.FREE_BODY_PIECES + self.reads + self.body_bytes // config.CHUNK_BYTES
            if self.pieces > allowed and self.our_state is h11.SEND_RESPONSE:
                raise h11.RemoteProtocolError("a chunked body in more pieces than its size allows")
        return event


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head within
    HEADER_TIMEOUT_SECONDS of connecting or of its previous answer (slow headers, idle connections),
    or, answered before its body was read (a refusal), the rest of that body."""

    in_use = False
    _deadline: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(vars(self).get("conn"), h11.Connection) or "ws_protocol_class" not in vars(self):
            _failed[PROTOCOL] = (
                "uvicorn's h11 protocol keeps its parser or WebSocket class under another name"
            )
        self.conn = BoundedH11Connection()
        self.ws_protocol_class = None  # an upgrade offer is served as the HTTP request it also is

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        DeadlineH11Protocol.in_use = True
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        was_idle = self.conn.their_state is h11.IDLE
        super().data_received(data)
        if self.conn.our_state is h11.DONE:  # answered, the body still arriving: the deadline stands
            return
        if self.conn.their_state is not h11.IDLE:  # a request being read or answered
            if self._deadline is not None:
                self._deadline.cancel()
        elif not was_idle:  # the rest of an answered request's body has come: idle, from now
            self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(config.HEADER_TIMEOUT_SECONDS, self._close_if_waiting)

    def _close_if_waiting(self) -> None:
        waiting = self.conn.their_state is h11.IDLE or self.conn.our_state is h11.DONE
        if waiting and not self.transport.is_closing():
            self.transport.close()


def install() -> None:
    auto.AutoHTTPProtocol = DeadlineH11Protocol


def missing() -> dict[str, str]:
    """The hooks not in effect in this worker, each with why."""
    found = dict(_failed)
    if not DeadlineH11Protocol.in_use:
        found[PROTOCOL] = "no connection has come through it: uvicorn no longer resolves http='auto' to it"
    return found


async def check_round_trip(edge: Any, lifespan: dict[str, Any], model: Any) -> None:
    """Hooks 2 and 3: a two-row batch through the app, compared with the model's own answers."""
    from bento.edge import RECORDING  # the edge imports this module
    from wdbc import BENIGN_EXAMPLE, MALIGNANT_EXAMPLE

    checked = requests.check(requests.BATCH, orjson.dumps({"instances": [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE]}))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/predict_batch", "raw_path": b"/predict_batch", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"self"), (b"content-type", b"application/json")], "client": None, "server": None,
        "state": {}, "app": lifespan.get("app"),
    }  # fmt: skip
    messages: list[dict[str, Any]] = []

    async def collect(message: dict[str, Any]) -> None:
        messages.append(message)

    reused, recording = requests.reused, RECORDING.set(False)
    try:
        await edge.forward(scope, checked, collect)
        status = next(m["status"] for m in messages if m["type"] == "http.response.start")
        answer = orjson.loads(
            b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        )
        if answer != {"predictions": model.answers(checked.features)}:
            _failed[RESPONSE] = f"the batch came back as {status}: {str(answer)[:300]}"
    except Exception as error:  # noqa: BLE001 (a broken hook leaves the worker up and unready, saying why)
        _failed[RESPONSE] = f"the round trip failed: {type(error).__name__}: {error}"
    finally:
        RECORDING.reset(recording)
    if requests.reused == reused:
        _failed[PARSE] = "BentoML built the batch's input without the request model's model_validate_json"
