"""The rollout verifier's checks, run on objects rendered from the chart (there is no cluster here).

The live path (API polling, port-forward, TokenRequest) runs in the workflow's e2e and deploy jobs;
here every check gets the Deployment, HPA and PDB that `helm template` renders, plus the status and
pods a cluster would report, built from that same Deployment, and a fake service that enforces the
Deployment's AUTH_* settings the way the service does.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import socket
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client

from harness.paths import CHART, runtime_contract
from k8s import verify
from tests.conftest import require_tool
from wdbc import BENIGN_LABEL, MALIGNANT_LABEL

RELEASE = "breast-cancer-classifier"
NAMESPACE = "verify-test"
CLIENT_ACCOUNT = f"{RELEASE}-client"  # the chart's client ServiceAccount for this release


@functools.cache
def render(*helm_args: str) -> dict[str, list[dict]]:
    """The chart's objects by kind, as `helm template` renders them."""
    out = subprocess.run(
        [require_tool("helm"), "template", RELEASE, CHART, "--namespace", NAMESPACE, *helm_args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    by_kind: dict[str, list[dict]] = {}
    for doc in yaml.safe_load_all(out):
        if doc:
            by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """The chart's default objects by kind."""
    return render()


def only(rendered: dict[str, list[dict]], kind: str) -> dict:
    (obj,) = rendered[kind]
    return copy.deepcopy(obj)


@pytest.fixture
def hpa(rendered):
    return only(rendered, "HorizontalPodAutoscaler")


@pytest.fixture
def pdb(rendered):
    return only(rendered, "PodDisruptionBudget")


@pytest.fixture
def deployment(rendered, hpa):
    """The rendered Deployment as the API reports it after a finished rollout at the HPA's minimum."""
    deployment = only(rendered, "Deployment")
    replicas = hpa["spec"]["minReplicas"]
    deployment["metadata"]["generation"] = 3
    deployment["spec"]["replicas"] = replicas  # the chart leaves it to the HPA
    deployment["status"] = {
        "observedGeneration": 3,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
    }
    return deployment


def pod_of(deployment: dict, name: str, ready: bool = True) -> dict:
    template = deployment["spec"]["template"]
    return {
        "metadata": {"name": name, "labels": {**template["metadata"]["labels"], "pod-template-hash": "5d4f"}},
        "spec": template["spec"],
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def with_env_of(deployment: dict, *helm_args: str) -> dict:
    """The fixture's Deployment (status included) with the env the chart renders for helm_args."""
    (rendered,) = render(*helm_args)["Deployment"]
    changed = copy.deepcopy(deployment)
    changed["spec"]["template"]["spec"]["containers"][0]["env"] = rendered["spec"]["template"]["spec"][
        "containers"
    ][0]["env"]
    return changed


def test_rendered_release_passes_every_check(deployment, hpa, pdb):
    assert verify.rollout_status(deployment, hpa)[0]
    assert verify.hpa_problems(hpa, deployment) == []
    assert verify.pdb_problems(pdb, deployment) == []
    pods = [pod_of(deployment, f"{RELEASE}-5d4f-{i}") for i in range(deployment["spec"]["replicas"])]
    assert verify.pod_problems(pods) == []
    contract = runtime_contract()
    assert verify.http_port(deployment, contract["portName"]) == contract["port"]


def test_checks_read_the_shape_the_api_client_returns(deployment, hpa, pdb):
    """The live path feeds the checks the client's models serialized back to JSON: same keys."""
    api = client.ApiClient()
    models = {"V1Deployment": deployment, "V2HorizontalPodAutoscaler": hpa, "V1PodDisruptionBudget": pdb}
    for model, obj in models.items():
        parsed = api.deserialize(json.dumps(obj), model, "application/json")
        assert api.sanitize_for_serialization(parsed) == obj


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"metadata": {"generation": 4}}, "observe generation 4"),
        ({"status": {"updatedReplicas": 1}}, "1 of 2 replicas updated"),
        ({"status": {"replicas": 3}}, "1 old replicas pending termination"),
        ({"status": {"availableReplicas": 1}}, "1 of 2 updated replicas available"),
        # A fresh install: one replica, before the HPA raises it to minReplicas.
        (
            {
                "spec": {"replicas": 1},
                "status": {"replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
            },
            "waiting for the HPA to scale from 1 to minReplicas 2",
        ),
    ],
)
def test_unfinished_rollouts_keep_waiting(deployment, hpa, change, expected):
    for section, fields in change.items():
        deployment[section].update(fields)
    done, message = verify.rollout_status(deployment, hpa)
    assert not done
    assert expected in message


def test_a_rollout_past_its_deadline_fails_at_once(deployment):
    deployment["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "slow"}
    ]
    with pytest.raises(verify.VerificationError, match="slow"):
        verify.rollout_status(deployment)


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "another-deployment"), ("kind", "StatefulSet"), ("apiVersion", "apps/v1beta1")],
)
def test_an_hpa_aimed_elsewhere_is_reported(deployment, hpa, field, value):
    hpa["spec"]["scaleTargetRef"][field] = value
    (problem,) = verify.hpa_problems(hpa, deployment)
    assert value in problem


def test_a_pdb_that_selects_other_pods_is_reported(deployment, pdb):
    pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] = "another-release"
    (problem,) = verify.pdb_problems(pdb, deployment)
    assert "does not match the pod labels" in problem


def test_a_pdb_without_selector_is_reported(deployment, pdb):
    pdb["spec"]["selector"] = {}
    assert verify.pdb_problems(pdb, deployment) == [f"PDB {pdb['metadata']['name']} has no selector"]


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ({"matchLabels": {"app": "a"}}, True),
        ({"matchLabels": {"app": "b"}}, False),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, False),
        ({"matchLabels": {"app": "a"}, "matchExpressions": [{"key": "tier", "operator": "Exists"}]}, False),
    ],
)
def test_label_selectors_follow_kubernetes_semantics(selector, matches):
    assert verify.selector_matches(selector, {"app": "a"}) is matches


def test_pods_that_are_not_ready_are_reported_with_the_reason(deployment):
    crashing = pod_of(deployment, "crashing", ready=False)
    crashing["status"]["containerStatuses"] = [
        {"name": "breast-cancer-classifier", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
    ]
    leaving = pod_of(deployment, "leaving", ready=False)
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    problems = verify.pod_problems([pod_of(deployment, "fine"), crashing, leaving])
    assert problems == ["pod crashing is not Ready (Running; breast-cancer-classifier: CrashLoopBackOff)"]
    assert verify.pod_problems([leaving]) == ["no running pods match the deployment's selector"]


def event(pod: str, message: str, at: str, reason: str = "Unhealthy", **timestamps: str) -> dict:
    """A core/v1 Event about a pod, as the API serializes it."""
    return {
        "involvedObject": {"kind": "Pod", "name": pod},
        "reason": reason,
        "type": "Warning",
        "message": message,
        "lastTimestamp": at,
        **timestamps,
    }


READINESS_503 = "Readiness probe failed: HTTP probe failed with statuscode: 503"
MODEL_MISSING = "model breast_cancer:abc not found in the BentoML model store under /home/bentoml/bento"


def log_lines(*entries: dict | str) -> str:
    return "\n".join(entry if isinstance(entry, str) else json.dumps(entry) for entry in entries)


def test_the_last_readiness_failure_of_the_pod_is_named():
    events = [
        event("p", READINESS_503, "2026-01-01T00:00:09Z"),
        event("p", "Readiness probe failed: Get ...: context deadline exceeded", "2026-01-01T00:00:05Z"),
        event("p", "Liveness probe failed: HTTP probe failed with statuscode: 500", "2026-01-01T00:00:30Z"),
        event("other", "Readiness probe failed: connection refused", "2026-01-01T00:00:40Z"),
        event("p", "Started container", "2026-01-01T00:00:50Z", reason="Started"),
    ]
    assert verify.last_probe_failure(events, "p") == READINESS_503
    # Newer API servers report repeats in series.lastObservedTime, with eventTime instead of lastTimestamp.
    repeated = event("p", "Readiness probe failed: HTTP probe failed with statuscode: 500", None)
    repeated |= {
        "eventTime": "2026-01-01T00:00:01.000001Z",
        "series": {"lastObservedTime": "2026-01-01T00:01:00Z"},
    }
    assert verify.last_probe_failure([*events, repeated], "p") == repeated["message"]
    assert verify.last_probe_failure(events[2:3], "p").startswith("Liveness")  # no readiness failure
    assert verify.last_probe_failure(events, "nobody") is None


def test_the_last_error_line_of_the_service_log_is_named():
    log = log_lines(
        "[INFO] [cli] Starting production HTTP BentoServer",  # not JSON
        {"level": "ERROR", "message": "an earlier problem", "logger": "bento.service"},
        {"level": "ERROR", "message": MODEL_MISSING, "logger": "bento.service"},
        {"level": "INFO", "message": "Started server process", "logger": "uvicorn.error"},
        '{"level": "ERROR", "message": "truncat',
    )
    assert verify.last_error(log) == MODEL_MISSING
    assert verify.last_error(log_lines({"level": "INFO", "message": "ready"})) is None
    assert verify.last_error("") is None


def test_unready_pods_are_reported_with_the_probe_and_the_service_reason(deployment):
    pods = [pod_of(deployment, "stuck", ready=False), pod_of(deployment, "fine")]
    events = [event("stuck", READINESS_503, "2026-01-01T00:00:09Z")]
    logs = {"stuck": log_lines({"level": "ERROR", "message": MODEL_MISSING})}
    assert verify.pod_problems(pods, events, logs) == [
        f"pod stuck is not Ready (Running); probe: {READINESS_503}; service log: {MODEL_MISSING}"
    ]


def test_a_deployment_without_the_named_port_is_reported(deployment):
    with pytest.raises(verify.VerificationError, match="no container port named 'grpc'"):
        verify.http_port(deployment, "grpc")


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [
        (200, json.dumps({"diagnosis": MALIGNANT_LABEL, "probability_malignant": 0.99}), None),
        (200, json.dumps({"diagnosis": BENIGN_LABEL}), "diagnosed a known malignant row as 'benign'"),
        (500, "Internal Server Error", "answered HTTP 500"),
        (200, "<html>", "without a diagnosis"),
        (200, json.dumps(["malignant"]), "without a diagnosis"),
    ],
)
def test_answers_are_checked(status, body, problem):
    found = verify.answer_problem(MALIGNANT_LABEL, status, body)
    assert found == problem if problem is None else problem in found


@pytest.mark.parametrize(
    ("expected", "status", "body", "problem", "served"),
    [
        (None, 200, json.dumps({"tag": "breast_cancer:abc"}), None, "breast_cancer:abc"),
        ("breast_cancer:abc", 200, json.dumps({"tag": "breast_cancer:abc"}), None, "breast_cancer:abc"),
        (
            "breast_cancer:abc",
            200,
            json.dumps({"tag": "breast_cancer:old"}),
            "serves model breast_cancer:old, not the release's breast_cancer:abc (MODEL_TAG)",
            "breast_cancer:old",
        ),
        # `latest` and a bare name are resolved by the service: only the name can be compared.
        ("breast_cancer:latest", 200, json.dumps({"tag": "breast_cancer:abc"}), None, "breast_cancer:abc"),
        ("breast_cancer", 200, json.dumps({"tag": "breast_cancer:abc"}), None, "breast_cancer:abc"),
        (
            "breast_cancer:latest",
            200,
            json.dumps({"tag": "other:abc"}),
            "serves model other:abc",
            "other:abc",
        ),
        ("breast_cancer:abc", 503, '{"error": "model not loaded"}', "/model answered HTTP 503", None),
        (None, 200, json.dumps({"name": "breast_cancer"}), "/model answered without a tag", None),
        (None, 200, "<html>", "/model answered without a tag", None),
    ],
)
def test_the_served_model_is_checked(expected, status, body, problem, served):
    found, tag = verify.model_problem(expected, status, body)
    assert tag == served
    assert found == problem if problem is None else found.startswith(problem)


def test_the_release_model_is_the_deployment_model_tag(deployment):
    assert verify.expected_model_tag(deployment) is None  # the chart's default leaves it to the image
    (with_tag,) = render("--set", "modelTag=breast_cancer:abc123")["Deployment"]
    assert verify.expected_model_tag(with_tag) == "breast_cancer:abc123"


@pytest.mark.slow
@pytest.mark.parametrize(("expected", "row"), verify.EXAMPLES, ids=[label for label, _ in verify.EXAMPLES])
def test_the_real_service_diagnoses_the_known_rows(server, expected, row):
    """The verifier's request and answer check against `bentoml serve`, over a plain TCP socket:
    the same code path as through a port-forward stream."""
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        status, body = verify.request(sock, "POST", "/predict", row)
    assert verify.answer_problem(expected, status, body) is None


@pytest.mark.slow
def test_the_real_service_names_its_model(server):
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        answer = verify.request(sock, "GET", "/model")
    problem, served = verify.model_problem(None, *answer)
    assert problem is None and served.startswith("breast_cancer:")
    assert verify.model_problem(served, *answer) == (None, served)
    assert verify.model_problem("breast_cancer:0000000000000000", *answer)[0].startswith(
        f"serves model {served}"
    )


def test_without_a_cluster_it_exits_1_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert verify.main(["--release", RELEASE, "--namespace", "prod"]) == 1
    err = capsys.readouterr().err
    assert f"verify: FAILED: release {RELEASE} in prod: ConfigException" in err


def env_of(deployment: dict) -> dict[str, str]:
    return {v["name"]: v.get("value") for v in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


class FakeCluster:
    """Just the API surface verify() uses, answering with rendered objects. Its pods check tokens as
    the service does with the Deployment's AUTH_* settings: 401 without a token or for another
    audience, 403 for an account the route group's allow-list does not name."""

    def __init__(
        self,
        deployment: dict,
        hpa: dict | None,
        pdb: dict | None,
        diagnose=None,
        served_tag: str = "breast_cancer:abc123",
        pods: list[dict] | None = None,
        events: list[dict] = (),
        logs: dict[str, str] | None = None,
        enforces_auth: bool = True,
    ):
        self.namespace = NAMESPACE
        self._deployment, self._by_call = deployment, {"hpa": hpa, "pdb": pdb}
        self.enforces_auth = enforces_auth
        self.tokens_issued: list[tuple[str, str]] = []
        self.autoscaling = type("Api", (), {"list_namespaced_horizontal_pod_autoscaler": "hpa"})()
        self.policy = type("Api", (), {"list_namespaced_pod_disruption_budget": "pdb"})()
        self.diagnose = diagnose or (lambda row: MALIGNANT_LABEL if row["radius_mean"] > 15 else BENIGN_LABEL)
        self.served_tag = served_tag
        self._pods = pods
        self._events, self._logs = list(events), logs or {}
        self.requests: list[tuple[str, str, str, str | None]] = []

    def client_account(self) -> str:
        return CLIENT_ACCOUNT

    def token(self, account: str, audience: str) -> str:
        self.tokens_issued.append((account, audience))
        return json.dumps({"sub": f"{self.namespace}/{account}", "aud": audience})

    def auth_status(self, path: str, token: str | None) -> int | None:
        """The service's answer to the token, or None when it lets the request through."""
        env = env_of(self._deployment)
        if not self.enforces_auth or env.get("AUTH_ENABLED") != "true":
            return None
        if token is None or json.loads(token)["aud"] != env["AUTH_AUDIENCE"]:
            return 401
        group = "AUTH_ALLOW_MODEL_DATA" if path == "/model" else "AUTH_ALLOW_DIAGNOSIS"
        caller = json.loads(token)["sub"]
        allowed = env[group].split(",")
        return None if caller in allowed or f"{caller.split('/')[0]}/*" in allowed else 403

    def deployment(self) -> dict:
        return self._deployment

    def optional(self, list_call, kind: str) -> dict | None:
        return self._by_call[list_call]

    def pods(self, deployment: dict) -> list[dict]:
        if self._pods is not None:
            return self._pods
        return [pod_of(deployment, f"{RELEASE}-5d4f-{i}") for i in range(deployment["spec"]["replicas"])]

    def events(self, pod: str) -> list[dict]:
        return [e for e in self._events if e["involvedObject"]["name"] == pod]

    def log(self, pod: dict) -> str:
        return self._logs.get(pod["metadata"]["name"], "")

    def request(
        self,
        pod: str,
        port: int,
        method: str,
        path: str,
        payload: dict | None = None,
        token: str | None = None,
    ) -> tuple[int, str]:
        self.requests.append((pod, method, path, token))
        if status := self.auth_status(path, token):
            return status, json.dumps({"error": "unauthorized" if status == 401 else "forbidden"})
        if (method, path) == ("GET", "/model"):
            return 200, json.dumps({"tag": self.served_tag})
        assert (method, path) == ("POST", "/predict"), (method, path)
        return 200, json.dumps({"diagnosis": self.diagnose(payload)})


@pytest.mark.parametrize("with_hpa_and_pdb", [True, False], ids=["default values", "autoscaling and PDB off"])
def test_verify_runs_every_check_on_a_release(deployment, hpa, pdb, capsys, with_hpa_and_pdb):
    cluster = FakeCluster(deployment, hpa if with_hpa_and_pdb else None, pdb if with_hpa_and_pdb else None)
    assert verify.verify(cluster, timeout=1, poll=0) == deployment["metadata"]["name"]
    out = capsys.readouterr().out
    assert ("the HPA and the PDB target" in out) is with_hpa_and_pdb
    replicas = deployment["spec"]["replicas"]
    assert out.count("diagnosed the known malignant and benign rows correctly") == replicas
    # The chart's default sets no MODEL_TAG: the served model is reported, not compared.
    assert out.count("serves model breast_cancer:abc123 (the Deployment sets no MODEL_TAG") == replicas
    port = verify.http_port(deployment)
    assert {(method, path) for _, method, path, _ in cluster.requests} == {
        ("GET", "/model"),
        ("POST", "/predict"),
    }
    assert port == runtime_contract()["port"]


def test_verify_fails_on_a_wrong_answer(deployment, hpa, pdb):
    cluster = FakeCluster(deployment, hpa, pdb, diagnose=lambda row: BENIGN_LABEL)
    with pytest.raises(verify.VerificationError, match="malignant"):
        verify.verify(cluster, timeout=1, poll=0)


def test_verify_fails_when_a_pod_serves_another_model(deployment, hpa, pdb):
    deployment = with_env_of(deployment, "--set", "modelTag=breast_cancer:abc123")
    cluster = FakeCluster(deployment, hpa, pdb, served_tag="breast_cancer:0ld")
    message = f"pod {RELEASE}-5d4f-0: serves model breast_cancer:0ld, not the release's breast_cancer:abc123"
    with pytest.raises(verify.VerificationError, match=re.escape(message)):
        verify.verify(cluster, timeout=1, poll=0)
    assert verify.verify(FakeCluster(deployment, hpa, pdb), timeout=1, poll=0)


def never_ready(deployment: dict) -> tuple[dict, list[dict]]:
    """The Deployment and pods of a release whose pods never become Ready (the model is missing)."""
    deployment["status"]["availableReplicas"] = 0
    deployment["status"]["readyReplicas"] = 0
    pods = [
        pod_of(deployment, f"{RELEASE}-5d4f-{i}", ready=False) for i in range(deployment["spec"]["replicas"])
    ]
    return deployment, pods


def test_pods_that_never_become_ready_fail_with_the_reason(deployment, hpa, pdb):
    deployment, pods = never_ready(deployment)
    name = pods[0]["metadata"]["name"]
    events = [event(name, READINESS_503, "2026-01-01T00:00:09Z")]
    logs = {
        name: log_lines(
            {"level": "INFO", "message": "starting"}, {"level": "ERROR", "message": MODEL_MISSING}
        )
    }
    cluster = FakeCluster(deployment, hpa, pdb, pods=pods, events=events, logs=logs)
    with pytest.raises(verify.VerificationError) as failure:
        verify.verify(cluster, timeout=0, poll=0)
    message = str(failure.value)
    assert message.startswith("rollout did not finish within 0s: ")
    assert (
        f"pod {name} is not Ready (Running); probe: {READINESS_503}; service log: {MODEL_MISSING}" in message
    )
    assert f"pod {pods[1]['metadata']['name']} is not Ready (Running)" in message  # no events, no log
    assert not cluster.requests  # nothing is sent to pods that are not ready


def test_a_rollout_past_its_deadline_names_why_the_pods_are_not_ready(deployment, hpa, pdb):
    deployment, pods = never_ready(deployment)
    deployment["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "slow"}
    ]
    name = pods[0]["metadata"]["name"]
    logs = {name: log_lines({"level": "ERROR", "message": MODEL_MISSING})}
    cluster = FakeCluster(deployment, hpa, pdb, pods=pods, logs=logs)
    with pytest.raises(
        verify.VerificationError,
        match=re.escape(f"slow; pod {name} is not Ready (Running); service log: {MODEL_MISSING}"),
    ):
        verify.verify(cluster, timeout=60, poll=0)


# --- Tokens -----------------------------------------------------------------------------------------


def test_the_audience_is_the_one_the_chart_renders(deployment):
    assert verify.auth_audience(deployment) == RELEASE  # the Service's name
    (custom,) = render("--set", "auth.audience=classifier.example.com")["Deployment"]
    assert verify.auth_audience(custom) == "classifier.example.com"
    (off,) = render("--set", "auth.enabled=false")["Deployment"]
    assert verify.auth_audience(off) is None


def test_verify_calls_with_tokens_and_checks_that_calls_without_one_are_refused(deployment, hpa, pdb, capsys):
    cluster = FakeCluster(deployment, hpa, pdb)
    verify.verify(cluster, timeout=1, poll=0)
    out = capsys.readouterr().out
    replicas = deployment["spec"]["replicas"]
    assert f"calling as ServiceAccount {NAMESPACE}/{CLIENT_ACCOUNT} with tokens for audience {RELEASE}" in out
    assert out.count("refuses a call without a token (401)") == replicas
    assert set(cluster.tokens_issued) == {(CLIENT_ACCOUNT, RELEASE)}
    # Per pod: one POST /predict without a token, then /model and both rows with one.
    unauthenticated = [(method, path) for _, method, path, token in cluster.requests if token is None]
    assert unauthenticated == [("POST", "/predict")] * replicas
    assert sum(token is not None for *_, token in cluster.requests) == 3 * replicas


def test_verify_calls_as_the_account_it_is_given(deployment, hpa, pdb):
    cluster = FakeCluster(deployment, hpa, pdb)
    verify.verify(cluster, timeout=1, poll=0, service_account="ops")
    assert set(cluster.tokens_issued) == {("ops", RELEASE)}


def test_without_auth_verify_sends_no_token(deployment, hpa, pdb, capsys):
    deployment = with_env_of(deployment, "--set", "auth.enabled=false")
    cluster = FakeCluster(deployment, hpa, pdb)
    verify.verify(cluster, timeout=1, poll=0)
    assert not cluster.tokens_issued
    assert all(token is None for *_, token in cluster.requests)
    assert "without a token" not in capsys.readouterr().out


def test_verify_fails_when_a_pod_answers_without_a_token(deployment, hpa, pdb):
    cluster = FakeCluster(deployment, hpa, pdb, enforces_auth=False)
    with pytest.raises(verify.VerificationError, match="without a token answered HTTP 200, not 401"):
        verify.verify(cluster, timeout=1, poll=0)


def test_a_caller_that_is_not_allowed_is_named_with_the_value_to_change(deployment, hpa, pdb):
    deployment = with_env_of(
        deployment,
        "--set",
        f"auth.allowReleaseNamespace=false,auth.allow.diagnosis={{{NAMESPACE}/{CLIENT_ACCOUNT}}}",
    )
    cluster = FakeCluster(deployment, hpa, pdb)
    message = f"GET /model: {NAMESPACE}/{CLIENT_ACCOUNT} may not call it (HTTP 403): allow it in auth.allow.modelData"
    with pytest.raises(verify.VerificationError, match=re.escape(message)):
        verify.verify(cluster, timeout=1, poll=0)


def test_a_token_for_another_audience_is_reported(deployment, hpa, pdb):
    deployment = with_env_of(deployment, "--set", "auth.audience=elsewhere")
    cluster = FakeCluster(deployment, hpa, pdb)
    cluster.token = lambda account, audience: json.dumps({"sub": f"{NAMESPACE}/{account}", "aud": "other"})
    with pytest.raises(
        verify.VerificationError, match="refused the token of .* for audience elsewhere \\(HTTP 401\\)"
    ):
        verify.verify(cluster, timeout=1, poll=0)


def test_the_client_account_is_the_one_labelled_for_the_release():
    accounts = render()["ServiceAccount"]
    clients = [a for a in accounts if a["metadata"]["labels"].get("app.kubernetes.io/component") == "client"]
    assert verify.client_account(clients, "s") == CLIENT_ACCOUNT
    with pytest.raises(verify.VerificationError, match="found none .* pass --service-account"):
        verify.client_account([], "s")


def test_requests_carry_the_token_as_a_bearer_header():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(
                (self.headers.get("Authorization"), self.rfile.read(int(self.headers["Content-Length"])))
            )
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for token in ("abc.def.ghi", None):
            with socket.create_connection(server.server_address, timeout=10) as sock:
                assert verify.request(sock, "POST", "/predict", {"a": 1}, token=token) == (200, "{}")
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("Bearer abc.def.ghi", b'{"a": 1}'), (None, b'{"a": 1}')]


def test_tokens_come_from_the_token_request_api_and_are_reused_until_near_their_end(monkeypatch):
    """Cluster.token on a stand-in for the client's CoreV1Api, answering with the client's models."""
    requests = []

    class Core:
        def create_namespaced_service_account_token(self, name, namespace, body):
            requests.append((name, namespace, body.spec.audiences, body.spec.expiration_seconds))
            expires = datetime.now(UTC) + timedelta(seconds=body.spec.expiration_seconds)
            status = client.V1TokenRequestStatus(token=f"token-{len(requests)}", expiration_timestamp=expires)
            return client.AuthenticationV1TokenRequest(spec=body.spec, status=status)

    cluster = verify.Cluster.__new__(verify.Cluster)  # no kubeconfig here
    cluster.namespace, cluster.core, cluster._tokens = NAMESPACE, Core(), {}
    now = [1000.0]
    monkeypatch.setattr(verify.time, "monotonic", lambda: now[0])
    assert cluster.token("caller", "aud") == cluster.token("caller", "aud") == "token-1"
    assert requests == [("caller", NAMESPACE, ["aud"], verify.TOKEN_SECONDS)]
    assert cluster.token("caller", "other") == "token-2"  # one per audience
    now[0] += verify.TOKEN_SECONDS - verify.TOKEN_MARGIN_SECONDS + 1
    assert cluster.token("caller", "aud") == "token-3"  # renewed before it expires
