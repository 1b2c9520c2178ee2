"""Run the image the way the Helm chart runs it; used by the container tests and the benchmark.

    python -m harness.containers [IMAGE] [RUNS]   # prints container start to /readyz 200, per run

The pod's settings come from k8s/runtime-contract.yaml (uid/gid, writable paths, probes) and the
chart's default resource limits: read-only root filesystem with a tmpfs only at each writable path,
all capabilities dropped, no new privileges, host networking on a free port reached only through
127.0.0.1 (these machines allow no other traffic).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from harness.paths import REPO_ROOT, chart_values, runtime_contract
from harness.servers import free_port

READY_TIMEOUT = 120  # generous for a loaded CI machine; the measured time is reported, not asserted
LAST_IMAGE_RECORD = REPO_ROOT / ".bentoml" / "last-image.env"  # written by scripts/build-image.sh


def limits() -> dict[str, str]:
    """The chart's default resource limits: the worker count follows the CPU limit, so run under it."""
    return chart_values()["resources"]["limits"]


@dataclass(frozen=True)
class Engine:
    name: str  # podman or docker
    env: dict[str, str]  # the environment to run it with (CONTAINERS_CONF for podman)

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.name, *args], env=self.env, capture_output=True, text=True, check=check, timeout=timeout
        )


@dataclass
class Container:
    name: str
    url: str
    seconds_to_ready: float
    metrics_url: str  # its Prometheus endpoint (the metrics port)


class NotReady(Exception):
    pass


def detect_engine() -> Engine:
    """The engine scripts/container-engine.sh picks, so runs and builds always agree."""
    probe = subprocess.run(
        ["bash", "-c", 'source scripts/container-engine.sh && echo "$ENGINE" && echo "${CONTAINERS_CONF:-}"'],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        raise LookupError(f"no container engine: {probe.stderr.strip()}")
    name, containers_conf = probe.stdout.splitlines()
    return Engine(name, {**os.environ, **({"CONTAINERS_CONF": containers_conf} if containers_conf else {})})


def cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity ("1", "1.5", "500m") in CPUs."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def run_args(
    image: str,
    name: str,
    port: int,
    env: dict[str, str] | None = None,
    extra: Sequence[str] = (),
    metrics_port: int | None = None,
) -> list[str]:
    """The engine's `run` arguments; `extra` goes before the image name (e.g. a --volume)."""
    contract = runtime_contract()
    tmpfs = [arg for path in contract["writablePaths"] for arg in ("--tmpfs", f"{path}:rw,mode=1777")]
    extra_env = [arg for key, value in (env or {}).items() for arg in ("--env", f"{key}={value}")]
    return [
        "run", "--detach", "--name", name,
        "--read-only", *tmpfs,
        "--user", f"{contract['uid']}:{contract['gid']}",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--cpus", str(cpus(str(limits()["cpu"]))),
        "--memory", limits()["memory"].removesuffix("i").lower(),  # 1Gi -> 1g (the engines' g is 2^30)
        "--network", "host",
        # BENTOML_PORT rather than PORT: the entrypoint echoes a plain-text line when PORT is set.
        "--env", f"BENTOML_PORT={port}",
        # Host networking: the metrics port too must be one nobody else uses.
        *(("--env", f"METRICS_PORT={metrics_port}") if metrics_port and "METRICS_PORT" not in (env or {}) else ()),
        *extra_env,
        *extra,
        image,
    ]  # fmt: skip


def start(
    engine: Engine, image: str, env: dict[str, str] | None = None, extra: Sequence[str] = ()
) -> Container:
    """Start a container and wait for /readyz 200. If it never gets there, remove it and raise
    NotReady with its logs; otherwise the caller removes it (`rm --force <name>`)."""
    name = f"bcc-test-{uuid.uuid4().hex[:8]}"
    port, metrics_port = free_port(), int((env or {}).get("METRICS_PORT") or free_port())
    url = f"http://127.0.0.1:{port}"
    readiness = runtime_contract()["probes"]["readiness"]
    started = time.monotonic()
    engine.run(*run_args(image, name, port, env, extra, metrics_port))
    try:
        poll = 0
        while time.monotonic() - started < READY_TIMEOUT:
            poll += 1
            try:
                if httpx.get(f"{url}{readiness}", timeout=2).status_code == 200:
                    metrics = f"http://127.0.0.1:{metrics_port}{runtime_contract()['probes']['metrics']}"
                    return Container(name, url, time.monotonic() - started, metrics)
            except httpx.TransportError:
                pass
            # Each engine call costs CPU that the starting service competes for: check once a second.
            if poll % 10 == 0:
                running = engine.run("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
                if running != "true":
                    break
            time.sleep(0.1)
        logs = engine.run("logs", name, check=False)
        raise NotReady(f"container {name} not ready:\n{logs.stdout}\n{logs.stderr}")
    except BaseException:
        engine.run("rm", "--force", name, check=False)
        raise


def read_image_record(path: Path | None = None) -> dict[str, str]:
    """The KEY=value lines scripts/build-image.sh wrote (IMAGE, MODEL_TAG, ...); {} if none."""
    record = path or Path(os.environ.get("IMAGE_INFO_FILE", LAST_IMAGE_RECORD))
    if not record.exists():
        return {}
    return dict(line.split("=", 1) for line in record.read_text().splitlines() if "=" in line)


def main(image: str = "breast-cancer-classifier:latest", runs: str = "3") -> None:
    engine = detect_engine()
    for run in range(1, int(runs) + 1):
        container = start(engine, image)
        engine.run("rm", "--force", container.name)
        print(f"run {run}: /readyz 200 after {container.seconds_to_ready:.2f} s")


if __name__ == "__main__":
    main(*sys.argv[1:])
