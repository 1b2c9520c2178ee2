"""podman with the project's settings (scripts/containers.conf) runs containers with either network
backend: netavark where it is installed (always with podman 5, Debian 13's), CNI where only Debian
12's podman 4 is (no netavark package).

Each backend gets a store of its own, so the choice podman records in a store on first use cannot
leak between them, and an image of one statically linked program, so nothing needs pulling.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from harness.containers import Engine
from harness.paths import REPO_ROOT

# Where podman looks for netavark unless containers.conf says otherwise (containers.conf(5)).
HELPER_DIRECTORIES = [
    "/usr/local/libexec/podman",
    "/usr/local/lib/podman",
    "/usr/libexec/podman",
    "/usr/lib/podman",
]
STATIC_PROGRAM = Path("/sbin/ldconfig")  # statically linked in Debian's libc-bin


@pytest.mark.parametrize("backend", ["netavark", "cni"])
def test_podman_runs_a_container_with_either_network_backend(
    engine: Engine, tmp_path: Path, backend: str
) -> None:
    if engine.name != "podman":
        pytest.skip(f"the container tests run {engine.name} here, not podman")
    podman = engine.name
    if not STATIC_PROGRAM.is_file():
        pytest.skip(f"{STATIC_PROGRAM} (the one program of the test image) is missing")
    settings = (REPO_ROOT / "scripts" / "containers.conf").read_text()
    if backend == "netavark":
        if not any(Path(directory, "netavark").is_file() for directory in HELPER_DIRECTORIES):
            pytest.skip("netavark is not installed (apt-get install netavark)")
    else:
        version = engine.run("version", "--format", "{{.Client.Version}}").stdout.strip()
        if int(version.split(".")[0]) >= 5:
            pytest.skip(f"podman {version} has netavark only (CNI went with podman 5)")
        # A helper directory without netavark: what a machine with Debian 12's podman alone has.
        empty = tmp_path / "helpers"
        empty.mkdir()
        settings = settings.replace("[engine]\n", f'[engine]\nhelper_binaries_dir = ["{empty}"]\n', 1)
        assert f'helper_binaries_dir = ["{empty}"]' in settings
    config = tmp_path / "containers.conf"
    config.write_text(settings)
    root = tmp_path / "image"
    root.mkdir()
    shutil.copy(STATIC_PROGRAM, root / "program")
    with tarfile.open(tmp_path / "image.tar", "w") as tar:
        tar.add(root / "program", arcname="program")

    # podman refuses a run root path longer than 50 characters, which pytest's tmp_path often is.
    runroot = Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp"))
    store = ["--root", str(tmp_path / "store"), "--runroot", str(runroot)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [podman, *store, *args],
            env={**engine.env, "CONTAINERS_CONF": str(config)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    try:
        chosen = run("info", "--format", "{{.Host.NetworkBackend}}")
        assert chosen.returncode == 0, chosen.stderr
        assert chosen.stdout.strip() == backend
        imported = run("import", "--quiet", str(tmp_path / "image.tar"), "localhost/static-program")
        assert imported.returncode == 0, imported.stderr
        ran = run("run", "--rm", "--network", "host", "localhost/static-program", "/program", "--version")
        assert ran.returncode == 0, ran.stderr
        assert "ldconfig" in ran.stdout
    finally:
        run("rmi", "--all", "--force")
        shutil.rmtree(runroot, ignore_errors=True)
