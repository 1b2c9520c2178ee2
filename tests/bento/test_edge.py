"""The HTTP edge against `bentoml serve`, over raw sockets: whatever a client sends is answered or
closed quickly, holds no worker, costs no more than its size and grows no memory."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import Server
from tests.bento.raw import (
    Connection,
    MiB,
    chunked,
    exchange,
    request,
    worker_cpu_seconds,
    worker_rss,
    workers,
)
from tests.conftest import own_server
from wdbc import BENIGN_EXAMPLE, FEATURE_NAMES, MALIGNANT_EXAMPLE

HEADER_TIMEOUT = 2
BODY_TIMEOUT = 1
SETTINGS = {
    "SERVICE_WORKERS": "2",
    "HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    "BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
}
ROW = json.dumps(MALIGNANT_EXAMPLE).encode()
H2C = {
    "Connection": "Upgrade, HTTP2-Settings",
    "Upgrade": "h2c",
    "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA",
}


@pytest.fixture(scope="module")
def edge(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with own_server(model_store, tmp_path_factory, **SETTINGS) as server:
        yield server


def predicts(server: Server, timeout: float = 3) -> bool:
    try:
        response = httpx.post(f"{server.url}/predict", content=ROW, headers={"content-type": "application/json"},
                              timeout=timeout)  # fmt: skip
    except httpx.TransportError:
        return False
    return response.status_code == 200 and response.json()["diagnosis"] == "malignant"


@pytest.mark.slow
def test_a_negative_chunk_size_with_an_h2c_offer_is_refused_and_holds_no_worker(
    model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    attack = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nAB"
    )
    with own_server(model_store, tmp_path_factory, **SETTINGS) as server:
        for _ in range(20):  # both workers warm: lazy imports and first allocations are not the attack's
            assert predicts(server)
        rss = worker_rss(server)
        connections = [Connection(server) for _ in range(2)]  # one per worker
        try:
            for connection in connections:
                connection.send(attack)
            for connection in connections:
                answer = connection.answer(timeout=2)
                assert answer is None or answer.status == 400
                assert connection.closed_within(2)
            cpu = worker_cpu_seconds(server)
            time.sleep(1)
            assert worker_cpu_seconds(server) - cpu < 0.5, "a worker is still busy with the attack"
            assert predicts(server) and httpx.get(f"{server.url}/livez", timeout=2).status_code == 200
            assert worker_rss(server) - rss < 20 * MiB
        finally:
            for connection in connections:
                connection.sock.close()


@pytest.mark.parametrize("size", [b"-1", b"0x2f1", b"1_0", b"+5", b" 5"])
@pytest.mark.parametrize("offer", [{}, H2C], ids=["plain", "h2c"])
def test_chunk_sizes_the_parser_rejects_get_400_with_or_without_an_h2c_offer(
    edge: Server, size: bytes, offer: dict[str, str]
) -> None:
    head = request("POST", "/predict", headers={"Content-Type": "application/json",
                                                "Transfer-Encoding": "chunked", **offer})  # fmt: skip
    answer = exchange(edge, head + size + b"\r\n" + ROW[:5] + b"\r\n0\r\n\r\n", timeout=3)
    assert answer is None or answer.status == 400


@pytest.mark.parametrize("offer", [{}, H2C], ids=["plain", "h2c"])
def test_an_h2c_offer_is_served_as_the_http_1_1_request_it_is(edge: Server, offer: dict[str, str]) -> None:
    body = chunked(ROW[:100], ROW[100:])
    with Connection(edge) as connection:
        connection.send(request("POST", "/predict", body, {"Transfer-Encoding": "chunked", **offer}))
        connection.send(request("POST", "/predict", json.dumps(BENIGN_EXAMPLE).encode(), offer))
        first, second = connection.answer(), connection.answer()
    assert (first.status, second.status) == (200, 200)
    assert [first.json()["diagnosis"], second.json()["diagnosis"]] == ["malignant", "benign"]


def _hold_declared_bodies(server: Server, count: int, stop: threading.Event, trickle: bool) -> None:
    """`count` connections that declare a large batch and send nothing (or a byte now and then),
    reconnecting whenever the server closes them."""
    head = request("POST", "/predict_batch", content_length=1835008)

    def hold() -> None:
        while not stop.is_set():
            try:
                with Connection(server, timeout=5) as connection:
                    connection.send(head)
                    while not stop.is_set():
                        if trickle:
                            connection.send(b"{")
                        if connection.closed_within(0.2):
                            break
            except OSError:
                time.sleep(0.05)

    for _ in range(count):
        threading.Thread(target=hold, daemon=True).start()


@pytest.mark.slow
@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
def test_connections_that_only_declare_large_bodies_deny_nothing(edge: Server, trickle: bool) -> None:
    stop = threading.Event()
    _hold_declared_bodies(edge, 50, stop, trickle)
    try:
        time.sleep(1)
        outcomes = []
        deadline = time.monotonic() + 6
        with httpx.Client(base_url=edge.url, timeout=5) as client:
            while time.monotonic() < deadline:
                response = client.post("/predict", content=ROW, headers={"content-type": "application/json"})
                outcomes.append(response.status_code)
    finally:
        stop.set()
    print(f"{len(outcomes)} calls beside 50 {'trickling' if trickle else 'silent'} connections: "
          f"{outcomes.count(200)} served")  # fmt: skip
    assert len(outcomes) >= 100 and outcomes.count(200) / len(outcomes) >= 0.99


def test_a_huge_header_is_refused_at_once_and_grows_no_memory(edge: Server) -> None:
    rss = worker_rss(edge)
    started = time.monotonic()
    with Connection(edge) as connection:
        try:
            connection.send(request("GET", "/livez", headers={"X-Big": "a" * MiB}))
        except ConnectionError:
            pass  # the server closed while the header was still arriving: refused at once
        answer = connection.answer(timeout=5)
    assert answer is None or answer.status in (400, 431)
    assert time.monotonic() - started < 2
    assert worker_rss(edge) - rss < 10 * MiB


def test_a_streamed_header_is_cut_off_after_a_bounded_number_of_bytes(edge: Server) -> None:
    sent = 0
    with Connection(edge) as connection:
        connection.send(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Stream: ")
        try:
            while sent < 80 * MiB:
                connection.send(b"a" * 65536)
                sent += 65536
        except (ConnectionError, TimeoutError):
            pass
    assert sent < 4 * MiB, f"the server read {sent} bytes of one header"


@pytest.mark.parametrize(
    "headers",
    [
        {f"X-Field-{i}": "1" for i in range(150)},
        {"X-Long": "a" * 20_000},
        {f"X-{i}": "a" * 1000 for i in range(40)},
    ],
    ids=["many-fields", "one-long-field", "long-fields"],
)
def test_header_blocks_over_the_limits_get_431(edge: Server, headers: dict[str, str]) -> None:
    """Sent in one packet, so that the parser sees the whole block at once."""
    answer = exchange(edge, request("GET", "/livez", headers=headers))
    assert answer is None or answer.status in (400, 431)
    if answer is not None and answer.status == 431:
        assert answer.json()["detail"][0]["field"] == "headers"


@pytest.mark.slow
def test_headers_sent_slowly_are_cut_off(edge: Server) -> None:
    head = request("POST", "/predict", ROW)
    started = time.monotonic()
    with Connection(edge) as connection:
        for byte in head:
            try:
                connection.send(bytes([byte]))
            except ConnectionError:
                break
            if connection.closed_within(0.5):
                break
        elapsed = time.monotonic() - started
    assert elapsed < HEADER_TIMEOUT + 1.5, f"slow headers kept the connection open for {elapsed:.1f} s"


@pytest.mark.slow
def test_idle_connections_are_closed(edge: Server) -> None:
    with Connection(edge) as fresh, Connection(edge) as kept:
        kept.send(request("GET", "/livez"))
        assert kept.answer().status == 200
        assert fresh.closed_within(HEADER_TIMEOUT + 1.5), "a connection that never sent anything stays open"
        assert kept.closed_within(HEADER_TIMEOUT + 1.5), "an idle keep-alive connection stays open"


WEBSOCKET = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [("POST", "/predict", ROW, 200), ("GET", "/livez", b"x", 200), ("GET", "/predict", b"", 405)],
    ids=["predict", "livez-with-a-body", "wrong-method"],
)
def test_a_websocket_upgrade_offer_is_served_as_the_http_request_it_also_is(
    edge: Server, method: str, path: str, body: bytes, status: int
) -> None:
    answer = exchange(edge, request(method, path, body, headers=WEBSOCKET), timeout=5)
    assert answer is not None and answer.status == status
    assert answer.headers["cache-control"] == "no-store" and "x-request-id" in answer.headers
    assert path == "/livez" or answer.headers["content-type"] == "application/json"  # the probe's is text


@pytest.mark.parametrize(("declared", "sent"), [(1, b"x"), (100, b"{")], ids=["whole-body", "part-of-it"])
def test_a_connection_answered_before_its_body_arrived_is_closed_when_idle(
    edge: Server, declared: int, sent: bytes
) -> None:
    """The answer comes before the body (a GET's small body is not read); then the body, or part of
    it, and silence: the connection is closed as any idle one."""
    with Connection(edge) as connection:
        connection.send(request("GET", "/livez", content_length=declared))
        assert connection.answer().status == 200
        connection.send(sent)
        assert connection.closed_within(HEADER_TIMEOUT + 1.5), "the idle connection stays open"


@pytest.mark.parametrize(
    "content_types",
    [["multipart/form-data", "application/json"], ["application/json", "application/json"]],
    ids=["multipart-first", "repeated"],
)
def test_more_than_one_content_type_gets_400(edge: Server, content_types: list[str]) -> None:
    head = "".join(f"Content-Type: {value}\r\n" for value in content_types)
    raw = f"POST /predict HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(ROW)}\r\n\r\n".encode() + ROW
    answer = exchange(edge, raw)
    assert answer is not None and answer.status == 400
    assert answer.json()["detail"][0]["field"] == "content-type"


@pytest.mark.parametrize("path", ["/model", "/drift", "/", "/docs.json", "/schema.json", "/livez"])
def test_head_is_answered_as_get_without_the_body(edge: Server, path: str) -> None:
    got, head = httpx.get(f"{edge.url}{path}"), httpx.head(f"{edge.url}{path}")
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]


@pytest.mark.parametrize("path", ["/predict_batch", "/predict", "/model"])
def test_a_refused_declared_body_closes_the_connection(edge: Server, path: str) -> None:
    method = "GET" if path == "/model" else "POST"
    with Connection(edge) as connection:
        connection.send(request(method, path, content_length=2**63))
        answer = connection.answer(timeout=3)
        assert answer is None or answer.status == (200 if method == "GET" else 413)
        assert answer is None or answer.headers.get("connection") == "close"
        sent = 0
        try:
            while sent < 200 * MiB:
                connection.send(b"x" * MiB)
                sent += MiB
        except (ConnectionError, TimeoutError):
            pass
    assert sent < 32 * MiB, f"the server read and discarded {sent} bytes"


def test_a_chunked_body_over_the_limit_gets_413_and_a_close(edge: Server) -> None:
    with Connection(edge) as connection:
        connection.send(
            request(
                "POST",
                "/predict",
                headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
            )
        )
        size = 100 * 1024  # over /predict's 64 KiB, small enough to sit in the socket's buffers
        connection.send(f"{size:x}\r\n".encode() + b"x" * size + b"\r\n")
        answer = connection.answer(timeout=3)
        assert answer.status == 413 and answer.headers.get("connection") == "close"
        assert connection.closed_within(2)


def test_a_body_shorter_than_declared_gets_408_and_a_close(edge: Server) -> None:
    with Connection(edge) as connection:
        connection.send(request("POST", "/predict", ROW, content_length=len(ROW) + 100))
        answer = connection.answer(timeout=BODY_TIMEOUT + 3)
        assert answer.status == 408 and answer.headers.get("connection") == "close"
        assert answer.json()["error"] == "request body incomplete"
        assert connection.closed_within(2)


def _duplicated(text: str, name: str, value: str) -> bytes:
    """The JSON text with `"name": value, ` inserted before its first `"name"` key."""
    at = text.index(f'"{name}"')
    return (text[:at] + f'"{name}": {value}, ' + text[at:]).encode()


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/predict", _duplicated(json.dumps(MALIGNANT_EXAMPLE), "radius_mean", '"x"'), "radius_mean"),
        ("/predict", _duplicated(json.dumps(MALIGNANT_EXAMPLE), "radius_mean", "20"), "radius_mean"),
        ("/explain", _duplicated(json.dumps(MALIGNANT_EXAMPLE), "area_worst", "1"), "area_worst"),
        (
            "/predict_batch",
            b'{"instances": [' + ROW + b'], "instances": [' + json.dumps(BENIGN_EXAMPLE).encode() + b"]}",
            "instances",
        ),
        (
            "/predict_batch",
            b'{"instances": ['
            + ROW
            + b", "
            + _duplicated(json.dumps(BENIGN_EXAMPLE), "smoothness_se", "0.1")
            + b"]}",
            "instances[1].smoothness_se",
        ),
    ],
)
def test_a_duplicate_json_key_gets_422_naming_it(edge: Server, path: str, body: bytes, field: str) -> None:
    response = httpx.post(f"{edge.url}{path}", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert {"field": field, "message": "duplicate key"} in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", _duplicated(json.dumps(MALIGNANT_EXAMPLE), "radius_mean", "[" * 995 + "]" * 995)),
        ("/predict", _duplicated(json.dumps(MALIGNANT_EXAMPLE), "radius_mean", "[" + "{}," * 1000 + "{}]")),
        ("/predict_batch", b'{"instances": [' + b"[" * 995 + b"]" * 995 + b'], "instances": [' + ROW + b"]}"),
    ],
    ids=["nested-deeper-than-json-reads", "many-objects", "batch-nested"],
)
def test_a_key_repeated_after_a_deep_or_large_value_gets_422(edge: Server, path: str, body: bytes) -> None:
    response = httpx.post(f"{edge.url}{path}", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["message"].startswith("duplicate key")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/predict", MALIGNANT_EXAMPLE),
        ("POST", "/predict_batch", {"instances": [MALIGNANT_EXAMPLE]}),
        ("POST", "/explain", MALIGNANT_EXAMPLE),
        ("GET", "/model", None),
        ("GET", "/drift", None),
    ],
)
def test_answers_with_patient_data_are_never_cached(edge: Server, method: str, path: str, body) -> None:
    response = httpx.request(method, f"{edge.url}{path}", json=body)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("hosts", [[], ["a", "b"]], ids=["no-host", "two-hosts"])
def test_a_request_without_exactly_one_host_gets_400(edge: Server, hosts: list[str]) -> None:
    extra = "".join(f"Host: {host}\r\n" for host in hosts)
    raw = f"POST /predict HTTP/1.1\r\n{extra}Content-Type: application/json\r\nContent-Length: {len(ROW)}\r\n\r\n"
    answer = exchange(edge, raw.encode() + ROW)
    assert answer is None or answer.status == 400


def test_content_length_beside_chunked_gets_400_and_a_close(edge: Server) -> None:
    """RFC 9112 6.3: the two framings together may be a smuggling attempt."""
    body = chunked(ROW)
    raw = request("POST", "/predict", body, {"Transfer-Encoding": "chunked", "Content-Length": str(len(ROW))})
    with Connection(edge) as connection:
        connection.send(raw)
        answer = connection.answer(timeout=3)
        assert answer is not None and answer.status == 400, answer
        assert answer.headers.get("connection") == "close"
        assert answer.json()["detail"][0]["field"] == "transfer-encoding"
        assert connection.closed_within(2)


def test_chunked_trailers_never_become_headers(edge: Server) -> None:
    body = chunked(ROW, trailers=b"Content-Type: text/plain\r\nX-Request-ID: from-the-trailer\r\n")
    answer = exchange(edge, request("POST", "/predict", body, {"Transfer-Encoding": "chunked"}))
    assert answer.status == 200 and answer.json()["diagnosis"] == "malignant"
    assert answer.headers["x-request-id"] != "from-the-trailer"


def metrics(server: Server) -> str:
    return httpx.get(server.metrics_url, timeout=10).text


@pytest.mark.slow
def test_a_replaced_workers_metric_series_are_removed(
    model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with own_server(model_store, tmp_path_factory, **SETTINGS) as server:
        deadline = time.monotonic() + 60
        while len(workers(server)) < 2 or "model_ready 1.0" not in metrics(server):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for _ in range(20):
            assert predicts(server)
        victim = max(workers(server), key=lambda worker: worker.create_time())
        victim.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 60
        while victim.pid in {worker.pid for worker in workers(server)} or len(workers(server)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        server.wait_until_ready()
        time.sleep(2)  # the replacement has started and cleaned up
        text = metrics(server)
        files = [path.name for path in (server.home / "prometheus_multiproc_dir").iterdir()]
    assert not re.search(r'pid="\d+"', text), [line for line in text.splitlines() if "pid=" in line][:5]
    assert not [name for name in files if name.endswith(f"_{victim.pid}.db") and "gauge" in name]
    assert "predictions_total" in text


@pytest.mark.slow
def test_rejections_are_logged_at_a_bounded_rate(edge: Server) -> None:
    before = len(edge.log().splitlines())
    with httpx.Client(base_url=edge.url) as client:
        started = time.monotonic()
        for index in range(3000):
            client.get(f"/no-such-path-{index}")
        seconds = time.monotonic() - started
    time.sleep(1.5)
    lines = [json.loads(line) for line in edge.log().splitlines()[before:] if line.startswith("{")]
    rejected = [line for line in lines if line["message"] == "rejected request"]
    print(f"3000 rejections in {seconds:.1f} s: {len(rejected)} log lines")
    assert len(rejected) <= 20 * (seconds + 2) * 2  # at most 20 lines a second in each of 2 workers
    suppressed = re.search(r"^log_lines_suppressed_total (\S+)$", metrics(edge), re.MULTILINE)
    assert suppressed and float(suppressed.group(1)) + len(rejected) >= 3000


def test_requests_the_parser_refuses_are_logged_at_a_bounded_rate(edge: Server) -> None:
    before = len(edge.log().splitlines())
    started = time.monotonic()
    for _ in range(600):
        exchange(edge, b"NOT HTTP AT ALL\r\n\r\n", timeout=2)
    seconds = time.monotonic() - started
    time.sleep(1.5)
    lines = [json.loads(line) for line in edge.log().splitlines()[before:] if line.startswith("{")]
    refused = [line for line in lines if line["message"] == "Invalid HTTP request received."]
    print(f"600 malformed requests in {seconds:.1f} s: {len(refused)} log lines")
    assert 0 < len(refused) <= 20 * (seconds + 2) * 2


@pytest.mark.slow
def test_connections_and_requests_of_every_kind_leave_worker_memory_flat(edge: Server) -> None:
    """A mix of everything above, repeated: the workers' resident memory does not grow with it."""
    for _ in range(3):  # warm: allocator pools, lazily built structures
        _everything_once(edge)
    rss = worker_rss(edge)
    for _ in range(10):
        _everything_once(edge)
    grown = worker_rss(edge) - rss
    assert grown < 8 * MiB, f"worker memory grew by {grown / MiB:.1f} MiB"


def _everything_once(server: Server) -> None:
    for raw in (
        request("GET", "/livez", headers={"X-Big": "a" * 20000}),
        request("POST", "/predict", ROW, {"Transfer-Encoding": "chunked"}) + b"-1\r\nAB",
        request("POST", "/predict_batch", content_length=2**63),
        request("POST", "/predict", _duplicated(json.dumps(MALIGNANT_EXAMPLE), "radius_mean", "1")),
        request("POST", "/predict", json.dumps(dict.fromkeys(FEATURE_NAMES, "x")).encode()),
        request("GET", "/no-such-path-" + "x" * 4000),
    ):
        try:
            exchange(server, raw, timeout=3)
        except (ConnectionError, TimeoutError):
            pass
    assert predicts(server)
