"""The model registry: which model is promoted, an exported copy of it, and every promotion decision.

A directory (default `registry/` at the repository root; `--registry DIR` or the REGISTRY environment
variable choose another) holding:

    promoted.json                        the promoted model: tag, file, sha256 of the file, time
    models/<name>-<version>.bentomodel   each model ever promoted, as `bentoml models export` writes it
    history.jsonl                        one JSON object a line per decision (training/promote.py)

A BentoML store (BENTOML_HOME) holds whatever was trained there; the registry says which model is
promoted and carries it, so any store can take it in (`python -m training.promote import`, which is
`bentoml models import` of the promoted file after checking its sha256).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml

DEFAULT_REGISTRY = Path(__file__).resolve().parents[1] / "registry"
REGISTRY_ENV = "REGISTRY"


class RegistryError(Exception):
    """The registry's files are missing, malformed or do not match each other."""


@dataclass(frozen=True)
class Promoted:
    tag: str  # exact: name:version
    file: str  # the exported model, relative to the registry
    sha256: str  # of that file
    promoted_at: str  # ISO 8601, UTC


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Registry:
    path: Path

    @classmethod
    def at(cls, path: Path | None = None) -> Registry:
        """path, else $REGISTRY, else registry/ at the repository root."""
        return cls(Path(path or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY))

    @property
    def pointer(self) -> Path:
        return self.path / "promoted.json"

    @property
    def history_file(self) -> Path:
        return self.path / "history.jsonl"

    def promoted(self) -> Promoted | None:
        """The promoted model, or None when nothing has been promoted yet."""
        if not self.pointer.exists():
            return None
        try:
            return Promoted(**json.loads(self.pointer.read_text()))
        except (json.JSONDecodeError, TypeError) as error:
            raise RegistryError(f"{self.pointer}: not a promoted-model record ({error})") from None

    def promoted_tag(self) -> str | None:
        promoted = self.promoted()
        return None if promoted is None else promoted.tag

    def exported_file(self, promoted: Promoted) -> Path:
        """The promoted model's exported file, after checking it is the one that was promoted."""
        path = self.path / promoted.file
        if not path.is_file():
            raise RegistryError(f"{path}: the promoted model {promoted.tag} is missing from the registry")
        if file_sha256(path) != promoted.sha256:
            raise RegistryError(
                f"{path}: sha256 differs from the one recorded when {promoted.tag} was promoted"
            )
        return path

    def load(self, promoted: Promoted) -> bentoml.Model:
        """The promoted model, read from its exported file into a temporary directory (no store)."""
        model = bentoml.Model.import_from(str(self.exported_file(promoted)))
        if str(model.tag) != promoted.tag:
            raise RegistryError(f"{self.path / promoted.file} holds {model.tag}, not {promoted.tag}")
        return model

    def promote(self, model: bentoml.Model) -> Promoted:
        """Export the model into the registry and point promoted.json at it."""
        name = f"models/{model.tag.name}-{model.tag.version}.bentomodel"
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            # Exported beside the target and renamed: an interrupted export leaves no partial file.
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                exported = Path(model.export(str(Path(scratch) / target.name)))
                os.replace(exported, target)
        promoted = Promoted(tag=str(model.tag), file=name, sha256=file_sha256(target), promoted_at=now())
        self._write_atomically(self.pointer, json.dumps(asdict(promoted), indent=2) + "\n")
        return promoted

    def import_promoted(self) -> tuple[bentoml.Model, bool]:
        """The promoted model in the current store (BENTOML_HOME), imported unless already there;
        the flag says whether it was imported."""
        promoted = self.promoted()
        if promoted is None:
            raise RegistryError(f"{self.path}: no model has been promoted yet")
        try:
            return bentoml.models.get(promoted.tag), False
        except bentoml.exceptions.NotFound:
            return bentoml.models.import_model(str(self.exported_file(promoted))), True

    def record(self, entry: dict[str, Any]) -> None:
        """Append one decision to the history."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self.history_file.open("a") as stream:
            stream.write(json.dumps({"time": now(), **entry}) + "\n")

    def history(self) -> list[dict[str, Any]]:
        if not self.history_file.exists():
            return []
        return [json.loads(line) for line in self.history_file.read_text().splitlines() if line.strip()]

    def _write_atomically(self, path: Path, text: str) -> None:
        # Written beside and renamed: a reader sees the old pointer or the new one, never half of one.
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text)
        os.replace(partial, path)
