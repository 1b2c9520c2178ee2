"""The service over real HTTP, against `bentoml serve` started by the session fixture."""

from __future__ import annotations

import time

import httpx
import pandas as pd
import pytest

from bento.config import MAX_BATCH_ROWS
from harness.paths import runtime_contract
from training.dataset import write_csv
from wdbc import BENIGN_EXAMPLE, FEATURE_NAMES, MALIGNANT_EXAMPLE


def test_predict_malignant_example(client: httpx.Client) -> None:
    response = client.post("/predict", json=MALIGNANT_EXAMPLE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["diagnosis"] == "malignant"
    assert body["probability_malignant"] >= body["threshold"]
    assert 0 < body["threshold"] <= 0.5
    assert body["model_tag"].startswith("breast_cancer:")


def test_predict_benign_example(client: httpx.Client) -> None:
    body = client.post("/predict", json=BENIGN_EXAMPLE).json()
    assert body["diagnosis"] == "benign"
    assert 0 <= body["probability_malignant"] < body["threshold"]


def test_batch_classifies_the_dataset_in_order(client: httpx.Client, tmp_path) -> None:
    frame = pd.read_csv(write_csv(tmp_path / "data.csv"))
    rows = frame[list(FEATURE_NAMES)].to_dict(orient="records")
    expected = frame["diagnosis"].map({"M": "malignant", "B": "benign"}).tolist()
    predicted: list[str] = []
    for start in range(0, len(rows), MAX_BATCH_ROWS // 2):
        response = client.post(
            "/predict_batch", json={"instances": rows[start : start + MAX_BATCH_ROWS // 2]}
        )
        assert response.status_code == 200, response.text
        predicted += [p["diagnosis"] for p in response.json()["predictions"]]
    assert len(predicted) == len(expected)
    agreement = sum(p == e for p, e in zip(predicted, expected)) / len(expected)
    # Training rows included, so this is a sanity floor, not a metric.
    assert agreement > 0.95


def test_batch_item_matches_single_prediction(client: httpx.Client) -> None:
    batch = client.post("/predict_batch", json={"instances": [BENIGN_EXAMPLE, MALIGNANT_EXAMPLE]}).json()
    single = client.post("/predict", json=BENIGN_EXAMPLE).json()
    assert [p["diagnosis"] for p in batch["predictions"]] == ["benign", "malignant"]
    assert batch["predictions"][0] == single


def test_model_info(client: httpx.Client) -> None:
    response = client.get("/model")
    assert response.status_code == 200
    info = response.json()
    assert info["tag"] == client.post("/predict", json=BENIGN_EXAMPLE).json()["model_tag"]
    assert info["feature_names"] == list(FEATURE_NAMES)
    assert info["metrics"]["cross_validation"]["roc_auc"]["mean"] >= 0.99
    assert info["creation_time"]
    assert 0 < info["threshold"] <= 0.5


@pytest.mark.parametrize("probe", ["liveness", "readiness"])
def test_probe_paths_of_the_runtime_contract_are_served(client: httpx.Client, probe: str) -> None:
    """The chart points its probes at these paths (k8s/runtime-contract.yaml): they must answer."""
    assert client.get(runtime_contract()["probes"][probe]).status_code == 200


def test_metrics_are_on_their_own_port_and_count_requests_by_route(client: httpx.Client, server) -> None:
    before = client.post("/predict", json=BENIGN_EXAMPLE)
    assert before.status_code == 200
    assert server.metrics_url.endswith(runtime_contract()["probes"]["metrics"])
    metrics = httpx.get(server.metrics_url).text
    assert 'http_requests_total{code="200",endpoint="/predict"}' in metrics
    assert 'predictions_total{diagnosis="benign"}' in metrics
    assert client.get("/metrics").status_code == 404  # not on the API port


def test_missing_field_is_a_client_error_naming_the_field(client: httpx.Client) -> None:
    body = {k: v for k, v in MALIGNANT_EXAMPLE.items() if k != "symmetry_se"}
    response = client.post("/predict", json=body)
    assert 400 <= response.status_code < 500
    assert "symmetry_se" in response.text
    assert response.headers["content-type"].startswith("application/json")


def test_string_value_is_a_client_error_naming_the_field(client: httpx.Client) -> None:
    response = client.post("/predict", json={**MALIGNANT_EXAMPLE, "radius_mean": "large"})
    assert 400 <= response.status_code < 500
    assert "radius_mean" in response.text
    assert response.headers["content-type"].startswith("application/json")


def test_openapi_has_a_working_example_for_each_endpoint(client: httpx.Client) -> None:
    spec = client.get("/docs.json").json()
    assert "get" in spec["paths"]["/model"]
    for path in ("/predict", "/predict_batch"):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        response = client.post(path, json=schema["example"])
        assert response.status_code == 200, (path, response.text)


def test_openapi_describes_each_feature_with_the_served_models_training_range(client: httpx.Client) -> None:
    spec, model = client.get("/docs.json").json(), client.get("/model").json()
    assert (
        spec["paths"]["/model"]["get"]["responses"]["200"]["content"]["application/json"]["example"] == model
    )
    features = spec["components"]["schemas"]["Features"]["properties"]
    for name in FEATURE_NAMES:
        stats = model["feature_stats"][name]
        assert f"Training range {stats['min']:g} to {stats['max']:g}" in features[name]["description"], name


def test_log_file_gets_the_same_json_lines(client: httpx.Client, server, log_file) -> None:
    import json

    client.post("/predict", json=BENIGN_EXAMPLE)
    time.sleep(1.1)  # PREDICTION_SUMMARY_SECONDS=1 on this server: the next prediction logs a summary
    client.post("/predict", json=BENIGN_EXAMPLE)
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(line["message"].startswith("predictions served") and line["rows"] >= 1 for line in lines)
    assert any(line["message"].startswith("loaded model") for line in lines)


def test_bentoml_python_client(server) -> None:
    import bentoml

    with bentoml.SyncHTTPClient(server.url) as bento_client:
        assert bento_client.predict(MALIGNANT_EXAMPLE)["diagnosis"] == "malignant"
        batch = bento_client.predict_batch({"instances": [BENIGN_EXAMPLE, MALIGNANT_EXAMPLE]})
        assert [p["diagnosis"] for p in batch["predictions"]] == ["benign", "malignant"]
        with pytest.raises(bentoml.exceptions.BentoMLException, match="radius_mean"):
            bento_client.predict({**MALIGNANT_EXAMPLE, "radius_mean": -1})
