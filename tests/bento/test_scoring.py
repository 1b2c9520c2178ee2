"""Scoring and load-time proof: the compiled scorer equals the pipeline, and an artifact that is not
this model (another recipe included) leaves the service unready, its log saying why."""

from __future__ import annotations

import json
import os
import re
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

from bento.scoring import COMPILED_TOLERANCE, ModelCheckFailed, load_scorer
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
    scorer = load_scorer(model, reference_of(model, features[:455]))
    rng = np.random.default_rng(0)
    rows = np.vstack([features, rng.uniform(0, features.max(axis=0) * 3, size=(2000, features.shape[1]))])
    logits, probabilities = scorer.score(rows)
    assert np.max(np.abs(probabilities - model.predict_proba(rows)[:, 1])) <= COMPILED_TOLERANCE
    assert np.max(np.abs(logits - model.decision_function(rows))) <= 1e-9
    # Every row gets the same answer alone as in a batch (einsum, not BLAS).
    assert all(scorer.score(rows[i : i + 1])[1][0] == probabilities[i] for i in range(0, len(rows), 97))


@pytest.mark.parametrize(
    ("artifact", "reason"),
    [
        ("ten-features", "predicting the reference rows failed"),
        ("regression", "is a LinearRegression, not StandardScaler + LogisticRegression"),
        ("string", "is a str, not"),
        ("other-recipe", "is a MinMaxScaler + LogisticRegression, not"),
        ("other-model", "differently from training"),
    ],
)
def test_a_wrong_artifact_is_refused_with_its_reason(data, artifact: str, reason: str) -> None:
    features, labels = data
    good = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(
        features[:455], labels[:455]
    )
    wrong = {
        "ten-features": lambda: make_pipeline(StandardScaler(), LogisticRegression()).fit(
            features[:, :10], labels
        ),
        "other-recipe": lambda: make_pipeline(MinMaxScaler(), LogisticRegression(max_iter=5000)).fit(
            features, labels
        ),
        "regression": lambda: LinearRegression().fit(features, labels),
        "string": lambda: "not a model",
        "other-model": lambda: make_pipeline(StandardScaler(), LogisticRegression(C=0.01)).fit(
            features, labels
        ),
    }[artifact]()
    with pytest.raises(ModelCheckFailed, match=re.escape(reason)):
        load_scorer(wrong, reference_of(good, features[:455]))


# Saves a wrong artifact under the served model's name, with the good model's metadata and reference
# rows, as a careless retrain or a bad copy would: everything about it looks right but the model.
SAVE_WRONG_ARTIFACT = """
import sys, bentoml, joblib, numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
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
        "ten-features": lambda: make_pipeline(StandardScaler(), LogisticRegression()).fit(features[:, :10], labels),
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
        ("ten-features", "X has 30 features, but StandardScaler is expecting 10 features"),
        ("regression", "the artifact is a LinearRegression, not StandardScaler + LogisticRegression"),
        ("string", "the artifact is a str, not StandardScaler + LogisticRegression"),
        (
            "minmax",
            "the artifact is a MinMaxScaler + LogisticRegression, not StandardScaler + LogisticRegression",
        ),
    ],
)
def test_a_wrong_artifact_leaves_the_service_unready(
    artifacts, tmp_path: Path, kind: str, reason: str
) -> None:
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
