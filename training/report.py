"""The training report: a printed summary, and Markdown plus PNG plots under reports/<model version>/."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; training runs on machines without a display

import matplotlib.pyplot as plt
from sklearn.calibration import calibration_curve
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from training.evaluation import HoldoutEvaluation
from wdbc import ModelMetadata


def summary(metadata: ModelMetadata, holdout: HoldoutEvaluation) -> str:
    cv = metadata.metrics.cross_validation
    scores = holdout.metrics
    lineage = metadata.lineage
    lines = [
        f"dataset: {lineage.dataset_rows} rows, sha256 {lineage.dataset_sha256[:16]}..., seed {lineage.seed}",
        f"decision threshold (malignant if probability >= t): {metadata.threshold:.4f}",
        "cross-validation of the training part (gated):",
        *(
            f"  {name:<17} {cv[name].mean:.4f} ± {cv[name].std:.4f}  (gate >= {minimum})"
            for name, minimum in metadata.quality_gate.items()
        ),
        f"held-out part, {scores.rows} rows (reported, not gated):",
        f"  accuracy          {scores.accuracy:.4f}",
        f"  roc_auc           {scores.roc_auc:.4f}",
        f"  confusion matrix  [[TN FP] [FN TP]] = {scores.confusion_matrix}",
        holdout.report,
    ]
    return "\n".join(lines)


def write(
    directory: Path, model_tag: str, metadata: ModelMetadata, holdout: HoldoutEvaluation, threshold: float
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    labels, probabilities, predictions = holdout.labels, holdout.probabilities, holdout.predictions

    figure, axes = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(labels, probabilities, name="held-out", ax=axes)
    axes.set_title("ROC curve (malignant = positive)")
    _save(figure, directory / "roc_curve.png")

    figure, axes = plt.subplots(figsize=(5, 5))
    ConfusionMatrixDisplay.from_predictions(
        labels, predictions, labels=[0, 1], display_labels=["benign", "malignant"], ax=axes, colorbar=False
    )
    axes.set_title(f"Confusion matrix at threshold {threshold:.3f}")
    _save(figure, directory / "confusion_matrix.png")

    figure, (calibration, histogram) = plt.subplots(1, 2, figsize=(10, 4.5))
    observed, predicted = calibration_curve(labels, probabilities, n_bins=8, strategy="quantile")
    calibration.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    calibration.plot(predicted, observed, marker="o", label="model")
    calibration.set(
        xlabel="predicted probability of malignancy", ylabel="observed share malignant", title="Calibration"
    )
    calibration.legend()
    for code, name in ((0, "benign"), (1, "malignant")):
        histogram.hist(probabilities[labels == code], bins=20, range=(0, 1), alpha=0.6, label=name)
    histogram.axvline(threshold, color="black", linestyle="--", label="threshold")
    histogram.set(xlabel="predicted probability of malignancy", ylabel="held-out rows", title="Probabilities")
    histogram.legend()
    _save(figure, directory / "probabilities.png")

    (directory / "classification_report.txt").write_text(holdout.report)
    (directory / "report.md").write_text(
        f"# Training report: `{model_tag}`\n\n"
        f"```\n{summary(metadata, holdout)}\n```\n\n"
        "![ROC curve](roc_curve.png)\n\n"
        "![Confusion matrix](confusion_matrix.png)\n\n"
        "![Calibration and probabilities](probabilities.png)\n"
    )
    return directory


def _save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
