"""scripts/e2e-kind.sh and its load generator. The script needs a kind cluster, which only GitHub's
runners have, so here it is shellchecked and run dry: in a copy of the repository's layout, with
kind, docker, kubectl, helm, make, curl and the venv's python replaced by fakes that record every call
(tests/workflows/e2e_fakes.py), it must run its steps in order and pass, and fail naming the step
when the cluster misbehaves. The load generator (k8s/load_test.py) runs against local servers that
misbehave on purpose, and k8s/load-job.yaml is checked against Pod Security "restricted"."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from harness.paths import CHART
from harness.paths import REPO_ROOT as ROOT
from harness.servers import free_port
from tests.conftest import require_tool
from tests.workflows.test_ci import BIN, E2E_SCRIPT, load

FAKES = Path(__file__).with_name("e2e_fakes.py")
LOAD_JOB = ROOT / "k8s" / "load-job.yaml"
LOAD_TEST = ROOT / "k8s" / "load_test.py"
MANIFESTS = ROOT / "k8s" / "manifests" / "breast-cancer-classifier.yaml"


def rendered(kind: str) -> dict:
    """The one object of `kind` in the plain manifests: the chart rendered for the e2e's release."""
    (found,) = [doc for doc in yaml.safe_load_all(MANIFESTS.read_text()) if doc and doc["kind"] == kind]
    return found


def service_env() -> dict[str, str]:
    container = rendered("Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {var["name"]: var.get("value") for var in container["env"]}


# --- The script as a whole ------------------------------------------------------------------------


def test_shellcheck_passes_on_the_script_and_ci_run():
    for path in (E2E_SCRIPT, ROOT / ".ci" / "run"):
        result = subprocess.run(
            [BIN / "shellcheck", "--external-sources", path],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_would_catch_a_mistake(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/\n")
    result = subprocess.run([BIN / "shellcheck", bad], check=False, capture_output=True, text=True)
    assert result.returncode == 1 and "SC2086" in result.stdout


def test_the_workflow_runs_the_script_after_the_cluster_and_the_tools():
    e2e = load(ROOT / ".github" / "workflows" / "ci.yml")["jobs"]["e2e"]
    steps = [step.get("run", step.get("uses", "")).strip() for step in e2e["steps"]]
    tools = steps.index("make tools")
    kind = next(i for i, step in enumerate(steps) if step.startswith("helm/kind-action@"))
    script_step = steps.index("bash scripts/e2e-kind.sh")
    assert tools < script_step and kind < script_step


# --- The dry run ------------------------------------------------------------------------------------


@dataclass
class DryRun:
    returncode: int
    output: str
    calls: list[dict]

    def index(self, predicate: Callable[[dict], bool], start: int = 0) -> int:
        """The index of the first call at or after start for which predicate holds."""
        found = [i for i, call in enumerate(self.calls) if i >= start and predicate(call)]
        assert found, f"no such call after #{start}:\n" + "\n".join(map(describe, self.calls[start:]))
        return found[0]

    def all(self, predicate: Callable[[dict], bool]) -> list[dict]:
        return [call for call in self.calls if predicate(call)]


def describe(call: dict) -> str:
    return " ".join([call["program"], *call["args"]])


def runs(program: str, *words: str) -> Callable[[dict], bool]:
    """A call of program whose arguments include each of words (a word ending in = is a prefix)."""

    def holds(call: dict) -> bool:
        return call["program"] == program and all(
            any(arg.startswith(word) if word.endswith("=") else arg == word for arg in call["args"])
            for word in words
        )

    return holds


def applied(call: dict) -> list[dict]:
    """The objects a `kubectl apply` call sent."""
    return [doc for doc in yaml.safe_load_all(call.get("applied") or "") if doc]


def applies(kind: str, name_suffix: str = "") -> Callable[[dict], bool]:
    """A `kubectl apply` that sent an object of this kind whose name ends so."""
    return lambda call: any(
        doc["kind"] == kind and doc["metadata"]["name"].endswith(name_suffix) for doc in applied(call)
    )


def dry_run(tmp_path: Path, **knobs: str) -> DryRun:
    """scripts/e2e-kind.sh run in a copy of the repository's layout, against the fakes."""
    require_tool("jq", "the e2e script uses it (Debian package jq)")
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(E2E_SCRIPT, repo / "scripts")
    shutil.copytree(ROOT / "k8s", repo / "k8s", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(CHART, repo / CHART.relative_to(ROOT))
    bins = {
        "bin": ["kind", "docker", "kubectl", "make", "curl"],
        ".venv/bin": ["python"],
        ".tools/bin": ["helm"],
    }
    for directory, programs in bins.items():
        (repo / directory).mkdir(parents=True)
        for program in programs:
            stub = repo / directory / program
            stub.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKES}" {program} "$@"\n')
            stub.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    env = {
        "PATH": f"{repo / 'bin'}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "FAKE_STATE": str(state),
        "FAKE_AUDIENCE": service_env()["AUTH_AUDIENCE"],
        **knobs,
    }
    result = subprocess.run(
        ["bash", repo / "scripts" / "e2e-kind.sh"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    calls_file = state / "calls.jsonl"
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()] if calls_file.exists() else []
    return DryRun(result.returncode, result.stdout + result.stderr, calls)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> DryRun:
    run = dry_run(tmp_path_factory.mktemp("e2e"))
    assert run.returncode == 0, run.output
    return run


RELEASE = NAMESPACE = "breast-cancer-classifier"
MODEL_A, MODEL_B = "breast_cancer:aaaaaaaaaaaaaaaa", "breast_cancer:bbbbbbbbbbbbbbbb"


def test_the_dry_run_passes_through_every_step_in_order(clean_run):
    run = clean_run
    assert "e2e-kind: OK" in run.output
    image_a = run.index(runs("make", "image"))
    loaded_a = run.index(runs("kind", "load", "docker-image"), image_a)
    namespace = run.index(applies("Namespace"))
    install = run.index(runs("helm", "upgrade", "--install", f"modelTag={MODEL_A}"), namespace)
    helm_test = run.index(runs("helm", "test", RELEASE), install)
    predict = run.index(
        lambda call: call["program"] == "curl" and call["args"][-1].endswith("/predict"), helm_test
    )
    client_job = run.index(runs("kubectl", "apply", "k8s/client-job.yaml"), predict)
    verify_a = run.index(runs("python", "k8s.verify"), client_job)
    train = run.index(runs("make", "train"), verify_a)
    image_b = run.index(runs("make", "image"), train)
    loaded_b = run.index(runs("kind", "load", "docker-image"), image_b)
    load_job = run.index(applies("Job", "-load"), loaded_b)
    upgrade = run.index(runs("helm", "upgrade", f"modelTag={MODEL_B}"), load_job)
    verify_b = run.index(runs("python", "k8s.verify"), upgrade)
    rollback = run.index(runs("helm", "rollback", RELEASE, "1"), verify_b)
    verify_a_again = run.index(runs("python", "k8s.verify"), rollback)
    uninstall = run.index(runs("helm", "uninstall", RELEASE), verify_a_again)
    assert image_a < loaded_a < namespace < install < helm_test < predict < client_job < verify_a < train
    assert train < image_b < loaded_b < load_job < upgrade < verify_b < rollback < verify_a_again < uninstall
    # Installs and upgrades wait for the rollout and roll back on failure; the upgrade keeps the install.
    for call in run.all(runs("helm", "upgrade")):
        assert {"--wait", "--rollback-on-failure", "--namespace"} <= set(call["args"]), describe(call)
    assert "--install" not in run.calls[upgrade]["args"]
    # Every k8s.verify call passes the release and the namespace.
    for call in run.all(runs("python", "k8s.verify")):
        args = call["args"]
        assert (
            args[args.index("--release") + 1] == RELEASE and args[args.index("--namespace") + 1] == NAMESPACE
        )


def test_model_b_is_built_into_its_own_image_record(clean_run):
    builds = clean_run.all(runs("make", "image"))
    assert len(builds) == 2
    loads = [call["args"] for call in clean_run.all(runs("kind", "load", "docker-image"))]
    images = [arg for args in loads for arg in args if arg.startswith("breast-cancer-classifier:")]
    # Image A (under its own name and the chart's appVersion, which k8s/client-job.yaml uses), then B.
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert images == [
        f"breast-cancer-classifier:{MODEL_A[14:22]}",
        f"breast-cancer-classifier:{app_version}",
        f"breast-cancer-classifier:{MODEL_B[14:22]}",
    ]


def test_the_namespace_enforces_restricted_before_anything_lands_in_it(clean_run):
    ((namespace,),) = [applied(call) for call in clean_run.all(applies("Namespace"))]
    assert namespace["metadata"]["name"] == NAMESPACE
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "latest"
    first_write = min(i for i, call in enumerate(clean_run.calls) if call.get("write"))
    assert applies("Namespace")(clean_run.calls[first_write])
    assert not clean_run.all(runs("helm", "--create-namespace"))


def test_calls_present_tokens_and_refusals_are_checked(clean_run):
    """The port-forwarded calls present a token of an account of the namespace, for the audience the
    chart renders; the script also makes sure a call without a token gets 401 and one as an account of
    another namespace 403 (the fake service answers as the chart's defaults configure the real one)."""
    predicts = clean_run.all(lambda call: call["program"] == "curl" and call["args"][-1].endswith("/predict"))
    assert len(predicts) == 3
    tokens = [call["args"] for call in clean_run.all(runs("kubectl", "create", "token"))]
    audience = service_env()["AUTH_AUDIENCE"]
    assert all(args[args.index("--audience") + 1] == audience for args in tokens)
    callers = {
        (call["namespace"], call["args"][call["args"].index("serviceaccount") + 1])
        for call in clean_run.all(runs("kubectl", "create", "serviceaccount"))
    }
    outsider = next(namespace for namespace, _ in callers if namespace != NAMESPACE)
    created = {
        (call["namespace"], call["args"][call["args"].index("token") + 1])
        for call in clean_run.all(runs("kubectl", "create", "token"))
    }
    assert created == callers and len(callers) == 2
    assert "answered 401, as expected" in clean_run.output and "answered 403, as expected" in clean_run.output
    # The other namespace goes at the end.
    assert clean_run.all(runs("kubectl", "delete", "namespace", outsider))


def test_the_load_job_runs_the_tested_image_with_the_configmap_and_a_token(clean_run):
    (configmap,) = clean_run.all(runs("kubectl", "create", "configmap"))
    files = [arg.split("=", 1)[1] for arg in configmap["args"] if arg.startswith("--from-file=")]
    ((job,),) = [applied(call) for call in clean_run.all(applies("Job", "-load"))]
    assert job["metadata"]["namespace"] == NAMESPACE
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"breast-cancer-classifier:{MODEL_A[14:22]}"  # image A, never pulled
    assert container["imagePullPolicy"] == "Never"
    # The ConfigMap the script creates is the one mounted; its keys are the files the Job runs and reads.
    (mounted,) = [volume for volume in pod["volumes"] if "configMap" in volume]
    assert mounted["configMap"]["name"] == configmap["args"][configmap["args"].index("configmap") + 1]
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == mounted["name"])
    env = {var["name"]: var["value"] for var in container["env"]}
    keys = {Path(path).name for path in files}
    assert container["command"] == ["python3", f"{mount}/load_test.py"] and "load_test.py" in keys
    assert Path(env["EXAMPLE_FILE"]).name in keys and Path(env["EXAMPLE_FILE"]).parent == Path(mount)
    # It calls the release's Service, as an account the script created in the namespace, with a
    # projected token for the audience the chart renders.
    service = rendered("Service")
    (api,) = [port["port"] for port in service["spec"]["ports"] if port["name"] == "http"]
    assert env["SERVICE_URL"] == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{api}"
    created = [
        call["args"]
        for call in clean_run.all(runs("kubectl", "create", "serviceaccount"))
        if call["namespace"] == NAMESPACE
    ]
    assert [args[args.index("serviceaccount") + 1] for args in created] == [pod["serviceAccountName"]]
    (projected,) = [volume for volume in pod["volumes"] if "projected" in volume]
    (source,) = projected["projected"]["sources"]
    token_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == projected["name"])
    assert source["serviceAccountToken"]["audience"] == service_env()["AUTH_AUDIENCE"]
    assert env["TOKEN_FILE"] == f"{token_mount}/{source['serviceAccountToken']['path']}"
    # The load must outlast the rollout: the Job's deadline covers the readiness wait and the run.
    assert job["spec"]["activeDeadlineSeconds"] > float(env["DURATION_SECONDS"]) + float(
        env["READY_TIMEOUT_SECONDS"]
    )


def test_the_uninstall_check_covers_every_kind_the_release_creates(clean_run):
    resources = {
        "Deployment": "all",
        "Service": "all",
        "HorizontalPodAutoscaler": "hpa",
        "Pod": "all",
        "PodDisruptionBudget": "pdb",
        "ServiceAccount": "serviceaccounts",
        "ConfigMap": "configmaps",
        "NetworkPolicy": "networkpolicies",
        "Job": "jobs",
        "Ingress": "ingresses",
    }
    (check,) = clean_run.all(
        lambda call: runs("kubectl", "get", "--selector")(call) and "all," in " ".join(call["args"])
    )
    listed = set(next(arg for arg in check["args"] if arg.startswith("all,")).split(","))
    selector = check["args"][check["args"].index("--selector") + 1]
    result = subprocess.run(
        [require_tool("helm"), "template", RELEASE, CHART, "--namespace", NAMESPACE],
        capture_output=True,
        text=True,
        check=True,
    )
    for doc in filter(None, yaml.safe_load_all(result.stdout)):
        key, value = selector.split("=")
        assert doc["metadata"]["labels"][key] == value, doc["metadata"]["name"]
        assert resources[doc["kind"]] in listed, doc["kind"]


def test_the_service_pod_selector_selects_the_deployments_pods_only(clean_run):
    deployment = rendered("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    smoke_labels = yaml.safe_load_all((ROOT / "k8s" / "client-job.yaml").read_text())
    (job,) = [doc for doc in smoke_labels if doc and doc["kind"] == "Job"]
    selectors = {
        call["args"][call["args"].index("--selector") + 1]
        for call in clean_run.all(runs("kubectl", "get", "deployment"))
    }
    selectors |= {
        call["args"][call["args"].index("--selector") + 1]
        for call in clean_run.all(runs("kubectl", "get", "pods"))
    }
    assert selectors
    for selector in selectors:
        wanted = dict(item.split("=") for item in selector.split(","))
        assert wanted.items() <= pod_labels.items()
        assert not wanted.items() <= job["spec"]["template"]["metadata"]["labels"].items()


# (knobs, the message the script must fail with)
FAILURES = {
    "another cluster": ({"FAKE_CONTEXT": "prod"}, "the current kubectl context is 'prod', not kind-"),
    "helm test fails": ({"FAKE_FAIL": "helm test"}, "FAILED during: 3. helm test"),
    "the service takes calls without a token": ({"FAKE_OPEN_SERVICE": "1"}, "answered 200, not 401"),
    "training saves no new model": ({"FAKE_SAME_MODEL": "1"}, "saved no new model"),
    "a pod serves another model": (
        {"FAKE_SERVED_MODEL": "breast_cancer:0ld"},
        f"k8s.verify passed but reported no pod serving {MODEL_A}",
    ),
}


@pytest.mark.parametrize(("knobs", "message"), FAILURES.values(), ids=FAILURES.keys())
def test_the_script_fails_naming_the_step_and_dumps_diagnostics(tmp_path, knobs, message):
    run = dry_run(tmp_path, **knobs)
    assert run.returncode != 0
    assert message in run.output, run.output
    assert "e2e-kind: FAILED during: " in run.output
    if knobs.get("FAKE_CONTEXT"):  # refused before touching anything
        assert not run.all(
            lambda call: call["program"] in ("helm", "make", "kind") and "get" not in call["args"]
        )
        return
    for diagnostic in (
        runs("kubectl", "describe", "pods"),
        runs("kubectl", "get", "events"),
        runs("helm", "history"),
    ):
        assert run.all(diagnostic)


@pytest.mark.slow
def test_every_write_to_the_namespace_fails_on_an_admission_warning(clean_run, tmp_path):
    """Pod Security's warn mode reports through a warning what enforce would refuse: the n-th write
    printing one must stop the script there, for every n."""
    writes = [call for call in clean_run.calls if call.get("write")]
    assert (
        len(writes) >= 8
    )  # namespace, account, install, test, client Job, ConfigMap, load Job, upgrade, rollback
    for n, call in enumerate(writes, 1):
        run = dry_run(tmp_path / str(n), FAKE_WARN_AT=str(n))
        assert run.returncode != 0 and "the API server warned during" in run.output, describe(call)
        assert max(call.get("write", 0) for call in run.calls) == n  # stopped there


@pytest.mark.parametrize(
    ("warning", "warned"),
    [
        # kubectl
        ('Warning: would violate PodSecurity "restricted:latest": runAsNonRoot != true', True),
        # helm through client-go's klog, older and newer formats
        ('W0612 10:00:00.000000    1234 warnings.go:70] would violate PodSecurity "restricted:latest"', True),
        ('I0612 10:00:00.000000    1234 warnings.go:110] "Warning: autoscaling/v2beta2 is deprecated"', True),
        # helm test --logs prints the answer of /predict, whose `warnings` field is not a warning
        ('ok: POST /predict -> {"diagnosis": "malignant", "warnings": []}', False),
    ],
)
def test_admission_warnings_are_told_from_ordinary_output(tmp_path, warning, warned):
    run = dry_run(tmp_path, FAKE_WARN_AT="3", FAKE_WARNING=warning)  # the third write: helm install
    assert (run.returncode != 0) is warned, run.output
    assert warning in run.output  # shown, not swallowed
    assert ("the API server warned during 'helm upgrade --install" in run.output) is warned


# --- k8s/load-job.yaml --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def load_job() -> dict:
    return yaml.safe_load(LOAD_JOB.read_text())


def test_the_load_job_passes_pod_security_restricted(load_job):
    pod = load_job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    # restricted allows configMap and projected volumes, no hostPath
    assert all({"configMap", "projected"} & set(volume) for volume in pod["volumes"])
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
    assert security["readOnlyRootFilesystem"] is True and security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert "ports" not in container
    assert set(container["resources"]) == {"requests", "limits"}
    kubernetes_validate.validate(load_job, "1.29.0", strict=True)


def test_kubectl_sets_the_load_jobs_image_offline():
    kubectl = require_tool("kubectl", "it ships with the machine image and GitHub's runners")
    result = subprocess.run(
        [
            kubectl,
            "set",
            "image",
            "--local",
            "-f",
            LOAD_JOB,
            "load=breast-cancer-classifier:abc",
            "-o",
            "yaml",
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    job = yaml.safe_load(result.stdout)
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "breast-cancer-classifier:abc"


# --- k8s/load_test.py against local servers ---------------------------------------------------------


def answer(tag: str = "breast_cancer:a", diagnosis: str = "malignant") -> bytes:
    return json.dumps({"diagnosis": diagnosis, "model_tag": tag}).encode()


@contextmanager
def server(behave: Callable[[BaseHTTPRequestHandler, int], None]) -> Iterator[str]:
    """An HTTP/1.1 keep-alive server whose POST handler is behave(handler, request number)."""
    count = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):  # /readyz
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                count[0] += 1
                number = count[0]
            behave(self, number)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def reply(handler: BaseHTTPRequestHandler, body: bytes, status: int = 200, close: bool = False) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    if close:
        handler.send_header("Connection", "close")  # what a draining pod answers
    handler.end_headers()
    handler.wfile.write(body)


def run_load(url: str, tmp_path: Path, seconds: float = 1.5, **extra_env: str) -> tuple[int, dict, str]:
    example = tmp_path / "row.json"
    example.write_text('{"radius_mean": 17.99}')
    env = {
        **os.environ,
        "SERVICE_URL": url,
        "EXAMPLE_FILE": str(example),
        "DURATION_SECONDS": str(seconds),
        "CONNECTIONS": "4",
        "PROGRESS_SECONDS": "0.5",
        "READY_TIMEOUT_SECONDS": "5",
        "TIMEOUT_SECONDS": "2",
        **extra_env,
    }
    # As the Job runs it: the file on its own, with nothing of the repository importable.
    result = subprocess.run(
        [sys.executable, "-I", LOAD_TEST],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    (summary,) = [
        line[len("summary: ") :] for line in result.stdout.splitlines() if line.startswith("summary: ")
    ]
    return result.returncode, json.loads(summary), result.stdout + result.stderr


def test_load_counts_a_model_change_and_reconnects_after_connection_close_without_error(tmp_path):
    def drain_and_switch(handler, number):
        # The first model, then a drain (every answer closes its connection), then the second model.
        reply(
            handler,
            answer("breast_cancer:a" if number <= 50 else "breast_cancer:b"),
            close=20 < number <= 80,
        )

    with server(drain_and_switch) as url:
        status, summary, output = run_load(url, tmp_path)
    assert status == 0, output
    assert summary["requests"] == summary["ok"] > 80
    assert summary["errors"] == {} and summary["non_2xx"] == 0 and summary["wrong_answers"] == 0
    assert summary["closed_by_server"] == 60  # requests 21 to 80
    assert summary["connects"] == 4 + 60  # one per connection, then one after each close
    assert set(summary["models"]) == {"breast_cancer:a", "breast_cancer:b"}
    assert "load: running: 4 keep-alive connections" in output and "load: OK" in output


def test_load_fails_on_a_connection_closed_without_an_answer(tmp_path):
    def hang_up(handler, number):
        if number % 50 == 0:
            handler.close_connection = True  # read the request, answer nothing: a lost race
            return
        reply(handler, answer())

    with server(hang_up) as url:
        status, summary, output = run_load(url, tmp_path)
    assert status == 1, output
    assert summary["errors"].get("remote_disconnected", 0) > 0
    assert "load: FAILED" in output


def test_load_fails_on_a_connection_reset(tmp_path):
    def reset(handler, number):
        if number % 50 == 0:
            # SO_LINGER 0: close() sends a TCP RST, as a killed process's socket does.
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.connection.close()
            handler.close_connection = True
            return
        reply(handler, answer())

    with server(reset) as url:
        status, summary, output = run_load(url, tmp_path)
    assert status == 1, output
    assert summary["errors"].get("reset", 0) + summary["errors"].get("remote_disconnected", 0) > 0


def busy(handler, number):
    if number % 7 == 0:
        reply(handler, b'{"error": "busy"}', status=503)
    else:
        reply(handler, answer())


def wrong(handler, number):
    reply(handler, answer(diagnosis="benign" if number % 7 == 0 else "malignant"))


@pytest.mark.parametrize(
    ("behave", "field"), [(busy, "non_2xx"), (wrong, "wrong_answers")], ids=["503", "wrong"]
)
def test_load_fails_on_a_non_2xx_or_a_wrong_answer(tmp_path, behave, field):
    with server(behave) as url:
        status, summary, output = run_load(url, tmp_path, seconds=1)
    assert status == 1, output
    assert summary[field] > 0 and summary["errors"] == {}


def test_load_fails_when_the_service_never_gets_ready(tmp_path):
    port = free_port()  # a port nothing listens on
    example = tmp_path / "row.json"
    example.write_text("{}")
    env = {
        **os.environ,
        "SERVICE_URL": f"http://127.0.0.1:{port}",
        "EXAMPLE_FILE": str(example),
        "READY_TIMEOUT_SECONDS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-I", LOAD_TEST], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "did not answer 200" in result.stdout
    assert "load: running" not in result.stdout


def test_load_presents_the_token_file_as_it_is_at_each_request(tmp_path):
    """The kubelet replaces a projected token before it expires: every request reads the file anew."""
    token_file = tmp_path / "token"
    token_file.write_text("first")
    received: dict[int, str | None] = {}

    def rotate_after_20(handler, number):
        received[number] = handler.headers.get("Authorization")
        if number == 20:
            token_file.write_text("second")
        reply(handler, answer())

    with server(rotate_after_20) as url:
        status, _, output = run_load(url, tmp_path, seconds=1, TOKEN_FILE=str(token_file))
    assert status == 0, output
    seen = [received[number] for number in sorted(received)]
    assert seen[:20] == ["Bearer first"] * 20
    assert set(seen[24:]) == {"Bearer second"}  # the 4 connections may have read it just before
    assert len(seen) > 30


def test_load_fails_on_a_refused_token(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("expired")

    def refuse(handler, number):
        reply(handler, b'{"error": "unauthorized"}', status=401)

    with server(refuse) as url:
        status, summary, output = run_load(url, tmp_path, seconds=0.5, TOKEN_FILE=str(token_file))
    assert status == 1 and summary["statuses"].get("401", 0) == summary["requests"] > 0, output
