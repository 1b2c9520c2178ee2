"""Clinical safety over real HTTP: a value the model cannot speak to is refused, a row unlike the
training data gets no diagnosis, and confirmed outcomes are counted against the served model.
(The domain's calibration on the real rows is measured in tests/training/test_domain.py.)"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sklearn.datasets import load_breast_cancer

from harness.servers import Server
from tests.bento.test_errors import assert_error_shape
from wdbc import BENIGN_EXAMPLE, FEATURE_NAMES, MALIGNANT_EXAMPLE, MEASUREMENTS, STATISTICS, feature_name

SIZES = [f"{m}_{s}" for m in ("radius", "perimeter", "area") for s in ("mean", "se", "worst")]


def metric(server: Server, name: str, **labels: str) -> float:
    selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    series = f"{name}{{{selector}}}" if labels else name
    found = re.search(rf"^{re.escape(series)} (\S+)$", httpx.get(server.metrics_url).text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({**MALIGNANT_EXAMPLE, "fractal_dimension_se": 1000}, "fractal_dimension_se"),
        ({**BENIGN_EXAMPLE, "area_worst": 90_000}, "area_worst"),
    ],
    ids=["fractal_dimension_se=1000", "area_worst=90000"],
)
def test_a_value_the_model_cannot_speak_to_is_refused_naming_it_and_its_range(
    client: httpx.Client, server: Server, row: dict, field: str
) -> None:
    before = metric(server, "refused_values_total", feature=field, side="above")
    response = client.post("/predict", json=row)
    assert response.status_code == 422
    (problem,) = assert_error_shape(response)["detail"]
    assert problem["field"] == field
    assert "outside the range this model accepts" in problem["message"] and "units" in problem["message"]
    limits = client.get("/model").json()["domain"]["hard_limits"]["features"][field]
    assert f"{limits['high']:g}" in problem["message"]
    assert metric(server, "refused_values_total", feature=field, side="above") == before + 1


def test_every_value_out_of_bounds_is_refused_and_none_answered(client: httpx.Client) -> None:
    response = client.post(
        "/predict_batch", json={"instances": [dict.fromkeys(FEATURE_NAMES, 1e6), BENIGN_EXAMPLE]}
    )
    assert response.status_code == 422
    body = assert_error_shape(response)
    assert body["detail"][0]["field"] == "instances[0].radius_mean"
    assert body["detail"][-1]["message"] == "30 problems in all; the first 20 are listed"


@pytest.mark.parametrize("factor", [0.1, 10.0])
@pytest.mark.parametrize("features", ["all", "sizes"])
def test_a_unit_mix_up_is_never_answered_benign_or_malignant(
    client: httpx.Client, factor: float, features: str
) -> None:
    names = FEATURE_NAMES if features == "all" else SIZES
    rows = [
        {**row, **{name: row[name] * factor for name in names}} for row in (MALIGNANT_EXAMPLE, BENIGN_EXAMPLE)
    ]
    response = client.post("/predict_batch", json={"instances": rows})
    if response.status_code == 422:  # beyond a hard limit: refused outright
        assert "outside the range this model accepts" in response.text
        return
    for answer in response.json()["predictions"]:
        assert answer["diagnosis"] == "indeterminate" and answer["probability_malignant"] is None
        assert "unlike the data the model learned from" in answer["reason"]


def _contradictory(row: dict[str, float], edit: str) -> dict[str, float]:
    """A real row edited into one that no nucleus measurement can give."""
    edited = dict(row)
    for measurement in MEASUREMENTS:
        mean, _, worst = (feature_name(measurement, statistic) for statistic in STATISTICS)
        if edit == "worst = mean":  # a copying mistake: the worst is the mean of the three largest
            edited[worst] = row[mean]
        elif edit == "worst below mean" and measurement in ("radius", "perimeter", "area"):
            edited[mean], edited[worst] = row[worst], row[mean]
    if edit == "concave points without concavity":
        for statistic in STATISTICS:
            edited[feature_name("concavity", statistic)] = 0.0
    return edited


@pytest.mark.parametrize("edit", ["worst = mean", "worst below mean", "concave points without concavity"])
def test_a_row_whose_values_contradict_each_other_is_never_answered_benign_or_malignant(
    client: httpx.Client, edit: str
) -> None:
    real = load_breast_cancer().data  # the 30 features in FEATURE_NAMES order
    rows = [
        _contradictory(dict(zip(FEATURE_NAMES, row, strict=True)), edit)
        for row in real.tolist()
        if row[FEATURE_NAMES.index("concave_points_mean")]
        > 0  # those with no concavity at all stay as they are
    ]
    response = client.post("/predict_batch", json={"instances": rows})
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    confident = [answer for answer in answers if answer["diagnosis"] != "indeterminate"]
    assert confident == [], f"{len(confident)} of {len(rows)} answered {confident[0]['diagnosis']}"
    assert all(answer["probability_malignant"] is None for answer in answers)
    assert all(
        "contradict" in answer["reason"] and "Check the values" in answer["reason"] for answer in answers
    )
    explained = client.post("/explain", json=rows[0]).json()
    assert explained["diagnosis"] == "indeterminate" and explained["domain"]["inside"] is False
    assert (
        explained["domain"]["contradictions"]
        and explained["domain"]["contradictions"][0] in explained["reason"]
    )


def test_real_rows_contradict_nothing_but_the_two_whose_worst_was_copied_from_the_mean(
    client: httpx.Client,
) -> None:
    real = load_breast_cancer().data  # the 30 features in FEATURE_NAMES order
    response = client.post(
        "/predict_batch",
        json={"instances": [dict(zip(FEATURE_NAMES, row, strict=True)) for row in real.tolist()]},
    )
    contradicted = [
        index
        for index, answer in enumerate(response.json()["predictions"])
        if "contradict" in (answer["reason"] or "")
    ]
    assert len(real) == 569 and contradicted == [38, 212]


def test_indeterminate_rows_are_answered_and_counted_beside_the_others(
    client: httpx.Client, server: Server
) -> None:
    odd = {name: value * 0.1 for name, value in MALIGNANT_EXAMPLE.items()}
    before = metric(server, "predictions_total", diagnosis="indeterminate")
    answers = client.post(
        "/predict_batch", json={"instances": [MALIGNANT_EXAMPLE, odd, BENIGN_EXAMPLE]}
    ).json()
    assert [a["diagnosis"] for a in answers["predictions"]] == ["malignant", "indeterminate", "benign"]
    assert answers["predictions"][0]["reason"] is None
    assert metric(server, "predictions_total", diagnosis="indeterminate") == before + 1


def test_the_explanation_says_what_puts_a_row_outside(client: httpx.Client) -> None:
    odd = {**MALIGNANT_EXAMPLE, "smoothness_mean": MALIGNANT_EXAMPLE["smoothness_mean"] * 0.1}
    explained = client.post("/explain", json=odd).json()
    domain = explained["domain"]
    if explained["diagnosis"] != "indeterminate":
        pytest.skip("one value x 0.1 stayed inside this model's domain")
    assert domain["inside"] is False and domain["score"] > domain["threshold"]
    assert domain["unusual_features"][0] == "smoothness_mean"
    inside = client.post("/explain", json=MALIGNANT_EXAMPLE).json()["domain"]
    assert inside["inside"] is True and len(inside["unusual_features"]) == 3


def test_the_model_describes_its_domain(client: httpx.Client) -> None:
    domain = client.get("/model").json()["domain"]
    assert set(domain["hard_limits"]["features"]) == set(FEATURE_NAMES)
    assert domain["score"]["threshold"] > 0 and "indeterminate" in domain["score"]["above_threshold"]


def test_confirmed_outcomes_are_scored_and_counted_per_model(client: httpx.Client, server: Server) -> None:
    tag = client.get("/model").json()["tag"]

    def count(predicted: str, confirmed: str) -> float:
        return metric(
            server, "confirmed_outcomes_total", model_tag=tag, predicted=predicted, confirmed=confirmed
        )

    before = {
        key: count(*key)
        for key in [("malignant", "malignant"), ("benign", "malignant"), ("indeterminate", "benign")]
    }
    delays = metric(server, "confirmed_outcome_delay_seconds_count")
    outcomes = [
        {
            "features": MALIGNANT_EXAMPLE,
            "diagnosis": "malignant",
            "request_id": "r-1",
            "predicted_at": (datetime.now(UTC) - timedelta(days=3)).isoformat(timespec="seconds"),
        },
        {"features": BENIGN_EXAMPLE, "diagnosis": "malignant"},  # a miss
        {"features": {name: value * 0.1 for name, value in BENIGN_EXAMPLE.items()}, "diagnosis": "benign"},
    ]
    response = client.post("/outcomes", json={"outcomes": outcomes})
    assert response.status_code == 200, response.text
    counted = response.json()
    assert counted["model_tag"] == tag and counted["rows"] == 3
    assert counted["counts"]["malignant"]["malignant"] == 1 and counted["counts"]["benign"]["malignant"] == 1
    assert counted["counts"]["indeterminate"]["benign"] == 1
    assert {key: count(*key) - value for key, value in before.items()} == dict.fromkeys(before, 1.0)
    assert metric(server, "confirmed_outcome_delay_seconds_count") == delays + 1
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("outcomes", "field", "message"),
    [
        (
            [{"features": MALIGNANT_EXAMPLE, "diagnosis": "malignant", "request_id": "r-7"}] * 2,
            "outcomes[1].request_id",
            "repeats outcomes[0]",
        ),
        (
            [
                {
                    "features": MALIGNANT_EXAMPLE,
                    "diagnosis": "malignant",
                    "predicted_at": "0001-01-01T00:00:00Z",
                }
            ],
            "outcomes[0].predicted_at",
            "within the last 366 days",
        ),
        (
            [
                {
                    "features": MALIGNANT_EXAMPLE,
                    "diagnosis": "malignant",
                    "predicted_at": "2999-01-01T00:00:00Z",
                }
            ],
            "outcomes[0].predicted_at",
            "within the last 366 days",
        ),
    ],
    ids=["repeated-request-id", "ancient-prediction", "future-prediction"],
)
def test_an_outcome_counted_twice_or_predicted_out_of_time_is_refused_and_nothing_counted(
    client: httpx.Client, server: Server, outcomes: list[dict], field: str, message: str
) -> None:
    tag = client.get("/model").json()["tag"]
    before = metric(
        server, "confirmed_outcomes_total", model_tag=tag, predicted="malignant", confirmed="malignant"
    )
    response = client.post("/outcomes", json={"outcomes": outcomes})
    assert response.status_code == 422, response.text
    (problem,) = assert_error_shape(response)["detail"]
    assert problem["field"] == field and message in problem["message"]
    after = metric(
        server, "confirmed_outcomes_total", model_tag=tag, predicted="malignant", confirmed="malignant"
    )
    assert after == before
