"""The files around the code say true things: the model card's figures are the default model's, the
changelog covers the version, the licence is the one the API document names, Dependabot watches
what exists, and the base image it updates is the one the build uses."""

from __future__ import annotations

import re

import httpx
import yaml

from bento import openapi
from harness.paths import REPO_ROOT, project_version


def test_the_model_card_states_the_default_models_figures(client: httpx.Client) -> None:
    """The session's model is the default run (bundled data, seed 42), the one the card describes."""
    info = client.get("/model").json()
    card = (REPO_ROOT / "MODEL_CARD.md").read_text()
    cv, holdout = info["metrics"]["cross_validation"], info["metrics"]["holdout"]
    cv_row = " | ".join(
        f"{cv[m]['mean']:.3f} ± {cv[m]['std']:.3f}" for m in ("accuracy", "recall_malignant", "roc_auc")
    )
    assert cv_row in card, cv_row
    recall = holdout["per_class"]["malignant"]["recall"]
    assert f"| {holdout['accuracy']:.3f} | {recall:.3f} (41 of 42) | {holdout['roc_auc']:.3f} |" in card
    assert holdout["confusion_matrix"] == [[68, 4], [1, 41]]
    assert f"threshold: {info['threshold']:.3f}" in card
    assert f"malignant precision {holdout['per_class']['malignant']['precision']:.3f}" in card
    assert f"{info['lineage']['dataset_rows']} FNAs" in card or "569 FNAs" in card


def test_the_changelog_has_the_current_version() -> None:
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"(?m)^## {re.escape(project_version())} ", changelog)


def test_the_licence_is_the_one_the_api_document_names() -> None:
    assert (REPO_ROOT / "LICENSE").read_text().startswith(f"{openapi.LICENSE_NAME} License")


def test_dependabot_watches_directories_that_hold_what_it_updates() -> None:
    config = yaml.safe_load((REPO_ROOT / ".github" / "dependabot.yml").read_text())
    updates = {entry["package-ecosystem"]: entry["directory"] for entry in config["updates"]}
    assert updates == {"pip": "/requirements", "github-actions": "/", "docker": "/docker"}
    assert list((REPO_ROOT / "requirements").glob("*.txt"))
    assert list((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
    assert re.search(r"(?m)^FROM \S+", (REPO_ROOT / "docker" / "base-image.Dockerfile").read_text())


def test_the_base_image_dependabot_updates_is_the_one_bentoml_builds_from() -> None:
    """BentoML's Debian template starts FROM python:<python_version>-slim; build-image.sh checks it too."""
    docker = yaml.safe_load((REPO_ROOT / "bentofile.yaml").read_text())["docker"]
    (line,) = re.findall(r"(?m)^FROM (\S+)", (REPO_ROOT / "docker" / "base-image.Dockerfile").read_text())
    assert docker["distro"] == "debian"
    assert line == f"python:{docker['python_version']}-slim"
    assert "docker/base-image.Dockerfile" in (REPO_ROOT / "scripts" / "build-image.sh").read_text()
