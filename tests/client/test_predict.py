"""`python -m client` against `bentoml serve` over real HTTP, with the 569-row file in the public WDBC
layout. Where a test needs the service to be busy, to demand a token or to be slow, a small HTTP proxy
on 127.0.0.1 stands in front of it: it answers those cases itself, records what the client sent, and
passes everything else on to the real service."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pandas as pd
import pytest

from harness.paths import REPO_ROOT
from training.dataset import load_csv, write_csv
from wdbc import FEATURE_NAMES

DIAGNOSES = {"malignant", "benign", "indeterminate"}


def public_layout(target: Path) -> Path:
    """The public WDBC file as distributed: `concave points_*` headers spelt with a space, and a
    trailing comma, hence an empty unnamed last column, on every line."""
    source = write_csv(target.with_name("project-layout.csv"))
    frame = pd.read_csv(source, dtype=str)
    header = [name.replace("concave_points", "concave points") for name in frame.columns]
    lines = [",".join(header), *(",".join(row) for row in frame.itertuples(index=False))]
    target.write_text("".join(f"{line},\n" for line in lines))
    return target


@pytest.fixture(scope="module")
def public_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = public_layout(tmp_path_factory.mktemp("data") / "data.csv")
    assert (
        path.read_text()
        .splitlines()[0]
        .endswith("concave points_worst,symmetry_worst,fractal_dimension_worst,")
    )
    return path


@pytest.fixture(scope="module")
def expected(public_csv: Path, server) -> list[dict]:
    """The service's own answers to the file's rows, asked directly in one batch."""
    rows = load_csv(public_csv).features.to_dict(orient="records")
    response = httpx.post(f"{server.url}/predict_batch", json={"instances": rows}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def run_client(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("TOKEN", "TOKEN_FILE", "SERVICE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "client", "--no-progress", *args],
        check=False,
        cwd=REPO_ROOT,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_output(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def assert_answer(line: dict[str, str], answer: dict) -> None:
    """One output line says what the service answered for its row."""
    assert line["diagnosis"] == answer["diagnosis"]
    probability = answer["probability_malignant"]
    assert line["probability_malignant"] == ("" if probability is None else repr(probability))
    assert line["warnings"] == "; ".join(answer["warnings"])
    assert line["reason"] == (answer.get("reason") or "")
    assert line["refused"] == ""


def test_scores_the_public_file_as_distributed(
    server, public_csv: Path, expected: list[dict], tmp_path
) -> None:
    output = tmp_path / "answers.csv"
    started = time.monotonic()
    result = run_client(str(public_csv), "--url", server.url, "--output", str(output))
    seconds = time.monotonic() - started
    print(
        f"python -m client, 569 rows: {seconds:.2f} s in all; its own summary: {result.stderr.splitlines()[0]}"
    )

    assert result.returncode == 0, result.stderr
    lines = read_output(output)
    ids = pd.read_csv(public_csv, dtype=str)["id"].tolist()
    assert list(lines[0]) == ["id", "diagnosis", "probability_malignant", "warnings", "reason", "refused"]
    assert [line["id"] for line in lines] == ids and len(ids) == 569
    for line, answer in zip(lines, expected, strict=True):
        assert_answer(line, answer)
    assert {line["diagnosis"] for line in lines} <= DIAGNOSES
    labels = pd.read_csv(public_csv, dtype=str)["diagnosis"].map({"M": "malignant", "B": "benign"})
    agree = sum(line["diagnosis"] == label for line, label in zip(lines, labels, strict=True))
    assert agree / len(lines) > 0.95
    assert result.stderr.startswith("569 rows in ") and "0 refused" in result.stderr
    assert f"wrote {output}" in result.stderr


def test_refused_rows_are_named_and_the_others_answered(
    server, public_csv: Path, expected: list[dict], tmp_path
) -> None:
    """25 rows with a negative radius, one with text and one with an empty cell, in one batch: the
    service lists 20 problems a response, so the client has to resend the rest more than once."""
    rows = list(csv.reader(public_csv.open(newline="")))
    header = rows[0]
    radius, texture, area = (header.index(name) for name in ("radius_mean", "texture_mean", "area_worst"))
    bad = {}
    for number in range(1, 26):
        rows[number][radius] = "-1"
        bad[number] = "radius_mean"
    rows[40][texture], bad[40] = "twelve", "texture_mean"
    rows[41][area], bad[41] = "", "area_worst"
    path = tmp_path / "with-bad-rows.csv"
    with path.open("w", newline="") as file:
        csv.writer(file).writerows(rows)
    output = tmp_path / "answers.csv"

    result = run_client(str(path), "--url", server.url, "--output", str(output))

    assert result.returncode == 1, result.stderr
    lines = read_output(output)
    assert len(lines) == 569
    for number, (line, answer) in enumerate(zip(lines, expected, strict=True), start=1):
        if number in bad:
            assert line["diagnosis"] == "" and line["refused"].startswith(f"{bad[number]}: "), line
        else:
            assert_answer(line, answer)
    assert "27 refused" in result.stderr
    assert "row 1 (id 1): radius_mean: " in result.stderr
    assert "... and 7 more rows" in result.stderr  # 20 listed, every one in the output


def test_the_projects_layout_without_an_id_numbers_the_rows(server, expected: list[dict], tmp_path) -> None:
    frame = pd.read_csv(write_csv(tmp_path / "project.csv"))
    path = tmp_path / "features-only.csv"
    frame[list(FEATURE_NAMES)].head(30).to_csv(path, index=False)

    result = run_client(str(path), "--url", server.url, "--batch-size", "7")

    assert result.returncode == 0, result.stderr
    lines = read_output(tmp_path / "features-only.predictions.csv")
    assert [line["row"] for line in lines] == [str(number) for number in range(1, 31)]
    for line, answer in zip(lines, expected[:30], strict=True):
        assert_answer(line, answer)


def test_a_terminal_shows_a_progress_bar(server, public_csv: Path, tmp_path) -> None:
    """On a terminal (a pseudo-terminal 100 columns wide here) the rows are counted as answers come."""
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    output = tmp_path / "answers.csv"
    command = [sys.executable, "-m", "client", str(public_csv), "--url", server.url, "--output", str(output)]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closes when the client exits
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert process.wait(timeout=60) == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    assert "569/569" in text and "row/s" in text, text


def test_a_file_without_the_features_is_refused_before_sending(tmp_path) -> None:
    path = tmp_path / "wrong.csv"
    path.write_text("id,radius_mean,texture_mean\n1,12,14\n")
    result = run_client(str(path), "--url", "http://127.0.0.1:9")  # nothing listens: nothing may be sent
    assert result.returncode == 2
    assert "missing column(s): perimeter_mean, area_mean" in result.stderr
    assert not (tmp_path / "wrong.predictions.csv").exists()


# --- behind the proxy ------------------------------------------------------------------------------


@dataclass
class Proxy:
    """Forwards to `upstream`; `answer` may answer a request itself (status, headers) instead."""

    upstream: str
    answer: Callable[[int, dict[str, str]], tuple[int, dict[str, str]] | None] = lambda number, headers: None
    delay: float = 0.0
    after: Callable[[int], None] = lambda number: None
    requests: list[tuple[float, dict[str, str], int]] = field(default_factory=list)  # time, headers, status
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""


@pytest.fixture
def proxy(server) -> Iterator[Proxy]:
    state = Proxy(server.url)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            headers = {key.lower(): value for key, value in self.headers.items()}
            with state.lock:
                number = len(state.requests)
                state.requests.append((time.monotonic(), headers, 0))
                state.in_flight += 1
                state.most_in_flight = max(state.most_in_flight, state.in_flight)
            try:
                time.sleep(state.delay)
                own = state.answer(number, headers)
                if own is None:
                    upstream = httpx.post(
                        state.upstream + self.path,
                        content=body,
                        headers={"Content-Type": "application/json"},
                        timeout=60,
                    )
                    status, extra, content = upstream.status_code, {}, upstream.content
                else:
                    status, extra = own
                    content = json.dumps({"error": "from the proxy", "detail": []}).encode()
                with state.lock:
                    state.requests[number] = (state.requests[number][0], headers, status)
                    state.in_flight -= 1
                state.after(number)
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **extra}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
            except BaseException:
                with state.lock:
                    state.in_flight -= 1
                raise

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.slow  # waits out Retry-After or slow answers by design
def test_a_busy_service_is_retried_after_retry_after(proxy: Proxy, public_csv: Path, tmp_path) -> None:
    proxy.answer = lambda number, headers: (503, {"Retry-After": "2"}) if number in (0, 1) else None
    output = tmp_path / "answers.csv"

    result = run_client(str(public_csv), "--url", proxy.url, "--concurrency", "1", "--output", str(output))

    assert result.returncode == 0, result.stderr
    assert len(read_output(output)) == 569
    times, statuses = [entry[0] for entry in proxy.requests], [entry[2] for entry in proxy.requests]
    assert statuses == [503, 503, 200]
    assert times[1] - times[0] >= 2 and times[2] - times[1] >= 2


@pytest.mark.slow  # waits out Retry-After or slow answers by design
def test_a_service_that_stays_busy_is_given_up_on(proxy: Proxy, public_csv: Path, tmp_path) -> None:
    proxy.answer = lambda number, headers: (503, {"Retry-After": "1"})
    result = run_client(str(public_csv), "--url", proxy.url, "--give-up-after", "2.5")
    assert result.returncode == 2
    assert "still failing after 2.5 s (HTTP 503" in result.stderr
    assert 2 <= len(proxy.requests) <= 4


def test_the_token_file_is_read_again_for_every_request(proxy: Proxy, public_csv: Path, tmp_path) -> None:
    """A projected token is replaced while the client runs: each request carries the file's content."""
    token_file = tmp_path / "token"
    token_file.write_text("token-0\n")
    proxy.after = lambda number: token_file.write_text(f"token-{number + 1}\n")

    result = run_client(
        str(public_csv), "--url", proxy.url, "--batch-size", "100", "--concurrency", "1",
        env={"TOKEN_FILE": str(token_file)},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    sent = [headers["authorization"] for _, headers, _ in proxy.requests]
    assert sent == [f"Bearer token-{number}" for number in range(6)]


def test_a_token_variable_is_presented_and_a_refusal_stops_the_run(proxy: Proxy, public_csv: Path) -> None:
    proxy.answer = lambda number, headers: (
        None if headers.get("authorization") == "Bearer s3cret" else (401, {})
    )

    presented = run_client(str(public_csv), "--url", proxy.url, env={"TOKEN": "s3cret"})
    assert presented.returncode == 0, presented.stderr

    missing = run_client(str(public_csv), "--url", proxy.url)
    assert missing.returncode == 2
    assert "HTTP 401" in missing.stderr and "TOKEN_FILE" in missing.stderr


@pytest.mark.slow  # waits out Retry-After or slow answers by design
def test_batches_are_sent_concurrently_up_to_the_limit(proxy: Proxy, public_csv: Path) -> None:
    proxy.delay = 0.3  # each answer takes long enough for the client's requests to overlap
    result = run_client(str(public_csv), "--url", proxy.url, "--batch-size", "50", "--concurrency", "3")
    assert result.returncode == 0, result.stderr
    assert len(proxy.requests) == 12  # 569 rows, 50 a batch
    assert proxy.most_in_flight == 3
