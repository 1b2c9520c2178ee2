"""The rollout verifier's checks, run on objects rendered from the chart (there is no cluster here).

The live path (API polling, port-forward) runs in the workflow's e2e and deploy jobs; here every
check gets the Deployment, HPA and PDB that `helm template` renders, plus the status and pods a
cluster would report, built from that same Deployment.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import socket
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client

from harness.paths import CHART, runtime_contract
from k8s import verify
from tests.conftest import require_tool
from wdbc import BENIGN_LABEL, MALIGNANT_LABEL

RELEASE = "breast-cancer-classifier"


@functools.cache
def render(*helm_args: str) -> dict[str, list[dict]]:
    """The chart's objects by kind, as `helm template` renders them."""
    out = subprocess.run(
        [require_tool("helm"), "template", RELEASE, CHART, "--namespace", "verify-test", *helm_args],
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
    with pytest.raises(verify.VerificationError, match="no container port named 'metrics'"):
        verify.http_port(deployment, "metrics")


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


class FakeCluster:
    """Just the API surface verify() uses, answering with rendered objects."""

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
    ):
        self._deployment, self._by_call = deployment, {"hpa": hpa, "pdb": pdb}
        self.autoscaling = type("Api", (), {"list_namespaced_horizontal_pod_autoscaler": "hpa"})()
        self.policy = type("Api", (), {"list_namespaced_pod_disruption_budget": "pdb"})()
        self.diagnose = diagnose or (lambda row: MALIGNANT_LABEL if row["radius_mean"] > 15 else BENIGN_LABEL)
        self.served_tag = served_tag
        self._pods = pods
        self._events, self._logs = list(events), logs or {}
        self.requests: list[tuple[str, str, str]] = []

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
        self, pod: str, port: int, method: str, path: str, payload: dict | None = None
    ) -> tuple[int, str]:
        self.requests.append((pod, method, path))
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
    assert {(method, path) for _, method, path in cluster.requests} == {
        ("GET", "/model"),
        ("POST", "/predict"),
    }
    assert port == runtime_contract()["port"]


def test_verify_fails_on_a_wrong_answer(deployment, hpa, pdb):
    cluster = FakeCluster(deployment, hpa, pdb, diagnose=lambda row: BENIGN_LABEL)
    with pytest.raises(verify.VerificationError, match="malignant"):
        verify.verify(cluster, timeout=1, poll=0)


def with_model_tag(deployment: dict, tag: str) -> dict:
    """The fixture's Deployment (status included) with the env the chart renders for modelTag=tag."""
    (rendered,) = render("--set", f"modelTag={tag}")["Deployment"]
    changed = copy.deepcopy(deployment)
    changed["spec"]["template"]["spec"]["containers"][0]["env"] = rendered["spec"]["template"]["spec"][
        "containers"
    ][0]["env"]
    return changed


def test_verify_fails_when_a_pod_serves_another_model(deployment, hpa, pdb):
    deployment = with_model_tag(deployment, "breast_cancer:abc123")
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
