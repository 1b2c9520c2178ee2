"""Fixtures for the container tests: the engine, the image, and one container run as the chart runs it.

The image is built by scripts/build-image.sh from a model trained into a throw-away store (the
`model_store` fixture), so the tests prove the image that `make image` produces. The build is
incremental: the engine's layer cache makes a rebuild take seconds. CONTAINER_TEST_IMAGE=<name:tag>
tests an image built elsewhere (e.g. by the workflow) instead.

Without a container engine the tests skip; under CI=true (.ci/run) they fail instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
CONTRACT = yaml.safe_load((REPO / "k8s" / "runtime-contract.yaml").read_text())
# The chart's default limits: the worker count follows the CPU limit, so the test runs under them too.
LIMITS = yaml.safe_load((REPO / "charts" / "breast-cancer-classifier" / "values.yaml").read_text())["resources"][
    "limits"
]
BENTO_PATH = "/home/bentoml/bento"  # where BentoML's image keeps the bento (its BENTO_PATH)
READY_TIMEOUT = 120  # generous for a loaded CI machine; the measured time is printed, not asserted


@dataclass(frozen=True)
class Engine:
    name: str  # podman or docker
    env: dict[str, str]  # the environment to run it with (CONTAINERS_CONF for podman)

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.name, *args], env=self.env, capture_output=True, text=True, check=check, timeout=timeout
        )


@dataclass(frozen=True)
class Image:
    name: str
    model_tag: str  # the model the build packaged, as recorded by scripts/build-image.sh


@dataclass
class Container:
    name: str
    url: str
    seconds_to_ready: float


def fail_or_skip(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The engine scripts/container-engine.sh picks, so tests and builds always agree."""
    probe = subprocess.run(
        ["bash", "-c", 'source scripts/container-engine.sh && echo "$ENGINE" && echo "${CONTAINERS_CONF:-}"'],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        fail_or_skip(f"no container engine: {probe.stderr.strip()}")
    name, containers_conf = probe.stdout.splitlines()
    env = dict(os.environ)
    if containers_conf:
        env["CONTAINERS_CONF"] = containers_conf
    return Engine(name, env)


@pytest.fixture(scope="session")
def image(engine: Engine, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Image:
    if prebuilt := os.environ.get("CONTAINER_TEST_IMAGE"):
        labels = json.loads(engine.run("image", "inspect", "--format", "{{json .Config.Labels}}", prebuilt).stdout)
        return Image(prebuilt, labels["model_tag"])
    model_store = request.getfixturevalue("model_store")  # only trained when the image is built here
    info_file = tmp_path_factory.mktemp("image") / "last-image.env"
    build = subprocess.run(
        ["bash", "scripts/build-image.sh"],
        cwd=REPO,
        env={
            **engine.env,
            "ENGINE": engine.name,
            "BENTOML_HOME": str(model_store),
            "IMAGE_INFO_FILE": str(info_file),
            "IMAGE_REPOSITORY": "breast-cancer-classifier-test",
        },
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert build.returncode == 0, f"scripts/build-image.sh failed:\n{build.stdout[-5000:]}\n{build.stderr[-5000:]}"
    info = dict(line.split("=", 1) for line in info_file.read_text().splitlines())
    return Image(info["IMAGE"], info["MODEL_TAG"])


def cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity ("1", "1.5", "500m") in CPUs."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def run_args(image: str, name: str, port: int) -> list[str]:
    """`run` arguments matching the chart's pod: see k8s/runtime-contract.yaml."""
    tmpfs = [arg for path in CONTRACT["writablePaths"] for arg in ("--tmpfs", f"{path}:rw,mode=1777")]
    return [
        "run", "--detach", "--name", name,
        "--read-only", *tmpfs,
        "--user", f"{CONTRACT['uid']}:{CONTRACT['gid']}",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--cpus", str(cpus(str(LIMITS["cpu"]))),
        "--memory", LIMITS["memory"].removesuffix("i").lower(),  # 1Gi -> 1g (the engines' g is 2^30)
        # Host networking, reached through 127.0.0.1 only: these machines allow no other traffic.
        "--network", "host",
        # BENTOML_PORT rather than PORT: the entrypoint echoes a plain-text line when PORT is set.
        "--env", f"BENTOML_PORT={port}",
        image,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def container(engine: Engine, image: Image) -> Iterator[Container]:
    name = f"bcc-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    started = time.monotonic()
    engine.run(*run_args(image.name, name, port))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = started + READY_TIMEOUT
        while True:
            try:
                if httpx.get(f"{url}{CONTRACT['probes']['readiness']}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            state = engine.run("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running" or time.monotonic() > deadline:
                logs = engine.run("logs", name, check=False)
                pytest.fail(f"container {state}, not ready after {READY_TIMEOUT} s:\n{logs.stdout}\n{logs.stderr}")
            time.sleep(0.1)
        seconds = time.monotonic() - started
        print(f"{image.name}: /readyz 200 after {seconds:.1f} s")
        yield Container(name, url, seconds)
    finally:
        engine.run("rm", "--force", name, check=False)
