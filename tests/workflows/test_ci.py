"""Keeps .github/workflows honest: the workflow cannot run here, so it is linted and checked against
the repository it builds, tests, publishes and deploys. The e2e job's commands live in
scripts/e2e-kind.sh (tests/workflows/test_e2e_kind.py checks its steps); where a check here is about a
command the script now runs, it reads the script."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from harness.paths import CHART, chart_values
from harness.paths import REPO_ROOT as ROOT
from k8s import verify

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
CI = ROOT / ".github" / "workflows" / "ci.yml"
E2E_SCRIPT = ROOT / "scripts" / "e2e-kind.sh"
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


def e2e_script() -> str:
    """scripts/e2e-kind.sh, with line continuations joined like script()."""
    return E2E_SCRIPT.read_text().replace("\\\n", " ")


def commands(text: str, program: str) -> list[list[str]]:
    """The argument lists of every `program ...` command line in text, also when run through the e2e
    script's `admitted` wrapper, up to a pipe."""
    found = []
    for line in text.splitlines():
        words = line.split()
        if words[:2] == ["admitted", program]:
            words = words[1:]
        if words[:1] == [program]:
            args = shlex.split(" ".join(words), comments=True)[1:]
            found.append(args[: args.index("|")] if "|" in args else args)
    return found


def script_constant(name: str) -> str:
    """A NAME=value (or NAME=${NAME:-value}) assignment at the top level of the e2e script."""
    (value,) = re.findall(rf"(?m)^{name}=(\S+)", E2E_SCRIPT.read_text())
    default = re.fullmatch(rf"\$\{{{name}:-(.*)\}}", value)
    return default[1] if default else value


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


def apt_packages(text: str) -> set[str]:
    """Every package an `apt-get install` (or `sudo apt-get install`) line of text installs."""
    installs = [line for line in commands(text, "apt-get") + commands(text, "sudo") if "install" in line]
    assert installs
    return {
        arg
        for line in installs
        for arg in line[line.index("install") + 1 :]
        if not arg.startswith("-") and not arg.startswith(">")
    }


# .ci/run's packages the test job does not apt-get install, each with the reason.
NOT_INSTALLED_ON_RUNNERS = {
    # The runners have Docker, and the podman stack's runc conflicts with Docker's containerd packages.
    **dict.fromkeys(
        ["podman", "buildah", "runc", "netavark", "aardvark-dns", "iptables", "debootstrap"],
        "Docker runs images",
    ),
    "make": "on the runner image",
    "python3-venv": "actions/setup-python provides the interpreter, with venv",
    # Ubuntu has no chromium deb (only a snap wrapper); the runner image links /usr/bin/chromium to a
    # Chromium build (runner-images install-google-chrome.sh), and the job checks it is there.
    "chromium": "on the runner image as /usr/bin/chromium",
    "nodejs": "on the runner image, with npm",
    "npm": "on the runner image",
}


def test_the_test_job_runs_make_test_on_every_supported_python(ci, jobs):
    test = jobs["test"]
    versions = test["strategy"]["matrix"]["python-version"]
    assert test["strategy"]["fail-fast"] is False  # one version's failure must not hide the others'
    # The matrix is the Makefile's supported list and pyproject.toml's requires-python, exactly.
    makefile = (ROOT / "Makefile").read_text()
    (supported,) = re.findall(r"(?m)^SUPPORTED_PYTHONS := (.*)$", makefile)
    assert versions == supported.split()
    requires = SpecifierSet(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    )
    assert all(f"{version}.0" in requires for version in versions)
    below, above = f"3.{int(versions[0].split('.')[1]) - 1}.0", f"3.{int(versions[-1].split('.')[1]) + 1}.0"
    assert below not in requires and above not in requires

    setup = next(step for step in test["steps"] if step.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["python-version"] == "${{ matrix.python-version }}"
    (make_test,) = [step for step in test["steps"] if step.get("run", "").strip() == "make test"]
    # Without PYTHON the Makefile would take the runner's own python3.12 before the matrix's 3.13.
    assert make_test["env"]["PYTHON"] == f"${{{{ steps.{setup['id']}.outputs.python-path }}}}"
    # The jobs that build the image use its Python (bentofile.yaml), as the container does.
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert ci["env"]["PYTHON_VERSION"] == bentofile["docker"]["python_version"] == versions[0]


def test_the_test_job_installs_the_ci_system_packages(jobs):
    ci_run = (ROOT / ".ci" / "run").read_text().replace("\\\n", " ")
    needed = apt_packages(ci_run)
    assert {"wrk", "prometheus", "chromium"} <= needed
    assert set(NOT_INSTALLED_ON_RUNNERS) - {"nodejs", "npm"} <= needed
    # Every package .ci/run installs is installed on the runner or excused above, with a reason.
    assert apt_packages(script(jobs["test"])) == needed - set(NOT_INSTALLED_ON_RUNNERS)
    assert "/usr/bin/chromium --version" in script(jobs["test"])


def test_dependency_caches_are_keyed_on_the_lock_files_and_the_python(jobs):
    caches = 0
    for job in jobs.values():
        setups = [step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-python@")]
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/cache@"):
                caches += 1
                assert step["with"]["path"] == "~/.cache/uv"
                assert "hashFiles('requirements/*.txt')" in step["with"]["key"]
                # uv's cache holds wheels built for one Python: one cache per version.
                (setup,) = setups
                version = setup["with"]["python-version"]
                assert f"-py{version}-" in step["with"]["key"] and step["with"]["restore-keys"].endswith(
                    f"-py{version}-"
                )
    # The test job (once per matrix version), e2e and deploy each install the lock.
    assert caches == 3


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
    assert jobs["e2e"]["outputs"] == {
        "version": "${{ steps.image.outputs.version }}",
        "app_version": "${{ steps.image.outputs.app_version }}",
        "model_tag": "${{ steps.image.outputs.model_tag }}",
    }
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
    assert script_constant("CHART") == ci["env"]["CHART"]
    assert script_constant("RELEASE") == ci["env"]["RELEASE"]

    e2e = jobs["e2e"]
    kind_step = next(step for step in e2e["steps"] if step.get("uses", "").startswith("helm/kind-action@"))
    kind_config = yaml.safe_load((ROOT / kind_step["with"]["config"]).read_text())
    assert e2e["env"]["KIND_CLUSTER"] == kind_config["name"] == script_constant("KIND_CLUSTER")
    assert kind_step["with"]["cluster_name"] == "${{ env.KIND_CLUSTER }}"

    # k8s/client-job.yaml is rendered for a fixed release and namespace and calls that Service.
    client_job = yaml.safe_load_all((ROOT / "k8s" / "client-job.yaml").read_text())
    (job,) = [doc for doc in client_job if doc and doc["kind"] == "Job"]
    assert job["metadata"]["namespace"] == script_constant("NAMESPACE")
    assert job["metadata"]["name"] == script_constant("CLIENT_JOB")
    assert job["metadata"]["labels"]["app.kubernetes.io/instance"] == ci["env"]["RELEASE"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    # The e2e script gives the tested image the name the Job uses: run its line that computes it.
    (line,) = [line.strip() for line in e2e_script().splitlines() if line.strip().startswith("client_image=")]
    env = {
        "PATH": os.environ["PATH"],
        "CHART": ci["env"]["CHART"],
        "IMAGE_REPOSITORY": values["image"]["repository"],
    }
    shell = subprocess.run(
        ["bash", "-c", f'{line}; echo "$client_image"'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert shell.stdout.strip() == container["image"], shell.stderr


def set_keys_exist(args: list[str], values: dict, where: str) -> None:
    for i, arg in enumerate(args):
        if arg == "--set":
            node = values
            for key in args[i + 1].split("=")[0].split("."):
                assert key in node, f"{where}: --set {args[i + 1]} is not in values.yaml"
                node = node[key]


def test_helm_commands_use_existing_values_and_fail_safe(jobs):
    values = chart_values()
    e2e, deploy = e2e_script(), script(jobs["deploy"])
    upgrades = {"e2e": commands(e2e, "helm"), "deploy": commands(deploy, "helm")}
    for name, timeout in (("e2e", "10m"), ("deploy", "5m")):
        found = [args for args in upgrades[name] if args[0] == "upgrade"]
        assert found, name
        for upgrade in found:
            assert {"--wait", "--rollback-on-failure"} <= set(upgrade), (name, upgrade)
            assert upgrade[upgrade.index("--timeout") + 1] == timeout
            set_keys_exist(upgrade, values, name)
            # The release's model is always named: k8s.verify compares the served tag with it.
            assert any(arg.startswith("modelTag=") for arg in upgrade), (name, upgrade)
        assert found[0][1:4] == ["--install", "$RELEASE", "$CHART"]
        assert any(args[0] == "test" for args in upgrades[name]), name
    # e2e: install model A, then upgrade to B; the namespace exists already (Pod Security labels).
    install, upgrade = [args for args in upgrades["e2e"] if args[0] == "upgrade"]
    assert "modelTag=$MODEL_TAG_A" in install and "modelTag=$MODEL_TAG_B" in upgrade
    assert "--create-namespace" not in e2e
    (deploy_upgrade,) = [args for args in upgrades["deploy"] if args[0] == "upgrade"]
    assert "modelTag=$MODEL_TAG" in deploy_upgrade
    assert jobs["deploy"]["env"]["MODEL_TAG"] == "${{ needs.publish.outputs.model_tag }}"
    assert jobs["publish"]["outputs"]["model_tag"] == "${{ needs.e2e.outputs.model_tag }}"


def test_verify_is_invoked_with_arguments_it_accepts(jobs):
    for name, text in (("e2e", e2e_script()), ("deploy", script(jobs["deploy"]))):
        found = [args for args in commands(text, ".venv/bin/python") if args[:2] == ["-m", "k8s.verify"]]
        assert found, name
        for args in found:
            parsed = verify.parse_args(args[2:])
            assert (parsed.release, parsed.namespace) == ("$RELEASE", "$NAMESPACE")


def test_paths_the_workflow_and_the_e2e_script_name_exist():
    for source in (CI, E2E_SCRIPT):
        text = source.read_text()
        pattern = r"(?<![\w./$-])((?:charts|k8s|scripts|requirements|docs|\.ci)/[\w./*-]*[\w*])"
        paths = set(re.findall(pattern, text))
        for path in sorted(paths):
            assert list(ROOT.glob(path)), f"{source.name} names {path}, which does not exist"
        chart_files = set(re.findall(r"\$CHART/([\w./-]+)", text))
        for path in chart_files:
            assert (CHART / path).is_file(), (source.name, path)
    assert "scripts/e2e-kind.sh" in CI.read_text()
    script_paths = set(re.findall(r"(?<![\w./$-])(k8s/[\w.-]+)", E2E_SCRIPT.read_text()))
    assert {
        "k8s/kind-config.yaml",
        "k8s/client-job.yaml",
        "k8s/load-job.yaml",
        "k8s/load_test.py",
    } <= script_paths


def test_e2e_publishes_the_image_record_make_image_writes(jobs):
    text = e2e_script()
    build = (ROOT / "scripts" / "build-image.sh").read_text()
    (default_record,) = re.findall(r'(?m)^info_file="\$\{IMAGE_INFO_FILE:-(\S+)\}"$', build)
    assert re.search(r"(?m)^IMAGE=\$image$", build) and re.search(r"(?m)^IMAGE_TAG=", build)
    assert re.search(r"(?m)^MODEL_TAG=\$model_tag$", build)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"(?m)^image:.*\n\tbash scripts/build-image.sh$", makefile)
    # Image A: plain `make image`, with IMAGE_INFO_FILE unset, so its record is the default one...
    assert any(line.strip() == "make image" for line in text.splitlines())
    assert re.search(r"(?m)^unset IMAGE_INFO_FILE\b", text)
    assert script_constant("RECORD_A") == default_record
    # ...and image B's goes elsewhere, so the record the workflow publishes stays A's.
    (build_b,) = [
        line.strip() for line in text.splitlines() if line.strip().endswith("make image") and "=" in line
    ]
    assert 'IMAGE_INFO_FILE="$RECORD_B"' in build_b and 'MODEL_TAG="$MODEL_TAG_B"' in build_b
    assert script_constant("RECORD_B") != default_record
    # The workflow reads A's record after the script and publishes that image.
    e2e = jobs["e2e"]
    names = [step.get("name", step.get("uses", "")) for step in e2e["steps"]]
    record_step = next(step for step in e2e["steps"] if step.get("id") == "image")
    assert names.index(record_step["name"]) > names.index("e2e (scripts/e2e-kind.sh)")
    (record,) = re.findall(r"(?m)^\s*source (\S+)$", record_step["run"])
    assert record == default_record
