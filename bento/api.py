"""The API: the model, loaded once per worker, and the endpoints that answer with it.

    POST /predict, /predict_batch, /explain: diagnoses; POST /outcomes: confirmed diagnoses;
    GET /model, /drift: the served model and the drift of its inputs.

A worker proves its model before it serves (bento/scoring.py) and stays alive and unready, its log
saying why, when that fails. Bodies arrive checked by the edge (bento/edge.py): the endpoints only
compute and answer.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import bentoml
import numpy as np
import orjson
from fastapi import FastAPI
from loguru import logger
from pydantic import BaseModel, Field
from starlette.responses import Response

from bento import config, errors, hooks, logs, requests
from bento.drift import FLUSH_SECONDS, DriftMonitor, DriftReport
from bento.edge import ANY_GROUP, AUTHENTICATOR, DRAINING, RECORDING, Route
from bento.explain import Explainer, Explanation
from bento.metrics import forget_dead_workers, serve_pod_metrics, service_metrics
from bento.requests import BatchRequest, Features, OutcomeBatch
from bento.scoring import LinearScorer, ModelCheckFailed, load_scorer
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
from wdbc.domain import ValidityDomain, contradictions

INDETERMINATE = "indeterminate"
DIAGNOSES = (*CLASS_LABELS, INDETERMINATE)
SWAGGER_PAGE = (Path(__file__).parent / "static" / "index.html").read_text()
SWAGGER_ASSETS = re.findall(r'"\./static_content/([\w.-]+)"', SWAGGER_PAGE)  # what the page loads
_GET, _POST = frozenset({"GET", "HEAD"}), frozenset({"POST"})
# Every path the service answers, who may call it and the body it takes: the edge routes by it.
ROUTES = {
    "/predict": Route(_POST, "diagnosis", requests.ROW, config.SINGLE_ROW_BYTES),
    "/predict_batch": Route(_POST, "diagnosis", requests.BATCH),
    "/explain": Route(_POST, "diagnosis", requests.ROW, config.SINGLE_ROW_BYTES),
    "/outcomes": Route(_POST, "outcomes", requests.OUTCOMES),
    "/model": Route(_GET, "model data", model=True),
    "/drift": Route(_GET, "model data", model=True),
    "/docs.json": Route(_GET, ANY_GROUP),
    "/schema.json": Route(_GET, ANY_GROUP),
    "/": Route(_GET),
    "/livez": Route(_GET),
    "/healthz": Route(_GET),
    "/readyz": Route(_GET),
    # The Swagger page's assets, which BentoML serves.
    **{f"/static_content/{name}": Route(_GET) for name in SWAGGER_ASSETS},
}


class Prediction(BaseModel):
    diagnosis: Literal[MALIGNANT_LABEL, BENIGN_LABEL, INDETERMINATE] = Field(  # type: ignore[valid-type]
        description="indeterminate: the row is unlike the data the model learned from, so it gives no diagnosis"
    )
    probability_malignant: float | None = Field(ge=0, le=1, description="null when indeterminate")
    threshold: float = Field(ge=0, le=1, description="malignant when probability_malignant >= threshold")
    model_tag: str
    warnings: list[str] = Field(
        description="features outside the range seen in training: the model extrapolates"
    )
    reason: str | None = Field(description="why the diagnosis is indeterminate; null otherwise")
    model_config = {"json_schema_extra": {"example": {
        "diagnosis": MALIGNANT_LABEL, "probability_malignant": 1.0, "threshold": 0.19,
        "model_tag": "breast_cancer:abc123", "warnings": [], "reason": None,
    }}}  # fmt: skip


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

    domain: dict = Field(
        description="the validity domain: hard limits, the score and its calibrated threshold"
    )
    tag: str
    creation_time: datetime
    scoring: str = Field(description="how the service scores the model")
    feature_descriptions: dict[str, str] = Field(description="what each feature measures, in model order")
    examples: dict[str, dict[str, float]] = Field(
        description="a malignant and a benign row, to try the API with"
    )


@dataclass
class Diagnoses:
    """What the model says of some rows, before it is counted."""

    logits: np.ndarray
    probabilities: np.ndarray
    malignant: np.ndarray  # bool: probability >= threshold
    labels: list[str]  # malignant, benign or indeterminate: outside the validity domain
    beyond: dict[str, np.ndarray]  # "below" and "above": (rows, 30) bool, outside the training range
    reasons: dict[int, str]


@dataclass(frozen=True)
class Model:
    """Everything a worker needs to serve, built only once every check has passed."""

    tag: str
    metadata: ModelMetadata
    scorer: LinearScorer
    explainer: Explainer
    info: ModelInfo
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
        malignant, scores = probabilities >= self.metadata.threshold, self.domain.scores(features)
        contradicted = contradictions(features)
        labels = [INDETERMINATE if score > self.domain.threshold or row in contradicted
                  else MALIGNANT_LABEL if m else BENIGN_LABEL
                  for row, (m, score) in enumerate(zip(malignant.tolist(), scores.tolist(), strict=True))]  # fmt: skip
        beyond = {"below": features < self.train_min, "above": features > self.train_max}
        reasons = {
            row: f"the row's values contradict each other: {'; '.join(contradicted[row])}. Check the values"
            if row in contradicted
            else f"the row is unlike the data the model learned from (score {scores[row]:.1f}, the limit is "
            f"{self.domain.threshold:.1f}); most unusual: {', '.join(self.domain.unusual_features(features[row]))}. "
            "Check the values and their units"
            for row, label in enumerate(labels)
            if label == INDETERMINATE
        }
        return Diagnoses(logits, probabilities, malignant, labels, beyond, reasons)

    def answers(self, features: np.ndarray, diagnoses: Diagnoses | None = None) -> list[dict]:
        """What the API answers for each row."""
        found = diagnoses or self.diagnose(features)
        threshold, tag = self.metadata.threshold, self.tag
        warnings: dict[int, list[str]] = {}
        for side, bound in (("below", self.train_min), ("above", self.train_max)):
            for row, column in zip(*np.nonzero(found.beyond[side]), strict=True):
                warnings.setdefault(int(row), []).append(
                    f"{FEATURE_NAMES[column]} is {side} the training range ({'min' if side == 'below' else 'max'} "
                    f"{bound[column]:g})"
                )
        return [
            {"diagnosis": label, "probability_malignant": None if label == INDETERMINATE else probability,
             "threshold": threshold, "model_tag": tag, "warnings": warnings.get(row, []),
             "reason": found.reasons.get(row)}
            for row, (label, probability) in enumerate(zip(found.labels, found.probabilities.tolist(), strict=True))
        ]  # fmt: skip


def load_model(tag: str) -> Model:
    model_ref = bentoml.models.get(tag)
    metadata = ModelMetadata.parse(model_ref.info.metadata)
    reference = Reference.from_custom_objects(model_ref.custom_objects)
    scorer = load_scorer(bentoml.sklearn.load_model(model_ref), reference)
    info = ModelInfo(
        tag=str(model_ref.tag),
        creation_time=model_ref.info.creation_time,
        scoring="StandardScaler + LogisticRegression compiled to one dot product, proven equal to the pipeline",
        feature_descriptions={name: FEATURE_DESCRIPTIONS[name] for name in FEATURE_NAMES},
        examples={MALIGNANT_LABEL: MALIGNANT_EXAMPLE, BENIGN_LABEL: BENIGN_EXAMPLE},
        **{**dict(metadata), "domain": metadata.domain.describe()},
    )
    stats = [metadata.feature_stats[name] for name in FEATURE_NAMES]
    low, high = np.array([s.min for s in stats]), np.array([s.max for s in stats])
    return Model(
        info.tag, metadata, scorer, Explainer(scorer, reference.features), info, reference, low, high
    )


def served() -> Model | None:
    """The one answer to "is a model served?": this worker's model, once it has passed every check."""
    return getattr(bentoml.get_current_service(), "model", None)


def json_response(content: object) -> Response:
    """An answer rendered with orjson (hook 3 in bento/hooks.py)."""
    return Response(orjson.dumps(content), media_type=errors.JSON_CONTENT_TYPE)


class BreastCancerClassifier:
    """Predicts whether a breast mass is malignant from the 30 WDBC measurements."""

    def __init__(self) -> None:
        import gc

        self.worker = bentoml.server_context.worker_index or 1
        self.metrics = service_metrics()
        self.prediction_log = logs.PredictionLog()
        self._reported: set[str] = set()
        forget_dead_workers()
        if self.worker == 1:  # the pod's first worker also serves the pod's metrics
            serve_pod_metrics()
        self.model: Model | None = None  # until everything below has worked: never half a model
        try:
            self.model = load_model(config.MODEL_TAG)
        except bentoml.exceptions.NotFound:
            advice = (
                "set the chart's modelTag value to a model the image contains, or deploy an image built with it"
                if config.IN_KUBERNETES
                else "train it with `make train`, or set MODEL_TAG"
            )
            logger.error(
                "model {} not found in the BentoML store under {}: {}",
                config.MODEL_TAG,
                config.BENTOML_HOME,
                advice,
            )
        except (MetadataError, ReferenceDataError, ModelCheckFailed) as reason:
            logger.error("model {} cannot be served, the service stays unready: {}", config.MODEL_TAG, reason)
        except Exception:  # noqa: BLE001 (an invalid tag, an unreadable artifact: all mean unready)
            logger.exception("model {} could not be loaded; the service stays unready", config.MODEL_TAG)
        self.metrics.model_ready.set(1 if self.model else 0)
        if self.model is None:
            return
        self.drift = DriftMonitor(
            config.BENTOML_HOME / "drift",
            self.worker,
            self.model.reference,
            float(np.mean(self.model.reference.probabilities >= self.model.metadata.threshold)),
            self.metrics,
        )
        self._predicted = {label: self.metrics.predictions.labels(label) for label in DIAGNOSES}
        # Every series from zero, so that increase() sees a new model's first outcomes.
        for answer in DIAGNOSES:
            for confirmed in CLASS_LABELS:
                self.metrics.outcomes.labels(self.model.tag, answer, confirmed).inc(0)
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
        from prometheus_client import multiprocess

        if task := getattr(self, "_background", None):
            task.cancel()
            self.drift.rows.flush()
        multiprocess.mark_process_dead(os.getpid())  # a clean end: nothing for forget_dead_workers to say

    async def _keep_drift_current(self) -> None:
        evaluated = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self.drift.rows.flush()  # this worker's latest rows reach the pod's window
            if self.worker == 1 and time.monotonic() - evaluated >= config.DRIFT_EVALUATION_SECONDS:
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
        keys = AUTHENTICATOR is None or AUTHENTICATOR.ready
        return self.model is not None and not DRAINING and not missing and keys

    def _answers(self, features: np.ndarray) -> list[dict]:
        started = time.perf_counter()
        diagnoses = self.model.diagnose(features)
        if RECORDING.get():
            self.drift.rows.record(features, diagnoses.logits, diagnoses.malignant)
            for label in DIAGNOSES:
                if count := diagnoses.labels.count(label):
                    self._predicted[label].inc(count)
            for side, beyond in diagnoses.beyond.items():
                for column in np.flatnonzero(beyond.any(axis=0)):
                    self.metrics.out_of_range.labels(FEATURE_NAMES[column], side).inc(
                        int(beyond[:, column].sum())
                    )
            self.prediction_log.record(diagnoses.labels, (time.perf_counter() - started) * 1000)
        return self.model.answers(features, diagnoses)

    @bentoml.api(route="/predict")
    async def predict(self, features: Features, /) -> Prediction:  # type: ignore[valid-type]
        """Diagnose one sample."""
        return json_response(self._answers(features.features)[0])

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, request: BatchRequest, /) -> BatchPrediction:
        """Diagnose up to 1000 samples in one call; predictions keep the order of the instances."""
        return json_response({"predictions": self._answers(request.features)})

    @bentoml.api(route="/explain")
    async def explain(self, features: Features, /) -> Explanation:  # type: ignore[valid-type]
        """Diagnose one sample, with each feature's exact contribution to the model's logit and where the
        sample stands against the model's validity domain."""
        row = features.features
        return json_response(
            {**self._answers(row)[0], **self.model.explainer.explain(row[0], self.model.domain)}
        )

    @bentoml.api(route="/outcomes")
    async def outcomes(self, batch: OutcomeBatch, /) -> OutcomeCounts:
        """Confirmed diagnoses (the pathology results) of samples, scored with the served model and
        counted per model in `confirmed_outcomes_total`: what the recall alert reads."""
        model = self.model
        counts = {label: dict.fromkeys(CLASS_LABELS, 0) for label in DIAGNOSES}
        for answer, confirmed in zip(model.diagnose(batch.features).labels, batch.confirmed(), strict=True):
            counts[answer][confirmed] += 1
        if RECORDING.get():
            for answer, by_confirmed in counts.items():
                for confirmed, count in by_confirmed.items():
                    self.metrics.outcomes.labels(model.tag, answer, confirmed).inc(count)
            now = datetime.now(UTC)
            for when in batch.predicted_times():
                self.metrics.outcome_delay.observe(max(0.0, (now - when).total_seconds()))
        logger.bind(rows=len(batch.features), counts=counts).info("confirmed outcomes counted")
        return json_response({"model_tag": model.tag, "rows": len(batch.features), "counts": counts})


# GET /model and /drift are routes of a FastAPI app mounted beside the BentoML APIs, which are
# POST-only; BentoML merges its documented routes into the OpenAPI document.
info = FastAPI(title="model info", docs_url=None, redoc_url=None, openapi_url=None)


@info.head("/model", include_in_schema=False)  # FastAPI's GET routes take no HEAD: uvicorn drops the body
@info.get("/model", response_model=ModelInfo, tags=["Service APIs"])
async def model_info() -> ModelInfo:
    """The served model: tag, metrics, threshold and its rule, lineage, validity domain, feature meanings and ranges."""
    return served().info  # the edge answers 503 while there is none


@info.head("/drift", include_in_schema=False)
@info.get("/drift", response_model=DriftReport, tags=["Service APIs"])
async def drift() -> DriftReport:
    """Input drift of the pod's latest window of live rows against the training rows."""
    monitor = bentoml.get_current_service().drift
    monitor.rows.flush()  # this worker's latest rows, written here on the event loop
    return await asyncio.to_thread(monitor.report)
