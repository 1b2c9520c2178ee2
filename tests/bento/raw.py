"""Raw HTTP/1.1 over a socket, for tests that send what no HTTP client library would."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Self

import psutil

from harness.servers import Server

MiB = 1024 * 1024


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    content_length: int | None = None,
    host: bool = True,
) -> bytes:
    """A request's bytes; Content-Length is the body's unless given, and absent for chunked bodies."""
    fields = {"Host": "localhost"} if host else {}
    fields |= {"Content-Type": "application/json"} if body or content_length else {}
    fields |= headers or {}
    if "Transfer-Encoding" not in fields and (body or content_length is not None):
        fields["Content-Length"] = str(len(body) if content_length is None else content_length)
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return head.encode() + b"\r\n" + body


def chunked(*parts: bytes, trailers: bytes = b"") -> bytes:
    return (
        b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in parts)
        + b"0\r\n"
        + trailers
        + b"\r\n"
    )


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class Connection:
    """One client connection; `answer()` reads one response, `closed_within()` waits for the server's close."""

    def __init__(self, server: Server, timeout: float = 10) -> None:
        self.sock = socket.create_connection(address(server), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def answer(self, timeout: float = 10) -> Answer | None:
        """The next response, or None if the server closed the connection without one."""
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                return None
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill():
                break
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(int(status_line.split()[1]), headers, body)

    def closed_within(self, seconds: float) -> bool:
        """True once the server closes the connection (EOF or reset) within `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except ConnectionError:
                return True
        return False


def exchange(server: Server, data: bytes, timeout: float = 10) -> Answer | None:
    with Connection(server, timeout) as connection:
        connection.send(data)
        return connection.answer(timeout)


def workers(server: Server) -> list[psutil.Process]:
    """The server's live worker processes."""
    found = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "_bentoml_impl.worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # exited, or a zombie not yet reaped
            pass
    return found


def worker_rss(server: Server) -> int:
    return sum(worker.memory_info().rss for worker in workers(server))


def worker_cpu_seconds(server: Server) -> float:
    return sum(sum(worker.cpu_times()[:2]) for worker in workers(server))
