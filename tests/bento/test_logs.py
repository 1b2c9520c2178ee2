"""Logs over real HTTP: JSON lines, no feature values, a request id on every line about a request,
predictions summarised at INFO and listed one by one only at DEBUG."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from harness.servers import Server
from tests.conftest import own_server
from wdbc import BENIGN_EXAMPLE, MALIGNANT_EXAMPLE


def json_lines(server: Server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def test_info_logs_summaries_not_every_prediction(client: httpx.Client, server: Server) -> None:
    for _ in range(20):
        client.post("/predict", json=MALIGNANT_EXAMPLE)
    time.sleep(1.1)  # PREDICTION_SUMMARY_SECONDS=1 on the session server
    client.post("/predict", json=BENIGN_EXAMPLE)
    lines = json_lines(server)
    assert not [line for line in lines if line["message"] == "predicted"], "one INFO line per prediction"
    summaries = [line for line in lines if line["message"].startswith("predictions served")]
    assert summaries and all(line["level"] == "INFO" for line in summaries)
    assert sum(line["rows"] for line in summaries) >= 20
    assert all({"p50", "p99", "max"} <= line["latency_ms"].keys() for line in summaries)
    assert all("request_id" not in line for line in summaries), "a summary is about no single request"
    assert str(MALIGNANT_EXAMPLE["area_worst"]) not in server.log()
    loaded = [line for line in lines if line["message"].startswith("loaded model")]
    assert loaded and "roc_auc" in loaded[0]["metrics"]


def test_a_clients_request_id_is_kept_and_logged(client: httpx.Client, server: Server) -> None:
    response = client.post(
        "/predict", json={**MALIGNANT_EXAMPLE, "radius_mean": -1}, headers={"X-Request-ID": "abc-123"}
    )
    assert response.status_code == 422
    assert response.headers["x-request-id"] == "abc-123"
    rejected = [line for line in json_lines(server) if line["message"] == "rejected request"]
    assert any(line.get("request_id") == "abc-123" and line["fields"] == ["radius_mean"] for line in rejected)


@pytest.mark.parametrize("given", [None, "", "has spaces", "x" * 65, "<script>"])
def test_a_missing_or_odd_request_id_is_replaced(client: httpx.Client, given: str | None) -> None:
    headers = {} if given is None else {"X-Request-ID": given}
    returned = client.post("/predict", json=BENIGN_EXAMPLE, headers=headers).headers["x-request-id"]
    assert returned != given and len(returned) == 16 and int(returned, 16) >= 0
    assert client.get("/no/such/path").headers["x-request-id"], "errors carry an id too"


@pytest.fixture(scope="module")
def debug_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory):
    with own_server(model_store, tmp_path_factory, LOG_LEVEL="DEBUG") as server:
        yield server


def test_debug_logs_each_prediction_with_its_request_id(debug_server: Server) -> None:
    response = httpx.post(
        f"{debug_server.url}/predict_batch", json={"instances": [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE]}
    )
    request_id = response.headers["x-request-id"]
    predicted = [line for line in json_lines(debug_server) if line["message"] == "predicted"]
    (line,) = [line for line in predicted if line.get("request_id") == request_id]
    assert (
        line["level"] == "DEBUG" and line["rows"] == 2 and line["malignant"] == 1 and line["latency_ms"] >= 0
    )
