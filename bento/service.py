"""The BentoML service: breast-cancer diagnosis from the 30 WDBC measurements.

    bentoml serve bento.service:BreastCancerClassifier

Environment:
  MODEL_TAG          model to serve (default breast_cancer:latest)
  SERVICE_WORKERS    worker processes (default cpu_count, which follows the cgroup CPU quota)
  MAX_REQUEST_BYTES  largest accepted request body (default 2 MiB; 1000 batch rows are ~0.8 MB)
  LOG_LEVEL, LOG_FILE  see bento/logs.py
"""

from __future__ import annotations

import os
import time
from operator import attrgetter

import bentoml
import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from loguru import logger

from bento import logs
from bento.errors import model_unavailable
from bento.guard import RequestGuard
from bento.schemas import BatchPrediction, BatchRequest, Features, ModelInfo, Prediction
from wdbc import BENIGN_LABEL, FEATURE_NAMES, MALIGNANT_LABEL, MODEL_NAME, ModelMetadata

logs.configure()

MODEL_TAG = os.environ.get("MODEL_TAG", f"{MODEL_NAME}:latest")
_workers = os.environ.get("SERVICE_WORKERS", "cpu_count")
WORKERS: int | str = int(_workers) if _workers.isdigit() else _workers
MAX_REQUEST_BYTES = int(os.environ.get("MAX_REQUEST_BYTES", str(2 * 1024 * 1024)))
PREDICTION_PATHS = ("/predict", "/predict_batch")

_feature_values = attrgetter(*FEATURE_NAMES)

# GET /model is served by a small FastAPI app mounted beside the BentoML APIs (BentoML APIs are
# POST-only); BentoML merges its routes into the service's OpenAPI document.
model_info_app = FastAPI(title="model info", docs_url=None, redoc_url=None, openapi_url=None)


UNAVAILABLE_MESSAGE = f"model {MODEL_TAG} is not loaded; see the service's startup log"


@model_info_app.get("/model", response_model=ModelInfo, tags=["Service APIs"])
async def model_info() -> ModelInfo | JSONResponse:
    """The served model: tag, creation time, metrics, decision threshold and feature names."""
    if not _model_loaded():
        status, body = model_unavailable(UNAVAILABLE_MESSAGE)
        return JSONResponse(body, status)
    return bentoml.get_current_service().info


out_of_range_features = bentoml.metrics.Counter(
    name="out_of_range_features",
    documentation="Feature values outside the range seen in training (the model extrapolates)",
    labelnames=["feature", "side"],
)


@bentoml.asgi_app(model_info_app, path="/")
@bentoml.service(
    name="breast_cancer_classifier",
    workers=WORKERS,
    resources={"cpu": "1", "memory": "512Mi"},
    traffic={"timeout": 10},
    # Predictions are logged by the service itself, as JSON, without the request body.
    logging={"access": {"enabled": False}},
    # No trace exporter is configured, yet OpenTelemetry's middleware costs ~35 % of a /predict
    # call (measured with py-spy); excluding the hot paths skips it. Remove when exporting traces.
    tracing={"excluded_urls": list(PREDICTION_PATHS)},
)
class BreastCancerClassifier:
    """Predicts whether a breast mass is malignant from the 30 WDBC measurements."""

    def __init__(self) -> None:
        # Imported here, not at module level: `bentoml serve` and `bentoml build` import this module
        # in processes that never predict, and scikit-learn is half of the import time.
        import sklearn

        # Pydantic has already rejected NaN, infinities and non-numbers, so scikit-learn's own
        # per-call input checks are redundant on this path.
        sklearn.set_config(assume_finite=True, skip_parameter_validation=True)
        self.pipeline = None  # until everything below has worked: never ready with half a model
        try:
            self._load(bentoml.models.get(MODEL_TAG))
        except bentoml.exceptions.NotFound:
            # Stay up but never ready, so Kubernetes keeps traffic away and the reason is logged.
            logger.error(
                "model {} not found in the BentoML model store under {}: train it with "
                "`make train` (or `python -m training.train` with the same BENTOML_HOME), "
                "or set MODEL_TAG to a model that exists",
                MODEL_TAG,
                os.environ.get("BENTOML_HOME", "~/bentoml"),
            )
        except Exception:  # noqa: BLE001 (an invalid tag, a corrupt model, foreign metadata: all mean unready)
            logger.exception("model {} could not be loaded; the service stays unready", MODEL_TAG)

    def _load(self, model_ref: bentoml.Model) -> None:
        metadata = ModelMetadata.parse(model_ref.info.metadata)
        stats = metadata.feature_stats
        self.tag = str(model_ref.tag)
        self.threshold = metadata.threshold
        self.train_min = np.array([stats[name].min for name in FEATURE_NAMES])
        self.train_max = np.array([stats[name].max for name in FEATURE_NAMES])
        self.info = ModelInfo(tag=self.tag, creation_time=model_ref.info.creation_time, **dict(metadata))
        self.pipeline = bentoml.sklearn.load_model(model_ref)
        cross_validation = metadata.metrics.model_dump()["cross_validation"]
        logger.bind(model_tag=self.tag, threshold=self.threshold, metrics=cross_validation).info(
            "loaded model {}", self.tag
        )

    async def __is_ready__(self) -> bool:
        return self.pipeline is not None

    def _predict(self, rows: list[Features]) -> list[Prediction]:  # type: ignore[valid-type]
        # No model-loaded check here: ErrorContractMiddleware answers 503 before a request gets this far.
        started = time.perf_counter()
        features = np.array([_feature_values(row) for row in rows], dtype=np.float64)
        probabilities = self.pipeline.predict_proba(features)[:, 1]
        if not np.isfinite(probabilities).all():
            # Inputs are bounded, so this is a bug on our side: a 500, never the client's 4xx that
            # BentoML would make of the output model's validation error.
            raise RuntimeError("the model produced a non-finite probability")
        warnings = self._range_warnings(features)
        predictions = [
            Prediction(
                diagnosis=MALIGNANT_LABEL if probability >= self.threshold else BENIGN_LABEL,
                probability_malignant=probability,
                threshold=self.threshold,
                model_tag=self.tag,
                warnings=warnings.get(row, []),
            )
            for row, probability in enumerate(probabilities.tolist())
        ]
        malignant = sum(prediction.diagnosis == MALIGNANT_LABEL for prediction in predictions)
        logger.bind(
            rows=len(predictions),
            malignant=malignant,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        ).info("predicted")
        return predictions

    def _range_warnings(self, features: np.ndarray) -> dict[int, list[str]]:
        """Messages for the rows with features outside their training range; counted in /metrics."""
        warnings: dict[int, list[str]] = {}
        for side, mask, bound_name, bound in (
            ("below", features < self.train_min, "min", self.train_min),
            ("above", features > self.train_max, "max", self.train_max),
        ):
            for row, column in zip(*np.nonzero(mask)):
                name = FEATURE_NAMES[column]
                warnings.setdefault(int(row), []).append(
                    f"{name} is {side} the training range ({bound_name} {bound[column]:g})"
                )
                out_of_range_features.labels(feature=name, side=side).inc()
        return warnings

    @bentoml.api(route="/predict")
    async def predict(self, features: Features, /) -> Prediction:  # type: ignore[valid-type]
        """Diagnose one sample."""
        return self._predict([features])[0]

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, request: BatchRequest, /) -> BatchPrediction:
        """Diagnose up to 1000 samples in one call; predictions keep the order of the instances."""
        return BatchPrediction(predictions=self._predict(request.instances))


def _model_loaded() -> bool:
    service = bentoml.get_current_service()
    return service is not None and service.pipeline is not None


BreastCancerClassifier.add_asgi_middleware(
    RequestGuard,
    # The service's own API routes: a new endpoint is guarded without being listed twice.
    api_paths=frozenset(api.route for api in BreastCancerClassifier.apis.values()),
    max_body_bytes=MAX_REQUEST_BYTES,
    model_ready=_model_loaded,
    unavailable_message=UNAVAILABLE_MESSAGE,
)
