"""Property-based fuzzing of the running service through its own OpenAPI document (schemathesis).

Schemathesis generates both valid and schema-violating requests for every operation in /docs.json.
Zero 5xx are allowed; every 4xx must follow the error contract; afterwards the service must still be
ready and still predict. The status-code histogram is written to reports/fuzz-status-codes.json.
"""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from harness.paths import REPO_ROOT
from tests.bento.test_errors import assert_error_shape
from wdbc import MALIGNANT_EXAMPLE

FUZZ_EXAMPLES_PER_OPERATION = 300  # per operation and per mode (valid, schema-violating)
FUZZED_OPERATIONS = [
    ("POST", "/predict"),
    ("POST", "/predict_batch"),
    ("POST", "/explain"),
    ("POST", "/outcomes"),
    ("GET", "/model"),
    ("GET", "/drift"),
    ("GET", "/livez"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]
# Operations without parameters or a body have no schema to violate: only POSTs get negative cases.
FUZZ_RUNS = [
    (method, path, mode)
    for method, path in FUZZED_OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if method == "POST" or mode == GenerationMode.POSITIVE
]
status_codes: Counter[int] = Counter()


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/docs.json")


def test_every_documented_operation_is_fuzzed(api_schema) -> None:
    documented = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert documented == set(FUZZED_OPERATIONS)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "mode"), FUZZ_RUNS, ids=[f"{m} {p} {mode}" for m, p, mode in FUZZ_RUNS]
)
def test_fuzzed_requests_never_get_a_server_error(api_schema, server, method, path, mode) -> None:
    session = requests.Session()

    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    @settings(
        max_examples=FUZZ_EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def fuzz(case) -> None:
        response = case.call(base_url=server.url, session=session, timeout=30)
        status_codes[response.status_code] += 1
        assert response.status_code < 500, (case.method, case.path, case.body, response.text)
        if response.status_code >= 400:
            assert_error_shape(response)
        # An answer whose status the document does not list, or whose body does not fit the schema
        # documented for it, fails: a client generated from /docs.json must be able to rely on it.
        case.validate_response(
            response, checks=[status_code_conformance, content_type_conformance, response_schema_conformance]
        )

    fuzz()


@pytest.mark.slow  # it reads what the (slow) fuzzing above recorded
def test_service_is_healthy_after_fuzzing(client: httpx.Client) -> None:
    total = sum(status_codes.values())
    report = REPO_ROOT / "reports" / "fuzz-status-codes.json"
    report.parent.mkdir(exist_ok=True)
    report.write_text(
        json.dumps({"requests": total, "status_codes": dict(sorted(status_codes.items()))}, indent=2)
    )
    print(f"fuzzed {total} requests; status codes {dict(sorted(status_codes.items()))}")
    assert total >= 2 * FUZZ_EXAMPLES_PER_OPERATION, "the fuzzer barely ran"
    assert client.get("/readyz").status_code == 200
    response = client.post("/predict", json=MALIGNANT_EXAMPLE)
    assert response.status_code == 200 and response.json()["diagnosis"] == "malignant"
