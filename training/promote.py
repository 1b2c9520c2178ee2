"""Promote a trained model only when it is at least as good as the promoted one, measured on the same rows.

    python -m training.promote promote breast_cancer:<version> [--data CSV] [--registry DIR]
    python -m training.promote import [--registry DIR]   # the promoted model into $BENTOML_HOME's store
    python -m training.promote status [--registry DIR]   # the promoted model and the decisions so far

The rule. C is the candidate (a model in the BentoML store), P the promoted model (the registry, see
training/registry.py), and the data file must be the one C was trained on: its SHA-256 must equal
C's lineage.dataset_sha256. The file is split as training split it, with C's seed, into a training
part T and a held-out part H, and C must be what its recipe gives there (its stored pipeline,
cloned and refitted on T exactly as training fits, reproduces C's threshold and probabilities).
If any of that fails, nothing is compared and nothing changes (exit 2). Then each model's recipe
(a clone of its stored pipeline, refitted on each fold's training rows with the threshold chosen
inside the fold by training's rule) is scored on the same 25 folds of T (training.evaluation.cv_folds,
C's seed), and C is REFUSED when
  1. it fails the quality gate on those folds (training.evaluation.QUALITY_GATE), or, if there is a P,
  2. for any gated metric its mean over the folds is below P's by more than TOLERANCE (0.005), or
  3. its malignant recall on H is below that of P's recipe refitted on T.
Otherwise C is PROMOTED: exported into the registry (`bentoml models export`) and named in
promoted.json. Without a P, passing the gate is enough. Every decision is appended to the registry's
history.jsonl with the metrics it compared. Exit status: 0 promoted (or already promoted), 1 refused,
2 nothing compared.

Recipes, not the stored models, are compared on the folds because P may come from other data or
another seed: its stored pipeline may have been fitted on rows that are in C's held-out part, which
would flatter it; refitted on C's rows, both are measured alike. The reproducibility check ties the
recipe that was measured to the model that would be served.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from training.dataset import DEFAULT_CSV, Dataset, DatasetError, load_csv
from training.evaluation import QUALITY_GATE, TrainedModel, gate_failures, score, summarise
from training.registry import Registry, RegistryError
from training.train import fit, recipe_fold_scores, split
from wdbc import MetadataError, ModelMetadata

# Below one row's weight in a fold (~0.011 accuracy, ~0.03 malignant recall): noise-sized shortfalls
# only are forgiven.
TOLERANCE = 0.005
HOLDOUT_METRIC = "recall_malignant"
# Refitting on the same rows with the same seed repeats the stored model to the last bit on one
# machine; this allows for another machine's floating point.
REPRODUCIBLE_ATOL = 1e-6


class CannotCompare(Exception):
    """The candidate, its data or the registry do not allow a comparison."""


@dataclass(frozen=True)
class Scores:
    tag: str
    folds: pd.DataFrame  # one row per cross-validation fold, one column per gated metric
    holdout_recall: float  # malignant recall on the held-out part H

    def means(self) -> dict[str, float]:
        return {name: float(self.folds[name].mean()) for name in QUALITY_GATE}


@dataclass(frozen=True)
class Decision:
    candidate: Scores
    promoted: Scores | None
    reasons: list[str]  # empty: promote
    dataset_sha256: str
    seed: int
    train_rows: int
    holdout_rows: int

    @property
    def accepted(self) -> bool:
        return not self.reasons

    def history_entry(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.tag,
            "promoted_before": None if self.promoted is None else self.promoted.tag,
            "outcome": "promoted" if self.accepted else "refused",
            "reasons": self.reasons,
            "dataset_sha256": self.dataset_sha256,
            "seed": self.seed,
            "tolerance": TOLERANCE,
            "cross_validation": {
                "folds": len(self.candidate.folds),
                "candidate": self.candidate.means(),
                "promoted": None if self.promoted is None else self.promoted.means(),
            },
            f"holdout_{HOLDOUT_METRIC}": {
                "candidate": self.candidate.holdout_recall,
                "promoted": None if self.promoted is None else self.promoted.holdout_recall,
            },
        }


def refusals(candidate: Scores, promoted: Scores | None) -> list[str]:
    """The rule (module docstring) on two models' scores: the reasons to refuse, none to promote."""
    reasons = gate_failures(summarise(candidate.folds[list(QUALITY_GATE)]))
    if promoted is None:
        return reasons
    ours, theirs_by_name = candidate.means(), promoted.means()
    for name in QUALITY_GATE:
        mine, theirs = ours[name], theirs_by_name[name]
        if mine < theirs - TOLERANCE:
            reasons.append(
                f"{name}: cross-validated mean {mine:.4f} is {theirs - mine:.4f} below the promoted "
                f"model's {theirs:.4f} on the same folds (tolerance {TOLERANCE})"
            )
    if candidate.holdout_recall < promoted.holdout_recall:
        reasons.append(
            f"held-out malignant recall {candidate.holdout_recall:.4f} < the promoted model's "
            f"{promoted.holdout_recall:.4f} on the same rows"
        )
    return reasons


def compare(candidate: bentoml.Model, promoted: bentoml.Model | None, data: Dataset) -> Decision:
    """Score both models as the rule says (module docstring) and decide."""
    try:
        metadata = ModelMetadata.parse(candidate.info.metadata)
    except MetadataError as error:
        raise CannotCompare(f"{candidate.tag}: {error}") from None
    lineage = metadata.lineage
    if data.sha256 != lineage.dataset_sha256:
        raise CannotCompare(
            f"{candidate.tag} was trained on data with sha256 {lineage.dataset_sha256}, this file has "
            f"{data.sha256}: compare on the file it was trained on (--data)"
        )
    seed = lineage.seed
    # The matrices are tiny: BLAS threads only add contention (as in training).
    with threadpool_limits(limits=1):
        train_x, test_x, train_y, test_y = split(data, seed)
        stored = TrainedModel(bentoml.sklearn.load_model(candidate), metadata.threshold)
        _check_reproducible(str(candidate.tag), stored, train_x, train_y, test_x, seed)
        candidate_scores = Scores(
            tag=str(candidate.tag),
            folds=recipe_fold_scores(train_x, train_y, seed, stored.pipeline),
            holdout_recall=score(stored, test_x, test_y)[HOLDOUT_METRIC],
        )
        promoted_scores = None
        if promoted is not None:
            recipe = bentoml.sklearn.load_model(promoted)
            promoted_scores = Scores(
                tag=str(promoted.tag),
                folds=recipe_fold_scores(train_x, train_y, seed, recipe),
                holdout_recall=score(fit(train_x, train_y, seed, recipe), test_x, test_y)[HOLDOUT_METRIC],
            )
    return Decision(
        candidate=candidate_scores,
        promoted=promoted_scores,
        reasons=refusals(candidate_scores, promoted_scores),
        dataset_sha256=data.sha256,
        seed=seed,
        train_rows=len(train_y),
        holdout_rows=len(test_y),
    )


def _check_reproducible(
    tag: str,
    stored: TrainedModel,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    seed: int,
) -> None:
    refitted = fit(train_x, train_y, seed, stored.pipeline)
    same = abs(refitted.threshold - stored.threshold) <= REPRODUCIBLE_ATOL and np.allclose(
        refitted.probabilities(test_x), stored.probabilities(test_x), rtol=0, atol=REPRODUCIBLE_ATOL
    )
    if not same:
        raise CannotCompare(
            f"{tag} is not what its own recipe gives on this data with seed {seed} (threshold "
            f"{stored.threshold:.6f}, refitted {refitted.threshold:.6f}): it was not trained by "
            "training.train on this file, so the comparison would not measure it"
        )


def describe(decision: Decision) -> str:
    candidate, promoted = decision.candidate, decision.promoted
    lines = [
        f"candidate {candidate.tag}; promoted {promoted.tag if promoted else '(none yet)'}",
        (
            f"data sha256 {decision.dataset_sha256[:16]}..., seed {decision.seed}: "
            f"{len(candidate.folds)} cross-validation folds of the {decision.train_rows}-row training part, "
            f"held-out part {decision.holdout_rows} rows"
        ),
        f"  {'metric':<26}{'candidate':>10}{'promoted':>10}{'change':>9}  gate",
    ]
    theirs = promoted.means() if promoted else {}
    for name, minimum in QUALITY_GATE.items():
        mine = candidate.means()[name]
        other = f"{theirs[name]:>10.4f}{mine - theirs[name]:>+9.4f}" if promoted else f"{'-':>10}{'':>9}"
        lines.append(f"  {name + ' (CV mean)':<26}{mine:>10.4f}{other}  >= {minimum}")
    other = (
        f"{promoted.holdout_recall:>10.4f}{candidate.holdout_recall - promoted.holdout_recall:>+9.4f}"
        if promoted
        else f"{'-':>10}"
    )
    lines.append(f"  {'malignant recall (held-out)':<26}{candidate.holdout_recall:>10.4f}{other}")
    if decision.accepted:
        lines.append(f"PROMOTED {candidate.tag}")
    else:
        lines.append(f"REFUSED {candidate.tag}:\n  " + "\n  ".join(decision.reasons))
    return "\n".join(lines)


def promote(tag: str, data_path: Path, registry: Registry) -> int:
    try:
        candidate = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        print(f"error: no model {tag} in the store (BENTOML_HOME)", file=sys.stderr)
        return 2
    try:
        current = registry.promoted()
        if current is not None and current.tag == str(candidate.tag):
            print(f"{candidate.tag} is already the promoted model")
            return 0
        promoted = None if current is None else registry.load(current)
        decision = compare(candidate, promoted, load_csv(data_path))
    except (CannotCompare, DatasetError, FileNotFoundError, RegistryError) as error:
        print(f"error: nothing compared, nothing changed: {error}", file=sys.stderr)
        return 2
    print(describe(decision))
    if decision.accepted:
        registry.promote(candidate)
    registry.record(decision.history_entry())
    print(f"registry {registry.path}: promoted model {registry.promoted_tag() or '(none)'}")
    return 0 if decision.accepted else 1


def import_promoted(registry: Registry) -> int:
    try:
        model, imported = registry.import_promoted()
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{'imported' if imported else 'already in the store:'} {model.tag} ({model.path})")
    return 0


def status(registry: Registry, last: int = 10) -> int:
    try:
        promoted = registry.promoted()
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if promoted is None:
        print(f"registry {registry.path}: no model promoted yet")
    else:
        print(
            f"registry {registry.path}: promoted {promoted.tag} at {promoted.promoted_at} ({promoted.file})"
        )
    for entry in registry.history()[-last:]:
        reasons = "; ".join(entry["reasons"])
        print(
            f"  {entry['time']}  {entry['outcome']:<8} {entry['candidate']}"
            + (f": {reasons}" if reasons else "")
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="registry directory (default: $REGISTRY, else registry/ at the repository root)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    promote_parser = commands.add_parser(
        "promote", parents=[common], help="compare a model with the promoted one; promote it or refuse it"
    )
    promote_parser.add_argument(
        "tag", help="the candidate, e.g. breast_cancer:<version> or breast_cancer:latest"
    )
    promote_parser.add_argument(
        "--data", type=Path, default=DEFAULT_CSV, help="the CSV it was trained on (default: %(default)s)"
    )
    commands.add_parser(
        "import", parents=[common], help="import the promoted model into the store ($BENTOML_HOME)"
    )
    commands.add_parser("status", parents=[common], help="the promoted model and the latest decisions")
    args = parser.parse_args(argv)

    registry = Registry.at(args.registry)
    if args.command == "promote":
        return promote(args.tag, args.data, registry)
    if args.command == "import":
        return import_promoted(registry)
    return status(registry)


if __name__ == "__main__":
    sys.exit(main())
