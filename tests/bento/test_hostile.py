"""A careless or hostile client cannot hurt the service: each row of the reliability issue's table,
reproduced over real HTTP against `bentoml serve`, with the bounded behaviour asserted."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import string
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from harness.paths import REPO_ROOT
from harness.servers import Server, bentoml_serve_command, free_port
from tests.bento.test_errors import assert_error_shape
from tests.conftest import own_server
from wdbc import BENIGN_EXAMPLE, FEATURE_NAMES, MALIGNANT_EXAMPLE

JSON = {"content-type": "application/json"}
SMALL_ANSWER = 8 * 1024  # every error answer stays a few kilobytes, whatever the body


@pytest.fixture(scope="module")
def hostile(model_store: Path, tmp_path_factory: pytest.TempPathFactory):
    with own_server(model_store, tmp_path_factory, BODY_TIMEOUT_SECONDS="1") as server:
        yield server


def workers(server: Server) -> list[psutil.Process]:
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [child for child in children if "_bentoml_impl.worker" in " ".join(child.cmdline())]


def cpu_seconds(server: Server) -> float:
    return sum(sum(worker.cpu_times()[:2]) for worker in workers(server))


def metrics_directory(server: Server) -> Path:
    return server.home / "prometheus_multiproc_dir"


def directory_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def random_path(length: int) -> str:
    return "/" + "".join(random.choices(string.ascii_letters + string.digits + "%00", k=length))


def test_random_paths_do_not_grow_metrics(hostile: Server) -> None:
    """Before: 3,000 random paths grew /metrics from 5 KB to 14.5 MB (each path a label value)."""
    metrics_before = len(httpx.get(f"{hostile.url}/metrics").content)
    files_before = directory_bytes(metrics_directory(hostile))
    with httpx.Client(base_url=hostile.url) as client:
        for _ in range(3000):
            response = client.post(random_path(30), content=b"{}", headers=JSON)
            assert response.status_code == 404
        for _ in range(250):  # 60 KB paths
            assert client.post(random_path(60_000), content=b"{}", headers=JSON).status_code in (
                404,
                414,
                400,
            )
    metrics_after = httpx.get(f"{hostile.url}/metrics").text
    files_after = directory_bytes(metrics_directory(hostile))
    print(
        f"/metrics {metrics_before} -> {len(metrics_after)} bytes; multiprocess files {files_before} -> {files_after}"
    )
    assert len(metrics_after) - metrics_before < 4096
    assert files_after - files_before < 64 * 1024
    assert "requests_unrouted_total 3250.0" in metrics_after


def test_trailing_slash_is_404_without_a_redirect(hostile: Server) -> None:
    response = httpx.post(f"{hostile.url}/predict/", json=MALIGNANT_EXAMPLE, headers={"Host": "evil.example"})
    assert response.status_code == 404 and "location" not in response.headers
    assert assert_error_shape(response)["detail"][0]["field"] == "path"


@pytest.mark.parametrize(
    ("method", "path", "allowed"), [("GET", "/predict", "POST"), ("POST", "/model", "GET")]
)
def test_405_names_the_allowed_methods(hostile: Server, method: str, path: str, allowed: str) -> None:
    response = httpx.request(method, f"{hostile.url}{path}", json=MALIGNANT_EXAMPLE)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert_error_shape(response)


def _valid_batch(rows: int) -> bytes:
    return json.dumps({"instances": [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE] * (rows // 2)}).encode()


def _cpu_per_request(server: Server, body: bytes, repeats: int = 5) -> tuple[float, httpx.Response]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        client.post("/predict_batch", content=body, headers=JSON)  # warm
        before = cpu_seconds(server)
        for _ in range(repeats):
            response = client.post("/predict_batch", content=body, headers=JSON)
        return (cpu_seconds(server) - before) / repeats, response


def test_sixty_thousand_unknown_fields_get_a_small_fast_422(hostile: Server) -> None:
    """Before: 422 with a 3.35 MB answer after 4.1 s of CPU; four such clients starved valid requests."""
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


def test_a_thousand_rows_of_invalid_values_get_a_small_422(hostile: Server) -> None:
    """Before: a 2.67 MB answer after 2.0 s."""
    bad = json.dumps({"instances": [dict.fromkeys(FEATURE_NAMES, "x")] * 1000}).encode()
    cpu, response = _cpu_per_request(hostile, bad)
    print(f"1000 rows x 30 invalid values: {cpu * 1000:.1f} ms CPU, {len(response.content)} byte answer")
    assert response.status_code == 422 and len(response.content) < SMALL_ANSWER
    detail = assert_error_shape(response)["detail"]
    assert detail[0] == {"field": "instances[0].radius_mean", "message": "Input should be a valid number"}
    assert detail[-1]["message"] == "30000 problems in all; the first 20 are listed"


def test_a_single_row_with_many_problems_is_bounded(hostile: Server) -> None:
    row = {f"field_{i}": "x" for i in range(2000)}
    response = httpx.post(f"{hostile.url}/predict", json=row)
    assert response.status_code == 422 and len(response.content) < SMALL_ANSWER
    detail = assert_error_shape(response)["detail"]
    assert len(detail) == 21 and detail[-1]["message"] == "2030 problems in all; the first 20 are listed"


def raw_request(url: str, request: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send bytes as they are; (the whole answer until the server closes or times out, seconds)."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except TimeoutError:
            pass
    return b"".join(chunks), time.monotonic() - started


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _post(path: str, body: bytes, extra: bytes = b"", length: int | None = None) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def test_a_body_shorter_than_its_content_length_gets_a_quick_408(hostile: Server) -> None:
    """Before: BentoML's 504 after 10 s, outside the contract and not logged."""
    body = json.dumps(MALIGNANT_EXAMPLE).encode()
    answer, seconds = raw_request(hostile.url, _post("/predict", body, length=len(body) + 100))
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request body incomplete"
    assert seconds < 3  # BODY_TIMEOUT_SECONDS=1 on this server
    assert "request body incomplete" in hostile.log()


H2C_OFFER = (
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
)


def test_an_h2c_upgrade_offer_is_served_as_http_1_1(hostile: Server) -> None:
    """Before: 400 "empty request body" (the body was dropped below the app, uvicorn issue 2722)."""
    body = json.dumps(MALIGNANT_EXAMPLE).encode()
    answer, _ = raw_request(hostile.url, _post("/predict", body, H2C_OFFER))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["diagnosis"] == "malignant"


def test_an_h2c_offer_with_a_chunked_body_and_a_second_request_on_the_connection(hostile: Server) -> None:
    body = json.dumps(BENIGN_EXAMPLE).encode()
    chunked = (
        b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:100], body[100:]))
        + b"0\r\n\r\n"
    )
    first = (
        b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n" + H2C_OFFER + b"\r\n" + chunked
    )
    second = _post("/predict", json.dumps(MALIGNANT_EXAMPLE).encode())
    host, port = hostile.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(first[:60])  # the offer split across packets, as a slow client sends it
        time.sleep(0.05)
        sock.sendall(first[60:] + second)
        received = b""
        while received.count(b"HTTP/1.1 200 ") < 2 or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    diagnoses = [json.loads(part.partition(b"\r\n\r\n")[2]) for part in received.split(b"HTTP/1.1 ")[1:]]
    assert [answer["diagnosis"] for answer in diagnoses] == ["benign", "malignant"]


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
    """Before: a 1 MB field name became a 1,000,242-character log line."""
    httpx.post(
        f"{hostile.url}/predict_batch", json={"instances": [{**MALIGNANT_EXAMPLE, "n" * 1_000_000: 1.0}]}
    )
    httpx.post(f"{hostile.url}{random_path(60_000)}", content=b"{}")
    longest = max(len(line) for line in hostile.log().splitlines())
    assert longest < 10_000, longest


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
        assert f"requests_shed_total {float(len(shed))}" in httpx.get(f"{server.url}/metrics").text


def _lines(server: Server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def _killed_worker_test(server: Server) -> None:
    # Both workers up: /readyz answers as soon as one is, and one killed while still starting has not
    # yet recorded itself for its successor.
    deadline = time.monotonic() + 60
    while len({line["pid"] for line in _lines(server) if line["message"].startswith("loaded model")}) < 2:
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.2)
    first, _ = workers(server)
    first.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        replaced = [json.loads(line) for line in server.log().splitlines() if "was replaced" in line]
        if replaced:
            break
        assert httpx.post(f"{server.url}/predict", json=MALIGNANT_EXAMPLE, timeout=30).status_code == 200
        time.sleep(0.2)
    (line,) = replaced
    assert line["level"] == "WARNING" and line["previous_pid"] == first.pid
    assert "killed by a signal" in line["message"] or "out of memory" in line["message"]
    assert server.wait_until_ready() >= 0


def test_a_killed_worker_is_logged_and_replaced(model_store: Path, tmp_path_factory) -> None:
    """Before: replaced after 10 s with nothing in the log about the dead worker."""
    with own_server(model_store, tmp_path_factory, SERVICE_WORKERS="2") as server:
        _killed_worker_test(server)


def test_an_unwritable_log_file_is_one_json_line_and_a_non_zero_exit(
    tmp_path: Path, model_store: Path
) -> None:
    """Before: exit 1 with a 60-line plain-text traceback on stderr."""
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
