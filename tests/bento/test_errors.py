"""The error contract over real HTTP: every bad request gets a 4xx JSON body naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from bento.config import MAX_BATCH_ROWS
from harness.servers import Server, start_service
from wdbc import BENIGN_EXAMPLE, MALIGNANT_EXAMPLE

JSON = {"content-type": "application/json"}


def with_value(field: str, raw_json_value: str, base: dict = MALIGNANT_EXAMPLE) -> str:
    """The example as JSON text with one field's value replaced by raw JSON (NaN, 1e400, ...)."""
    marker = "__REPLACE_ME__"
    return json.dumps({**base, field: marker}).replace(f'"{marker}"', raw_json_value)


def batch_of(*rows: str) -> str:
    return '{"instances": [' + ", ".join(rows) + "]}"


EXAMPLE_TEXT = json.dumps(MALIGNANT_EXAMPLE)
CASES = [
    # id, method, path, body, headers, status, field named in detail
    ("malformed-json", "POST", "/predict", '{"radius_mean": ', JSON, 400, "body"),
    ("empty-body", "POST", "/predict", "", JSON, 400, "body"),
    ("whitespace-body", "POST", "/predict", "  \n", JSON, 400, "body"),
    ("no-content-type", "POST", "/predict", EXAMPLE_TEXT, {}, 415, "content-type"),
    (
        "form-content-type",
        "POST",
        "/predict",
        EXAMPLE_TEXT,
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        "content-type",
    ),
    (
        "text-content-type",
        "POST",
        "/predict",
        EXAMPLE_TEXT,
        {"content-type": "text/plain"},
        415,
        "content-type",
    ),
    (
        "pickle-content-type",
        "POST",
        "/predict",
        EXAMPLE_TEXT,
        {"content-type": "application/vnd.bentoml+pickle"},
        415,
        "content-type",
    ),
    (
        "missing-field",
        "POST",
        "/predict",
        json.dumps({k: v for k, v in MALIGNANT_EXAMPLE.items() if k != "area_se"}),
        JSON,
        422,
        "area_se",
    ),
    ("unknown-field", "POST", "/predict", json.dumps({**MALIGNANT_EXAMPLE, "age": 50}), JSON, 422, "age"),
    ("string-value", "POST", "/predict", with_value("radius_mean", '"17.9"'), JSON, 422, "radius_mean"),
    ("bool-value", "POST", "/predict", with_value("texture_mean", "true"), JSON, 422, "texture_mean"),
    ("null-value", "POST", "/predict", with_value("area_mean", "null"), JSON, 422, "area_mean"),
    ("array-value", "POST", "/predict", with_value("symmetry_se", "[1.0]"), JSON, 422, "symmetry_se"),
    ("object-value", "POST", "/predict", with_value("symmetry_se", '{"v": 1}'), JSON, 422, "symmetry_se"),
    # NaN, Infinity and numbers beyond a double are not JSON (RFC 8259).
    ("nan-token", "POST", "/predict", with_value("concavity_mean", "NaN"), JSON, 400, "body"),
    (
        "infinity-token",
        "POST",
        "/predict",
        with_value("concavity_mean", "Infinity"),
        JSON,
        400,
        "body",
    ),
    (
        "minus-infinity-token",
        "POST",
        "/predict",
        with_value("concavity_mean", "-Infinity"),
        JSON,
        400,
        "body",
    ),
    ("nan-string", "POST", "/predict", with_value("radius_se", '"NaN"'), JSON, 422, "radius_se"),
    ("infinity-string", "POST", "/predict", with_value("radius_se", '"Infinity"'), JSON, 422, "radius_se"),
    (
        "minus-infinity-string",
        "POST",
        "/predict",
        with_value("radius_se", '"-Infinity"'),
        JSON,
        422,
        "radius_se",
    ),
    ("float-overflow", "POST", "/predict", with_value("area_worst", "1e400"), JSON, 400, "body"),
    (
        "integer-overflow",
        "POST",
        "/predict",
        with_value("area_worst", "1" + "0" * 400),
        JSON,
        400,
        "body",
    ),
    ("negative-value", "POST", "/predict", with_value("perimeter_mean", "-0.5"), JSON, 422, "perimeter_mean"),
    (
        "not-a-measurement",
        "POST",
        "/predict",
        with_value("perimeter_mean", "1e308"),
        JSON,
        422,
        "perimeter_mean",
    ),
    ("no-body-no-content-type", "POST", "/predict", None, {}, 400, "body"),
    ("body-is-array", "POST", "/predict", "[1, 2, 3]", JSON, 422, "body"),
    ("body-is-number", "POST", "/predict", "42", JSON, 422, "body"),
    ("batch-empty-list", "POST", "/predict_batch", '{"instances": []}', JSON, 422, "instances"),
    (
        "batch-too-many-rows",
        "POST",
        "/predict_batch",
        batch_of(*[EXAMPLE_TEXT] * (MAX_BATCH_ROWS + 1)),
        JSON,
        422,
        "instances",
    ),
    (
        "batch-one-bad-row",
        "POST",
        "/predict_batch",
        batch_of(EXAMPLE_TEXT, EXAMPLE_TEXT, with_value("smoothness_worst", '"x"')),
        JSON,
        422,
        "instances[2].smoothness_worst",
    ),
    ("batch-missing-instances", "POST", "/predict_batch", "{}", JSON, 422, "instances"),
    (
        "batch-unknown-key",
        "POST",
        "/predict_batch",
        '{"instances": [' + EXAMPLE_TEXT + '], "rows": 1}',
        JSON,
        422,
        "rows",
    ),
    ("batch-malformed", "POST", "/predict_batch", '{"instances": [', JSON, 400, "body"),
    (
        "batch-boolean",
        "POST",
        "/predict_batch",
        batch_of(with_value("area_mean", "false")),
        JSON,
        422,
        "instances[0].area_mean",
    ),
    ("batch-row-not-object", "POST", "/predict_batch", batch_of("[1, 2]"), JSON, 422, "instances[0]"),
    (
        "batch-deeply-nested",
        "POST",
        "/predict_batch",
        '{"instances": [' + "[" * 900 + "]" * 900 + "]}",
        JSON,
        422,
        "instances[0]",
    ),
    (
        "outcomes-bad-label",
        "POST",
        "/outcomes",
        json.dumps({"outcomes": [{"features": MALIGNANT_EXAMPLE, "diagnosis": "cancer"}]}),
        JSON,
        422,
        "outcomes[0].diagnosis",
    ),
    (
        "outcomes-bad-time",
        "POST",
        "/outcomes",
        json.dumps(
            {
                "outcomes": [
                    {"features": MALIGNANT_EXAMPLE, "diagnosis": "benign", "predicted_at": "yesterday"}
                ]
            }
        ),
        JSON,
        422,
        "outcomes[0].predicted_at",
    ),
    (
        "outcomes-bad-feature",
        "POST",
        "/outcomes",
        json.dumps(
            {"outcomes": [{"features": {**MALIGNANT_EXAMPLE, "radius_mean": "x"}, "diagnosis": "benign"}]}
        ),
        JSON,
        422,
        "outcomes[0].features.radius_mean",
    ),
    ("unknown-path", "GET", "/no/such/endpoint", None, {}, 404, "path"),
    ("unknown-path-post", "POST", "/predict_many", EXAMPLE_TEXT, JSON, 404, "path"),
    ("unknown-static-file", "GET", "/static_content/no-such-file.js", None, {}, 404, "path"),
    ("post-on-static-file", "POST", "/static_content/swagger-ui.css", EXAMPLE_TEXT, JSON, 405, "method"),
    ("get-on-predict", "GET", "/predict", None, {}, 405, "method"),
    ("post-on-model", "POST", "/model", EXAMPLE_TEXT, JSON, 405, "method"),
]


def assert_error_shape(response) -> dict:
    """Works on httpx responses and on schemathesis' (whose header values are lists)."""
    content_type = response.headers.get("content-type", "")
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert all(set(item) == {"field", "message"} for item in body["detail"]), body
    return body


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "field"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_request_gets_a_clear_4xx(
    client: httpx.Client, method, path, body, headers, status, field
) -> None:
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    detail = assert_error_shape(response)["detail"]
    assert field in [item["field"] for item in detail], detail


def test_every_problem_is_listed(client: httpx.Client) -> None:
    body = {k: v for k, v in MALIGNANT_EXAMPLE.items() if k not in ("radius_mean", "area_mean")}
    response = client.post("/predict", json={**body, "texture_mean": -1})
    fields = {item["field"] for item in assert_error_shape(response)["detail"]}
    assert fields == {"radius_mean", "area_mean", "texture_mean"}


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    big = batch_of(*[EXAMPLE_TEXT] * 4000)  # ~3 MB, over the 2 MiB default
    response = client.post("/predict_batch", content=big, headers=JSON)
    assert response.status_code == 413
    assert "limit" in assert_error_shape(response)["detail"][0]["message"]


def test_chunked_body_over_the_limit_is_413(client: httpx.Client) -> None:
    chunk = (EXAMPLE_TEXT + ",").encode()

    def stream():  # no Content-Length: httpx sends Transfer-Encoding: chunked
        yield b'{"instances": ['
        for _ in range(4000):
            yield chunk

    response = client.post("/predict_batch", content=stream(), headers=JSON)
    assert response.status_code == 413
    assert_error_shape(response)


def test_values_just_outside_the_training_range_are_answered_flagged_and_counted(
    client: httpx.Client, server: Server
) -> None:
    stats = client.get("/model").json()["feature_stats"]
    row = {
        **BENIGN_EXAMPLE,
        "area_worst": stats["area_worst"]["max"] * 1.02,
        "radius_mean": stats["radius_mean"]["min"] * 0.98,
    }
    response = client.post("/predict", json=row)
    assert response.status_code == 200
    warnings = response.json()["warnings"]
    assert any(w.startswith("area_worst is above the training range") for w in warnings), warnings
    assert any(w.startswith("radius_mean is below the training range") for w in warnings), warnings
    assert client.post("/predict", json=BENIGN_EXAMPLE).json()["warnings"] == []
    metrics = httpx.get(server.metrics_url).text
    assert 'out_of_range_features_total{feature="area_worst",side="above"}' in metrics


def test_rejections_are_logged_as_warnings_without_the_payload(client: httpx.Client, server) -> None:
    secret_value = 123.456789
    client.post("/predict", json={**MALIGNANT_EXAMPLE, "radius_mean": -secret_value})
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    rejected = [line for line in lines if line["message"] == "rejected request"]
    assert rejected and all(line["level"] == "WARNING" for line in rejected)
    assert any(line["fields"] == ["radius_mean"] and line["status"] == 422 for line in rejected)
    assert str(secret_value) not in server.log()
    assert not [line for line in lines if line["level"] == "ERROR"], (
        "a client error was logged as a server error"
    )


UNAVAILABLE_MODELS = {
    # MODEL_TAG: what the startup log must say
    "breast_cancer:doesnotexist": ["breast_cancer:doesnotexist not found", "make train"],
    "not a valid tag!": ["not a valid tag! could not be loaded", "Traceback"],
}


@pytest.fixture(scope="module", params=sorted(UNAVAILABLE_MODELS))
def unavailable_server(request, model_store: Path, tmp_path_factory: pytest.TempPathFactory):
    server = start_service(
        model_store, tmp_path_factory.mktemp("unavailable") / "serve.log", MODEL_TAG=request.param
    )
    try:
        server.wait_until_answering()
        yield server, request.param
    finally:
        server.stop()


@pytest.mark.slow
def test_unavailable_model_is_not_ready_and_answers_503(unavailable_server) -> None:
    server, tag = unavailable_server
    url = server.url
    assert httpx.get(f"{url}/livez").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 503
    for path, body in (
        ("/predict", MALIGNANT_EXAMPLE),
        ("/predict_batch", {"instances": [MALIGNANT_EXAMPLE]}),
    ):
        response = httpx.post(f"{url}{path}", json=body)
        assert response.status_code == 503
        detail = assert_error_shape(response)["detail"]
        assert tag in detail[0]["message"]
    response = httpx.get(f"{url}/model")
    assert response.status_code == 503 and assert_error_shape(response)["error"] == "model unavailable"
    log = server.log()
    assert all(expected in log for expected in UNAVAILABLE_MODELS[tag]), log


def test_an_error_of_ours_in_the_edge_is_answered_500_in_the_contracts_shape() -> None:
    """In-process: no client input is known to raise inside the edge, so an app that does stands in."""
    import asyncio

    from bento.edge import Edge, Route

    async def broken(scope, receive, send) -> None:
        raise RuntimeError("a bug")

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)

    edge = Edge(broken, routes={"/livez": Route(frozenset({"GET"}))}, served=lambda: None)
    scope = {"type": "http", "method": "GET", "path": "/livez", "raw_path": b"/livez", "query_string": b"",
             "http_version": "1.1", "headers": [(b"host", b"x")]}  # fmt: skip
    asyncio.run(edge(scope, receive, send))
    start, body = messages[0], b"".join(message.get("body", b"") for message in messages[1:])
    headers = dict(start["headers"])
    assert start["status"] == 500 and headers[b"connection"] == b"close" and b"x-request-id" in headers
    assert json.loads(body) == {"error": "internal server error", "detail": []}
