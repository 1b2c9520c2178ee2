"""Fixtures for the container tests: the engine, the image, and one container run as the chart runs it
(see harness/containers.py).

The image is built by scripts/build-image.sh from a model trained into a throw-away store (the
`model_store` fixture), so the tests prove the image that `make image` produces. The build is
incremental: the engine's layer cache makes a rebuild take seconds. CONTAINER_TEST_IMAGE=<name:tag>
tests an image built elsewhere (e.g. by the workflow) instead.

Without a container engine, or with one that cannot run here, the tests skip saying why; under
CI=true (.ci/run) they fail instead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.containers import Container, Engine, NotReady, detect_engine, read_image_record, start
from harness.paths import REPO_ROOT
from harness.servers import free_port
from tests.conftest import skip_or_fail


@dataclass(frozen=True)
class Image:
    name: str
    model_tag: str  # the model the build packaged, as recorded by scripts/build-image.sh
    record: Path  # what scripts/build-image.sh wrote about it (KEY=value lines)


@pytest.fixture(scope="session")
def engine() -> Engine:
    try:
        engine = detect_engine()
    except LookupError as error:
        skip_or_fail(str(error))
    # An installed engine can still be unable to run (a missing helper, no daemon, no cgroups):
    # its own message is the reason to show.
    info = engine.run("info", check=False)
    if info.returncode != 0:
        skip_or_fail(f"{engine.name} cannot run here: {(info.stderr or info.stdout).strip()[-2000:]}")
    return engine


@pytest.fixture(scope="session")
def image(
    engine: Engine, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Image]:
    if prebuilt := os.environ.get("CONTAINER_TEST_IMAGE"):
        label = engine.run("image", "inspect", "--format", '{{index .Config.Labels "model_tag"}}', prebuilt)
        # The lines scripts/build-image.sh would have written for it.
        repository, _, tag = prebuilt.rpartition(":")
        record = tmp_path_factory.mktemp("image") / "last-image.env"
        fields = {"IMAGE": prebuilt, "IMAGE_REPOSITORY": repository, "IMAGE_TAG": tag}
        record.write_text(
            "".join(f"{k}={v}\n" for k, v in {**fields, "MODEL_TAG": label.stdout.strip()}.items())
        )
        yield Image(prebuilt, label.stdout.strip(), record)
        return
    model_store = request.getfixturevalue("model_store")  # only trained when the image is built here
    info_file = tmp_path_factory.mktemp("image") / "last-image.env"
    build = subprocess.run(
        ["bash", "scripts/build-image.sh"],
        check=False,
        cwd=REPO_ROOT,
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
    assert build.returncode == 0, f"build-image.sh failed:\n{build.stdout[-5000:]}\n{build.stderr[-5000:]}"
    info = read_image_record(info_file)
    yield Image(info["IMAGE"], info["MODEL_TAG"], info_file)
    # The engine's build cache outlives the image, so the next run still builds in seconds.
    engine.run("rmi", info["IMAGE"], f"{info['IMAGE_REPOSITORY']}:latest", check=False)


@pytest.fixture(scope="module")
def metrics_port() -> int:
    """The container's METRICS_PORT: a free one, as it shares the host's network."""
    return free_port()


@pytest.fixture(scope="module")
def container(engine: Engine, image: Image, metrics_port: int) -> Iterator[Container]:
    try:
        container = start(engine, image.name, env={"METRICS_PORT": str(metrics_port)})
    except NotReady as error:
        pytest.fail(str(error))
    print(f"{image.name}: /readyz 200 after {container.seconds_to_ready:.1f} s")
    yield container
    engine.run("rm", "--force", container.name, check=False)
