"""Who may call, over real HTTP against `bentoml serve` with authentication on: real RSA and EC keys
served as a JWKS by a local issuer (tests/bento/issuer.py), real ServiceAccount-shaped tokens. Every
case gets its status, none a 5xx; forged tokens cost no key fetch and no memory."""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from bento.config import BACKSTOP_TIMEOUT_SECONDS
from harness.servers import Server
from tests.bento.issuer import Issuer, SigningKey, running_issuer
from tests.bento.raw import MiB, exchange, request, worker_rss
from tests.bento.test_errors import assert_error_shape
from tests.conftest import own_server
from wdbc import MALIGNANT_EXAMPLE

ALLOW = {
    "AUTH_ALLOW_DIAGNOSIS": "apps/*,clinic/reader",
    "AUTH_ALLOW_OUTCOMES": "lab/pathology",
    "AUTH_ALLOW_MODEL_DATA": "ops/operator",
}


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with running_issuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serviceaccount") / "token"
    path.write_text("the-service-own-token-1\n")
    return path


@pytest.fixture(scope="module")
def guarded(issuer: Issuer, credentials: Path, model_store: Path, tmp_path_factory) -> Iterator[Server]:
    with own_server(model_store, tmp_path_factory, **issuer.settings(str(credentials), **ALLOW)) as server:
        yield server


def call(
    server: Server, token: str | None, path: str = "/predict", headers: dict | None = None
) -> httpx.Response:
    headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token is not None else {})}
    method = "POST" if path in ("/predict", "/predict_batch", "/explain", "/outcomes") else "GET"
    body = (
        {"outcomes": [{"features": MALIGNANT_EXAMPLE, "diagnosis": "malignant"}]}
        if path == "/outcomes"
        else MALIGNANT_EXAMPLE
    )
    return httpx.request(
        method, f"{server.url}{path}", headers=headers, json=body if method == "POST" else None
    )


def unauthenticated(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    return assert_error_shape(response)["detail"][0]["message"]


def test_an_allowed_caller_is_served_and_named_in_the_log_and_the_metrics(
    guarded: Server, issuer: Issuer
) -> None:
    response = call(guarded, issuer.token("apps", "frontend"))
    assert response.status_code == 200 and response.json()["diagnosis"] == "malignant"
    refused = httpx.post(f"{guarded.url}/predict", json={"radius_mean": -1},
                         headers={"Authorization": f"Bearer {issuer.token('apps', 'frontend')}", "X-Request-ID": "allowed-1"})  # fmt: skip
    assert refused.status_code == 422
    counted = call(guarded, issuer.token("lab", "pathology"), "/outcomes", {"X-Request-ID": "allowed-2"})
    assert counted.status_code == 200
    lines = [json.loads(line) for line in guarded.log().splitlines() if '"allowed-' in line]
    assert {(line["request_id"], line["caller"]) for line in lines} == {
        ("allowed-1", "apps/frontend"),
        ("allowed-2", "lab/pathology"),
    }
    assert 'auth_allowed_total{identity="apps/frontend"} 2.0' in httpx.get(guarded.metrics_url).text


def test_ec_keys_and_named_accounts_are_accepted(guarded: Server, issuer: Issuer) -> None:
    assert call(guarded, issuer.token("clinic", "reader", key=issuer.keys[1])).status_code == 200


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "no bearer token"),
        ("expired", "expired"),
        ("not-yet-valid", "not valid yet"),
        ("other-audience", "audience"),
        ("other-issuer", "another issuer"),
        ("unknown-key", "does not publish"),
        ("no-key-id", "kid"),
        ("bad-signature", "signature"),
        ("not-a-jwt", "not a JWT"),
        ("alg-none", "algorithm"),
        ("hs256-with-the-public-key", "algorithm"),
        ("key-id-not-a-string", "not a JWT"),
        ("critical-extension", "not a JWT"),
    ],
)
def test_tokens_that_prove_nothing_get_401(guarded: Server, issuer: Issuer, case: str, expected: str) -> None:
    rsa_key = issuer.keys[0]
    stranger = SigningKey.rsa()
    public_pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = jwt.decode(issuer.token(), options={"verify_signature": False})
    tokens = {
        "missing": None,
        "expired": issuer.token(lifetime=-60),
        "not-yet-valid": issuer.token(not_before=600, lifetime=1200),
        "other-audience": issuer.token(audience="https://kubernetes.default.svc"),
        "other-issuer": issuer.token(issuer="https://evil.example"),
        "unknown-key": issuer.token(key=stranger),
        "no-key-id": jwt.encode(claims, rsa_key.private, algorithm="RS256"),
        "bad-signature": issuer.token(key=SigningKey("RS256", stranger.private, kid=rsa_key.kid)),
        "not-a-jwt": "definitely-not-a-token",
        "alg-none": _unsigned(claims, rsa_key.kid),
        "hs256-with-the-public-key": _hmac_with(public_pem, claims, rsa_key.kid),
        "key-id-not-a-string": _signed_as({"alg": "RS256", "kid": 1}, claims),
        "critical-extension": _signed_as({"alg": "RS256", "kid": rsa_key.kid, "crit": "x"}, claims),
    }
    assert expected in unauthenticated(call(guarded, tokens[case]))


def _part(value: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _unsigned(claims: dict, kid: str) -> str:
    return f"{_part({'alg': 'none', 'kid': kid})}.{_part(claims)}."


def _signed_as(header: dict, claims: dict) -> str:
    """A token whose header JWT libraries refuse to read, whatever its signature."""
    return f"{_part(header)}.{_part(claims)}.c2lnbmF0dXJl"


def _hmac_with(secret: bytes, claims: dict, kid: str) -> str:
    """The algorithm-confusion attack: HS256 keyed with the RSA public key the JWKS publishes."""
    import hashlib
    import hmac

    def part(value: dict | bytes) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing_input = f"{part({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{part(claims)}"
    return f"{signing_input}.{part(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def test_a_token_in_the_query_string_is_not_read(guarded: Server, issuer: Issuer) -> None:
    response = httpx.post(f"{guarded.url}/predict?access_token={issuer.token()}", json=MALIGNANT_EXAMPLE)
    assert unauthenticated(response) == "no bearer token"


def test_a_megabyte_token_is_refused_by_the_parser_not_the_service(guarded: Server) -> None:
    answer = exchange(guarded, request("POST", "/predict", json.dumps(MALIGNANT_EXAMPLE).encode(),
                                       {"Authorization": "Bearer " + "a" * MiB}), timeout=5)  # fmt: skip
    assert answer is None or answer.status in (400, 431)


@pytest.mark.parametrize(
    ("namespace", "name", "path"),
    [
        ("other", "frontend", "/predict"),  # a namespace no list names
        ("clinic", "writer", "/predict"),  # a namespace named for one account only
        ("apps", "frontend", "/model"),  # allowed to diagnose, not to read model data
        ("apps", "frontend", "/outcomes"),
        ("lab", "pathology", "/predict"),
    ],
)
def test_a_valid_caller_not_on_the_list_gets_403(
    guarded: Server, issuer: Issuer, namespace, name, path
) -> None:
    response = call(guarded, issuer.token(namespace, name), path)
    assert response.status_code == 403, response.text
    assert f"{namespace}/{name}" in assert_error_shape(response)["detail"][0]["message"]


def test_each_group_admits_its_callers(guarded: Server, issuer: Issuer) -> None:
    assert call(guarded, issuer.token("ops", "operator"), "/model").status_code == 200
    assert call(guarded, issuer.token("ops", "operator"), "/drift").status_code == 200
    assert call(guarded, issuer.token("lab", "pathology"), "/outcomes").status_code == 200
    for caller in (("ops", "operator"), ("lab", "pathology"), ("apps", "x")):
        assert call(guarded, issuer.token(*caller), "/docs.json").status_code == 200


def test_only_the_probes_and_the_static_page_are_open(guarded: Server) -> None:
    for path in ("/livez", "/healthz", "/readyz", "/", "/static_content/swagger-ui-bundle.js"):
        assert httpx.get(f"{guarded.url}{path}").status_code == 200, path
    for path in ("/model", "/drift", "/docs.json", "/schema.json"):
        unauthenticated(httpx.get(f"{guarded.url}{path}"))
    for path in ("/predict", "/predict_batch", "/explain", "/outcomes"):
        unauthenticated(httpx.post(f"{guarded.url}{path}", json={}))
    assert httpx.get(guarded.metrics_url).status_code == 200  # its own port: the NetworkPolicy's to guard


def test_the_openapi_document_declares_the_bearer_scheme(guarded: Server, issuer: Issuer) -> None:
    spec = call(guarded, issuer.token(), "/docs.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    predict = spec["paths"]["/predict"]["post"]
    assert predict["security"] == [{"bearer": []}] and {"401", "403"} <= set(predict["responses"])
    assert "security" not in spec["paths"]["/livez"]["get"]


def test_the_keys_are_fetched_with_the_pods_own_token_read_afresh(guarded: Server, issuer: Issuer) -> None:
    assert issuer.credentials and issuer.credentials[-1] == "Bearer the-service-own-token-1"


@pytest.mark.slow
def test_ten_thousand_forged_tokens_fetch_nothing_and_grow_no_memory(guarded: Server, issuer: Issuer) -> None:
    stranger = SigningKey.ec()
    forged = [
        lambda: secrets.token_urlsafe(300),
        lambda: issuer.token(key=stranger),  # a key nobody publishes
        lambda: issuer.token(
            key=SigningKey("ES256", stranger.private, kid=issuer.keys[1].kid)
        ),  # forged signature
        lambda: issuer.token(audience="someone-else"),
    ]
    samples = [forged[index % len(forged)]() for index in range(40)]
    statuses = set()

    def send_forged(client: httpx.Client, count: int) -> None:
        for index in range(count):
            token = samples[index % len(samples)] if index % 2 else forged[0]()
            statuses.add(client.post("/predict", content=b"{}", headers={"Authorization": f"Bearer {token}",
                                                                         "Content-Type": "application/json"}).status_code)  # fmt: skip

    with httpx.Client(base_url=guarded.url) as client:
        # Warm: allocator pools, and BentoML's timer for each request, kept BACKSTOP_TIMEOUT_SECONDS.
        send_forged(client, 10_000)
        time.sleep(BACKSTOP_TIMEOUT_SECONDS + 1)
        fetches, rss = issuer.fetches, worker_rss(guarded)
        send_forged(client, 10_000)
    grown = worker_rss(guarded) - rss
    print(
        f"10,000 forged tokens: statuses {statuses}, {issuer.fetches - fetches} key fetches, memory {grown / MiB:+.1f} MiB"
    )
    assert statuses == {401}
    assert issuer.fetches == fetches
    assert grown < 8 * MiB
    denied = httpx.get(guarded.metrics_url).text
    assert (
        'auth_denied_total{reason="signature"}' in denied
        and 'auth_denied_total{reason="unknown_key"}' in denied
    )
    identities = set(re.findall(r'auth_allowed_total\{identity="([^"]+)"\}', denied))
    assert identities <= {"apps/frontend", "apps/x", "clinic/reader", "ops/operator", "lab/pathology"}


@pytest.mark.slow
def test_a_rotated_key_is_picked_up_while_serving(
    model_store: Path, tmp_path_factory, tmp_path: Path
) -> None:
    credentials = tmp_path / "token"
    credentials.write_text("first\n")
    first = SigningKey.rsa()
    with running_issuer(first) as issuer:
        settings = {**issuer.settings(str(credentials), **ALLOW), "AUTH_JWKS_REFRESH_SECONDS": "1"}
        with own_server(model_store, tmp_path_factory, **settings) as server:
            assert call(server, issuer.token()).status_code == 200
            rotated = SigningKey.ec()
            issuer.keys.append(rotated)
            credentials.write_text("second\n")  # the kubelet refreshes the pod's token
            deadline = time.monotonic() + 15
            while (status := call(server, issuer.token(key=rotated)).status_code) != 200:
                assert status == 401 and time.monotonic() < deadline
                time.sleep(0.3)
            issuer.keys.remove(first)  # the old key withdrawn: its tokens stop working
            old = issuer.token(key=first)
            deadline = time.monotonic() + 15
            while call(server, old).status_code != 401:
                assert time.monotonic() < deadline
                time.sleep(0.3)
            assert "Bearer second" in issuer.credentials


@pytest.mark.slow
def test_a_worker_takes_requests_only_once_it_has_the_keys(
    model_store: Path, tmp_path_factory, tmp_path: Path
) -> None:
    with running_issuer() as issuer:
        issuer.delay = 1.5  # each of the two fetches a worker makes at its start
        settings = issuer.settings(str(tmp_path / "absent"), **ALLOW)
        with own_server(model_store, tmp_path_factory, ready=False, **settings) as server:
            statuses = [call(server, issuer.token()).status_code for _ in range(20)]
    assert statuses == [200] * 20


@pytest.mark.slow
def test_without_the_keys_the_pod_is_unready_and_answers_503(
    model_store: Path, tmp_path_factory, tmp_path: Path
) -> None:
    with running_issuer() as issuer:
        issuer.failing = True
        settings = {**issuer.settings(str(tmp_path / "absent"), **ALLOW), "AUTH_JWKS_REFRESH_SECONDS": "1"}
        server_context = own_server(model_store, tmp_path_factory, ready=False, **settings)
        with server_context as server:
            assert httpx.get(f"{server.url}/livez").status_code == 200
            assert httpx.get(f"{server.url}/readyz").status_code == 503
            response = call(server, issuer.token())
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert assert_error_shape(response)["error"] == "authentication unavailable"
            issuer.failing = False
            server.wait_until_ready(timeout=120)
            assert call(server, issuer.token()).status_code == 200
            assert issuer.credentials[-1] is None  # no credentials file: none presented
