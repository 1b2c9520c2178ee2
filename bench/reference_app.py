"""The yardstick: the same model call behind a minimal Starlette app, with no validation beyond parsing.

    uvicorn bench.reference_app:app --workers N --http httptools --loop uvloop

It is the ceiling for "Python HTTP + this model" on a machine, never the served path. It loads the
same model from the same BentoML store (MODEL_TAG) and answers with the same JSON fields.
"""

from __future__ import annotations

import contextlib
import json
import os

import bentoml
import numpy as np
import sklearn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wdbc import BENIGN_LABEL, FEATURE_NAMES, MALIGNANT_LABEL, MODEL_NAME

# Each worker in a session of its own, as BentoML runs each of the service's workers: on a busy
# machine the kernel's autogroup scheduling shares the cores between sessions, and this app served
# about half as many requests a second in sessions of its own as inside the benchmark's.
with contextlib.suppress(PermissionError):  # a session or group leader already (run from a shell)
    os.setsid()
sklearn.set_config(assume_finite=True, skip_parameter_validation=True)
_model_ref = bentoml.models.get(os.environ.get("MODEL_TAG", f"{MODEL_NAME}:latest"))
_pipeline = bentoml.sklearn.load_model(_model_ref)
_threshold = float(_model_ref.info.metadata["threshold"])
_tag = str(_model_ref.tag)


def _answer(rows: list[dict]) -> list[dict]:
    features = np.array([[row[name] for name in FEATURE_NAMES] for row in rows], dtype=np.float64)
    return [
        {
            "diagnosis": MALIGNANT_LABEL if p >= _threshold else BENIGN_LABEL,
            "probability_malignant": p,
            "threshold": _threshold,
            "model_tag": _tag,
            "warnings": [],
            "reason": None,
        }
        for p in _pipeline.predict_proba(features)[:, 1].tolist()
    ]


async def predict(request: Request) -> Response:
    return Response(json.dumps(_answer([json.loads(await request.body())])[0]), media_type="application/json")


async def predict_batch(request: Request) -> Response:
    rows = json.loads(await request.body())["instances"]
    return Response(json.dumps({"predictions": _answer(rows)}), media_type="application/json")


async def ready(_: Request) -> Response:
    return Response("\n")


app = Starlette(
    routes=[
        Route("/predict", predict, methods=["POST"]),
        Route("/predict_batch", predict_batch, methods=["POST"]),
        Route("/readyz", ready),
    ]
)
