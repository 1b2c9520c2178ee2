"""Keeps .github/workflows honest: the workflow cannot run here, so it is linted and checked against
the repository it builds, tests, publishes and deploys."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.paths import REPO_ROOT as ROOT
from k8s import verify

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
CI = ROOT / ".github" / "workflows" / "ci.yml"
BIN = Path(sys.executable).parent  # actionlint and shellcheck come from requirements/dev.txt
PUSH_TO_MAIN = "github.event_name == 'push' && github.ref == 'refs/heads/main'"
# Actions allowed without a full commit SHA (none today; add with a reason).
UNPINNED_EXCEPTIONS: dict[str, str] = {}


def load(path: Path) -> dict:
    workflow = yaml.safe_load(path.read_text())
    workflow["on"] = workflow.pop(True)  # YAML 1.1 reads the `on:` key as True
    return workflow


@pytest.fixture(scope="module")
def ci() -> dict:
    return load(CI)


@pytest.fixture(scope="module")
def jobs(ci) -> dict:
    return ci["jobs"]


def script(job: dict) -> str:
    """A job's shell, with line continuations joined so each command is one line."""
    return "\n".join(step.get("run", "") for step in job["steps"]).replace("\\\n", " ")


def commands(text: str, program: str) -> list[list[str]]:
    """The argument lists of every `program ...` command line in text."""
    lines = [line for line in text.splitlines() if line.split()[:1] == [program]]
    return [shlex.split(line, comments=True)[1:] for line in lines]


def run_actionlint(*paths: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [BIN / "actionlint", "-verbose", *paths],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_actionlint_and_shellcheck_pass():
    assert CI in WORKFLOWS
    result = run_actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr
    # Without shellcheck on PATH actionlint silently skips the run: scripts; make sure it ran.
    assert 'Rule "shellcheck" was disabled' not in result.stderr


def test_actionlint_catches_shell_and_expression_mistakes(tmp_path):
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - run: echo $HOME\n      - run: echo ${{ github.nonexistent }}\n"
    )
    result = run_actionlint(bad, cwd=tmp_path)
    assert result.returncode == 1
    assert "SC2086" in result.stdout and "nonexistent" in result.stdout


def test_triggers(ci):
    assert ci["on"]["push"] == {"branches": ["main"]}
    assert ci["on"]["pull_request"] == {"branches": ["main"]}
    assert "workflow_dispatch" in ci["on"]
    # pull_request_target runs fork code with the repository's secrets.
    assert all("pull_request_target" not in load(path)["on"] for path in WORKFLOWS)


def test_the_test_job_runs_make_test_with_the_ci_system_packages(ci, jobs):
    test = jobs["test"]
    assert any(step.get("run", "").strip() == "make test" for step in test["steps"])
    setup = next(step for step in test["steps"] if step.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["python-version"] == "${{ env.PYTHON_VERSION }}"
    assert ci["env"]["PYTHON_VERSION"] == "3.11"

    def apt_packages(text: str) -> set[str]:
        installs = [line for line in commands(text, "apt-get") + commands(text, "sudo") if "install" in line]
        (args,) = [line[line.index("install") + 1 :] for line in installs]
        return {arg for arg in args if not arg.startswith("-") and not arg.startswith(">")}

    ci_run = (ROOT / ".ci" / "run").read_text().replace("\\\n", " ")
    # GitHub's runners have Docker: they need .ci/run's packages except the podman stack, whose runc
    # conflicts with Docker's containerd packages.
    podman_stack = {"podman", "buildah", "runc", "netavark", "aardvark-dns", "iptables", "debootstrap"}
    runner_packages = apt_packages(script(test))
    assert runner_packages <= apt_packages(ci_run) and "wrk" in runner_packages
    assert not runner_packages & podman_stack


def test_dependency_caches_are_keyed_on_the_lock_files(jobs):
    steps = [step for job in jobs.values() for step in job["steps"]]
    caches = [step for step in steps if step.get("uses", "").startswith("actions/cache@")]
    assert caches
    for step in caches:
        assert step["with"]["path"] == "~/.cache/uv"
        assert "hashFiles('requirements/*.txt')" in step["with"]["key"]


def test_publish_and_deploy_run_only_on_pushes_to_main_after_the_tests(jobs):
    assert jobs["publish"]["if"] == PUSH_TO_MAIN
    assert jobs["deploy"]["if"] == PUSH_TO_MAIN
    assert sorted(jobs["publish"]["needs"]) == ["e2e", "test"]
    assert jobs["deploy"]["needs"] == "publish"
    uploads = [step for step in jobs["e2e"]["steps"] if "upload-artifact" in step.get("uses", "")]
    assert uploads and all(step["if"] == PUSH_TO_MAIN for step in uploads)


def test_jobs_that_run_on_pull_requests_see_no_secrets(jobs):
    for name in ("test", "e2e"):
        assert "secrets." not in yaml.safe_dump(jobs[name]), name


def test_every_job_has_a_timeout():
    for path in WORKFLOWS:
        for name, job in load(path)["jobs"].items():
            timeout = job.get("timeout-minutes")
            assert isinstance(timeout, int) and 0 < timeout <= 90, (path, name)


def test_actions_are_pinned_to_full_commit_shas():
    pins: dict[str, set[str]] = {}
    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            match = re.match(r"\s*(?:- )?uses:\s*(\S+)(.*)", line)
            if not match or match[1].startswith("./"):
                continue
            action, _, ref = match[1].partition("@")
            if action in UNPINNED_EXCEPTIONS:
                continue
            assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{path.name}: {match[1]} is not pinned to a SHA"
            assert re.fullmatch(r"\s*# v\d+\.\d+\.\d+", match[2]), f"{path.name}: {match[1]} lacks # vX.Y.Z"
            pins.setdefault(action, set()).add(ref)
    assert {action for action, refs in pins.items() if len(refs) > 1} == set(), "one pin per action"
    assert {"actions/checkout", "helm/kind-action", "docker/login-action"} <= set(pins)


def test_permissions_are_least_privilege():
    for path in WORKFLOWS:
        workflow = load(path)
        assert workflow["permissions"] == {"contents": "read"}, path
        for name, job in workflow["jobs"].items():
            granted = job.get("permissions", {})
            assert isinstance(granted, dict) and set(granted.values()) <= {"read", "none"}, (path, name)


def test_deploys_never_overlap_or_cancel_each_other(ci, jobs):
    assert ci["concurrency"]["cancel-in-progress"] == "${{ github.event_name == 'pull_request' }}"
    deploy = jobs["deploy"]
    assert deploy["environment"] == "production"
    assert "${{" not in deploy["concurrency"]["group"]  # one group for every run and ref
    assert deploy["concurrency"]["cancel-in-progress"] is False


@pytest.mark.parametrize(("job", "secret"), [("publish", "DOCKERHUB_TOKEN"), ("deploy", "KUBECONFIG")])
def test_missing_credentials_skip_with_a_notice(jobs, job, secret):
    """Forks have no secrets: the job must say so and skip its steps, not fail."""
    gate, *rest = jobs[job]["steps"]
    assert list(gate["env"].values()) == [f"${{{{ secrets.{secret} }}}}"]
    assert "::notice" in gate["run"] and "exit 1" not in gate["run"]
    output = f"steps.{gate['id']}.outputs.ready == 'true'"
    assert rest and all(output in step["if"] for step in rest)


def test_publish_pushes_the_tested_image_under_three_tags(ci, jobs):
    publish = jobs["publish"]
    assert publish["env"]["VERSION"] == "${{ needs.e2e.outputs.version }}"
    login = next(step for step in publish["steps"] if step.get("uses", "").startswith("docker/login-action@"))
    assert login["with"] == {
        "username": "${{ secrets.DOCKERHUB_USERNAME }}",
        "password": "${{ secrets.DOCKERHUB_TOKEN }}",
    }
    # The service version is the chart's default tag (appVersion): a plain install must find it.
    assert 'for tag in "$VERSION" "$APP_VERSION" "${GITHUB_SHA::7}" latest' in script(publish)
    # Publish and deploy agree on the repository, which defaults to <user>/<the image make builds>.
    repository = publish["env"]["IMAGE_REPOSITORY"]
    assert repository == jobs["deploy"]["env"]["IMAGE_REPOSITORY"]
    assert f"format('{{0}}/{ci['env']['IMAGE_NAME']}', secrets.DOCKERHUB_USERNAME)" in repository
    assert repository.startswith("${{ vars.IMAGE_REPOSITORY || ")


def test_names_match_the_chart_the_kind_config_and_the_client_job(ci, jobs):
    chart = ROOT / ci["env"]["CHART"]
    values = yaml.safe_load((chart / "values.yaml").read_text())
    assert (chart / "Chart.yaml").is_file()
    assert ci["env"]["IMAGE_NAME"] == values["image"]["repository"]

    e2e = jobs["e2e"]
    kind_step = next(step for step in e2e["steps"] if step.get("uses", "").startswith("helm/kind-action@"))
    kind_config = yaml.safe_load((ROOT / kind_step["with"]["config"]).read_text())
    assert e2e["env"]["KIND_CLUSTER"] == kind_config["name"]
    assert kind_step["with"]["cluster_name"] == "${{ env.KIND_CLUSTER }}"

    # k8s/client-job.yaml is rendered for a fixed release and namespace and calls that Service.
    client_job = yaml.safe_load_all((ROOT / "k8s" / "client-job.yaml").read_text())
    (job,) = [doc for doc in client_job if doc and doc["kind"] == "Job"]
    assert job["metadata"]["namespace"] == e2e["env"]["NAMESPACE"]
    assert job["metadata"]["labels"]["app.kubernetes.io/instance"] == ci["env"]["RELEASE"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    # e2e gives the tested image the name the Job uses: run its line that computes that name.
    (line,) = [line.strip() for line in script(e2e).splitlines() if line.strip().startswith("client_image=")]
    env = {"PATH": os.environ["PATH"], "CHART": ci["env"]["CHART"], "IMAGE_NAME": ci["env"]["IMAGE_NAME"]}
    shell = subprocess.run(
        ["bash", "-c", f'{line}; echo "$client_image"'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert shell.stdout.strip() == container["image"], shell.stderr


def test_helm_commands_use_existing_values_and_fail_safe(jobs):
    values = yaml.safe_load((ROOT / "charts" / "breast-cancer-classifier" / "values.yaml").read_text())
    for name, timeout in (("e2e", "10m"), ("deploy", "5m")):
        (upgrade,) = [args for args in commands(script(jobs[name]), "helm") if args[0] == "upgrade"]
        assert {"--install", "--wait", "--rollback-on-failure"} <= set(upgrade), name
        assert upgrade[upgrade.index("--timeout") + 1] == timeout
        assert upgrade[1:4] == ["--install", "$RELEASE", "$CHART"]
        for i, arg in enumerate(upgrade):
            if arg == "--set":
                node = values
                for key in upgrade[i + 1].split("=")[0].split("."):
                    assert key in node, f"{name}: --set {upgrade[i + 1]} is not in values.yaml"
                    node = node[key]
        assert any(args[0] == "test" for args in commands(script(jobs[name]), "helm")), name


def test_verify_is_invoked_with_arguments_it_accepts(jobs):
    for name in ("e2e", "deploy"):
        (args,) = commands(script(jobs[name]), ".venv/bin/python")
        assert args[:2] == ["-m", "k8s.verify"]
        parsed = verify.parse_args(args[2:])
        assert (parsed.release, parsed.namespace) == ("$RELEASE", "$NAMESPACE")


def test_paths_the_workflow_names_exist():
    text = CI.read_text()
    paths = set(re.findall(r"(?<![\w./$-])((?:charts|k8s|scripts|requirements|\.ci)/[\w./*-]*[\w*])", text))
    assert {"k8s/kind-config.yaml", "k8s/client-job.yaml"} <= paths
    for path in sorted(paths):
        assert list(ROOT.glob(path)), f"ci.yml names {path}, which does not exist"
    chart_files = set(re.findall(r"\$CHART/([\w./-]+)", text)) - {"Chart.yaml"}
    for path in chart_files | {"Chart.yaml"}:
        assert (ROOT / "charts" / "breast-cancer-classifier" / path).is_file(), path


def test_e2e_reads_the_image_record_make_image_writes(jobs):
    e2e = script(jobs["e2e"])
    assert any(line.strip() == "make image" for line in e2e.splitlines())
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"(?m)^image:.*\n\tbash scripts/build-image.sh$", makefile)
    (record,) = re.findall(r"(?m)^\s*source (\S+)$", e2e)
    build = (ROOT / "scripts" / "build-image.sh").read_text()
    assert f'info_file="${{IMAGE_INFO_FILE:-{record}}}"' in build
    assert re.search(r"(?m)^IMAGE=\$image$", build) and re.search(r"(?m)^IMAGE_TAG=", build)
