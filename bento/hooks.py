"""Every place the service relies on a library's internals rather than its public API: what, why,
and the check, at each worker's start, that it is still in effect after an upgrade.

1. The HTTP protocol. BentoML starts uvicorn with `http="auto"` and has no setting for the protocol,
   and uvicorn's "auto" means httptools when it is installed. httptools mishandles bodies after an
   `Upgrade: h2c` offer (what Java clients send) and puts no bound on a request's header block.
   uvicorn's h11 protocol frames requests strictly (chunked bodies, one Host, trailers kept apart,
   a 16 KiB head) but waits forever for a head that arrives slowly or never. `install()` points
   uvicorn's "auto" name at `DeadlineH11Protocol`, h11 plus that deadline. Checked: each connection
   marks the protocol in use, so `missing()` names it until a request (the first readiness probe)
   has arrived through it.
2. BentoML's JSON input. BentoML builds an API's input by calling the input model's
   `model_validate_json(body)`. The edge (bento/edge.py) has already parsed and checked that body,
   so the request models (bento/requests.py) take the edge's result instead of validating the body a
   second time, which for a 1000-row batch halves the throughput. Without the hook pydantic would
   validate the body again: slower, not wrong.
3. BentoML passes a Starlette Response returned by an API through unchanged: the APIs render their
   answers with orjson (1000 pydantic Prediction objects cost ten times the whole render).
   Checked for 2 and 3 together: the edge sends a two-row batch through the app when a worker
   starts (`Edge.self_test`) and records here what did not round-trip.

`missing()` is part of readiness (bento/api.py): a worker with a hook out of effect stays unready
and its log names the hook.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http import auto
from uvicorn.protocols.http.h11_impl import H11Protocol

from bento import config

PROTOCOL = "uvicorn's HTTP protocol (bento.hooks.DeadlineH11Protocol)"
PARSE = "BentoML's JSON input parsing (the request models' model_validate_json)"
RESPONSE = "BentoML's pass-through of an API's Starlette Response"
_failed: dict[str, str] = {}


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head within
    HEADER_TIMEOUT_SECONDS of connecting or of its previous answer (slow headers, idle connections)."""

    in_use = False
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        DeadlineH11Protocol.in_use = True
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE:
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._cancel_deadline()
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(config.HEADER_TIMEOUT_SECONDS, self._close_if_no_head)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close_if_no_head(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def install() -> None:
    auto.AutoHTTPProtocol = DeadlineH11Protocol


def failed(hook: str, why: str) -> None:
    _failed[hook] = why


def missing() -> dict[str, str]:
    """The hooks not in effect in this worker, each with why."""
    found = dict(_failed)
    if not DeadlineH11Protocol.in_use:
        found[PROTOCOL] = "no connection has come through it: uvicorn no longer resolves http='auto' to it"
    return found
