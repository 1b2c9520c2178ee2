"""What scripts/build-image.sh packages: one exact model tag, and a build context holding only the bento.

    python -m training.image model-tag [--registry DIR]    # prints the exact tag to build with
    python -m training.image context TAG DIRECTORY         # a build context for `bentoml build DIRECTORY`

The tag, from the store at BENTOML_HOME:
  1. MODEL_TAG, if set, resolved to its exact version (`breast_cancer:latest` names no version);
  2. else the registry's promoted model, if the store has it;
  3. else the store's latest breast_cancer model, resolved to its exact version.
The image then serves that version whatever else the store holds: the bento carries only it, and
the image's MODEL_TAG names it, so /model answers the tag the image was built with.

The context is a new directory holding a generated bentofile.yaml (naming only TAG, with MODEL_TAG=TAG)
and a copy of exactly the files it names: its include patterns, anchored to the repository root, and
the files its options refer to (requirements, Dockerfile template). `bentoml build` walks its context
while it writes the bento under $BENTOML_HOME/tmp: with the repository as the context and .bentoml/
(the default BENTOML_HOME) inside it, it would copy its own output and earlier bentos into the bento
and, in some directory orders, recurse until a path is too long. The context holds no BentoML home,
so the bento is the same in every directory order, whatever BENTOML_HOME is and holds.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bentoml
import yaml
from pathspec import PathSpec

from training.registry import Registry, RegistryError
from wdbc import MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
BENTOFILE = REPO_ROOT / "bentofile.yaml"
MODEL_TAG_ENV = "MODEL_TAG"
# Options whose value names a file of the build context (BentoML resolves them against it).
FILE_OPTIONS = (
    ("python", "requirements_txt"),
    ("docker", "dockerfile_template"),
    ("docker", "setup_script"),
    ("conda", "environment_yml"),
)
# Never searched for bento files: VCS data, virtual environments and bytecode (BentoML skips the same),
# and hidden directories such as .bentoml/ and .tools/, which hold generated state.
PRUNED_DIRECTORIES = {"__pycache__", "venv"}


class ImageError(Exception):
    """No model to build with, or a bentofile that names what the repository lacks."""


def resolve_model_tag(requested: str | None, registry: Registry) -> tuple[str, str]:
    """The exact tag to build with, and why that one (see the module docstring)."""
    if requested:
        try:
            return str(bentoml.models.get(requested).tag), f"MODEL_TAG={requested}"
        except bentoml.exceptions.NotFound:
            raise ImageError(
                f"MODEL_TAG={requested}: no such model in the store {store_location()}; import the "
                "promoted one (make import-model) or train one (make train)"
            ) from None
        except bentoml.exceptions.BentoMLException as error:  # e.g. an invalid tag
            raise ImageError(f"MODEL_TAG={requested}: {error}") from None
    promoted = registry.promoted_tag()
    if promoted is not None:
        try:
            return str(bentoml.models.get(promoted).tag), f"promoted in {registry.path}"
        except bentoml.exceptions.NotFound:
            print(
                f"warning: the promoted model {promoted} is not in the store {store_location()} "
                "(make import-model imports it); building with the store's latest model",
                file=sys.stderr,
            )
    try:
        return str(bentoml.models.get(f"{MODEL_NAME}:latest").tag), f"latest in {store_location()}"
    except bentoml.exceptions.NotFound:
        raise ImageError(
            f"no {MODEL_NAME} model in the store {store_location()}: train one (make train)"
        ) from None


def bentofile(source: dict[str, Any], tag: str) -> dict[str, Any]:
    """The source bentofile with exactly one model, `tag`, and MODEL_TAG=tag for the service."""
    version = tag.partition(":")[2]
    if not version or version == "latest":
        raise ImageError(
            f"{tag}: an image is built with an exact model version, not {version or 'no version'}"
        )
    config = copy.deepcopy(source)
    config["models"] = [tag]
    envs = [env for env in config.get("envs") or [] if env.get("name") != MODEL_TAG_ENV]
    config["envs"] = [*envs, {"name": MODEL_TAG_ENV, "value": tag}]
    # A pattern without a slash matches at any depth (`pyproject.toml` matched copies inside
    # .bentoml/); anchored, each matches only where the source bentofile's author meant.
    config["include"] = [anchored(pattern) for pattern in config.get("include") or ["*"]]
    return config


def anchored(pattern: str) -> str:
    """A gitignore-style pattern that matches from the root of the build context only."""
    negated, body = (pattern[0], pattern[1:]) if pattern.startswith("!") else ("", pattern)
    return pattern if body.startswith(("/", "**/")) else f"{negated}/{body}"


def write_context(tag: str, directory: Path, source: Path = BENTOFILE, root: Path = REPO_ROOT) -> Path:
    """Create `directory` with the bentofile for `tag` and a copy of the files the bento needs."""
    config = bentofile(yaml.safe_load(source.read_text()), tag)
    # Listed in full before anything is written, so the copy is never part of what is copied.
    files = sorted({*bento_files(config, root), *option_files(config, root)})
    directory.mkdir(parents=True)
    for relative in files:
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, directory / relative)
    header = f"# Generated from {source.name} by training/image.py for {tag}; not for editing.\n"
    (directory / "bentofile.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))
    return directory


def bento_files(config: dict[str, Any], root: Path) -> Iterator[str]:
    """The files under root that the bentofile's include and exclude patterns select, as BentoML does."""
    include = PathSpec.from_lines("gitwildmatch", config["include"])
    exclude = PathSpec.from_lines("gitwildmatch", config.get("exclude") or [])
    home = Path(os.environ.get("BENTOML_HOME", "~/bentoml")).expanduser().resolve()
    for current, directories, names in os.walk(root):
        here = Path(current)
        directories[:] = [
            name
            for name in directories
            if not name.startswith(".") and name not in PRUNED_DIRECTORIES and (here / name).resolve() != home
        ]
        for name in names:
            relative = (here / name).relative_to(root).as_posix()
            if include.match_file(relative) and not exclude.match_file(relative):
                yield relative


def option_files(config: dict[str, Any], root: Path) -> Iterator[str]:
    """The files the bentofile's options name (requirements, Dockerfile template, ...)."""
    named = [
        ((section, key), config[section][key])
        for section, key in FILE_OPTIONS
        if (config.get(section) or {}).get(key)
    ]
    named += [(("python", "wheels"), wheel) for wheel in (config.get("python") or {}).get("wheels") or []]
    description = config.get("description") or ""
    if description.startswith("file:"):
        named.append((("description",), description.removeprefix("file:")))
    for option, name in named:
        path = (root / name).resolve()
        if not path.is_file() or not path.is_relative_to(root):
            raise ImageError(f"{'.'.join(option)}: {name} is not a file of the repository")
        yield path.relative_to(root).as_posix()


def store_location() -> str:
    """The store BentoML uses, as the user named it (for messages)."""
    return os.environ.get("BENTOML_HOME", "~/bentoml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    tag_parser = commands.add_parser("model-tag", help="print the exact model tag to build the image with")
    tag_parser.add_argument("--registry", type=Path, default=None, help="default: $REGISTRY, else registry/")
    context_parser = commands.add_parser(
        "context", help="create a build context: the bentofile for one model and the files it names"
    )
    context_parser.add_argument("tag")
    context_parser.add_argument("directory", type=Path, help="created; must not exist")
    args = parser.parse_args(argv)

    try:
        if args.command == "model-tag":
            tag, why = resolve_model_tag(os.environ.get(MODEL_TAG_ENV), Registry.at(args.registry))
            print(f"model: {tag} ({why})", file=sys.stderr)
            print(tag)
        else:
            write_context(args.tag, args.directory)
    except (ImageError, RegistryError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
