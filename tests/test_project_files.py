"""The files around the code say true things: the model card's figures are the default model's, the
changelog covers the version, the licence is the one the API document names, Dependabot watches
what exists, the base image it updates is the one the build uses, and no file sends a reader to a
path outside the repository."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import yaml

from harness.paths import REPO_ROOT, project_version


def test_the_model_card_states_the_default_models_figures(client: httpx.Client) -> None:
    """The session's model is the default run (bundled data, seed 42), the one the card describes."""
    info = client.get("/model").json()
    card = " ".join((REPO_ROOT / "MODEL_CARD.md").read_text().split())
    cv, holdout = info["metrics"]["cross_validation"], info["metrics"]["holdout"]
    cv_row = " | ".join(
        f"{cv[m]['mean']:.3f} ± {cv[m]['std']:.3f}" for m in ("accuracy", "recall_malignant", "roc_auc")
    )
    assert cv_row in card, cv_row
    (benign_right, false_alarms), (missed, found) = holdout["confusion_matrix"]
    recall = holdout["per_class"]["malignant"]["recall"]
    assert (
        f"| {holdout['accuracy']:.3f} | {recall:.3f} ({found} of {found + missed}) | {holdout['roc_auc']:.3f} |"
        in card
    )
    assert (
        f"{benign_right} benign correctly called benign, {false_alarms} benign called malignant (false alarms), "
        f"{missed} malignant missed, {found} malignant found"
    ) in card
    assert f"threshold: {info['threshold']:.3f}" in card
    assert f"malignant precision {holdout['per_class']['malignant']['precision']:.3f}" in card
    assert f"{info['lineage']['dataset_rows']} FNAs" in card


def test_the_changelog_has_the_current_version() -> None:
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"(?m)^## {re.escape(project_version())} ", changelog)


def test_the_licence_is_the_one_the_api_document_names(client: httpx.Client) -> None:
    licence = client.get("/docs.json").json()["info"]["license"]
    assert (REPO_ROOT / "LICENSE").read_text().startswith(f"{licence['name']} License")


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


def test_no_file_names_a_path_outside_the_repository() -> None:
    """A clone is all a user has: a relative path that climbs out of it names nothing they have. Such a
    path is read from the file's directory (a link) or, when nothing is there, from the repository
    root (a command run there, as the scripts and the Makefile run theirs). A symlink's target is read
    from the link, which a script creates: those lines are left out."""
    climbing = re.compile(r"(?<![\w.])((?:\.\./)+[\w.-][\w./-]*)")
    outside = []
    for path in tracked_text_files():
        text = "\n".join(
            line for line in path.read_text(errors="replace").splitlines() if "ln -s" not in line
        )
        for match in climbing.finditer(text):
            beside = (path.parent / match[1]).resolve()
            target = beside if beside.exists() else (REPO_ROOT / match[1]).resolve()
            if not target.is_relative_to(REPO_ROOT):
                outside.append(f"{path.relative_to(REPO_ROOT)}: {match[1]}")
    assert not outside, outside


def tracked_text_files() -> list[Path]:
    """The repository's own files: what a clone holds, without generated or installed directories."""
    skip = {
        ".git",
        ".venv",
        ".tools",
        ".bentoml",
        "node_modules",
        "__pycache__",
        "data",
        "reports",
        "registry",
    }
    files = []
    for directory, names, filenames in os.walk(REPO_ROOT):
        names[:] = [name for name in names if name not in skip and not name.endswith("_cache")]
        files += [Path(directory, name) for name in filenames if not name.endswith((".png", ".pyc", ".tgz"))]
    return files
