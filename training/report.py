"""The training report: a printed summary, and Markdown plus PNG plots under reports/<model version>/.

Everything here is drawn from a TrainingRun (training/evaluation.py): the held-out part was scored
once by training, and this module only presents those numbers. It does not import training.train.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; training runs on machines without a display

import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
    fbeta_score,
    precision_recall_curve,
    precision_score,
    recall_score,
)

from training.domain import DomainFit
from training.evaluation import ThresholdChoice, TrainingRun
from wdbc import CLASS_LABELS, FEATURE_NAMES, MALIGNANT_LABEL, STATISTICS, feature_name

# Three measurements of one nucleus's size: almost collinear, so their coefficients share one signal.
SIZE_MEASUREMENTS = ("radius", "perimeter", "area")


def summary(run: TrainingRun) -> str:
    metadata = run.metadata
    cv = metadata.metrics.cross_validation
    scores = run.holdout.metrics
    lineage = metadata.lineage
    chosen = threshold_scores(run.threshold_choice, metadata.threshold)
    lines = [
        f"dataset: {lineage.dataset_rows} rows, sha256 {lineage.dataset_sha256[:16]}..., seed {lineage.seed}",
        "class balance (rows): "
        + "; ".join(f"{name} {train} training / {held} held-out" for name, train, held in class_counts(run)),
        f"decision threshold (malignant if probability >= t): {metadata.threshold:.4f}",
        f"  {metadata.threshold_rule}",
        (
            f"  out-of-fold at t: F{run.threshold_choice.beta:g} {chosen['f_beta']:.4f}, "
            f"recall {chosen['recall']:.4f}, precision {chosen['precision']:.4f}"
        ),
        "cross-validation of the training part (gated):",
        *(
            f"  {name:<17} {cv[name].mean:.4f} ± {cv[name].std:.4f}  (gate >= {minimum})"
            for name, minimum in metadata.quality_gate.items()
        ),
        f"held-out part, {scores.rows} rows (reported, not gated):",
        f"  accuracy          {scores.accuracy:.4f}",
        f"  roc_auc           {scores.roc_auc:.4f}",
        f"  average precision {run.holdout.average_precision:.4f}",
        f"  confusion matrix  [[TN FP] [FN TP]] = {scores.confusion_matrix}",
        *domain_summary(run.domain_fit),
        f"promoted model when trained: {lineage.compared_with or '(none)'}",
        run.holdout.report,
    ]
    return "\n".join(lines)


def domain_summary(fit: DomainFit) -> list[str]:
    domain, calibration = fit.domain, fit.domain.calibration
    k = f"{domain.range_factor:g}"
    return [
        f"validity domain: hard limits [max(0, min - {k}·range), max + {k}·range] of the training part",
        f"  out-of-distribution threshold {domain.threshold:.2f} (robust Mahalanobis distance):",
        f"  {domain.threshold_rule}",
        f"  held-out part: {calibration.held_out_refused} of {calibration.held_out_rows} rows outside a "
        + f"hard limit, {calibration.held_out_indeterminate} above the threshold",
    ]


def class_counts(run: TrainingRun) -> list[tuple[str, int, int]]:
    """(class, rows in the training part, rows in the held-out part), in class-code order."""
    return [
        (name, int((run.train_labels == code).sum()), int((run.holdout.labels == code).sum()))
        for code, name in enumerate(CLASS_LABELS)
    ]


def threshold_scores(choice: ThresholdChoice, threshold: float) -> dict[str, float]:
    """F-beta, recall and precision of the out-of-fold probabilities at one threshold."""
    predicted = choice.probabilities >= threshold
    return {
        "f_beta": float(fbeta_score(choice.labels, predicted, beta=choice.beta, zero_division=0)),
        "recall": float(recall_score(choice.labels, predicted, zero_division=0)),
        "precision": float(precision_score(choice.labels, predicted, zero_division=0)),
    }


def standardized_coefficients(run: TrainingRun) -> dict[str, float]:
    """The classifier's coefficients, per feature: it sees the StandardScaler's output, so each is the
    change in log-odds of malignancy per standard deviation of its feature."""
    classifier = run.model.pipeline.named_steps["classifier"]
    return dict(zip(FEATURE_NAMES, map(float, classifier.coef_[0]), strict=True))


def size_correlations(features: np.ndarray) -> dict[str, tuple[float, float]]:
    """Per statistic, the smallest and largest Pearson r among radius, perimeter and area."""
    ranges = {}
    for statistic in STATISTICS:
        columns = [
            FEATURE_NAMES.index(feature_name(measurement, statistic)) for measurement in SIZE_MEASUREMENTS
        ]
        r = np.corrcoef(features[:, columns], rowvar=False)[np.triu_indices(len(columns), k=1)]
        ranges[statistic] = (float(r.min()), float(r.max()))
    return ranges


def write(directory: Path, model_tag: str, run: TrainingRun) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    holdout, metadata = run.holdout, run.metadata
    labels, probabilities, predictions = holdout.labels, holdout.probabilities, holdout.predictions
    threshold = metadata.threshold

    figure, axes = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(
        labels,
        probabilities,
        ax=axes,
        curve_kwargs={"label": f"held-out (AUC = {holdout.metrics.roc_auc:.3f})"},
    )
    axes.set_title("ROC curve (malignant = positive)")
    _save(figure, directory / "roc_curve.png")

    figure, axes = plt.subplots(figsize=(5, 5))
    PrecisionRecallDisplay.from_predictions(
        labels,
        probabilities,
        ax=axes,
        plot_chance_level=True,
        curve_kwargs={"label": f"held-out (AP = {holdout.average_precision:.3f})"},
    )
    malignant = holdout.metrics.per_class[MALIGNANT_LABEL]
    axes.plot(malignant.recall, malignant.precision, "ko", label=f"threshold {threshold:.3f}")
    axes.set_title("Precision-recall curve (malignant = positive)")
    axes.legend(loc="lower left")
    _save(figure, directory / "precision_recall.png")

    figure, axes = plt.subplots(figsize=(5, 5))
    ConfusionMatrixDisplay.from_predictions(
        labels, predictions, labels=[0, 1], display_labels=list(CLASS_LABELS), ax=axes, colorbar=False
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
    for code, name in enumerate(CLASS_LABELS):
        histogram.hist(probabilities[labels == code], bins=20, range=(0, 1), alpha=0.6, label=name)
    histogram.axvline(threshold, color="black", linestyle="--", label="threshold")
    histogram.set(xlabel="predicted probability of malignancy", ylabel="held-out rows", title="Probabilities")
    histogram.legend()
    _save(figure, directory / "probabilities.png")

    _threshold_plot(run.threshold_choice, directory / "threshold.png")
    _domain_score_plot(run.domain_fit, holdout.features, directory / "domain_scores.png")
    _domain_limits_plot(
        run.domain_fit, run.reference.features, holdout.features, directory / "domain_limits.png"
    )
    coefficients = standardized_coefficients(run)
    _coefficient_plot(coefficients, directory / "coefficients.png")

    (directory / "classification_report.txt").write_text(holdout.report)
    (directory / "report.md").write_text(_markdown(model_tag, run, coefficients))
    return directory


def _markdown(model_tag: str, run: TrainingRun, coefficients: dict[str, float]) -> str:
    choice, threshold = run.threshold_choice, run.metadata.threshold
    beta = f"F{choice.beta:g}"
    counts = class_counts(run)
    balance = "\n".join(f"| {name} | {train} | {held} | {train + held} |" for name, train, held in counts)
    totals = [sum(column) for column in zip(*(row[1:] for row in counts), strict=True)]
    compared = {
        label: threshold_scores(choice, value)
        for label, value in ((f"chosen, {threshold:.4f}", threshold), (f"cap, {choice.cap:g}", choice.cap))
    }
    threshold_rows = "\n".join(
        f"| {label} | {s['f_beta']:.4f} | {s['recall']:.4f} | {s['precision']:.4f} |"
        for label, s in compared.items()
    )
    ordered = sorted(coefficients.items(), key=lambda item: abs(item[1]), reverse=True)
    coefficient_rows = "\n".join(f"| `{name}` | {value:+.3f} |" for name, value in ordered)
    correlations = ", ".join(
        f"{statistic} {low:.3f}–{high:.3f}"
        for statistic, (low, high) in size_correlations(run.reference.features).items()
    )
    group_sums = ", ".join(
        f"{statistic} {sum(coefficients[feature_name(m, statistic)] for m in SIZE_MEASUREMENTS):+.3f}"
        for statistic in STATISTICS
    )
    return f"""# Training report: `{model_tag}`

```
{summary(run)}
```

## Held-out part

Scored once, after training; reported, not gated (the gate is on cross-validation of the training part).

![ROC curve](roc_curve.png)

![Precision-recall curve](precision_recall.png)

![Confusion matrix](confusion_matrix.png)

![Calibration and probabilities](probabilities.png)

## Class balance

The split is stratified: both parts keep the data's share of each class.

| class | training part | held-out part | all |
|---|---|---|---|
{balance}
| all | {totals[0]} | {totals[1]} | {sum(totals)} |

## Why the threshold is {threshold:.4f}

The rule: the threshold {run.metadata.threshold_rule}. A missed malignant tumour costs far more than a
false alarm, so recall weighs {choice.beta:g} times precision. Out-of-fold probabilities of the
{len(choice.labels)} training rows, at the chosen threshold and at the cap:

| threshold | {beta} | malignant recall | precision |
|---|---|---|---|
{threshold_rows}

![{beta}, recall and precision over thresholds](threshold.png)

## Standardized coefficients

The logistic regression sees the StandardScaler's output, so each coefficient is the change in
log-odds of malignancy per standard deviation of its feature (positive: towards malignant).

Radius, perimeter and area are almost collinear (Pearson r on the training part: {correlations}):
the model splits one size signal among them, so read their coefficients as a group, not one by
one. Their sums per statistic: {group_sums}.

![Standardized coefficients](coefficients.png)

| feature | coefficient |
|---|---|
{coefficient_rows}

{_domain_markdown(run.domain_fit, run.holdout.features)}"""


def mix_ups(features: np.ndarray) -> dict[str, np.ndarray]:
    """Rows as a client who mixed up units would send them: the size features, or all, x 0.1 or x 10."""
    size = [FEATURE_NAMES.index(feature_name(m, s)) for s in STATISTICS for m in SIZE_MEASUREMENTS]
    scaled = {}
    for factor in (0.1, 10.0):
        sized = features.copy()
        sized[:, size] *= factor
        scaled[f"size features x {factor:g}"] = sized
        scaled[f"all features x {factor:g}"] = features * factor
    return scaled


def _domain_markdown(fit: DomainFit, held_out_features: np.ndarray) -> str:
    domain, calibration = fit.domain, fit.domain.calibration
    limits = "\n".join(
        f"| `{name}` | {low:.4g} | {high:.4g} |"
        for name, low, high in zip(FEATURE_NAMES, domain.low, domain.high, strict=True)
    )
    held = fit.held_out
    caught = {
        label: float(np.mean(fit.domain.outside(rows))) for label, rows in mix_ups(held_out_features).items()
    }
    caught_rows = "\n".join(f"| {label} | {share:.1%} |" for label, share in caught.items())
    return f"""## Validity domain

The service answers only for rows the model can speak to. A value outside its hard limit is refused
(422); a row within every limit whose robust Mahalanobis distance from the training part is above
{domain.threshold:.2f} is answered `indeterminate`, without a diagnosis.

- **Hard limits:** [max(0, min − k·range), max + k·range] of each feature in the training part,
  k = {domain.range_factor:g} (a measurement cannot be negative).
- **Score:** the distance of log(value + offset) from the centre of the training part, in the
  metric of its Minimum Covariance Determinant covariance (support fraction
  {calibration.support_fraction:g}); offset: {domain.log_offset_rule}.
- **Threshold {domain.threshold:.2f}:** {domain.threshold_rule}.
- **Held-out part** ({calibration.held_out_rows} rows, never used to fit or calibrate):
  {calibration.held_out_refused} outside a hard limit, {calibration.held_out_indeterminate} above
  the threshold; its largest distance is {np.max(held[np.isfinite(held)], initial=0):.2f}.

Held-out rows as a client mixing up units would send them, refused or indeterminate:

| held-out rows with | outside the domain |
|---|---|
{caught_rows}

![Distances from the training part](domain_scores.png)

![Hard limits and training ranges](domain_limits.png)

| feature | lowest accepted | highest accepted |
|---|---|---|
{limits}
"""


def _threshold_plot(choice: ThresholdChoice, path: Path) -> None:
    precision, recall, thresholds = precision_recall_curve(choice.labels, choice.probabilities)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    beta2 = choice.beta**2
    denominator = beta2 * precision + recall
    f_beta = np.divide(
        (1 + beta2) * precision * recall, denominator, out=np.zeros_like(recall), where=denominator > 0
    )
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(thresholds, f_beta, label=f"F{choice.beta:g}", linewidth=2)
    axes.plot(thresholds, recall, label="malignant recall", alpha=0.7)
    axes.plot(thresholds, precision, label="precision", alpha=0.7)
    axes.axvline(choice.threshold, color="black", linestyle="--", label=f"chosen {choice.threshold:.3f}")
    axes.axvspan(choice.cap, 1, color="grey", alpha=0.15, label=f"above the cap {choice.cap:g}")
    axes.set(
        xlabel="threshold on out-of-fold probability of malignancy",
        ylabel="score",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title=f"Threshold choice: F{choice.beta:g} on the training part's out-of-fold probabilities",
    )
    axes.legend(loc="lower left")
    _save(figure, path)


def _domain_score_plot(fit: DomainFit, held_out_features: np.ndarray, path: Path) -> None:
    threshold = fit.domain.threshold
    real = {"training part, out of fold": fit.out_of_fold, "held-out part": fit.held_out}
    scaled = {label: fit.domain.scores(rows) for label, rows in mix_ups(held_out_features).items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in (*real.values(), *scaled.values())])
    bins = np.geomspace(max(finite.min(), 1e-2) * 0.9, max(finite.max(), threshold) * 1.1, 50)
    figure, axes = plt.subplots(figsize=(9, 5))
    for label, values in real.items():
        axes.hist(values[np.isfinite(values)], bins=bins, alpha=0.6, label=f"{label} ({len(values)} rows)")
    for label, values in scaled.items():
        beyond = int(np.isinf(values).sum())
        note = f"; {beyond} beyond a hard limit" if beyond else ""
        axes.hist(
            values[np.isfinite(values)],
            bins=bins,
            histtype="step",
            linewidth=1.5,
            label=f"held-out, {label}{note}",
        )
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.2f}")
    axes.set(
        xscale="log",
        xlabel="robust Mahalanobis distance from the training part (log scale)",
        ylabel="rows",
        title="Validity domain: rows to the right of the threshold are answered indeterminate",
    )
    axes.legend(fontsize=8)
    _save(figure, path)


def _domain_limits_plot(
    fit: DomainFit, training_features: np.ndarray, held_out_features: np.ndarray, path: Path
) -> None:
    """Per feature, in units of its training range from its training minimum: the hard limits, the
    training range [0, 1] and the held-out values."""
    low, high = training_features.min(axis=0), training_features.max(axis=0)
    spread = high - low
    accepted_low = (np.array(fit.domain.low) - low) / spread
    accepted_high = (np.array(fit.domain.high) - low) / spread
    positions = np.arange(len(FEATURE_NAMES))
    figure, axes = plt.subplots(figsize=(8, 9))
    axes.barh(
        positions,
        accepted_high - accepted_low,
        left=accepted_low,
        color="tab:green",
        alpha=0.2,
        label="accepted (hard limits)",
    )
    axes.barh(positions, np.ones_like(spread), left=0, color="tab:green", alpha=0.6, label="training range")
    held = (held_out_features - low) / spread
    features = np.broadcast_to(positions, held.shape)
    axes.plot(held.ravel(), features.ravel(), "k.", markersize=2, alpha=0.5, label="held-out values")
    axes.set_yticks(positions, FEATURE_NAMES, fontsize=8)
    axes.invert_yaxis()
    axes.set(
        xlabel="(value - training minimum) / training range",
        title=f"Hard limits: [max(0, min - {fit.domain.range_factor:g}·range), max + {fit.domain.range_factor:g}·range]",
    )
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncols=3, fontsize=8)
    _save(figure, path)


def _coefficient_plot(coefficients: dict[str, float], path: Path) -> None:
    ordered = sorted(coefficients.items(), key=lambda item: item[1])
    names, values = zip(*ordered, strict=True)
    figure, axes = plt.subplots(figsize=(7, 8))
    colours = ["tab:red" if value > 0 else "tab:blue" for value in values]
    axes.barh(names, values, color=colours)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set(
        xlabel="coefficient (log-odds of malignancy per standard deviation)",
        title="Standardized coefficients\n(radius, perimeter and area: read as a group)",
    )
    axes.tick_params(axis="y", labelsize=8)
    _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
