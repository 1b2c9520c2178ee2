"""scripts/e2e-kind.sh and its load generator. The script needs a kind cluster, which only GitHub's
runners have, so here it is shellchecked, its steps are checked in order, its warning filter and
the load generator (k8s/load_test.py, against local servers that misbehave on purpose) are run, and
k8s/load-job.yaml is checked against Pod Security "restricted" and the names the script uses."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from harness.paths import CHART, chart_values
from harness.paths import REPO_ROOT as ROOT
from harness.servers import free_port
from tests.conftest import require_tool
from tests.workflows.test_ci import BIN, E2E_SCRIPT, commands, e2e_script, load, script_constant

LOAD_JOB = ROOT / "k8s" / "load-job.yaml"
LOAD_TEST = ROOT / "k8s" / "load_test.py"
TEXT = E2E_SCRIPT.read_text()
LINES = [line.strip() for line in e2e_script().splitlines()]


def line_index(predicate: Callable[[str], bool], start: int = 0) -> int:
    """The index of the first line at or after start for which predicate holds."""
    return next(i for i, line in enumerate(LINES) if i >= start and predicate(line))


def starts(prefix: str) -> Callable[[str], bool]:
    return lambda line: line.startswith(prefix)


def function(name: str) -> str:
    """The text of a shell function defined in the script."""
    (body,) = re.findall(rf"(?ms)^{name}\(\) {{\n.*?^}}\n", TEXT)
    return body


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
    # No step of the recipe is left in the workflow: it has one home, the script.
    workflow = "\n".join(steps)
    for command in ("helm upgrade", "helm test", "kubectl apply", "k8s.verify", "kind load"):
        assert command not in workflow, command


def test_the_script_fails_fast_and_dumps_diagnostics_on_failure():
    assert "set -euo pipefail" in TEXT
    assert re.search(r"(?m)^trap on_exit EXIT$", TEXT)
    on_exit, diagnostics = function("on_exit"), function("diagnostics")
    assert "diagnostics" in on_exit and "current_step" in on_exit
    for needed in (
        "get all,hpa,pdb,jobs",
        "describe pods",
        "get events --sort-by=.lastTimestamp",
        'logs --selector "$INSTANCE" --all-containers --prefix',
        'logs --selector "app.kubernetes.io/name=$LOAD_JOB"',
        "helm history",
    ):
        assert needed in diagnostics, needed
    # It refuses any cluster but the e2e kind cluster: it deletes a namespace and uninstalls.
    assert '[[ $context == "kind-$KIND_CLUSTER" ]]' in TEXT


def test_the_e2e_docs_call_the_script_and_do_not_repeat_the_recipe():
    docs = (ROOT / "docs" / "ci-cd.md").read_text()
    assert "bash scripts/e2e-kind.sh" in docs or "make e2e" in docs
    assert "helm upgrade --install breast-cancer-classifier" not in docs
    assert re.search(r"(?m)^e2e: tools\n\tbash scripts/e2e-kind.sh$", (ROOT / "Makefile").read_text())


# --- Step 2: Pod Security restricted ----------------------------------------------------------------


def test_the_namespace_enforces_audits_and_warns_restricted():
    (manifest,) = re.findall(r"(?ms)^admitted kubectl apply -f - <<EOF\n(.*?)^EOF$", TEXT)
    namespace = yaml.safe_load(manifest.replace("$NAMESPACE", script_constant("NAMESPACE")))
    assert namespace["kind"] == "Namespace" and namespace["metadata"]["name"] == "breast-cancer-classifier"
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "latest"
    # Created before anything else lands in it, and never by helm's --create-namespace (no labels).
    created = line_index(starts("admitted kubectl apply -f - <<EOF"))
    assert created < line_index(starts("admitted helm upgrade --install"))
    assert "--create-namespace" not in TEXT


def test_every_command_that_writes_to_the_namespace_fails_on_admission_warnings():
    writes = re.compile(r"^(helm (upgrade|test|rollback)|kubectl (--namespace \S+ )?(apply|create))\b")
    for line in LINES:
        assert not writes.match(line), f"not checked for admission warnings: {line}"
    wrapped = [line for line in LINES if line.startswith("admitted ")]
    assert len(wrapped) == 8, (
        wrapped
    )  # namespace, install, test, client Job, ConfigMap, load Job, upgrade, rollback


@pytest.mark.parametrize(
    ("output", "warned"),
    [
        # kubectl
        ('Warning: would violate PodSecurity "restricted:latest": runAsNonRoot != true', True),
        # helm through client-go's klog, older and newer formats
        ('W0612 10:00:00.000000    1234 warnings.go:70] would violate PodSecurity "restricted:latest"', True),
        ('I0612 10:00:00.000000    1234 warnings.go:110] "Warning: autoscaling/v2beta2 is deprecated"', True),
        # helm test --logs prints the answer of /predict, whose `warnings` field is not a warning
        (
            'ok: POST /predict -> {"diagnosis": "malignant", "warnings": []}\nRelease "x" has been upgraded.',
            False,
        ),
    ],
)
def test_admitted_rejects_warnings_and_passes_clean_output(tmp_path, output, warned):
    # The warning comes on the command's stderr, as kubectl and helm print it.
    command = f'sh -c \'printf "%s\\n" "$0" >&2\' {shlex.quote(output)}'
    program = f"set -euo pipefail\nscratch={tmp_path}\n{function('die')}{function('admitted')}admitted {command}\necho after\n"
    result = subprocess.run(["bash", "-c", program], check=False, capture_output=True, text=True)
    assert (result.returncode != 0) == warned, result.stdout + result.stderr
    assert ("after" in result.stdout) != warned
    assert output in result.stdout  # shown, not swallowed


def test_admitted_fails_when_the_command_fails(tmp_path):
    program = f"set -euo pipefail\nscratch={tmp_path}\n{function('die')}{function('admitted')}admitted false\necho after\n"
    result = subprocess.run(["bash", "-c", program], check=False, capture_output=True, text=True)
    assert result.returncode != 0 and "after" not in result.stdout


# --- Steps 3 to 7, in order -------------------------------------------------------------------------


def test_install_then_tests_then_verify_model_a():
    install = line_index(starts("admitted helm upgrade --install"))
    revision = line_index(starts("revision_a=$(helm status"), install)
    helm_test = line_index(starts("admitted helm test"), install)
    forward = line_index(lambda line: "port-forward" in line and line.startswith("kubectl"), helm_test)
    client = line_index(
        starts('admitted kubectl apply --namespace "$NAMESPACE" -f k8s/client-job.yaml'), forward
    )
    client_done = line_index(starts('wait_for_job "$CLIENT_JOB"'), client)
    verify_a = line_index(starts('verify_serves "$MODEL_TAG_A"'), client_done)
    assert install < revision < helm_test < forward < client < client_done < verify_a
    assert any("jq -e '.diagnosis == \"malignant\"'" in line for line in LINES[forward:client])


def test_verify_serves_checks_the_deployments_model_then_runs_the_verifier():
    body = function("verify_serves")
    assert 'env[?(@.name=="MODEL_TAG")].value' in body
    assert '[[ $deployed == "$expected" ]] || die' in body
    assert [args[:2] for args in commands(body, ".venv/bin/python")] == [["-m", "k8s.verify"]]
    assert 'grep -F "serves model $expected"' in body


def test_model_b_is_another_model_in_another_image():
    train = line_index(starts('make train SEED="$SEED_B"'))
    tag = line_index(
        starts("MODEL_TAG_B=$(MODEL_TAG=breast_cancer:latest .venv/bin/python -m training.image model-tag)")
    )
    differs = line_index(starts('[[ $MODEL_TAG_B != "$MODEL_TAG_A" ]] || die'), tag)
    build = line_index(starts('MODEL_TAG="$MODEL_TAG_B" IMAGE_INFO_FILE="$RECORD_B" make image'), differs)
    load_b = line_index(starts('kind load docker-image "$IMAGE_B"'), build)
    assert train < tag < differs < build < load_b
    assert script_constant("SEED_B") != "42"  # the Makefile's default seed, model A's in CI


def test_the_upgrade_to_b_runs_under_load_and_the_load_must_see_no_error():
    configmap = line_index(starts('admitted kubectl --namespace "$NAMESPACE" create configmap "$LOAD_JOB"'))
    job = line_index(
        starts('admitted kubectl apply --namespace "$NAMESPACE" -f "$scratch/load-job.yaml"'), configmap
    )
    running = line_index(starts('wait_for_log "$LOAD_JOB" "load: running"'), job)
    upgrade = line_index(starts('admitted helm upgrade "$RELEASE"'), running)
    old_pods_gone = line_index(lambda line: "old pods" in line and "die" in line, upgrade)
    still_active = line_index(lambda line: "{.status.active}" in line, old_pods_gone)
    done = line_index(starts('wait_for_job "$LOAD_JOB"'), still_active)
    both_models = line_index(lambda line: "has($a) and has($b)" in line, done)
    verify_b = line_index(starts('verify_serves "$MODEL_TAG_B"'), both_models)
    assert configmap < job < running < upgrade < old_pods_gone < still_active < done < both_models < verify_b
    assert 'image.tag="$IMAGE_TAG_B"' in LINES[upgrade] and 'modelTag="$MODEL_TAG_B"' in LINES[upgrade]
    # The ConfigMap carries the script and the chart's example row, under the names the Job mounts.
    assert "--from-file=k8s/load_test.py" in LINES[configmap]
    assert '--from-file="$CHART/files/malignant-example.json"' in LINES[configmap]


def test_rollback_to_the_first_revision_then_verify_model_a():
    rollback = line_index(starts('admitted helm rollback "$RELEASE" "$revision_a"'))
    assert "--wait" in LINES[rollback].split()
    history = line_index(starts('helm history "$RELEASE"'), rollback)
    verify_a = line_index(starts('verify_serves "$MODEL_TAG_A"'), rollback)
    assert rollback < history < verify_a < line_index(starts("helm uninstall"))


def test_uninstall_must_leave_nothing_labelled_with_the_release():
    client_deleted = line_index(starts('kubectl --namespace "$NAMESPACE" delete -f k8s/client-job.yaml'))
    load_deleted = line_index(starts('kubectl --namespace "$NAMESPACE" delete "job/$LOAD_JOB"'))
    uninstall = line_index(starts('helm uninstall "$RELEASE"'))
    check = line_index(lambda line: '--selector "$INSTANCE" -o name' in line, uninstall)
    assert client_deleted < uninstall and load_deleted < uninstall < check
    kinds = set(re.search(r"get\s+(\S+)\s+--selector \"\$INSTANCE\"", LINES[check])[1].split(","))
    assert {"all", "configmaps", "jobs", "pdb", "hpa", "serviceaccounts"} <= kinds
    assert script_constant("INSTANCE") == '"app.kubernetes.io/instance=$RELEASE"'
    assert any('"owner=helm,name=$RELEASE"' in line for line in LINES[check:])


def test_the_service_pod_selector_is_the_deployments():
    manifests = yaml.safe_load_all((ROOT / "k8s" / "manifests" / "breast-cancer-classifier.yaml").read_text())
    (deployment,) = [doc for doc in manifests if doc and doc["kind"] == "Deployment"]
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    expected = (
        script_constant("SERVICE_PODS").strip('"').replace("$INSTANCE", "app.kubernetes.io/instance=$RELEASE")
    )
    assert expected.replace("$RELEASE", script_constant("RELEASE")) == selector


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
    assert all("configMap" in volume for volume in pod["volumes"])  # restricted allows no hostPath
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
    assert security["readOnlyRootFilesystem"] is True and security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert "ports" not in container
    assert set(container["resources"]) == {"requests", "limits"}


def test_the_load_job_matches_the_script_the_service_and_the_configmap(load_job):
    values = chart_values()
    metadata = load_job["metadata"]
    assert metadata["name"] == script_constant("LOAD_JOB")
    assert metadata["namespace"] == script_constant("NAMESPACE")
    # Not part of the release: the uninstall check looks for the release's instance label.
    assert "app.kubernetes.io/instance" not in metadata["labels"]
    assert "app.kubernetes.io/instance" not in load_job["spec"]["template"]["metadata"]["labels"]
    assert metadata["labels"]["app.kubernetes.io/name"] == script_constant(
        "LOAD_JOB"
    )  # the diagnostics' selector
    assert load_job["spec"]["backoffLimit"] == 0

    pod = load_job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert re.search(rf'set image --local -f k8s/load-job.yaml {container["name"]}="\$IMAGE_A"', TEXT)
    assert container["imagePullPolicy"] == "Never"  # kind has it loaded; a pull could only fail
    env = {item["name"]: item["value"] for item in container["env"]}
    # The Service of release RELEASE (its full name, since the release name contains the chart's).
    release, namespace = script_constant("RELEASE"), script_constant("NAMESPACE")
    assert env["SERVICE_URL"] == f"http://{release}.{namespace}.svc:{values['service']['port']}"
    assert env["CONNECTIONS"] == "8"
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == script_constant("LOAD_JOB") and mount["name"] == volume["name"]
    # The ConfigMap's keys are the file names the script passes with --from-file.
    assert container["command"] == ["python3", f"{mount['mountPath']}/{LOAD_TEST.name}"]
    assert env["EXAMPLE_FILE"] == f"{mount['mountPath']}/malignant-example.json"
    assert (CHART / "files" / "malignant-example.json").is_file()
    # The load must outlast the rollout: the Job's deadline covers the readiness wait and the run.
    assert load_job["spec"]["activeDeadlineSeconds"] > float(env["DURATION_SECONDS"]) + float(
        env["READY_TIMEOUT_SECONDS"]
    )
    assert f'wait_for_job "$LOAD_JOB" {load_job["spec"]["activeDeadlineSeconds"]}' in TEXT


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


def run_load(url: str, tmp_path: Path, seconds: float = 1.5) -> tuple[int, dict, str]:
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
