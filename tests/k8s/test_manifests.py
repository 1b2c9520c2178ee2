"""k8s/: the plain manifests and client Job stay what the chart renders, and fit together."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from harness.paths import REPO_ROOT as REPO
from tests.conftest import require_tool

K8S = REPO / "k8s"
MANIFESTS = K8S / "manifests" / "breast-cancer-classifier.yaml"
CLIENT_JOB = K8S / "client-job.yaml"
# Every file scripts/render-manifests.sh writes.
GENERATED = (
    "k8s/manifests/breast-cancer-classifier.yaml",
    "k8s/client-job.yaml",
    "charts/breast-cancer-classifier/files/malignant-example.json",
    "charts/breast-cancer-classifier/values.schema.json",
    "charts/breast-cancer-classifier/README.md",
)


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    """The objects by kind, for files that hold one object of each kind."""
    kinds = [doc["kind"] for doc in docs]
    assert len(kinds) == len(set(kinds)), f"one object per kind expected: {kinds}"
    return {doc["kind"]: doc for doc in docs}


def named(docs: list[dict], kind: str, name: str) -> dict:
    (found,) = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def service_side() -> dict[str, dict]:
    """The plain manifests' Service and Deployment."""
    docs = load(MANIFESTS)
    (service,) = [doc for doc in docs if doc["kind"] == "Service"]
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    return {"Service": service, "Deployment": deployment}


@pytest.fixture(scope="module")
def fresh_render(tmp_path_factory) -> Path:
    """Every generated file, regenerated into a temporary copy of the repository's layout."""
    require_tool("helm")
    require_tool("readme-generator")
    out = tmp_path_factory.mktemp("render")
    result = subprocess.run(
        ["bash", REPO / "scripts" / "render-manifests.sh", out], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("name", GENERATED)
def test_generated_file_is_current(fresh_render, name):
    assert filecmp.cmp(REPO / name, fresh_render / name, shallow=False), (
        f"{name} is out of date: run `bash scripts/render-manifests.sh`"
    )


def test_manifests_live_in_one_namespace():
    for doc in load(MANIFESTS) + load(CLIENT_JOB):
        assert doc["metadata"]["namespace"] == "breast-cancer-classifier", doc["metadata"]["name"]


def test_plain_manifests_hold_the_service_and_no_helm_test():
    kinds = sorted(doc["kind"] for doc in load(MANIFESTS))
    assert kinds == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",  # the pods'
        "ServiceAccount",  # the clients' (the client Job runs as it)
    ]


def test_client_job_calls_the_service_by_dns_and_checks_the_answer():
    client = by_kind(load(CLIENT_JOB))
    service, deployment, job = service_side()["Service"], service_side()["Deployment"], client["Job"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {var["name"]: var["value"] for var in container["env"]}
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert env["SERVICE_URL"] == f"http://{name}.{namespace}.svc:{service['spec']['ports'][0]['port']}"
    # The service image has python3; no other image can be assumed in the cluster.
    assert container["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    (volume,) = [volume for volume in pod["volumes"] if "configMap" in volume]
    config_map = client["ConfigMap"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert container["command"] == ["python3", "/smoke-test/smoke_test.py"]
    # The script tests/charts/test_chart_files.py runs against a fake service.
    script = REPO / "charts" / "breast-cancer-classifier" / "files" / "smoke_test.py"
    assert config_map["data"]["smoke_test.py"] == script.read_text()
    assert job["spec"]["backoffLimit"] == 0
    assert pod["restartPolicy"] == "Never"


def test_client_job_presents_a_token_of_the_release_client_account_for_the_service_audience():
    """The Job runs as the client ServiceAccount of the plain manifests, which the service allows to
    diagnose, and its projected token is bound to the audience the service requires."""
    deployment = service_side()["Deployment"]
    service_env = {
        var["name"]: var.get("value")
        for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    client = by_kind(load(CLIENT_JOB))
    pod = client["Job"]["spec"]["template"]["spec"]
    account = named(load(MANIFESTS), "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    token_file = {var["name"]: var["value"] for var in container["env"]}["TOKEN_FILE"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    (projected,) = [volume for volume in pod["volumes"] if "projected" in volume]
    (source,) = projected["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert f"{mounts[projected['name']]}/{token['path']}" == token_file
    assert token["audience"] == service_env["AUTH_AUDIENCE"]
    namespace = account["metadata"]["namespace"]
    allowed = service_env["AUTH_ALLOW_DIAGNOSIS"].split(",")
    assert f"{namespace}/{pod['serviceAccountName']}" in allowed or f"{namespace}/*" in allowed


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_k8s_files_validate_strictly(version):
    for doc in load(MANIFESTS) + load(CLIENT_JOB):
        kubernetes_validate.validate(doc, version, strict=True)


def test_kind_config():
    config = yaml.safe_load((K8S / "kind-config.yaml").read_text())
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    assert [node["role"] for node in config["nodes"]].count("control-plane") == 1
