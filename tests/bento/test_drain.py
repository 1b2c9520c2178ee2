"""Rollouts lose nothing: keep-alive clients under load, the drain started the way the chart's preStop
hook starts it (creating DRAIN_FILE), then SIGTERM; zero resets and zero failed requests.

A Kubernetes Service is emulated with two servers: once the old pod terminates, new connections go to
the other pod (the endpoints no longer list the old one), while connections already open stay pinned
to the old pod (conntrack). Only the server can move them, by answering `Connection: close`.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.servers import Server
from tests.conftest import own_server
from wdbc import MALIGNANT_EXAMPLE

CLIENTS = 8
PRESTOP_SECONDS = 2.0  # the chart's preStopSleepSeconds, shortened
BODY = json.dumps(MALIGNANT_EXAMPLE).encode()
HEADERS = {"Content-Type": "application/json"}


@dataclass
class Traffic:
    target: str  # host:port new connections go to
    running: bool = True
    served: dict[str, int] = field(default_factory=dict)
    closed_by_server: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> None:
        connection: http.client.HTTPConnection | None = None
        while self.running:
            if connection is None:
                host, port = self.target.split(":")
                connection = http.client.HTTPConnection(host, int(port), timeout=10)
            try:
                connection.request("POST", "/predict", BODY, HEADERS)
                response = connection.getresponse()
                answer = response.read()
                if response.status != 200 or json.loads(answer)["diagnosis"] != "malignant":
                    raise RuntimeError(f"HTTP {response.status}: {answer[:200]!r}")
                with self.lock:
                    self.served[f"{connection.host}:{connection.port}"] = (
                        self.served.get(f"{connection.host}:{connection.port}", 0) + 1
                    )
                    if response.will_close:
                        self.closed_by_server += 1
                if response.will_close:
                    connection.close()
                    connection = None
            except Exception as error:  # noqa: BLE001 (every failure counts, whatever it is)
                with self.lock:
                    self.failures.append(f"{type(error).__name__}: {error}")
                connection.close()
                connection = None
        if connection is not None:
            connection.close()


def address(server: Server) -> str:
    return server.url.removeprefix("http://")


def roll(old: Server, new: Server, drain: bool) -> Traffic:
    """Load on `old`; then terminate it as the kubelet does (preStop, then SIGTERM) while the Service
    sends new connections to `new`."""
    traffic = Traffic(target=address(old))
    clients = [threading.Thread(target=traffic.client) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    time.sleep(2)
    if drain:
        (old.home / "draining").touch()  # what the preStop hook does (DRAIN_FILE defaults to this path)
    traffic.target = address(new)  # the endpoints controller drops the terminating pod
    time.sleep(PRESTOP_SECONDS)
    old.signal(signal.SIGTERM)
    exit_code = old.process.wait(30)
    time.sleep(1)
    traffic.running = False
    for client in clients:
        client.join(15)
    print(
        f"drain={drain}: served {traffic.served}, {traffic.closed_by_server} answers with Connection: close, "
        f"{len(traffic.failures)} failures {traffic.failures[:3]}; old server exited {exit_code}"
    )
    assert exit_code == 0
    return traffic


@pytest.mark.slow
def test_a_drained_server_loses_no_keep_alive_request(model_store: Path, tmp_path_factory) -> None:
    with (
        own_server(model_store, tmp_path_factory, SERVICE_WORKERS="2") as old,
        own_server(model_store, tmp_path_factory) as new,
    ):
        traffic = roll(old, new, drain=True)
    assert traffic.failures == []
    assert traffic.closed_by_server >= CLIENTS  # every client was told to reconnect
    assert traffic.served[address(new)] > 0 and traffic.served[address(old)] > 0
    assert '"message": "draining: answering with Connection: close' in old.log()


@pytest.mark.slow
def test_without_the_drain_pinned_connections_fail(model_store: Path, tmp_path_factory) -> None:
    """The control: the same rollout without the drain file, as before the fix. Connections stay pinned to
    the old server until SIGTERM closes them, so requests racing the close fail."""
    with (
        own_server(model_store, tmp_path_factory, SERVICE_WORKERS="2") as old,
        own_server(model_store, tmp_path_factory) as new,
    ):
        traffic = roll(old, new, drain=False)
    assert traffic.closed_by_server <= CLIENTS  # only at shutdown
    assert traffic.failures, "no request failed without the drain: this test could not tell the drain works"
