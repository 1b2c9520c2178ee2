"""The real image, run as the chart runs it (see conftest.py): it serves, reports, logs and stops.

The tests share one container and run in file order; the last one stops it with SIGTERM.
"""

from __future__ import annotations

import json
import time
from pathlib import PurePosixPath

import httpx
import pytest

from harness.containers import Container, Engine, cpus, limits
from harness.paths import runtime_contract
from wdbc import BENIGN_EXAMPLE, BENIGN_LABEL, MALIGNANT_EXAMPLE, MALIGNANT_LABEL

from .conftest import Image

CONTRACT = runtime_contract()

pytestmark = pytest.mark.slow


def test_writable_paths_hold_bentoml_state_but_not_the_bento(engine: Engine, image: Image) -> None:
    env = json.loads(engine.run("image", "inspect", "--format", "{{json .Config.Env}}", image.name).stdout)
    env = dict(item.split("=", 1) for item in env)
    writable = [PurePosixPath(path) for path in CONTRACT["writablePaths"]]
    # BentoML creates directories under its home at start: a read-only one fails the start.
    assert any(PurePosixPath(env["BENTOML_HOME"]).is_relative_to(path) for path in writable), env
    # Each writable path becomes an empty volume: one at or above the bento would hide it.
    assert not any(PurePosixPath(env["BENTO_PATH"]).is_relative_to(path) for path in writable), env


def test_image_size_within_target(engine: Engine, image: Image) -> None:
    size = int(engine.run("image", "inspect", "--format", "{{.Size}}", image.name).stdout)
    assert size <= 600_000_000, f"{image.name} is {size / 1e6:.0f} MB, above the 600 MB target"


def test_image_user_is_the_contract_uid_not_root(engine: Engine, image: Image) -> None:
    user = engine.run("image", "inspect", "--format", "{{.Config.User}}", image.name).stdout.strip()
    assert user not in ("", "root", "0", "0:0"), f"image runs as {user!r}"
    ids = engine.run("run", "--rm", "--network", "host", "--entrypoint", "id", image.name).stdout
    assert f"uid={CONTRACT['uid']}(" in ids and f"gid={CONTRACT['gid']}(" in ids, ids


def test_ready_on_a_read_only_root_filesystem(container: Container) -> None:
    # Reaching /readyz under --read-only proves writablePaths cover everything BentoML writes.
    assert httpx.get(f"{container.url}{CONTRACT['probes']['liveness']}").status_code == 200
    assert httpx.get(f"{container.url}{CONTRACT['probes']['readiness']}").status_code == 200


def test_worker_count_follows_the_cpu_limit(container: Container, engine: Engine) -> None:
    # SERVICE_WORKERS is unset, so the image's default (cpu_count of the cgroup quota) applies.
    lines = engine.run("logs", container.name).stdout.splitlines()
    logs = [json.loads(line) for line in lines if line.startswith("{")]  # non-JSON: see the test below
    initialized = "Service breast_cancer_classifier initialized"
    workers = {entry["pid"] for entry in logs if entry["message"] == initialized}
    assert len(workers) == max(1, int(cpus(str(limits()["cpu"])))), logs


@pytest.mark.parametrize(
    ("row", "diagnosis"), [(MALIGNANT_EXAMPLE, MALIGNANT_LABEL), (BENIGN_EXAMPLE, BENIGN_LABEL)]
)
def test_predicts_known_rows(container: Container, image: Image, row: dict, diagnosis: str) -> None:
    response = httpx.post(f"{container.url}/predict", json=row, timeout=30)
    assert response.status_code == 200, response.text
    prediction = response.json()
    assert prediction["diagnosis"] == diagnosis
    assert prediction["model_tag"] == image.model_tag


def test_serves_the_model_just_built(container: Container, engine: Engine, image: Image) -> None:
    served = httpx.get(f"{container.url}/model").json()["tag"]
    labelled = engine.run("image", "inspect", "--format", '{{index .Config.Labels "model_tag"}}', image.name)
    assert served == labelled.stdout.strip() == image.model_tag


def test_metrics_are_served_on_their_own_port(container: Container, metrics_port: int) -> None:
    path = CONTRACT["probes"]["metrics"]
    assert httpx.get(f"{container.url}{path}").status_code == 404  # never on the API port
    response = httpx.get(f"http://127.0.0.1:{metrics_port}{path}")
    assert response.status_code == 200
    # The predictions above were counted.
    counted = [
        line
        for line in response.text.splitlines()
        if line.startswith("http_requests_total{") and 'endpoint="/predict"' in line and 'code="200"' in line
    ]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 2, response.text[-3000:]


def test_stdout_is_json_lines(container: Container, engine: Engine) -> None:
    # A rejected request logs a WARNING line from the service itself, beside BentoML's and uvicorn's.
    httpx.post(f"{container.url}/predict", json={**MALIGNANT_EXAMPLE, "radius_mean": -1})
    stdout = engine.run("logs", container.name).stdout
    lines = [line for line in stdout.splitlines() if line.strip()]
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            not_json.append(line)
    assert not not_json, "lines on stdout that are not JSON:\n" + "\n".join(not_json[:20])
    messages = [json.loads(line).get("message", "") for line in lines]
    assert any(message.startswith("loaded model") for message in messages), stdout[-2000:]
    assert "rejected request" in messages, stdout[-2000:]


def test_sigterm_exits_zero_within_30_seconds(container: Container, engine: Engine) -> None:
    started = time.monotonic()
    # `stop` sends the image's stop signal (SIGTERM), then SIGKILL after the 30 s grace period.
    engine.run("stop", "--time", "30", container.name, timeout=60)
    seconds = time.monotonic() - started
    exit_code = engine.run("inspect", "--format", "{{.State.ExitCode}}", container.name).stdout.strip()
    print(f"stopped in {seconds:.1f} s with exit code {exit_code}")
    assert exit_code == "0"
    assert seconds < 30
