"""The validity domain (wdbc/domain.py, fitted by training/domain.py): calibration on the real rows,
the scores against scikit-learn's own, and what the service reads from it.

The calibration figures are printed (pytest -s) for the model card:

    .venv/bin/python -m pytest tests/training/test_domain.py -s -k calibration
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from sklearn.covariance import MinCovDet
from sklearn.model_selection import RepeatedStratifiedKFold

from harness.paths import REPO_ROOT
from training import domain as fitting
from training.dataset import Dataset
from wdbc import FEATURE_NAMES, MALIGNANT_EXAMPLE, MEASUREMENTS, MetadataError, ModelMetadata, ValidityDomain
from wdbc.domain import contradictions

SIZE = [
    FEATURE_NAMES.index(f"{m}_{s}") for s in ("mean", "se", "worst") for m in ("radius", "perimeter", "area")
]
RESPLITS = RepeatedStratifiedKFold(
    n_splits=5, n_repeats=10, random_state=20
)  # 50 fits, each row held out 10x
NOISE_ROWS = 200  # per resplit
MAX_FALSE_OUTSIDE = 0.01
MIN_CAUGHT = 0.99


@dataclass
class Counts:
    outside: int = 0  # refused or indeterminate
    refused: int = 0  # outside a hard limit
    rows: int = 0

    def add(self, domain: ValidityDomain, rows: np.ndarray) -> None:
        self.outside += int(domain.outside(rows).sum())
        self.refused += int(np.isinf(domain.scores(rows)).sum())
        self.rows += len(rows)

    @property
    def share(self) -> float:
        return self.outside / self.rows


def bad_inputs(held_out: np.ndarray, train: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each class of input the model cannot speak to, made from real held-out rows."""
    rows = np.arange(len(held_out))
    scaled = {}
    for factor in (0.1, 10.0):
        sized = held_out.copy()
        sized[:, SIZE] *= factor
        scaled[f"size features x {factor:g}"] = sized
        scaled[f"all features x {factor:g}"] = held_out * factor
    negative, zero_size, absurd = held_out.copy(), held_out.copy(), held_out.copy()
    feature = rng.integers(0, len(FEATURE_NAMES), len(held_out))
    negative[rows, feature] = -(held_out[rows, feature] + np.median(train[:, feature], axis=0))
    zero_size[rows, rng.choice(SIZE, len(held_out))] = 0.0
    absurd[rows, feature] = 1000 * train.max(axis=0)[feature]
    impossible = np.concatenate([negative, zero_size, absurd])
    noise = rng.uniform(train.min(axis=0), train.max(axis=0), size=(NOISE_ROWS, len(FEATURE_NAMES)))
    return {
        **scaled,
        "one impossible value": impossible,
        "uniform noise over the training box": noise,
        **columns_mixed_up(held_out),
    }


def columns_mixed_up(rows: np.ndarray) -> dict[str, np.ndarray]:
    """Real rows with columns copied or swapped, as a wrong column mapping would: each value plausible
    alone, the row impossible by the features' definitions."""
    mean, worst = (
        np.array([FEATURE_NAMES.index(f"{m}_{s}") for m in MEASUREMENTS]) for s in ("mean", "worst")
    )
    sizes = [i for i, m in enumerate(MEASUREMENTS) if m in ("radius", "perimeter", "area")]
    copied, swapped = rows.copy(), rows.copy()
    copied[:, worst] = rows[:, mean]
    swapped[:, mean[sizes]], swapped[:, worst[sizes]] = rows[:, worst[sizes]], rows[:, mean[sizes]]
    concave = rows[rows[:, FEATURE_NAMES.index("concave_points_mean")] > 0]
    concave[:, [i for i, name in enumerate(FEATURE_NAMES) if name.startswith("concavity_")]] = 0.0
    return {
        "worst copied from mean": copied,
        "size means and worsts swapped": swapped,
        "concavity 0 with concave points": concave,
    }


def slips(held_out: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One plausible-looking value off by a factor of 10: reported, not required."""
    rows, feature = np.arange(len(held_out)), rng.integers(0, len(FEATURE_NAMES), len(held_out))
    out = {}
    for factor in (0.1, 10.0):
        slipped = held_out.copy()
        slipped[rows, feature] *= factor
        out[f"one feature x {factor:g} (not required)"] = slipped
    return out


@pytest.fixture(scope="module")
def calibration(bundled: Dataset) -> dict[str, Counts]:
    features, labels = bundled.features.to_numpy(), bundled.labels.to_numpy()
    rng = np.random.default_rng(7)
    counts: dict[str, Counts] = {}
    largest_excursion, furthest = 0.0, ""
    for split, (train, held_out) in enumerate(RESPLITS.split(features, labels)):
        fit = fitting.fit_domain(features[train], features[held_out], seed=split)
        counts.setdefault("real held-out rows", Counts()).add(fit.domain, features[held_out])
        inputs = {
            **bad_inputs(features[held_out], features[train], rng),
            **slips(features[held_out], rng),
        }
        for name, rows in inputs.items():
            counts.setdefault(name, Counts()).add(fit.domain, rows)
        low, high = features[train].min(axis=0), features[train].max(axis=0)
        beyond = np.maximum(low - features[held_out], features[held_out] - high) / (high - low)
        if beyond.max() > largest_excursion:
            largest_excursion = float(beyond.max())
            furthest = FEATURE_NAMES[int(np.unravel_index(np.argmax(beyond), beyond.shape)[1])]
    print(f"\nvalidity domain over {RESPLITS.get_n_splits()} disjoint resplits of {len(labels)} real rows:")
    for name, count in counts.items():
        print(
            f"  {name:<42} {count.share:8.2%} of {count.rows} rows refused or indeterminate ({count.refused} refused)"
        )
    print(
        f"  furthest a real held-out value lies beyond its training range: {largest_excursion:.2f} ranges "
        f"({furthest}; hard limits at k = {fitting.RANGE_FACTOR:g})"
    )
    return counts


@pytest.mark.slow
def test_calibration_real_held_out_rows_are_rarely_refused_or_indeterminate(calibration) -> None:
    real = calibration["real held-out rows"]
    assert real.share <= MAX_FALSE_OUTSIDE, real
    assert real.refused == 0, "a real measurement was refused by a hard limit"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "size features x 0.1",
        "size features x 10",
        "all features x 0.1",
        "all features x 10",
        "one impossible value",
        "uniform noise over the training box",
        "worst copied from mean",
        "size means and worsts swapped",
        "concavity 0 with concave points",
    ],
)
def test_calibration_bad_inputs_are_refused_or_indeterminate(calibration, name) -> None:
    assert calibration[name].share >= MIN_CAUGHT, calibration[name]


@pytest.fixture(scope="module")
def fitted(bundled: Dataset) -> tuple[fitting.DomainFit, np.ndarray, np.ndarray]:
    features = bundled.features.to_numpy()
    rng = np.random.default_rng(3)
    held = rng.permutation(len(features))
    train, held_out = features[held[114:]], features[held[:114]]
    return fitting.fit_domain(train, held_out, seed=3), train, held_out


def test_score_is_the_robust_mahalanobis_distance_of_minimum_covariance_determinant(fitted) -> None:
    fit, train, held_out = fitted
    domain = fit.domain
    offset = np.array(domain.log_offset)
    robust = MinCovDet(support_fraction=fitting.SUPPORT_FRACTION, random_state=3).fit(np.log(train + offset))
    expected = np.sqrt(robust.mahalanobis(np.log(held_out + offset)))
    np.testing.assert_allclose(domain.scores(held_out), expected, rtol=1e-9)
    np.testing.assert_allclose(fit.held_out, expected, rtol=1e-9)
    np.testing.assert_allclose(domain.scores(held_out[5]), expected[5:6], rtol=1e-12)  # one row alone


def test_threshold_and_held_out_counts_are_what_the_fit_measured(fitted) -> None:
    fit, train, held_out = fitted
    domain, calibration = fit.domain, fit.domain.calibration
    assert domain.threshold == pytest.approx(np.quantile(fit.out_of_fold, fitting.CALIBRATION_QUANTILE))
    # Out-of-fold rows are further than in-sample ones: the threshold is not the fit's own optimism.
    assert np.median(fit.out_of_fold) > np.median(fit.training)
    assert calibration.out_of_fold_rows == len(train) and calibration.held_out_rows == len(held_out)
    outside = domain.outside(held_out)
    assert calibration.held_out_refused + calibration.held_out_indeterminate == int(outside.sum())
    np.testing.assert_array_equal(domain.low, np.maximum(train.min(0) - 3 * np.ptp(train, 0), 0))
    np.testing.assert_array_equal(domain.high, train.max(0) + 3 * np.ptp(train, 0))


def test_limits_violations_name_each_value_outside(fitted) -> None:
    fit, _, held_out = fitted
    domain = fit.domain
    rows = held_out[:4].copy()
    rows[1, 3] = -1.0
    rows[3, 19] = 1000.0  # fractal_dimension_se
    rows[3, 0] = np.nan
    assert domain.limits_violations(held_out) == []
    violations = domain.limits_violations(rows)
    assert [(row, feature) for row, feature, *_ in violations] == [(1, 3), (3, 0), (3, 19)]
    assert violations[2] == (3, 19, 1000.0, domain.low[19], domain.high[19])
    assert domain.low[19] == 0.0 < domain.high[19] < 1.0
    scores = domain.scores(rows)
    assert np.isinf(scores[[1, 3]]).all() and np.isfinite(scores[[0, 2]]).all()
    assert domain.outside(rows)[[1, 3]].all()


def test_contradictions_name_what_the_features_definitions_rule_out(bundled: Dataset, fitted) -> None:
    real = bundled.features.to_numpy()
    # Two rows of the public data set carry their means again as worsts, though their se are not 0.
    assert sorted(contradictions(real)) == [38, 212]
    assert (
        all("equals" in said for said in contradictions(real[38])[0])
        and len(contradictions(real[38])[0]) == 10
    )
    row = real[0].copy()
    row[FEATURE_NAMES.index("radius_worst")] = row[FEATURE_NAMES.index("radius_mean")] - 1
    row[FEATURE_NAMES.index("area_se")] = 0.0
    row[FEATURE_NAMES.index("concavity_worst")] = 0.0
    (said,) = contradictions(row).values()
    assert [sentence.split()[0] for sentence in said] == [
        "radius_worst",
        "area_worst",
        *["concavity_worst"] * 2,
    ]
    assert "below radius_mean" in said[0] and "area_se is 0" in said[1] and "concave_points_worst" in said[3]
    domain, copied = fitted[0].domain, columns_mixed_up(real[:38])["worst copied from mean"]
    assert (domain.scores(copied) <= domain.threshold).sum() >= 30  # the score alone misses most of them
    assert domain.outside(copied).all() and domain.outside(row)[0]


def test_deviation_is_the_drop_in_squared_score_when_one_value_is_made_to_fit(fitted) -> None:
    fit, _, held_out = fitted
    domain = fit.domain
    row = held_out[0].copy()
    row[1] *= 0.25  # texture_mean: an odd value, within its limits
    deviations = domain.deviations(row)
    for feature in (1, 4, 22):

        def squared(value: float, feature: int = feature) -> float:
            changed = row.copy()
            changed[feature] = value
            return float(domain.scores(changed)[0] ** 2)

        best = minimize_scalar(
            squared,
            bounds=(domain.low[feature], domain.high[feature]),
            method="bounded",
            options={"xatol": 1e-12},
        )
        assert squared(row[feature]) - best.fun == pytest.approx(deviations[feature] ** 2, rel=1e-4, abs=1e-6)
    assert np.argmax(np.abs(deviations)) == 1


def test_unusual_features_name_what_puts_a_row_outside(fitted) -> None:
    fit, _, held_out = fitted
    domain = fit.domain
    odd = held_out[0].copy()
    odd[FEATURE_NAMES.index("texture_worst")] *= 0.1
    assert domain.outside(odd)[0]
    assert domain.unusual_features(odd, count=1) == ["texture_worst"]
    refused = odd.copy()
    refused[FEATURE_NAMES.index("smoothness_se")] = 5.0
    refused[FEATURE_NAMES.index("area_mean")] = -3.0
    named = domain.unusual_features(refused, count=3)
    assert set(named[:2]) == {"smoothness_se", "area_mean"} and named[2] == "texture_worst"
    assert len(domain.unusual_features(odd, count=5)) == 5 and domain.unusual_features(odd, count=0) == []


def test_describe_shows_limits_score_and_calibration_as_json(fitted) -> None:
    domain = fitted[0].domain
    described = json.loads(json.dumps(domain.describe(), allow_nan=False))
    limits = described["hard_limits"]["features"]
    assert list(limits) == list(FEATURE_NAMES)
    assert [limits[name]["high"] for name in FEATURE_NAMES] == list(domain.high)
    assert described["score"]["threshold"] == domain.threshold
    assert described["calibration"]["quantile"] == fitting.CALIBRATION_QUANTILE
    assert "whitening" not in json.dumps(described)


def test_domain_survives_the_model_store_round_trip_exactly(runs) -> None:
    metadata = runs["seed 1"].metadata
    stored = json.loads(json.dumps(metadata.to_bentoml()))
    parsed = ModelMetadata.parse(stored)
    assert parsed == metadata and parsed.version == 3 and parsed.domain.version == 1
    rows = runs["seed 1"].reference.features
    np.testing.assert_array_equal(parsed.domain.scores(rows), metadata.domain.scores(rows))
    with pytest.raises(Exception, match="frozen"):
        parsed.domain.threshold = 1e9


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(version=2), "metadata version 2, expected 3"),
        (lambda m: m.pop("domain"), "domain: Field required"),
        (lambda m: m["domain"].update(low=m["domain"]["low"][:29]), "expected 30 finite values"),
        (lambda m: m["domain"].update(high=m["domain"]["low"]), "0 <= low < high"),
        (lambda m: m["domain"]["whitening"].pop(), "30 x 30 matrix"),
        (lambda m: m["domain"].update(version=2), "domain.version"),
    ],
)
def test_metadata_with_a_missing_or_broken_domain_is_refused_by_name(runs, change, message) -> None:
    stored = json.loads(json.dumps(runs["seed 1"].metadata.to_bentoml()))
    change(stored)
    with pytest.raises(MetadataError, match=message):
        ModelMetadata.parse(stored)


def test_malignant_example_is_inside_the_domain(runs) -> None:
    domain = runs["seed 1"].metadata.domain
    row = [MALIGNANT_EXAMPLE[name] for name in FEATURE_NAMES]
    assert domain.limits_violations([row]) == [] and not domain.outside(row)[0]


def test_the_contract_package_applies_the_domain_without_scikit_learn() -> None:
    check = "import sys, wdbc; sys.exit('sklearn' in sys.modules or 'scipy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], cwd=REPO_ROOT, check=False).returncode == 0
