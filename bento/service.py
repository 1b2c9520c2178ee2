"""The BentoML service: breast-cancer diagnosis from the 30 WDBC measurements.

    bentoml serve bento.service:BreastCancerClassifier

Settings come from the environment, documented in k8s/runtime-contract.yaml and read in
bento/config.py. The model is loaded once per worker and proven before the worker is ready: it must
reproduce training's own probabilities for the reference rows saved with it (bento/scoring.py),
then it is compiled to one dot product. Any failure leaves the worker alive and unready, with one
log line saying why.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import bentoml
import numpy as np
from bentoml import get_current_service  # bound once: bentoml resolves its attributes lazily, per access
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from loguru import logger

from bento import config, errors, logs, openapi, protocol, schemas
from bento.drift import DriftMonitor, DriftReport
from bento.explain import Explainer, Explanation
from bento.guard import EdgeGuard, RequestGuard, RouteTable
from bento.metrics import service_metrics
from bento.pod import DrainSwitch, WorkerRecord, pod_directory
from bento.scoring import LinearScorer, ModelCheckFailed, Scorer, load_scorer
from wdbc import (
    BENIGN_EXAMPLE,
    BENIGN_LABEL,
    FEATURE_DESCRIPTIONS,
    FEATURE_NAMES,
    MALIGNANT_EXAMPLE,
    MALIGNANT_LABEL,
    MetadataError,
    ModelMetadata,
    Reference,
    ReferenceDataError,
)

logs.configure()
protocol.install()

SWAGGER_PAGE = (Path(__file__).parent / "static" / "index.html").read_text()
# A single row is under 2 KB of JSON even pretty-printed; a batch of 1000 rows is ~0.8 MB.
SINGLE_ROW_BYTES = 64 * 1024
PREDICTION_PATHS = ("/predict", "/predict_batch", "/explain")


def _served_metadata() -> ModelMetadata | None:
    """The served model's metadata, for the API schema's training ranges; the worker reports problems."""
    try:
        return ModelMetadata.parse(bentoml.models.get(config.MODEL_TAG).info.metadata)
    except Exception:  # noqa: BLE001 (no model, or a broken one: the schema goes without ranges)
        return None


_metadata = _served_metadata()
Features = schemas.features_model(_metadata.feature_stats if _metadata else None)
BatchRequest, BatchPrediction = schemas.batch_models(Features)
_DIAGNOSES = (BENIGN_LABEL, MALIGNANT_LABEL)
_drain = DrainSwitch()


@dataclass(frozen=True)
class LoadedModel:
    """Everything a worker needs to serve, built only once every check has passed."""

    tag: str
    metadata: ModelMetadata
    scorer: Scorer
    info: schemas.ModelInfo
    train_min: np.ndarray
    train_max: np.ndarray
    explainer: Explainer | None
    reference: Reference


def load_model(tag: str) -> LoadedModel:
    model_ref = bentoml.models.get(tag)
    metadata = ModelMetadata.parse(model_ref.info.metadata)
    reference = Reference.from_custom_objects(model_ref.custom_objects)
    pipeline = bentoml.sklearn.load_model(model_ref)
    scorer, note = load_scorer(pipeline, reference)
    stats = metadata.feature_stats
    info = schemas.ModelInfo(
        tag=str(model_ref.tag),
        creation_time=model_ref.info.creation_time,
        scoring=note,
        feature_descriptions={name: FEATURE_DESCRIPTIONS[name] for name in FEATURE_NAMES},
        examples={MALIGNANT_LABEL: MALIGNANT_EXAMPLE, BENIGN_LABEL: BENIGN_EXAMPLE},
        **dict(metadata),
    )
    (logger.info if scorer.compiled else logger.warning)("model {}: {}", info.tag, note)
    return LoadedModel(
        tag=info.tag,
        metadata=metadata,
        scorer=scorer,
        info=info,
        train_min=np.array([stats[name].min for name in FEATURE_NAMES]),
        train_max=np.array([stats[name].max for name in FEATURE_NAMES]),
        explainer=Explainer(scorer, reference.features) if isinstance(scorer, LinearScorer) else None,
        reference=reference,
    )


def unavailable_message() -> str:
    return f"model {config.MODEL_TAG} is not loaded; see the service's startup log"


def _not_found_advice() -> str:
    if config.IN_KUBERNETES:
        return (
            "set the chart's `modelTag` value to a model the image contains (helm upgrade ... --set "
            "modelTag=breast_cancer:<version>), or deploy an image built with this model (make image)"
        )
    return "train it with `make train` (or `python -m training.train` with the same BENTOML_HOME), or set MODEL_TAG"


# GET /model, /drift, /docs.json and / are served by a small FastAPI app mounted beside the BentoML
# APIs (BentoML APIs are POST-only); BentoML merges its documented routes into the OpenAPI document,
# and routes the others here before its own.
info_app = FastAPI(title="model info", docs_url=None, redoc_url=None, openapi_url=None)


def _unavailable() -> JSONResponse:
    answer = errors.model_unavailable(unavailable_message())
    return JSONResponse(answer.body(), answer.status)


@info_app.get("/model", response_model=schemas.ModelInfo, tags=["Service APIs"])
async def model_info() -> schemas.ModelInfo | JSONResponse:
    """The served model: tag, metrics, threshold and its rule, lineage, feature meanings and ranges."""
    service = get_current_service()
    if service is None or service.model is None:
        return _unavailable()
    return service.model.info


@info_app.get("/", include_in_schema=False)
async def swagger_ui() -> HTMLResponse:
    """The Swagger UI page, served here before BentoML's (which loads a third-party tag manager)."""
    return HTMLResponse(SWAGGER_PAGE)


@info_app.get("/docs.json", include_in_schema=False)
async def openapi_document() -> JSONResponse:
    """BentoML's OpenAPI document, made honest (bento/openapi.py); served here, before BentoML's route."""
    global _document
    if _document is None:
        service = get_current_service()
        info = service.model.info.model_dump(mode="json") if service is not None and service.model else None
        _document = openapi.document(
            BreastCancerClassifier.openapi_spec.asdict(), openapi.service_version(), info
        )
    return JSONResponse(_document)


_document: dict | None = None


@info_app.get("/drift", response_model=DriftReport, tags=["Service APIs"])
async def drift() -> DriftReport | JSONResponse:
    """Input drift of the pod's latest window of live rows against the training rows."""
    service = get_current_service()
    if service is None or service.model is None:
        return _unavailable()
    service.drift.flush()  # this worker's latest rows, written here on the event loop
    return await asyncio.to_thread(service.drift.report)


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(
    name="breast_cancer_classifier",
    workers=config.WORKERS,
    resources={"cpu": "1", "memory": "512Mi"},
    traffic={"timeout": 10},
    # Requests are counted by BentoML's metrics and summarised in our own log (bento/logs.py).
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
        from bentoml._internal.context import server_context

        # Requests are validated before they get here, so scikit-learn's own per-call input checks
        # are redundant (they matter only when the pipeline itself serves, see bento/scoring.py).
        sklearn.set_config(assume_finite=True, skip_parameter_validation=True)
        self.metrics = service_metrics()
        # Looked up once: labels() costs more than the increment on every request.
        self._predicted = {label: self.metrics.predictions.labels(diagnosis=label) for label in _DIAGNOSES}
        self.pod = pod_directory()
        self.worker = WorkerRecord(self.pod, server_context.worker_index or 0)
        self.worker.started()
        self.prediction_log = logs.PredictionLog()
        self.model: LoadedModel | None = None  # until everything below has worked: never half a model
        try:
            self.model = load_model(config.MODEL_TAG)
        except bentoml.exceptions.NotFound:
            # Stay up but never ready, so Kubernetes keeps traffic away and the reason is logged.
            logger.error(
                "model {} not found in the BentoML model store under {}: {}",
                config.MODEL_TAG,
                config.BENTOML_HOME,
                _not_found_advice(),
            )
        except (MetadataError, ReferenceDataError, ModelCheckFailed) as reason:
            logger.error("model {} cannot be served, the service stays unready: {}", config.MODEL_TAG, reason)
        except Exception:  # noqa: BLE001 (an invalid tag, an unreadable artifact: all mean unready)
            logger.exception("model {} could not be loaded; the service stays unready", config.MODEL_TAG)
        self.metrics.model_ready.set(1 if self.model else 0)
        if self.model is None:
            return
        reference = self.model.reference
        self.drift = DriftMonitor(
            self.pod,
            reference.features,
            reference.logits,
            float(np.mean(reference.probabilities >= self.model.metadata.threshold)),
            capacity=config.DRIFT_WINDOW_ROWS,
            interval=config.DRIFT_EVALUATION_SECONDS,
            alpha=config.DRIFT_ALPHA,
            metrics=self.metrics,
        )
        logger.bind(
            model_tag=self.model.tag,
            threshold=self.model.metadata.threshold,
            metrics=self.model.metadata.metrics.model_dump()["cross_validation"],
        ).info("loaded model {}", self.model.tag)

    @bentoml.on_startup
    async def _start_background_work(self) -> None:
        import gc

        # What is loaded by now (BentoML, FastAPI, scikit-learn, the model) lives as long as the worker.
        # Frozen, the garbage collector no longer rescans it: under load those full collections
        # measured 40-140 ms pauses every few seconds, the whole p99 of /predict.
        gc.collect()
        gc.freeze()
        if self.model is not None:
            self._evaluations = asyncio.create_task(self._evaluate_drift_periodically())

    @bentoml.on_shutdown
    async def _stop_background_work(self) -> None:
        if task := getattr(self, "_evaluations", None):
            task.cancel()
            self.drift.flush()
        self.worker.stopped()

    async def _evaluate_drift_periodically(self) -> None:
        attempted = time.monotonic()
        while True:
            await asyncio.sleep(self.drift.FLUSH_SECONDS)
            self.drift.flush_if_due()  # an idle worker's last rows reach the window too
            if time.monotonic() - attempted < self.drift.interval:
                continue
            attempted = time.monotonic()
            try:
                # scipy's tests take a few milliseconds: keep them off the event loop.
                await asyncio.to_thread(self.drift.evaluate_if_due)
            except Exception:  # noqa: BLE001 (a failed evaluation must not stop the next ones)
                logger.exception("drift evaluation failed")

    async def __is_ready__(self) -> bool:
        return self.model is not None and not _drain

    def _diagnose(self, features: np.ndarray) -> tuple[list[float], list[bool], dict[int, list[str]]]:
        started = time.perf_counter()
        model = self.model
        logits, probabilities = model.scorer.score(features)
        if not np.isfinite(probabilities).all():
            # Inputs are bounded, so this is a bug on our side: a 500, never the client's 4xx that
            # BentoML would make of the output model's validation error.
            raise RuntimeError("the model produced a non-finite probability")
        malignant = probabilities >= model.metadata.threshold
        warnings = self._range_warnings(features)
        self.drift.record(features, logits, malignant)
        malignant_count = int(malignant.sum())
        if malignant_count:
            self._predicted[MALIGNANT_LABEL].inc(malignant_count)
        if malignant_count < len(features):
            self._predicted[BENIGN_LABEL].inc(len(features) - malignant_count)
        self.prediction_log.record(len(features), malignant_count, (time.perf_counter() - started) * 1000)
        return probabilities.tolist(), malignant.tolist(), warnings

    def _range_warnings(self, features: np.ndarray) -> dict[int, list[str]]:
        """Messages for the rows with features outside their training range; counted in /metrics."""
        model = self.model
        below, above = features < model.train_min, features > model.train_max
        if not (below.any() or above.any()):
            return {}
        warnings: dict[int, list[str]] = {}
        for side, mask, bound_name, bound in (
            ("below", below, "min", model.train_min),
            ("above", above, "max", model.train_max),
        ):
            for row, column in zip(*np.nonzero(mask), strict=True):
                name = FEATURE_NAMES[column]
                warnings.setdefault(int(row), []).append(
                    f"{name} is {side} the training range ({bound_name} {bound[column]:g})"
                )
                self.metrics.out_of_range.labels(feature=name, side=side).inc()
        return warnings

    @bentoml.api(route="/predict")
    async def predict(self, features: Features, /) -> schemas.Prediction:  # type: ignore[valid-type]
        """Diagnose one sample."""
        matrix = np.array([schemas.feature_values(features)])
        (probability,), (malignant,), warnings = self._diagnose(matrix)
        return schemas.Prediction(
            diagnosis=_DIAGNOSES[malignant],
            probability_malignant=probability,
            threshold=self.model.metadata.threshold,
            model_tag=self.model.tag,
            warnings=warnings.get(0, []),
        )

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, request: BatchRequest, /) -> BatchPrediction:  # type: ignore[valid-type]
        """Diagnose up to 1000 samples in one call; predictions keep the order of the instances."""
        probabilities, malignant, warnings = self._diagnose(request.matrix())
        threshold, tag = self.model.metadata.threshold, self.model.tag
        return BatchPrediction.from_rows(
            [
                {
                    "diagnosis": _DIAGNOSES[flag],
                    "probability_malignant": probability,
                    "threshold": threshold,
                    "model_tag": tag,
                    "warnings": warnings.get(row, []),
                }
                for row, (probability, flag) in enumerate(zip(probabilities, malignant, strict=True))
            ]
        )

    @bentoml.api(route="/explain")
    async def explain(self, features: Features, /) -> Explanation:  # type: ignore[valid-type]
        """Diagnose one sample and show each feature's exact contribution to the model's logit."""
        model = self.model
        if model.explainer is None:
            answer = errors.not_explainable("the served model is not StandardScaler + LogisticRegression")
            return JSONResponse(answer.body(), answer.status)
        row = np.array(schemas.feature_values(features))
        (probability,), (malignant,), _ = self._diagnose(row[np.newaxis])
        logit, baseline, measurements = model.explainer.explain(row)
        return Explanation(
            diagnosis=_DIAGNOSES[malignant],
            probability_malignant=probability,
            threshold=model.metadata.threshold,
            model_tag=model.tag,
            logit=logit,
            baseline=Explainer.baseline(baseline),
            measurements=measurements,
        )


def _model_loaded() -> bool:
    service = get_current_service()
    return service is not None and service.model is not None


API_PATHS = frozenset(api.route for api in BreastCancerClassifier.apis.values())
if API_PATHS != set(PREDICTION_PATHS):  # the tracing exclusion above must name every API route
    raise RuntimeError(
        f"PREDICTION_PATHS {PREDICTION_PATHS} differ from the service's APIs {sorted(API_PATHS)}"
    )
BreastCancerClassifier.add_asgi_middleware(
    RequestGuard,
    # The service's own API routes: a new endpoint is guarded without being listed twice.
    api_paths=API_PATHS,
    body_limits={path: SINGLE_ROW_BYTES for path in API_PATHS} | {"/predict_batch": config.MAX_REQUEST_BYTES},
    body_timeout=config.BODY_TIMEOUT_SECONDS,
    model_ready=_model_loaded,
    unavailable_message=unavailable_message,
)

# BentoML adds middleware inside its own (request metrics, tracing, timeout), so a middleware never
# sees a request before BentoML's metrics label it with the client's path. The edge guard must, so
# it wraps the app BentoML builds for this service: BentoML's Service.to_asgi, extended.
_bentoml_to_asgi = bentoml.Service.to_asgi


def _to_asgi_behind_the_edge_guard(service: bentoml.Service, is_main: bool = True):  # type: ignore[type-arg]
    app = _bentoml_to_asgi(service, is_main)
    if service is not BreastCancerClassifier:
        return app
    return EdgeGuard(
        app,
        RouteTable.of(app.routes),
        limited_paths=API_PATHS,
        max_concurrency=config.MAX_CONCURRENCY,
        draining=_drain.__bool__,
        on_shed=lambda: service_metrics().shed.inc(),
        on_unrouted=lambda: service_metrics().unrouted.inc(),
    )


bentoml.Service.to_asgi = _to_asgi_behind_the_edge_guard  # type: ignore[method-assign]
