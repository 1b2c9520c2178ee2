"""What scripts/build-image.sh packages: one exact model tag, and a bentofile naming exactly that model.

    python -m training.image model-tag [--registry DIR]    # prints the exact tag to build with
    python -m training.image bentofile TAG OUTPUT           # bentofile.yaml with only TAG and MODEL_TAG=TAG

The tag, from the store at BENTOML_HOME:
  1. MODEL_TAG, if set, resolved to its exact version (`breast_cancer:latest` names no version);
  2. else the registry's promoted model, if the store has it;
  3. else the store's latest breast_cancer model, resolved to its exact version.
The image then serves that version whatever else the store holds: the bento carries only it, and
the image's MODEL_TAG names it, so /model answers the tag the image was built with.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any

import bentoml
import yaml

from training.registry import Registry, RegistryError
from wdbc import MODEL_NAME

BENTOFILE = Path(__file__).resolve().parents[1] / "bentofile.yaml"
MODEL_TAG_ENV = "MODEL_TAG"


class ImageError(Exception):
    """No model to build with."""


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
    return config


def write_bentofile(tag: str, output: Path, source: Path = BENTOFILE) -> Path:
    config = bentofile(yaml.safe_load(source.read_text()), tag)
    header = f"# Generated from {source.name} by training/image.py for {tag}; not for editing.\n"
    output.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return output


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
    file_parser = commands.add_parser("bentofile", help="write a bentofile naming exactly one model")
    file_parser.add_argument("tag")
    file_parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)

    try:
        if args.command == "model-tag":
            tag, why = resolve_model_tag(os.environ.get(MODEL_TAG_ENV), Registry.at(args.registry))
            print(f"model: {tag} ({why})", file=sys.stderr)
            print(tag)
        else:
            write_bentofile(args.tag, args.output)
    except (ImageError, RegistryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
