"""A careless or hostile client cannot hurt the service: what it sends costs in proportion to its
size, answers stay small, labels and logs stay bounded. Over real HTTP against `bentoml serve`;
the HTTP framing cases are in test_edge.py."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import shutil
import signal
import socket
import string
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bento.config import METRICS_CLIENT_SECONDS, METRICS_CONNECTIONS
from harness.paths import REPO_ROOT
from harness.servers import Server, bentoml_serve_command, free_port
from tests.bento.raw import Answer, Connection, chunked, request, worker_cpu_seconds, worker_rss, workers
from tests.bento.test_errors import assert_error_shape
from tests.conftest import own_server
from wdbc import BENIGN_EXAMPLE, FEATURE_NAMES, MALIGNANT_EXAMPLE

JSON = {"content-type": "application/json"}
SMALL_ANSWER = 8 * 1024  # every error answer stays a few kilobytes, whatever the body


@pytest.fixture(scope="module")
def hostile(model_store: Path, tmp_path_factory: pytest.TempPathFactory):
    with own_server(model_store, tmp_path_factory, BODY_TIMEOUT_SECONDS="1") as server:
        yield server


def metrics_directory(server: Server) -> Path:
    return server.home / "prometheus_multiproc_dir"


def directory_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def random_path(length: int) -> str:
    return "/" + "".join(random.choices(string.ascii_letters + string.digits + "%00", k=length))


@pytest.mark.slow
def test_random_paths_do_not_grow_metrics(hostile: Server) -> None:
    """Every unknown path is one series, `endpoint="other"`, whatever the path."""
    metrics_before = len(httpx.get(hostile.metrics_url).content)
    files_before = directory_bytes(metrics_directory(hostile))
    with httpx.Client(base_url=hostile.url) as client:
        for _ in range(3000):
            response = client.post(random_path(30), content=b"{}", headers=JSON)
            assert response.status_code == 404
        for _ in range(250):  # 60 KB paths: refused, or the connection closed while they arrive
            try:
                assert client.post(random_path(60_000), content=b"{}", headers=JSON).status_code in (431, 400)
            except httpx.TransportError:
                pass
    metrics_after = httpx.get(hostile.metrics_url).text
    files_after = directory_bytes(metrics_directory(hostile))
    print(
        f"/metrics {metrics_before} -> {len(metrics_after)} bytes; multiprocess files {files_before} -> {files_after}"
    )
    assert len(metrics_after) - metrics_before < 4096
    assert files_after - files_before < 64 * 1024
    assert 'http_requests_total{code="404",endpoint="other"} 3000.0' in metrics_after


def test_trailing_slash_is_404_without_a_redirect(hostile: Server) -> None:
    response = httpx.post(f"{hostile.url}/predict/", json=MALIGNANT_EXAMPLE, headers={"Host": "evil.example"})
    assert response.status_code == 404 and "location" not in response.headers
    assert assert_error_shape(response)["detail"][0]["field"] == "path"


@pytest.mark.parametrize(
    ("method", "path", "allowed"), [("GET", "/predict", "POST"), ("POST", "/model", "GET, HEAD")]
)
def test_405_names_the_allowed_methods(hostile: Server, method: str, path: str, allowed: str) -> None:
    response = httpx.request(method, f"{hostile.url}{path}", json=MALIGNANT_EXAMPLE)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert_error_shape(response)


@functools.cache  # made once: test parameters are built at collection, for every run of the suite
def _valid_batch(rows: int) -> bytes:
    return json.dumps({"instances": [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE] * (rows // 2)}).encode()


def _cpu_per_request(server: Server, body: bytes, repeats: int = 5) -> tuple[float, httpx.Response]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        client.post("/predict_batch", content=body, headers=JSON)  # warm
        before = worker_cpu_seconds(server)
        for _ in range(repeats):
            response = client.post("/predict_batch", content=body, headers=JSON)
        return (worker_cpu_seconds(server) - before) / repeats, response


@pytest.mark.slow
@pytest.mark.parametrize(
    "item",
    [b"{}", b'{"a": 1, "a": 1}', b"[]"],
    ids=["empty-objects", "objects-repeating-a-key", "empty-lists"],
)
def test_megabytes_of_tiny_values_cost_no_more_than_a_valid_batch(hostile: Server, item: bytes) -> None:
    """Each tiny object costs the parser a call into Python; a key repeated after them hides them."""
    count = (2 * 1024 * 1024 - 100) // (len(item) + 1)
    for hostile_body in (
        b'{"instances": [' + b",".join([item] * count) + b"]}",
        b'{"instances": [' + b",".join([item] * (count // 2)) + b'], "instances": [' + json.dumps(MALIGNANT_EXAMPLE).encode() + b"]}",
    ):  # fmt: skip
        hostile_cpu, response = _cpu_per_request(hostile, hostile_body, repeats=3)
        valid_cpu, _ = _cpu_per_request(hostile, _valid_batch(1000), repeats=3)
        print(f"{len(hostile_body) / 1e6:.2f} MB of {item!r}: {hostile_cpu * 1000:.1f} ms CPU; "
              f"a valid 1000-row batch: {valid_cpu * 1000:.1f} ms")  # fmt: skip
        assert response.status_code == 422 and len(response.content) < SMALL_ANSWER
        assert hostile_cpu < 4 * valid_cpu * len(hostile_body) / len(_valid_batch(1000)) + 0.05


def _raw_cpu_per_request(server: Server, data: bytes, repeats: int) -> tuple[float, Answer | None]:
    """Worker CPU per exchange of raw bytes that the server may refuse before they are all sent."""
    before, answer = worker_cpu_seconds(server), None
    for _ in range(repeats):
        with Connection(server, timeout=30) as connection:
            with contextlib.suppress(OSError):  # refused and closed while still sending
                connection.send(data)
            with contextlib.suppress(OSError):
                answer = connection.answer(timeout=30)
    return (worker_cpu_seconds(server) - before) / repeats, answer


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "hostile_request"),
    [
        (
            "a body in one-byte chunks",
            request("POST", "/predict_batch", headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
            + b"1\r\n \r\n" * 300_000 + b"0\r\n\r\n",
        ),
        (
            "a valid batch in 300-byte chunks",
            request("POST", "/predict_batch", headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
            + chunked(*(_valid_batch(1000)[i : i + 300] for i in range(0, len(_valid_batch(1000)), 300))),
        ),
        ("seven thousand tiny header fields", request("GET", "/livez", headers={f"a{i}": "0" for i in range(7_000)})),
        ("a 100 KB method", b"X" * 100_000 + b" /predict HTTP/1.1\r\nHost: x\r\n\r\n"),
    ],
    ids=["one-byte-chunks", "300-byte-chunks", "tiny-header-fields", "long-method"],
)  # fmt: skip
def test_what_the_parser_must_take_apart_costs_no_more_than_a_valid_thousand_row_batch(
    hostile: Server, kind: str, hostile_request: bytes
) -> None:
    valid = request("POST", "/predict_batch", _valid_batch(1000))
    hostile_cpu, answer = _raw_cpu_per_request(hostile, hostile_request, repeats=5)
    valid_cpu, valid_answer = _raw_cpu_per_request(hostile, valid, repeats=5)
    print(f"{kind} ({len(hostile_request) / 1e6:.2f} MB): {hostile_cpu * 1000:.1f} ms CPU; "
          f"a valid 1000-row batch ({len(valid) / 1e6:.2f} MB): {valid_cpu * 1000:.1f} ms")  # fmt: skip
    assert valid_answer is not None and valid_answer.status == 200
    assert answer is None or answer.status in ((200,) if "valid" in kind else (400, 413, 431))
    assert hostile_cpu < 3 * valid_cpu * max(1.0, len(hostile_request) / len(valid)) + 0.01


@pytest.mark.slow
def test_the_openapi_document_costs_less_than_a_valid_batch_after_it_is_first_made(hostile: Server) -> None:
    document_cpu, answer = _raw_cpu_per_request(hostile, request("GET", "/docs.json"), repeats=20)
    valid_cpu, _ = _raw_cpu_per_request(
        hostile, request("POST", "/predict_batch", _valid_batch(1000)), repeats=20
    )
    print(
        f"GET /docs.json: {document_cpu * 1000:.1f} ms CPU; a valid 1000-row batch: {valid_cpu * 1000:.1f} ms"
    )
    assert answer is not None and answer.status == 200 and answer.json()["paths"]
    assert document_cpu < valid_cpu


@pytest.mark.slow
def test_sixty_thousand_unknown_fields_get_a_small_fast_422(hostile: Server) -> None:
    row = {**MALIGNANT_EXAMPLE, **{f"unknown_field_{i:05d}": 1.0 for i in range(60_000)}}
    hostile_body = json.dumps({"instances": [row]}).encode()
    valid_body = _valid_batch(2 * len(hostile_body) // len(json.dumps(MALIGNANT_EXAMPLE)) // 2)
    valid_body = valid_body if len(valid_body) <= 2 * 1024 * 1024 else _valid_batch(1000)
    hostile_cpu, response = _cpu_per_request(hostile, hostile_body)
    valid_cpu, _ = _cpu_per_request(hostile, _valid_batch(1000))
    print(
        f"{len(hostile_body) / 1e6:.2f} MB of unknown fields: {hostile_cpu * 1000:.1f} ms CPU; "
        f"a valid 1000-row batch ({len(_valid_batch(1000)) / 1e6:.2f} MB): {valid_cpu * 1000:.1f} ms"
    )
    assert response.status_code == 422 and len(response.content) < SMALL_ANSWER
    body = assert_error_shape(response)
    assert body["error"] == "invalid request: 60000 problems in all; the first 20 are listed"
    assert len(body["detail"]) == 21 and body["detail"][0] == {
        "field": "instances[0].unknown_field_00000",
        "message": "unknown field",
    }
    # Bounded by the body's size, never by its problems: generous factor for a shared machine.
    assert hostile_cpu < 4 * valid_cpu * len(hostile_body) / len(_valid_batch(1000)) + 0.05
    # The same body on the single-row endpoint is refused before it is parsed.
    single = httpx.post(f"{hostile.url}/predict", content=json.dumps(row), headers=JSON)
    assert single.status_code == 413 and "65536" in single.text


@pytest.mark.slow
def test_a_thousand_rows_of_invalid_values_get_a_small_422(hostile: Server) -> None:
    bad = json.dumps({"instances": [dict.fromkeys(FEATURE_NAMES, "x")] * 1000}).encode()
    cpu, response = _cpu_per_request(hostile, bad)
    print(f"1000 rows x 30 invalid values: {cpu * 1000:.1f} ms CPU, {len(response.content)} byte answer")
    assert response.status_code == 422 and len(response.content) < SMALL_ANSWER
    detail = assert_error_shape(response)["detail"]
    assert detail[0] == {"field": "instances[0].radius_mean", "message": "expected a number, got a string"}
    assert detail[-1]["message"] == "30000 problems in all; the first 20 are listed"


def test_a_single_row_with_many_problems_is_bounded(hostile: Server) -> None:
    row = {f"field_{i}": "x" for i in range(2000)}
    response = httpx.post(f"{hostile.url}/predict", json=row)
    assert response.status_code == 422 and len(response.content) < SMALL_ANSWER
    detail = assert_error_shape(response)["detail"]
    assert len(detail) == 21 and detail[-1]["message"] == "2030 problems in all; the first 20 are listed"


def test_curl_http2_posts_are_served(hostile: Server) -> None:
    if not (curl := shutil.which("curl")):
        pytest.skip("curl is not installed")
    done = subprocess.run(
        [curl, "-s", "--http2", "-X", "POST", f"{hostile.url}/predict", "-H", "Content-Type: application/json",
         "-d", json.dumps(MALIGNANT_EXAMPLE)],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert json.loads(done.stdout)["diagnosis"] == "malignant", done.stdout + done.stderr


def test_huge_names_and_paths_are_cut_in_the_log(hostile: Server) -> None:
    httpx.post(
        f"{hostile.url}/predict_batch", json={"instances": [{**MALIGNANT_EXAMPLE, "n" * 1_000_000: 1.0}]}
    )
    # A request line over the parser's 16 KiB head limit is refused with a close, which a client still
    # sending may see as a reset instead of the 400.
    with contextlib.suppress(httpx.TransportError):
        httpx.post(f"{hostile.url}{random_path(60_000)}", content=b"{}")
    longest = max(len(line) for line in hostile.log().splitlines())
    assert longest < 10_000, longest


@pytest.mark.slow
def test_load_shedding_answers_fast_503s_with_retry_after(model_store: Path, tmp_path_factory) -> None:
    with own_server(model_store, tmp_path_factory, MAX_CONCURRENCY="2") as server:
        body = _valid_batch(1000)

        def call(_: int) -> httpx.Response:
            return httpx.post(f"{server.url}/predict_batch", content=body, headers=JSON, timeout=60)

        with ThreadPoolExecutor(max_workers=32) as pool:
            answers = list(pool.map(call, range(200)))
        statuses = [answer.status_code for answer in answers]
        shed = [answer for answer in answers if answer.status_code == 503]
        print(f"32 clients, MAX_CONCURRENCY=2: {statuses.count(200)} served, {len(shed)} shed")
        assert set(statuses) <= {200, 503} and shed and statuses.count(200) > 0
        assert all(answer.headers["retry-after"] == "1" for answer in shed)
        assert assert_error_shape(shed[0])["error"] == "overloaded"
        assert f"requests_shed_total {float(len(shed))}" in httpx.get(server.metrics_url).text


def _lines(server: Server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_a_killed_worker_is_logged_and_replaced(model_store: Path, tmp_path_factory) -> None:
    with own_server(model_store, tmp_path_factory, SERVICE_WORKERS="2") as server:
        deadline = time.monotonic() + 60
        while len({line["pid"] for line in _lines(server) if line["message"].startswith("loaded model")}) < 2:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.2)
        victim = workers(server)[-1]
        victim.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not (
            replaced := [line for line in _lines(server) if "ended without shutting down" in line["message"]]
        ):
            assert time.monotonic() < deadline, server.log()[-3000:]
            assert httpx.post(f"{server.url}/predict", json=MALIGNANT_EXAMPLE, timeout=30).status_code == 200
            time.sleep(0.2)
        (line,) = replaced
        assert line["level"] == "WARNING" and line["previous_pid"] == victim.pid
        assert server.wait_until_ready() >= 0


def _send_all(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # closed by either side before it is all sent
        sock.sendall(data)


@pytest.mark.slow
def test_pipelined_batches_a_client_never_reads_leave_little_memory_behind(hostile: Server) -> None:
    """Each request starts timers (its timeouts, BentoML's, the connection's next deadline) that hold a
    copy of its context for seconds after it is answered: the body's parse must not be in it. Answered
    back to back, pipelined batches kept every one of theirs alive: 8 connections, +630 MB."""
    pipelined = request("POST", "/predict_batch", _valid_batch(1000)) * 40
    address = (httpx.URL(hostile.url).host, httpx.URL(hostile.url).port)
    before = worker_rss(hostile)
    sockets = []
    for _ in range(8):
        sock = socket.create_connection(address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the answers stay unread
        sockets.append(sock)
        threading.Thread(target=_send_all, args=(sock, pipelined), daemon=True).start()
    try:
        time.sleep(4)
        grown = (worker_rss(hostile) - before) / 2**20
    finally:
        for sock in sockets:
            sock.close()
    print(f"8 connections, 40 pipelined 1000-row batches each: worker RSS +{grown:.0f} MiB")
    assert grown < 150


def _metrics_threads(server: Server) -> int:
    return sum(worker.num_threads() for worker in workers(server))


@pytest.mark.slow
def test_idle_connections_to_the_metrics_port_hold_no_thread_for_long(hostile: Server) -> None:
    """Every connection to the metrics port is served on a thread of the pod's first worker: idle ones
    must neither pile up threads and memory nor stay open."""
    address = (httpx.URL(hostile.metrics_url).host, httpx.URL(hostile.metrics_url).port)
    threads_before = _metrics_threads(hostile)
    sockets = [socket.create_connection(address) for _ in range(300)]
    try:
        time.sleep(1)
        threads = _metrics_threads(hostile)
        deadline = time.monotonic() + METRICS_CLIENT_SECONDS + 3
        still_open = 0
        for sock in sockets:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                still_open += sock.recv(1) != b""
            except TimeoutError:
                still_open += 1
            except OSError:  # reset: closed
                pass
    finally:
        for sock in sockets:
            sock.close()
    print(
        f"300 idle connections: {threads_before} -> {threads} threads; {still_open} still open after the timeout"
    )
    # A thread per connection served and one for its deadline, and perhaps one or two of the worker's
    # own meanwhile: 300 connections must not add 300.
    assert threads - threads_before <= 2 * METRICS_CONNECTIONS + 2 and still_open == 0
    assert httpx.get(hostile.metrics_url).status_code == 200


@pytest.mark.slow
def test_a_head_trickled_to_the_metrics_port_holds_its_connection_no_longer_than_a_silent_one(
    hostile: Server,
) -> None:
    """Every connection the port can hold, each sending a byte of its head now and then: scrapes
    must get through again once the connections have had their time."""
    address = (httpx.URL(hostile.metrics_url).host, httpx.URL(hostile.metrics_url).port)
    sockets = [socket.create_connection(address) for _ in range(METRICS_CONNECTIONS)]
    for sock in sockets:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX: ")
    deadline, scraped = time.monotonic() + METRICS_CLIENT_SECONDS + 3, False
    try:
        while not scraped and time.monotonic() < deadline:
            for sock in sockets:
                with contextlib.suppress(OSError):  # closed by the server
                    sock.sendall(b"a")
            with contextlib.suppress(httpx.TransportError):
                scraped = httpx.get(hostile.metrics_url, timeout=1).status_code == 200
            time.sleep(0.5)
    finally:
        for sock in sockets:
            sock.close()
    assert scraped, "no scrape got through while the connections trickled their heads"


@pytest.mark.slow
def test_a_huge_head_sent_to_the_metrics_port_is_not_read(hostile: Server) -> None:
    """The standard library's server reads up to 100 header lines of 64 KiB before answering."""
    address = (httpx.URL(hostile.metrics_url).host, httpx.URL(hostile.metrics_url).port)
    head = b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 65_000) for i in range(97))

    def send() -> None:
        with socket.create_connection(address, timeout=30) as sock, contextlib.suppress(OSError):
            sock.sendall(head + b"\r\n")
            sock.recv(1)

    rss_before, cpu_before = worker_rss(hostile), worker_cpu_seconds(hostile)
    with ThreadPoolExecutor(METRICS_CONNECTIONS) as pool:
        list(pool.map(lambda _: send(), range(3 * METRICS_CONNECTIONS)))
    cpu = (worker_cpu_seconds(hostile) - cpu_before) / (3 * METRICS_CONNECTIONS)
    grown = (worker_rss(hostile) - rss_before) / 2**20
    print(f"{len(head) / 1e6:.1f} MB heads: {cpu * 1000:.1f} ms CPU each, RSS +{grown:.0f} MiB")
    assert cpu < 0.02 and grown < 20


@pytest.mark.slow
def test_scrapes_in_a_loop_take_a_small_share_of_the_worker(hostile: Server) -> None:
    """A scrape sums every worker's files: looped, without a bound, it took most of a core from the
    worker that also answers requests."""
    stop = threading.Event()

    def scrape_until_stopped() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                assert client.get(hostile.metrics_url).status_code == 200

    with ThreadPoolExecutor(4) as pool:
        loops = [pool.submit(scrape_until_stopped) for _ in range(4)]
        time.sleep(1)
        before, started = worker_cpu_seconds(hostile), time.monotonic()
        time.sleep(4)
        share = (worker_cpu_seconds(hostile) - before) / (time.monotonic() - started)
        stop.set()
        for loop in loops:
            loop.result()
    print(f"4 connections scraping in a loop: the worker used {share:.0%} of a core")
    assert share < 0.15


def test_an_unwritable_log_file_is_one_json_line_and_a_non_zero_exit(
    tmp_path: Path, model_store: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    port = free_port()
    done = subprocess.run(
        bentoml_serve_command(port),
        cwd=REPO_ROOT,
        env={**os.environ, "BENTOML_HOME": str(model_store), "LOG_FILE": str(blocker / "api.log")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode != 0
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["level"] == "CRITICAL" and entry["path"] == str(blocker / "api.log")
    assert str(blocker / "api.log") in entry["message"]
