"""The OpenAPI document the Swagger UI and client generators read, made to say what the service does.

BentoML generates the document from the service's typed APIs and the mounted FastAPI routes, with
its own boilerplate: generic group and answer descriptions, a "." server, its three error schemas
on every API, a title from the service's name. `document()` keeps BentoML's paths and schemas and
replaces the rest: this project's title, version, description and licence; each group and answer
described; every status an operation can answer (bento/errors.py), each with the error schema and an
example; the served model's training ranges in the feature descriptions and its /model answer as an
example; and, when callers must authenticate, the bearer scheme that the Swagger UI's Authorize uses.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bento import config, errors
from wdbc import FEATURE_NAMES, MALIGNANT_EXAMPLE

DESCRIPTION = f"""\
Diagnoses a breast mass as **malignant** or **benign** from the 30 measurements of a fine-needle
aspirate (the Wisconsin diagnostic data set), with a scikit-learn model trained behind a quality gate.

**Decision support and education only, not a diagnosis**: see the model card (MODEL_CARD.md) for the
intended use, the data, the metrics with their spread and the limitations.

- `POST /predict`: one row; `POST /predict_batch`: up to {config.MAX_BATCH_ROWS}; `POST /explain`: one
  row with each feature's exact contribution. A value the model cannot speak to is refused (422); a row
  unlike the training data is answered `"diagnosis": "indeterminate"`, never benign or malignant.
- `POST /outcomes`: confirmed diagnoses, counted against the served model for the recall alert.
- `GET /model`: the served model, its metrics, lineage, validity domain and what each feature means.
- `GET /drift`: the pod's recent inputs tested against the training data.
- Every error is `{{"error", "detail": [{{"field", "message"}}]}}` with the statuses listed per operation.
"""
LICENSE = {"name": "MIT", "url": "https://opensource.org/license/mit"}
GROUPS = [
    {"name": "Service APIs", "description": "Diagnoses, confirmed outcomes, the served model and its drift."},
    {"name": "Infrastructure", "description": "Probes for Kubernetes: alive, ready."},
]
ANSWERS = {
    "/predict": "the diagnosis",
    "/predict_batch": "one diagnosis per instance, in order",
    "/explain": "the diagnosis, each feature's contribution and the row's place in the validity domain",
    "/outcomes": "the outcomes counted, by the model's answer and the confirmed diagnosis",
    "/model": "the served model",
    "/drift": "the latest drift evaluation of the pod's inputs",
    "/livez": "the worker is running (its model loaded or not)",
    "/healthz": "the same as /livez",
    "/readyz": "a verified model is served and the pod is not draining",
}
API_STATUSES = (400, 408, 413, 415, 422, 500, 503, 504)
AUTH_STATUSES = (401, 403)
_INTERNAL_SCHEMAS = ("TaskStatusResponse", "InvalidArgument", "NotFound", "InternalServerError")
ERROR_SCHEMA = "#/components/schemas/ErrorResponse"

EXAMPLES: dict[int, list[errors.ErrorAnswer]] = {
    400: [errors.malformed_json("unexpected character: line 1 column 42 (char 41)"), errors.EMPTY_BODY],
    401: [errors.denied(401, "the token has expired")],
    403: [errors.denied(403, "other-namespace/some-app may not call the diagnosis endpoints")],
    408: [errors.BODY_TIMEOUT],
    413: [errors.too_large(config.SINGLE_ROW_BYTES)],
    415: [errors.unsupported_media_type("text/plain")],
    422: [
        errors.problems(
            [
                ("radius_mean", "expected a number from 0 to 1e+06, got -1"),
                ("age", "unknown field"),
                ("area_worst", "duplicate key"),
            ],
            3,
        )
    ],
    500: [errors.INTERNAL_ERROR],
    503: [
        errors.MODEL_UNAVAILABLE,
        errors.OVERLOADED,
    ],
    504: [errors.TIMED_OUT],
}


def service_version() -> str:
    """The project's version (pyproject.toml, which the bento carries beside the code)."""
    try:
        return tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def _error_response(status: int) -> dict[str, Any]:
    examples = {
        f"example {index + 1}": {"value": answer.body()} for index, answer in enumerate(EXAMPLES[status])
    }
    return {
        "description": errors.STATUSES[status],
        "content": {"application/json": {"schema": {"$ref": ERROR_SCHEMA}, "examples": examples}},
    }


def _rename_io_descriptors(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's `<Model>IODescriptor` copies of our models, named and referenced as the models."""
    schemas = spec["components"]["schemas"]
    for name in [name for name in schemas if name.endswith("IODescriptor")]:
        schemas.setdefault(
            name.removesuffix("IODescriptor"), {**schemas[name], "title": name.removesuffix("IODescriptor")}
        )
        del schemas[name]
    return json.loads(json.dumps(spec).replace("IODescriptor", ""))


def _mark_nullable(node: Any, models: tuple[type[BaseModel], ...]) -> None:
    """OpenAPI 3.0 says `nullable: true` where JSON Schema says `null`; BentoML's conversion drops it
    where it inlines a model's schema."""
    nullable = {
        model.__name__: {
            name for name, field in model.model_json_schema()["properties"].items()
            if {"type": "null"} in field.get("anyOf", [])
        }
        for model in models
    }  # fmt: skip
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for name in nullable.get(item.get("title"), ()) if "properties" in item else ():
                item["properties"].get(name, {})["nullable"] = True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def document(
    bentoml_spec: dict[str, Any],
    routes: dict[str, Any],
    model_info: dict[str, Any] | None,
    nullable: tuple[type[BaseModel], ...] = (),
) -> dict[str, Any]:
    spec = copy.deepcopy(bentoml_spec)
    spec.pop("servers", None)  # BentoML's "." server: the document's own origin is what clients use
    spec["info"] = {
        "title": "Breast-cancer diagnosis (WDBC)",
        "version": service_version(),
        "description": DESCRIPTION,
        "contact": {"name": "breast-cancer-classifier maintainers"},
        "license": LICENSE,
    }
    spec["tags"] = GROUPS
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in _INTERNAL_SCHEMAS:
        schemas.pop(name, None)
    error_schema = errors.ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs"), ErrorResponse=error_schema)
    if config.AUTH_ENABLED:
        spec["components"]["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A Kubernetes ServiceAccount token for this service's audience: "
                f"`kubectl create token <serviceaccount> --audience {config.AUTH_AUDIENCE}`",
            }
        }
    for path in list(spec["paths"]):
        if path not in routes:  # BentoML's own /metrics: not served on this port
            del spec["paths"][path]
            continue
        for method, operation in spec["paths"][path].items():
            _describe(path, method, operation, routes[path])
    spec = _rename_io_descriptors(spec)
    if model_info is not None:
        spec["paths"]["/model"]["get"]["responses"]["200"]["content"]["application/json"]["example"] = (
            model_info
        )
        _add_training_ranges(
            spec["components"]["schemas"]["Features"]["properties"], model_info["feature_stats"]
        )
    _mark_nullable(spec, nullable)
    return spec


def _describe(path: str, method: str, operation: dict[str, Any], route: Any) -> None:
    responses = {str(status): answer for status, answer in operation.get("responses", {}).items()}
    operation["responses"] = {
        "200": {**responses.get("200", {}), "description": ANSWERS.get(path, "the answer")}
    }
    if method == "post":
        statuses: tuple[int, ...] = API_STATUSES
        example = {"instances": [MALIGNANT_EXAMPLE]} if path == "/predict_batch" else MALIGNANT_EXAMPLE
        if path == "/outcomes":
            example = {"outcomes": [{"features": MALIGNANT_EXAMPLE, "diagnosis": "malignant"}]}
        operation["requestBody"]["content"]["application/json"]["example"] = example
    elif path == "/readyz":
        statuses = (503,)
    elif route.group is None:
        statuses = ()
    else:
        statuses = (500, 503)
    if route.group is not None and config.AUTH_ENABLED:
        statuses = (*statuses, *AUTH_STATUSES)
        operation["security"] = [{"bearer": []}]
    for status in sorted(statuses):
        operation["responses"][str(status)] = _error_response(status)


def _add_training_ranges(properties: dict[str, Any], stats: dict[str, Any]) -> None:
    for feature in FEATURE_NAMES:
        low, high, mean = (stats[feature][key] for key in ("min", "max", "mean"))
        properties[feature]["description"] += f". Training range {low:g} to {high:g} (mean {mean:g})."
