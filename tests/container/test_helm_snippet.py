"""The README's Helm snippet installs the image `make image` built, with the model inside it: run as
written against a real build's record, with `helm template` in place of a cluster."""

from __future__ import annotations

import re
import subprocess

import yaml

from harness.paths import REPO_ROOT
from tests.conftest import require_tool

from .conftest import Image


def test_the_readmes_helm_snippet_installs_the_recorded_image_and_model(image: Image) -> None:
    helm = require_tool("helm")
    readme = (REPO_ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL) if "helm upgrade" in b]
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    assert lines[:2] == ["make image", "source .bentoml/last-image.env"], lines
    (upgrade,) = [line for line in lines if line.startswith("helm upgrade --install ")]
    # No cluster here: the same arguments rendered, after sourcing this build's record.
    render = upgrade.replace("helm upgrade --install", f"{helm} template", 1)
    render = render.replace(" --create-namespace", "").replace(" --wait", "")
    result = subprocess.run(
        ["bash", "-c", f"set -eu; source {image.record}; {render}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    (deployment,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image.name
    assert {"name": "MODEL_TAG", "value": image.model_tag} in container["env"]
