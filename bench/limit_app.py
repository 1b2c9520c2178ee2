"""The limit: the hand-written reference's bare app with the fastest scoring we can build.

    uvicorn bench.limit_app:app --workers N --http httptools --loop uvloop

Same Starlette routes, same model from the same BentoML store (MODEL_TAG), same JSON fields as
bench/reference_app.py, but no scikit-learn on the request path: StandardScaler + LogisticRegression
is folded at start into one weight vector and a bias (logit = x @ w + b), and JSON is parsed and
written with orjson. A single row is scored in plain Python (30 multiplications cost less than
building a numpy array); a batch is one matrix-vector product. Nothing is validated beyond parsing.
The service cannot be faster than this on the same HTTP stack, so "service / limit" says how much
of the ceiling it reaches.

The fold is written out here rather than imported from bento/scoring.py on purpose: the yardstick
must not share code with what it measures. It is proven against the pipeline on the reference rows
saved with the model before the app serves, and the app refuses to start when they differ.
"""

from __future__ import annotations

import contextlib
import math
import os
from operator import itemgetter, mul

import bentoml
import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wdbc import BENIGN_LABEL, FEATURE_NAMES, MALIGNANT_LABEL, MODEL_NAME, Reference

# Each worker in a session of its own, as BentoML runs each of the service's workers: on a busy
# machine the kernel's autogroup scheduling shares the cores between sessions, and this app served
# about half as many requests a second in sessions of its own as inside the benchmark's.
with contextlib.suppress(PermissionError):  # a session or group leader already (run from a shell)
    os.setsid()
# Agreement with predict_proba the limit must show on the reference rows (the service's own bar).
TOLERANCE = 1e-12

_model_ref = bentoml.models.get(os.environ.get("MODEL_TAG", f"{MODEL_NAME}:latest"))
_threshold = float(_model_ref.info.metadata["threshold"])
_tag = str(_model_ref.tag)


def _fold(pipeline: object) -> tuple[np.ndarray, float]:
    """(weights, bias) on raw features: coef * (x - mean) / scale + intercept = x @ w + b."""
    (_, scaler), (_, classifier) = pipeline.steps  # type: ignore[attr-defined]
    weights = classifier.coef_[0] / scaler.scale_
    return weights, float(classifier.intercept_[0] - scaler.mean_ @ weights)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # exp(-log(1 + e^-z)): no overflow for any finite logit, unlike 1 / (1 + exp(-z)).
    return np.exp(-np.logaddexp(0.0, -logits))


def _load() -> tuple[np.ndarray, float]:
    pipeline = bentoml.sklearn.load_model(_model_ref)
    weights, bias = _fold(pipeline)
    reference = Reference.from_custom_objects(_model_ref.custom_objects)
    expected = pipeline.predict_proba(reference.features)[:, 1]
    worst = float(np.max(np.abs(_sigmoid(reference.features @ weights + bias) - expected)))
    if not worst <= TOLERANCE:
        raise SystemExit(f"the folded model differs from predict_proba by {worst:.3g}: not a fair limit")
    return weights, bias


_weights, _bias = _load()
_weight_list = _weights.tolist()
_values = itemgetter(*FEATURE_NAMES)


def _probability(row: dict) -> float:
    logit = sum(map(mul, _values(row), _weight_list)) + _bias
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    odds = math.exp(logit)
    return odds / (1.0 + odds)


def _prediction(probability: float) -> dict:
    return {
        "diagnosis": MALIGNANT_LABEL if probability >= _threshold else BENIGN_LABEL,
        "probability_malignant": probability,
        "threshold": _threshold,
        "model_tag": _tag,
        "warnings": [],
        "reason": None,
    }


async def predict(request: Request) -> Response:
    answer = _prediction(_probability(orjson.loads(await request.body())))
    return Response(orjson.dumps(answer), media_type="application/json")


async def predict_batch(request: Request) -> Response:
    rows = orjson.loads(await request.body())["instances"]
    probabilities = _sigmoid(np.array([_values(row) for row in rows]) @ _weights + _bias).tolist()
    answer = {"predictions": [_prediction(p) for p in probabilities]}
    return Response(orjson.dumps(answer), media_type="application/json")


async def ready(_: Request) -> Response:
    return Response("\n")


app = Starlette(
    routes=[
        Route("/predict", predict, methods=["POST"]),
        Route("/predict_batch", predict_batch, methods=["POST"]),
        Route("/readyz", ready),
    ]
)
