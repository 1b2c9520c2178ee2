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
    kinds = [doc["kind"] for doc in docs]
    assert len(kinds) == len(set(kinds)), f"one object per kind expected: {kinds}"
    return {doc["kind"]: doc for doc in docs}


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


def test_manifests_live_in_the_documented_namespace():
    header = MANIFESTS.read_text().split("\n---", 1)[0]
    assert "kubectl create namespace breast-cancer-classifier" in header
    for doc in load(MANIFESTS) + load(CLIENT_JOB):
        assert doc["metadata"]["namespace"] == "breast-cancer-classifier", doc["metadata"]["name"]


def test_plain_manifests_hold_the_service_and_no_helm_test():
    kinds = by_kind(load(MANIFESTS))
    assert set(kinds) == {
        "Deployment",
        "Service",
        "ServiceAccount",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }


def test_client_job_calls_the_service_by_dns_and_checks_the_answer():
    service_side = by_kind(load(MANIFESTS))
    client = by_kind(load(CLIENT_JOB))
    service, deployment, job = service_side["Service"], service_side["Deployment"], client["Job"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {var["name"]: var["value"] for var in container["env"]}
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert env["SERVICE_URL"] == f"http://{name}.{namespace}.svc:{service['spec']['ports'][0]['port']}"
    # The service image has python3; no other image can be assumed in the cluster.
    assert container["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    (volume,) = pod["volumes"]
    config_map = client["ConfigMap"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert container["command"] == ["python3", "/smoke-test/smoke_test.py"]
    # The script tests/charts/test_chart_files.py runs against a fake service.
    script = REPO / "charts" / "breast-cancer-classifier" / "files" / "smoke_test.py"
    assert config_map["data"]["smoke_test.py"] == script.read_text()
    assert job["spec"]["backoffLimit"] == 0
    assert pod["restartPolicy"] == "Never"


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_k8s_files_validate_strictly(version):
    for doc in load(MANIFESTS) + load(CLIENT_JOB):
        kubernetes_validate.validate(doc, version, strict=True)


def test_kind_config():
    config = yaml.safe_load((K8S / "kind-config.yaml").read_text())
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    assert [node["role"] for node in config["nodes"]].count("control-plane") == 1
