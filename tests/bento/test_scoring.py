"""Scoring and load-time proof: the compiled scorer equals the pipeline, a pipeline that cannot be
compiled is served as it is, and an artifact that is not this model leaves the service unready."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from bento.scoring import (
    COMPILED_TOLERANCE,
    LinearScorer,
    ModelCheckFailed,
    PipelineScorer,
    check_pipeline,
    load_scorer,
)
from harness.paths import REPO_ROOT
from harness.servers import start_service
from wdbc import MALIGNANT_EXAMPLE, Reference


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    features, target = load_breast_cancer(return_X_y=True)
    return features, 1 - target


def reference_of(model, features: np.ndarray) -> Reference:
    return Reference(features, model.predict_proba(features)[:, 1], model.decision_function(features))


def test_the_compiled_scorer_equals_predict_proba(data) -> None:
    features, labels = data
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(features, labels)
    scorer, note = load_scorer(model, reference_of(model, features[:455]))
    assert isinstance(scorer, LinearScorer) and "compiled" in note
    rng = np.random.default_rng(0)
    rows = np.vstack([features, rng.uniform(0, features.max(axis=0) * 3, size=(2000, features.shape[1]))])
    logits, probabilities = scorer.score(rows)
    assert np.max(np.abs(probabilities - model.predict_proba(rows)[:, 1])) <= COMPILED_TOLERANCE
    assert np.max(np.abs(logits - model.decision_function(rows))) <= 1e-9
    # Every row gets the same answer alone as in a batch (einsum, not BLAS).
    assert all(scorer.score(rows[i : i + 1])[1][0] == probabilities[i] for i in range(0, len(rows), 97))


def test_a_pipeline_that_cannot_be_compiled_is_served_as_it_is(data) -> None:
    features, labels = data
    model = make_pipeline(MinMaxScaler(), LogisticRegression(max_iter=5000)).fit(features, labels)
    scorer, note = load_scorer(model, reference_of(model, features[:455]))
    assert isinstance(scorer, PipelineScorer) and "cannot be compiled" in note and "MinMaxScaler" in note
    _, probabilities = scorer.score(features[:10])
    np.testing.assert_array_equal(probabilities, model.predict_proba(features[:10])[:, 1])


@pytest.mark.parametrize(
    ("artifact", "reason"),
    [
        ("ten-features", "predicting the reference rows failed"),
        ("regression", "has no predict_proba"),
        ("string", "is a str"),
        ("other-model", "differently from training"),
    ],
)
def test_a_wrong_artifact_is_refused_with_its_reason(data, artifact: str, reason: str) -> None:
    features, labels = data
    good = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(
        features[:455], labels[:455]
    )
    wrong = {
        "ten-features": lambda: LogisticRegression(max_iter=5000).fit(features[:, :10], labels),
        "regression": lambda: LinearRegression().fit(features, labels),
        "string": lambda: "not a model",
        "other-model": lambda: make_pipeline(StandardScaler(), LogisticRegression(C=0.01)).fit(
            features, labels
        ),
    }[artifact]()
    with pytest.raises(ModelCheckFailed, match=reason):
        check_pipeline(wrong, reference_of(good, features[:455]))


# Saves a wrong artifact under the served model's name, with the good model's metadata and reference
# rows, as a careless retrain or a bad copy would: everything about it looks right but the model.
SAVE_WRONG_ARTIFACT = """
import sys, bentoml, joblib, numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
features, target = load_breast_cancer(return_X_y=True)
labels = 1 - target
good = bentoml.models.get("breast_cancer:latest")
kind = sys.argv[1]
if kind == "minmax":  # a different, working recipe: its own reference rows make it honest
    model = make_pipeline(MinMaxScaler(), LogisticRegression(max_iter=5000)).fit(features, labels)
    reference = dict(good.custom_objects["reference"])
    reference["probabilities"] = model.predict_proba(reference["features"])[:, 1]
    reference["logits"] = model.decision_function(reference["features"])
else:
    model = {
        "ten-features": lambda: LogisticRegression(max_iter=5000).fit(features[:, :10], labels),
        "regression": lambda: LinearRegression().fit(features, labels),
        "string": lambda: LinearRegression(),  # replaced by a pickled string below
    }[kind]()
    reference = good.custom_objects["reference"]
saved = bentoml.sklearn.save_model(
    "breast_cancer", model, metadata=good.info.metadata, custom_objects={"reference": reference}
)
if kind == "string":  # BentoML refuses to save one, but a file on disk can hold anything
    joblib.dump("not a model", bentoml.models.get(saved.tag).path_of("saved_model.pkl"))
print(saved.tag)
"""


@pytest.fixture(scope="module")
def artifacts(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    home = tmp_path_factory.mktemp("artifacts") / "bentoml"
    shutil.copytree(model_store, home, ignore=shutil.ignore_patterns("prometheus_multiproc_dir", "pod-*"))
    tags = {}
    for kind in ("ten-features", "regression", "string", "minmax"):
        saved = subprocess.run(
            [sys.executable, "-c", SAVE_WRONG_ARTIFACT, kind],
            cwd=REPO_ROOT,
            env={**os.environ, "BENTOML_HOME": str(home)},
            capture_output=True,
            text=True,
            check=True,
        )
        tags[kind] = saved.stdout.strip().splitlines()[-1]
    return home, tags


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("ten-features", "X has 30 features, but LogisticRegression is expecting 10 features"),
        ("regression", "the artifact is a LinearRegression, which has no predict_proba"),
        ("string", "the artifact is a str, which has no predict_proba"),
    ],
)
def test_a_wrong_artifact_leaves_the_service_unready(
    artifacts, tmp_path: Path, kind: str, reason: str
) -> None:
    """Before: /readyz 200 and every prediction 500, so a rollout would pass readiness and serve errors."""
    home, tags = artifacts
    server = start_service(home, tmp_path / "serve.log", MODEL_TAG=tags[kind])
    try:
        server.wait_until_answering()
        assert httpx.get(f"{server.url}/readyz").status_code == 503
        assert httpx.post(f"{server.url}/predict", json=MALIGNANT_EXAMPLE).status_code == 503
        assert "model_ready 0.0" in httpx.get(server.metrics_url).text
    finally:
        server.stop()
    errors = [json.loads(line) for line in server.log().splitlines() if '"level": "ERROR"' in line]
    (line,) = [line for line in errors if line["message"].startswith(f"model {tags[kind]} cannot be served")]
    assert reason in line["message"] and "Traceback" not in server.log()


@pytest.mark.slow
def test_a_working_model_that_cannot_be_compiled_is_served_with_a_warning(artifacts, tmp_path: Path) -> None:
    home, tags = artifacts
    server = start_service(home, tmp_path / "serve.log", MODEL_TAG=tags["minmax"])
    try:
        server.wait_until_ready()
        answer = httpx.post(f"{server.url}/predict", json=MALIGNANT_EXAMPLE).json()
        assert answer["diagnosis"] == "malignant" and answer["model_tag"] == tags["minmax"]
        assert "cannot be compiled" in httpx.get(f"{server.url}/model").json()["scoring"]
        explained = httpx.post(f"{server.url}/explain", json=MALIGNANT_EXAMPLE)
        assert explained.status_code == 501 and explained.json()["error"] == "explanations unavailable"
    finally:
        server.stop()
    warnings = [json.loads(line) for line in server.log().splitlines() if "cannot be compiled" in line]
    assert warnings and warnings[0]["level"] == "WARNING" and "MinMaxScaler" in warnings[0]["message"]
