"""The API: the model loaded once per worker, and the endpoints that answer with it.

    POST /predict, /predict_batch, /explain: diagnoses; POST /outcomes: confirmed diagnoses;
    GET /model, /drift: the served model and its inputs' drift.

A worker loads its model once and proves it before it serves: the pipeline must reproduce
training's own probabilities for the reference rows saved with it, then it is compiled to one dot
product (bento/scoring.py). Any failure leaves the worker alive and unready, with one log line saying
why. Bodies arrive checked by the edge (bento/edge.py): the endpoints only compute and answer.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import bentoml
import numpy as np
import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from loguru import logger
from pydantic import BaseModel, Field
from starlette.responses import Response

from bento import auth, config, errors, hooks, logs, requests
from bento.drift import FLUSH_SECONDS, DriftMonitor, DriftReport
from bento.edge import ANY_GROUP, DRAINING, RECORDING, Route
from bento.explain import Explainer, Explanation
from bento.metrics import forget_dead_workers, serve_pod_metrics, service_metrics
from bento.requests import BatchRequest, Features, OutcomeBatch
from bento.scoring import LinearScorer, ModelCheckFailed, Scorer, load_scorer
from wdbc import (
    BENIGN_EXAMPLE,
    BENIGN_LABEL,
    CLASS_LABELS,
    FEATURE_DESCRIPTIONS,
    FEATURE_NAMES,
    MALIGNANT_EXAMPLE,
    MALIGNANT_LABEL,
    MetadataError,
    ModelMetadata,
    Reference,
    ReferenceDataError,
)
from wdbc.domain import ValidityDomain

INDETERMINATE = "indeterminate"
DIAGNOSES = (*CLASS_LABELS, INDETERMINATE)
_GET = frozenset({"GET", "HEAD"})
_POST = frozenset({"POST"})
# Every path the service answers, who may call it and the body it takes: the edge routes by it.
ROUTES = {
    "/predict": Route(_POST, "diagnosis", requests.ROW, config.SINGLE_ROW_BYTES),
    "/predict_batch": Route(_POST, "diagnosis", requests.BATCH),
    "/explain": Route(_POST, "diagnosis", requests.ROW, config.SINGLE_ROW_BYTES),
    "/outcomes": Route(_POST, "outcomes", requests.OUTCOMES),
    "/model": Route(_GET, "model data"),
    "/drift": Route(_GET, "model data"),
    "/docs.json": Route(_GET, ANY_GROUP),
    "/schema.json": Route(_GET, ANY_GROUP),
    "/": Route(_GET),
    "/livez": Route(_GET),
    "/healthz": Route(_GET),
    "/readyz": Route(_GET),
}


class Prediction(BaseModel):
    diagnosis: Literal[MALIGNANT_LABEL, BENIGN_LABEL, INDETERMINATE] = Field(  # type: ignore[valid-type]
        description="indeterminate: the row is unlike the data the model learned from, so it gives no diagnosis"
    )
    probability_malignant: float | None = Field(ge=0, le=1, description="null when indeterminate")
    threshold: float = Field(ge=0, le=1, description="malignant when probability_malignant >= threshold")
    model_tag: str
    warnings: list[str] = Field(description="features outside the range seen in training: the model extrapolates")
    reason: str | None = Field(description="why the diagnosis is indeterminate; null otherwise")

    model_config = {
        "json_schema_extra": {
            "example": {
                "diagnosis": MALIGNANT_LABEL,
                "probability_malignant": 1.0,
                "threshold": 0.19,
                "model_tag": "breast_cancer:abc123",
                "warnings": [],
                "reason": None,
            }
        }
    }


class BatchPrediction(BaseModel):
    predictions: list[Prediction] = Field(description="one per instance, in the same order")


class OutcomeCounts(BaseModel):
    model_tag: str = Field(description="the served model, which scored the rows")
    rows: int
    counts: dict[str, dict[str, int]] = Field(
        description="rows by what the model answers (malignant, benign, indeterminate), then by the confirmed diagnosis"
    )


class ModelInfo(ModelMetadata):
    """The served model: its tag and creation time, and the metadata training saved with it."""

    tag: str
    creation_time: datetime
    scoring: str = Field(description="how the service scores: compiled to one dot product, or the pipeline")
    feature_descriptions: dict[str, str] = Field(description="what each feature measures, in model order")
    examples: dict[str, dict[str, float]] = Field(description="a malignant and a benign row, to try the API with")


@dataclass
class Diagnoses:
    """What the model says of some rows; `answers()` is what the API returns for them."""

    logits: np.ndarray
    probabilities: np.ndarray
    malignant: np.ndarray  # bool: probability >= threshold
    indeterminate: np.ndarray  # bool: outside the validity domain
    below: np.ndarray  # bool (rows, 30): under the training minimum
    above: np.ndarray
    reasons: dict[int, str] = field(default_factory=dict)

    def labels(self) -> list[str]:
        return [
            INDETERMINATE if unknown else MALIGNANT_LABEL if malignant else BENIGN_LABEL
            for malignant, unknown in zip(self.malignant.tolist(), self.indeterminate.tolist(), strict=True)
        ]

    def answers(self, model: Model) -> list[dict]:
        warnings: dict[int, list[str]] = {}
        for side, mask, bound in (("below", self.below, model.train_min), ("above", self.above, model.train_max)):
            for row, column in zip(*np.nonzero(mask), strict=True):
                warnings.setdefault(int(row), []).append(
                    f"{FEATURE_NAMES[column]} is {side} the training range ({'min' if side == 'below' else 'max'} "
                    f"{bound[column]:g})"
                )
        threshold, tag = model.metadata.threshold, model.tag
        return [
            {
                "diagnosis": label,
                "probability_malignant": None if label == INDETERMINATE else probability,
                "threshold": threshold,
                "model_tag": tag,
                "warnings": warnings.get(row, []),
                "reason": self.reasons.get(row),
            }
            for row, (label, probability) in enumerate(zip(self.labels(), self.probabilities.tolist(), strict=True))
        ]


@dataclass(frozen=True)
class Model:
    """Everything a worker needs to serve, built only once every check has passed."""

    tag: str
    metadata: ModelMetadata
    scorer: Scorer
    info: ModelInfo
    explainer: Explainer | None
    reference: Reference
    train_min: np.ndarray
    train_max: np.ndarray

    @property
    def domain(self) -> ValidityDomain:
        return self.metadata.domain

    def diagnose(self, features: np.ndarray) -> Diagnoses:
        logits, probabilities = self.scorer.score(features)
        if not np.isfinite(probabilities).all():
            raise RuntimeError("the model produced a non-finite probability")  # inputs are bounded: our bug
        scores = self.domain.scores(features)
        indeterminate = scores > self.domain.threshold
        reasons = {
            int(row): (
                f"the row is unlike the data the model learned from (score {scores[row]:.1f}, the limit is "
                f"{self.domain.threshold:.1f}); most unusual: {', '.join(self.domain.unusual_features(features[row]))}. "
                "Check the values and their units"
            )
            for row in np.flatnonzero(indeterminate)
        }
        return Diagnoses(
            logits,
            probabilities,
            probabilities >= self.metadata.threshold,
            indeterminate,
            features < self.train_min,
            features > self.train_max,
            reasons,
        )

    def answers(self, features: np.ndarray) -> list[dict]:
        return self.diagnose(features).answers(self)


def load_model(tag: str) -> Model:
    model_ref = bentoml.models.get(tag)
    metadata = ModelMetadata.parse(model_ref.info.metadata)
    reference = Reference.from_custom_objects(model_ref.custom_objects)
    scorer, note = load_scorer(bentoml.sklearn.load_model(model_ref), reference)
    info = ModelInfo(
        tag=str(model_ref.tag),
        creation_time=model_ref.info.creation_time,
        scoring=note,
        feature_descriptions={name: FEATURE_DESCRIPTIONS[name] for name in FEATURE_NAMES},
        examples={MALIGNANT_LABEL: MALIGNANT_EXAMPLE, BENIGN_LABEL: BENIGN_EXAMPLE},
        **dict(metadata),
    )
    (logger.info if scorer.compiled else logger.warning)("model {}: {}", info.tag, note)
    explainer = Explainer(scorer, reference.features) if isinstance(scorer, LinearScorer) else None
    stats = [metadata.feature_stats[name] for name in FEATURE_NAMES]
    low, high = np.array([s.min for s in stats]), np.array([s.max for s in stats])
    return Model(info.tag, metadata, scorer, info, explainer, reference, low, high)


def served() -> Model | None:
    """The one answer to "is a model served?": this worker's model, once it has passed every check."""
    service = bentoml.get_current_service()
    return getattr(service, "model", None)


def unavailable_message() -> str:
    return f"model {config.MODEL_TAG} is not loaded; see the service's startup log"


def _not_found_advice() -> str:
    if config.IN_KUBERNETES:
        return (
            "set the chart's `modelTag` value to a model the image contains (helm upgrade ... --set "
            "modelTag=breast_cancer:<version>), or deploy an image built with this model (make image)"
        )
    return "train it with `make train` (or `python -m training.train` with the same BENTOML_HOME), or set MODEL_TAG"


def json_response(content: object) -> Response:
    """An answer rendered with orjson (hook 3 in bento/hooks.py)."""
    return Response(orjson.dumps(content), media_type=errors.JSON_CONTENT_TYPE)


class BreastCancerClassifier:
    """Predicts whether a breast mass is malignant from the 30 WDBC measurements."""

    def __init__(self) -> None:
        import gc

        import sklearn

        # Requests are checked before they get here, so scikit-learn's own per-call input checks are
        # redundant (they matter only when the pipeline itself serves, see bento/scoring.py).
        sklearn.set_config(assume_finite=True, skip_parameter_validation=True)
        self.worker = bentoml.server_context.worker_index or 1
        self.metrics = service_metrics()
        self.prediction_log = logs.PredictionLog()
        forget_dead_workers()
        if self.worker == 1:  # the pod's first worker also serves the pod's metrics
            serve_pod_metrics()
        self.model: Model | None = None  # until everything below has worked: never half a model
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
        self._reported: set[str] = set()
        if self.model is None:
            return
        reference = self.model.reference
        self.drift = DriftMonitor(
            config.BENTOML_HOME / "drift",
            self.worker,
            _pod_started(),
            reference,
            float(np.mean(reference.probabilities >= self.model.metadata.threshold)),
            capacity=config.DRIFT_WINDOW_ROWS,
            interval=config.DRIFT_EVALUATION_SECONDS,
            alpha=config.DRIFT_ALPHA,
            metrics=self.metrics,
        )
        self._predicted = {label: self.metrics.predictions.labels(diagnosis=label) for label in DIAGNOSES}
        logger.bind(
            model_tag=self.model.tag,
            threshold=self.model.metadata.threshold,
            metrics=self.model.metadata.metrics.model_dump()["cross_validation"],
        ).info("loaded model {}", self.model.tag)
        # What is loaded by now lives as long as the worker. Frozen, the garbage collector no longer
        # rescans it: under load those full collections measured 40-140 ms pauses, the whole p99.
        gc.collect()
        gc.freeze()

    @bentoml.on_startup
    async def _start_background_work(self) -> None:
        if self.model is not None:
            self._background = asyncio.ensure_future(self._keep_drift_current())

    @bentoml.on_shutdown
    async def _stop_background_work(self) -> None:
        if task := getattr(self, "_background", None):
            task.cancel()
            self.drift.rows.flush()
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # a clean end: nothing for forget_dead_workers to say

    async def _keep_drift_current(self) -> None:
        evaluated = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self.drift.rows.flush()  # the worker's latest rows reach the pod's window
            if self.worker != 1 or time.monotonic() - evaluated < self.drift.interval:
                continue
            evaluated = time.monotonic()
            try:
                await asyncio.to_thread(self.drift.evaluate)  # scipy's tests take milliseconds
            except Exception:  # noqa: BLE001 (a failed evaluation must not stop the next ones)
                logger.exception("drift evaluation failed")

    async def __is_ready__(self) -> bool:
        missing = hooks.missing()
        for hook, why in missing.items():
            if hook not in self._reported:
                self._reported.add(hook)
                logger.bind(hook=hook).error("a hook into a library's internals is not in effect: {}", why)
        keys = auth.AUTHENTICATOR is None or auth.AUTHENTICATOR.ready
        return self.model is not None and not DRAINING and not missing and keys

    def _diagnose(self, features: np.ndarray) -> Diagnoses:
        started = time.perf_counter()
        diagnoses = self.model.diagnose(features)
        if RECORDING.get():
            self.drift.record(features, diagnoses.logits, diagnoses.malignant)
            labels = diagnoses.labels()
            for label in DIAGNOSES:
                if count := labels.count(label):
                    self._predicted[label].inc(count)
            for side, mask in (("below", diagnoses.below), ("above", diagnoses.above)):
                for column in np.flatnonzero(mask.any(axis=0)):
                    self.metrics.out_of_range.labels(FEATURE_NAMES[column], side).inc(int(mask[:, column].sum()))
            self.prediction_log.record(
                len(features),
                labels.count(MALIGNANT_LABEL),
                labels.count(INDETERMINATE),
                (time.perf_counter() - started) * 1000,
            )
        return diagnoses

    @bentoml.api(route="/predict")
    async def predict(self, features: Features, /) -> Prediction:  # type: ignore[valid-type]
        """Diagnose one sample."""
        return json_response(self._diagnose(features.features).answers(self.model)[0])

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, request: BatchRequest, /) -> BatchPrediction:
        """Diagnose up to 1000 samples in one call; predictions keep the order of the instances."""
        return json_response({"predictions": self._diagnose(request.features).answers(self.model)})

    @bentoml.api(route="/explain")
    async def explain(self, features: Features, /) -> Explanation:  # type: ignore[valid-type]
        """Diagnose one sample and show each feature's exact contribution to the model's logit, and
        which features, if any, put it outside the model's validity domain."""
        model = self.model
        if model.explainer is None:
            answer = errors.not_explainable("the served model is not StandardScaler + LogisticRegression")
            return Response(answer.content(), answer.status, media_type=errors.JSON_CONTENT_TYPE)
        row = features.features
        (answer,) = self._diagnose(row).answers(model)
        return json_response({**answer, **model.explainer.explain(row[0], model.domain)})

    @bentoml.api(route="/outcomes")
    async def outcomes(self, batch: OutcomeBatch, /) -> OutcomeCounts:
        """Confirmed diagnoses (the pathology results) of samples, scored with the served model and
        counted per model in `confirmed_outcomes_total`; the basis of the recall alert."""
        model = self.model
        predicted = model.diagnose(batch.features).labels()
        counts = {label: dict.fromkeys(CLASS_LABELS, 0) for label in DIAGNOSES}
        for answer, confirmed in zip(predicted, batch.confirmed(), strict=True):
            counts[answer][confirmed] += 1
        if RECORDING.get():
            for answer, by_confirmed in counts.items():
                for confirmed, count in by_confirmed.items():
                    if count:
                        self.metrics.outcomes.labels(model.tag, answer, confirmed).inc(count)
            now = datetime.now(UTC)
            for when in batch.predicted_times():
                self.metrics.outcome_delay.observe(max(0.0, (now - when).total_seconds()))
        logger.bind(rows=len(predicted), counts=counts).info("confirmed outcomes counted")
        return json_response({"model_tag": model.tag, "rows": len(predicted), "counts": counts})


def _pod_started() -> float:
    """When this pod's `bentoml serve` started: drift rows older than that are an earlier run's."""
    import psutil

    return psutil.Process(os.getppid()).create_time()


# GET /model and /drift are routes of a FastAPI app mounted beside the BentoML APIs (BentoML APIs are
# POST-only); BentoML merges its documented routes into the OpenAPI document.
info = FastAPI(title="model info", docs_url=None, redoc_url=None, openapi_url=None)


def _unavailable() -> JSONResponse:
    answer = errors.unavailable("model", unavailable_message())
    return JSONResponse(answer.body(), answer.status, headers={"retry-after": str(config.RETRY_AFTER_SECONDS)})


@info.get("/model", response_model=ModelInfo, tags=["Service APIs"])
async def model_info() -> ModelInfo | JSONResponse:
    """The served model: tag, metrics, threshold and its rule, lineage, validity domain, feature meanings and ranges."""
    model = served()
    return _unavailable() if model is None else model.info


@info.get("/drift", response_model=DriftReport, tags=["Service APIs"])
async def drift() -> DriftReport | JSONResponse:
    """Input drift of the pod's latest window of live rows against the training rows."""
    service = bentoml.get_current_service()
    if served() is None:
        return _unavailable()
    service.drift.rows.flush()  # this worker's latest rows, written here on the event loop
    return await asyncio.to_thread(service.drift.report)
