"""What scripts/build-image.sh packages (training/image.py): the exact model tag, and a bento built from
a context holding only the files it needs.

Building the image itself is tests/container's job; here the tag resolution runs against real stores,
and `bash scripts/build-image.sh --bento-only` (every step of `make image` up to containerize) builds
real bentos, in a copy of the repository, under the conditions that break a build which walks the
repository while writing into it: a BentoML home inside the repository, an earlier bento and a
stale temporary directory in it, and either directory order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bentoml
import pytest
import yaml

from harness.paths import REPO_ROOT
from tests.training.conftest import bentoml_store
from training import image
from training import train as training
from training.evaluation import TrainingRun
from training.registry import Registry

# What a checkout holds besides its sources: never copied into the test's copy of the repository.
GENERATED = shutil.ignore_patterns(
    ".git", ".venv", ".tools", ".bentoml", ".*_cache", ".hypothesis", "__pycache__", "node_modules",
    "data", "reports", "registry", "logs", "results",
)  # fmt: skip

# Put on PYTHONPATH, this makes every directory listing of a Python process come in name order
# (DIRECTORY_ORDER=ascending or descending), whatever order the filesystem keeps.
SITECUSTOMIZE = """
import os

_scandir = os.scandir
_reverse = os.environ["DIRECTORY_ORDER"] == "descending"


class _Listing:
    def __init__(self, path):
        with _scandir(path) as entries:
            self._entries = iter(sorted(entries, key=lambda entry: entry.name, reverse=_reverse))

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def close(self):
        pass


def scandir(path="."):
    return _Listing(path)


os.scandir = scandir
"""


def test_tag_resolution_prefers_model_tag_then_the_promoted_model_then_the_latest(
    store: Path, tmp_path: Path, runs: dict[str, TrainingRun], capsys
) -> None:
    registry = Registry(tmp_path / "registry")
    with pytest.raises(image.ImageError, match="no breast_cancer model in the store"):
        image.resolve_model_tag(None, registry)

    older = str(training.save(runs["seed 1"]).tag)
    assert image.resolve_model_tag(None, registry) == (older, f"latest in {image.store_location()}")
    registry.promote(bentoml.models.get(older))
    newer = str(training.save(runs["seed 2"]).tag)
    assert str(bentoml.models.get("breast_cancer:latest").tag) == newer

    assert image.resolve_model_tag(None, registry)[0] == older  # promoted beats latest
    assert image.resolve_model_tag(newer, registry)[0] == newer  # MODEL_TAG beats both
    assert image.resolve_model_tag("breast_cancer:latest", registry)[0] == newer  # resolved to its version
    with pytest.raises(image.ImageError, match="breast_cancer:absent: no such model"):
        image.resolve_model_tag("breast_cancer:absent", registry)

    # A promoted model this store lacks: the store's latest, with a warning saying how to import it.
    bentoml.models.delete(older)
    assert image.resolve_model_tag(None, registry)[0] == newer
    assert f"the promoted model {older} is not in the store" in capsys.readouterr().err


def test_generated_bentofile_names_exactly_one_model_and_sets_model_tag() -> None:
    source = yaml.safe_load(image.BENTOFILE.read_text())
    generated = image.bentofile(source, "breast_cancer:abc123")

    assert generated["models"] == ["breast_cancer:abc123"]
    assert generated["envs"] == [*source["envs"], {"name": "MODEL_TAG", "value": "breast_cancer:abc123"}]
    assert {k: v for k, v in generated.items() if k not in ("models", "envs", "include")} == {
        k: v for k, v in source.items() if k not in ("models", "envs", "include")
    }
    # Generating from a generated file replaces MODEL_TAG rather than adding a second one.
    again = image.bentofile(generated, "breast_cancer:def456")
    assert [env for env in again["envs"] if env["name"] == "MODEL_TAG"] == [
        {"name": "MODEL_TAG", "value": "breast_cancer:def456"}
    ]
    assert again["include"] == generated["include"]
    for inexact in ("breast_cancer:latest", "breast_cancer"):
        with pytest.raises(image.ImageError, match="exact model version"):
            image.bentofile(source, inexact)


def test_the_context_holds_exactly_the_files_the_bentofile_names(tmp_path: Path, monkeypatch) -> None:
    """Patterns match from the root only (unless they say otherwise), and the BentoML home, hidden,
    bytecode and virtual-environment directories are never searched."""
    root = tmp_path / "project"
    files = {
        "app/service.py": "service",
        "app/static/index.html": "page",
        "app/skip.py": "excluded",
        "version.toml": "top",
        "README.md": "readme",
        "docs/README.md": "docs",
        "requirements/serve.txt": "lock",
        "docker/template": "template",
        "tests/test_app.py": "not included",
        "nested/version.toml": "not at the root",
        "nested/app/service.py": "not at the root",
        ".bentoml/bentos/x/src/README.md": "an earlier bento",
        "store/bentos/x/src/README.md": "an earlier bento, in a BentoML home without a dot",
        "venv/README.md": "a virtual environment",
        "app/__pycache__/README.md": "bytecode",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    source = root / "bentofile.yaml"
    source.write_text(
        yaml.safe_dump(
            {
                "service": "app.service:Service",
                "include": ["app/*.py", "app/static/*", "version.toml", "**/README.md"],
                "exclude": ["skip.py"],
                "python": {"requirements_txt": "requirements/serve.txt"},
                "docker": {"dockerfile_template": "docker/template"},
            }
        )
    )
    monkeypatch.setenv("BENTOML_HOME", str(root / "store"))

    context = image.write_context("breast_cancer:abc123", root / "build" / "context", source, root)

    expected = {
        "app/service.py", "app/static/index.html", "version.toml", "README.md", "docs/README.md",
        "requirements/serve.txt", "docker/template",
    }  # fmt: skip
    copied = {path.relative_to(context).as_posix() for path in context.rglob("*") if path.is_file()}
    assert copied == expected | {"bentofile.yaml"}
    assert all((context / name).read_text() == files[name] for name in expected)
    config = yaml.safe_load((context / "bentofile.yaml").read_text())
    assert config["include"] == ["/app/*.py", "/app/static/*", "/version.toml", "**/README.md"]
    assert config["models"] == ["breast_cancer:abc123"]

    with pytest.raises(FileExistsError):
        image.write_context("breast_cancer:abc123", context, source, root)
    source.write_text(yaml.safe_dump({"include": ["app/*.py"], "python": {"requirements_txt": "nope.txt"}}))
    with pytest.raises(image.ImageError, match=r"python\.requirements_txt: nope\.txt is not a file"):
        image.write_context("breast_cancer:abc123", tmp_path / "other", source, root)


# The bento's checks: `make image` up to containerize, in a copy of the repository.


@pytest.fixture(scope="module")
def checkout_with_a_bento(
    tmp_path_factory: pytest.TempPathFactory, runs: dict[str, TrainingRun]
) -> Iterator[Path]:
    """A copy of the repository whose own store (.bentoml, the default BENTOML_HOME) holds a model
    and a bento built from it, as after a first `make image`."""
    checkout = tmp_path_factory.mktemp("checkout") / "repository"
    shutil.copytree(REPO_ROOT, checkout, ignore=GENERATED, symlinks=True)
    (checkout / ".venv").symlink_to(sys.prefix)  # the scripts run .venv/bin's Python and bentoml
    with bentoml_store(checkout / ".bentoml"):
        training.save(runs["seed 1"])
    build_bento(checkout)
    yield checkout


@pytest.fixture
def checkout(checkout_with_a_bento: Path, tmp_path: Path) -> Path:
    """A test's own copy of checkout_with_a_bento."""
    copy = tmp_path / "repository"
    shutil.copytree(checkout_with_a_bento, copy, symlinks=True)
    return copy


def build_bento(checkout: Path, **env: str) -> Path:
    """`bash scripts/build-image.sh --bento-only` in checkout: the bento's directory in its store."""
    environment = {
        key: value for key, value in os.environ.items() if key not in ("BENTOML_HOME", "MODEL_TAG")
    }
    result = subprocess.run(
        ["bash", "scripts/build-image.sh", "--bento-only"],
        check=False,
        cwd=checkout,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    name, version = result.stdout.splitlines()[-1].split(":")
    home = Path(env.get("BENTOML_HOME", ".bentoml"))
    bento = (checkout / home if not home.is_absolute() else home) / "bentos" / name / version
    assert (bento / "bento.yaml").is_file(), result.stdout
    return bento


def assert_holds_only_the_bento_files(bento: Path, checkout: Path) -> None:
    """The bento's src/ is bentofile.yaml plus the repository's files that bentofile.yaml's include
    patterns name from the repository root, byte for byte: nothing from any BentoML home."""
    config = yaml.safe_load((checkout / "bentofile.yaml").read_text())
    wanted = {
        path.relative_to(checkout).as_posix()
        for pattern in config["include"]
        for path in checkout.glob(pattern.lstrip("/"))
        if path.is_file()
    }
    assert "bento/service.py" in wanted and "pyproject.toml" in wanted
    src = bento / "src"
    carried = {path.relative_to(src).as_posix() for path in src.rglob("*") if path.is_file()}
    assert not {name for name in carried if ".bentoml" in name}, "the bento carries a BentoML home"
    assert carried == wanted | {"bentofile.yaml"}
    assert all((src / name).read_bytes() == (checkout / name).read_bytes() for name in wanted)
    (model,) = yaml.safe_load((bento / "bento.yaml").read_text())["models"]
    assert model["tag"].startswith("breast_cancer:")


@pytest.mark.slow
@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_the_bento_is_the_same_in_either_directory_order(checkout: Path, tmp_path: Path, order: str) -> None:
    """BENTOML_HOME is the checkout's .bentoml, which already holds a bento: the case where walking
    the repository while writing into it recursed in one directory order and not the other."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": str(site), "DIRECTORY_ORDER": order}
    listing = subprocess.run(
        [sys.executable, "-c", "import os; print(*(entry.name for entry in os.scandir('.')))"],
        cwd=checkout,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listing == sorted(listing, reverse=order == "descending") and ".bentoml" in listing

    assert_holds_only_the_bento_files(build_bento(checkout, **env), checkout)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["inside the repository", "outside the repository"])
def test_the_bento_is_the_same_wherever_bentoml_home_is(checkout: Path, tmp_path: Path, where: str) -> None:
    """A home elsewhere in the repository (not hidden), or outside it; the checkout's own .bentoml,
    with its bento, stays where it is either way."""
    home = "var/bentoml" if where == "inside the repository" else str(tmp_path / "bentoml-home")
    shutil.copytree(checkout / ".bentoml", checkout / home)
    build_bento(checkout, BENTOML_HOME=home)  # the home holds a bento of its own, too
    assert_holds_only_the_bento_files(build_bento(checkout, BENTOML_HOME=home), checkout)


@pytest.mark.slow
def test_a_stale_temporary_directory_of_an_interrupted_build_is_harmless(checkout: Path) -> None:
    """An interrupted build leaves its half-written bento in $BENTOML_HOME/tmp, here one that had
    begun to copy itself into itself."""
    stale = checkout / ".bentoml" / "tmp" / "bentoml_bento_breast_cancer_classifier_stale" / "src"
    nested = stale
    for _ in range(8):
        for name in ("bento/service.py", "wdbc/__init__.py", "pyproject.toml"):
            (nested / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(checkout / name, nested / name)
        nested = nested / stale.relative_to(checkout)
    assert_holds_only_the_bento_files(build_bento(checkout), checkout)


@pytest.mark.slow
def test_the_bento_carries_exactly_the_resolved_model(tmp_path: Path, runs: dict[str, TrainingRun]) -> None:
    """The repository itself, a store outside it holding two models, and MODEL_TAG naming the older."""
    home = tmp_path / "bentoml-home"
    with bentoml_store(home):
        wanted = str(training.save(runs["seed 1"]).tag)
        training.save(runs["seed 2"])  # the store's latest, which the image must not pick up
    bento = build_bento(REPO_ROOT, BENTOML_HOME=str(home), MODEL_TAG=wanted)

    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert [model["tag"] for model in info["models"]] == [wanted]
    assert {"name": "MODEL_TAG", "value": wanted, "stage": "all"} in info["envs"]
    assert_holds_only_the_bento_files(bento, REPO_ROOT)
