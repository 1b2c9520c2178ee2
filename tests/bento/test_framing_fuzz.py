"""Differential fuzzing of HTTP framing against `bentoml serve`: Hypothesis sends raw requests, random
ones and valid ones mutated byte by byte, each once as it is and once offering `Upgrade: h2c`.
Every request is answered or closed within a second, both variants are answered alike, and the
workers' memory stays flat."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.servers import Server
from tests.bento.raw import Answer, Connection, MiB, chunked, request, worker_rss
from tests.conftest import own_server
from wdbc import BENIGN_EXAMPLE, MALIGNANT_EXAMPLE

ROW = json.dumps(MALIGNANT_EXAMPLE).encode()
JSON = {"Content-Type": "application/json"}
VALID = [
    request("POST", "/predict", ROW),
    request(
        "POST", "/predict_batch", json.dumps({"instances": [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE]}).encode()
    ),
    request("POST", "/predict", chunked(ROW[:100], ROW[100:]), {**JSON, "Transfer-Encoding": "chunked"}),
    request("POST", "/explain", ROW, {"Connection": "close"}),
    request("GET", "/model"),
    request("GET", "/livez"),
]
H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
TIMEOUT = 0.2  # the fuzzed server's header and body timeouts


@pytest.fixture(scope="module")
def fuzzed(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = {
        "HEADER_TIMEOUT_SECONDS": str(TIMEOUT),
        "BODY_TIMEOUT_SECONDS": str(TIMEOUT),
        "SERVICE_WORKERS": "2",
    }
    with own_server(model_store, tmp_path_factory, **settings) as server:
        yield server


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "delete", "insert", "repeat-line", "truncate"]))
        if kind == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "insert":
            data[at:at] = draw(
                st.sampled_from([b"\r\n", b"\n", b" ", b":", b"-1", b"0\r\n\r\n", b"\x00", b"Host: y\r\n"])
            )
        elif kind == "repeat-line":
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            if end > start:
                data[end + 1 : end + 1] = data[start : end + 1]
        else:
            del data[at:]
    return bytes(data)


def outcome(server: Server, raw: bytes) -> tuple[object, float]:
    """(the answer's status and body, or "closed"; seconds until it came)."""
    started = time.monotonic()
    with Connection(server, timeout=5) as connection:
        try:
            connection.send(raw)
            answer: Answer | None = connection.answer(timeout=3)
        except (ConnectionError, TimeoutError):
            answer = None
    seconds = time.monotonic() - started
    if answer is None:
        return "closed", seconds
    body = answer.body if answer.status == 200 else answer.body.replace(b"h2c", b"")
    return (answer.status, body), seconds


def with_h2c_offer(raw: bytes) -> bytes | None:
    line_end = raw.find(b"\r\n")
    return None if line_end < 0 else raw[: line_end + 2] + H2C + raw[line_end + 2 :]


@pytest.mark.slow
def test_framing_is_answered_quickly_and_alike_with_or_without_an_h2c_offer(fuzzed: Server) -> None:
    """Run twice: the first run warms the workers (allocator pools, code paths taken once), the second
    must not grow their memory."""
    seen: list[object] = []

    @given(st.one_of(mutated(), st.binary(max_size=200)))
    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(raw: bytes) -> None:
        plain, seconds = outcome(fuzzed, raw)
        assert seconds < 1, (raw, plain, seconds)
        seen.append(plain if plain == "closed" else plain[0])
        offered = with_h2c_offer(raw)
        if offered is not None and b"Connection:" not in raw and b"Upgrade" not in raw:
            upgraded, seconds = outcome(fuzzed, offered)
            assert seconds < 1, (offered, upgraded, seconds)
            assert upgraded == plain, (raw, plain, upgraded)

    fuzz()
    rss = worker_rss(fuzzed)
    fuzz()
    grown = worker_rss(fuzzed) - rss
    print(f"{len(seen)} raw requests: {sorted(map(str, set(seen)))}; worker memory {grown / MiB:+.1f} MiB")
    assert 200 in seen and len(set(seen)) >= 4, "the fuzzer barely reached the service"
    assert grown < 4 * MiB
