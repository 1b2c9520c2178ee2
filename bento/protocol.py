"""Serve HTTP/1.1 requests that offer `Upgrade: h2c` as the plain requests they are.

`curl --http2` and Java's HttpClient (HTTP/2 by default) add `Connection: Upgrade, HTTP2-Settings`
and `Upgrade: h2c` to ordinary requests. RFC 9110 §7.8 lets a server ignore the offer, but with
httptools uvicorn drops the body of such a request (the parser skips it when it sees an upgrade,
uvicorn issue 2722, open upstream), so the service saw an empty POST. This protocol is uvicorn's own
httptools protocol plus the missing part: when an upgrade other than WebSocket is refused, the body
that follows the headers is read here (Content-Length or chunked) and handed to the request, and
parsing resumes after it for the next request on the connection.

BentoML starts uvicorn with `http="auto"`, which resolves uvicorn.protocols.http.auto.AutoHTTPProtocol
when the worker's server starts; `install()` points that name at this class (bento/service.py).
"""

from __future__ import annotations

import httptools
from uvicorn.protocols.http import auto
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Body:
    """The framing of the body that follows a refused upgrade: Content-Length or chunked (RFC 9112 §7.1)."""

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        values = {name.lower(): value for name, value in headers}
        self.chunked = b"chunked" in values.get(b"transfer-encoding", b"").lower()
        self.remaining = 0 if self.chunked else int(values.get(b"content-length", b"0") or 0)
        self.state = "size" if self.chunked else "data"
        self.buffer = b""
        self.done = not self.chunked and self.remaining == 0

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """(body bytes found in data, bytes after the end of the body); ValueError on bad framing."""
        if not self.chunked:
            body, rest = data[: self.remaining], data[self.remaining :]
            self.remaining -= len(body)
            self.done = self.remaining == 0
            return body, rest
        self.buffer += data
        body: list[bytes] = []
        while True:
            if self.state == "size":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                self.remaining = int(self.buffer[:end].split(b";")[0].strip(), 16)
                self.buffer = self.buffer[end + 2 :]
                self.state = "data" if self.remaining else "trailer"
            elif self.state == "data":
                if not self.buffer:
                    break
                taken = self.buffer[: self.remaining]
                body.append(taken)
                self.buffer = self.buffer[len(taken) :]
                self.remaining -= len(taken)
                if self.remaining == 0:
                    self.state = "data-end"
            elif self.state == "data-end":
                if len(self.buffer) < 2:
                    break
                if self.buffer[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                self.buffer = self.buffer[2:]
                self.state = "size"
            else:  # trailer fields, up to an empty line
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
                if not line:
                    self.done = True
                    rest, self.buffer = self.buffer, b""
                    return b"".join(body), rest
        return b"".join(body), b""


class H2cTolerantHttpToolsProtocol(HttpToolsProtocol):
    _pending: _Body | None = None

    def _refused_upgrade(self) -> bool:
        return self.parser.should_upgrade() and not self._should_upgrade()

    def on_message_complete(self) -> None:
        # httptools reports the message complete before the body of a refused upgrade: wait for it.
        if self._refused_upgrade():
            self._pending = _Body(self.headers)
            return
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._pending is not None:
            self._deliver(data)
            return
        try:
            self._unset_keepalive_if_required()
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            elif self._pending is not None:
                self._deliver(data[upgrade.args[0] :])

    def _deliver(self, data: bytes) -> None:
        pending = self._pending
        try:
            body, rest = pending.feed(data)
        except ValueError:
            self._pending = None
            self.send_400_response("Invalid chunked body.")
            return
        if body and not self.cycle.response_complete:
            self.cycle.body += body
            self.cycle.message_event.set()
        if pending.done:
            self._pending = None
            super().on_message_complete()
            if rest:
                self.data_received(rest)


def install() -> None:
    auto.AutoHTTPProtocol = H2cTolerantHttpToolsProtocol
