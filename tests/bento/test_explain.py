"""POST /explain over real HTTP: exact contributions a clinician can add up."""

from __future__ import annotations

import math

import httpx
import pytest

from wdbc import BENIGN_EXAMPLE, FEATURE_NAMES, MALIGNANT_EXAMPLE, MEASUREMENTS


@pytest.mark.parametrize("row", [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE], ids=["malignant", "benign"])
def test_contributions_add_up_to_the_models_logit(client: httpx.Client, row: dict) -> None:
    explained = client.post("/explain", json=row)
    assert explained.status_code == 200, explained.text
    body = explained.json()
    contributions = [f["contribution"] for m in body["measurements"] for f in m["features"]]
    assert len(contributions) == len(FEATURE_NAMES)
    assert body["baseline"]["logit"] + sum(contributions) == pytest.approx(body["logit"], abs=1e-9)
    predicted = client.post("/predict", json=row).json()
    assert body["probability_malignant"] == pytest.approx(predicted["probability_malignant"], abs=1e-12)
    assert 1 / (1 + math.exp(-body["logit"])) == pytest.approx(predicted["probability_malignant"], abs=1e-12)
    assert body["diagnosis"] == predicted["diagnosis"] and body["model_tag"] == predicted["model_tag"]
    assert body["baseline"]["probability_malignant"] == pytest.approx(
        1 / (1 + math.exp(-body["baseline"]["logit"]))
    )


def test_contributions_are_grouped_by_measurement_and_sorted(client: httpx.Client) -> None:
    body = client.post("/explain", json=MALIGNANT_EXAMPLE).json()
    groups = body["measurements"]
    assert sorted(group["measurement"] for group in groups) == sorted(MEASUREMENTS)
    sizes = [abs(group["contribution"]) for group in groups]
    assert sizes == sorted(sizes, reverse=True)
    for group in groups:
        assert {f["feature"] for f in group["features"]} == {
            f"{group['measurement']}_{s}" for s in ("mean", "se", "worst")
        }
        assert group["contribution"] == pytest.approx(sum(f["contribution"] for f in group["features"]))
        inner = [abs(f["contribution"]) for f in group["features"]]
        assert inner == sorted(inner, reverse=True)
        for feature in group["features"]:
            assert feature["value"] == MALIGNANT_EXAMPLE[feature["feature"]]
            assert 0 <= feature["percentile"] <= 100
            expected = "towards malignant" if feature["contribution"] >= 0 else "towards benign"
            assert feature["direction"] == expected
    assert "collinear" in body["note"] and "radius, perimeter and area" in body["note"]


def test_the_largest_training_value_is_at_the_top_percentile(client: httpx.Client) -> None:
    info = client.get("/model").json()
    row = {name: info["feature_stats"][name]["max"] for name in FEATURE_NAMES}
    features = {
        f["feature"]: f
        for m in client.post("/explain", json=row).json()["measurements"]
        for f in m["features"]
    }
    assert all(feature["percentile"] == 100.0 for feature in features.values())
