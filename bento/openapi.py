"""The OpenAPI document the Swagger UI and client generators read, made to say what the service does.

BentoML generates the document from the service's typed APIs and the mounted FastAPI routes, but
documents every API with BentoML's own three error schemas (400, 404, 500), titles it with the
service's name, versions it "None" outside a bento, and describes it with BentoML's boilerplate.
`document()` keeps BentoML's paths and schemas and changes only that: this project's title,
version, description, contact and licence; every status each operation can answer (bento/errors.py
STATUSES), each with the contract's error schema and an example; examples in model order; the live
model's /model answer as its example; and no unused internal schemas.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

from bento import errors
from wdbc import MALIGNANT_EXAMPLE

DESCRIPTION = """\
Diagnoses a breast mass as **malignant** or **benign** from the 30 measurements of a fine-needle
aspirate (the Wisconsin diagnostic data set), with a scikit-learn model trained behind a quality gate.

**Decision support and education only, not a diagnosis**: see the model card (MODEL_CARD.md) for the
intended use, the data, the metrics with their spread and the limitations.

- `POST /predict`: one row; `POST /predict_batch`: up to 1000; `POST /explain`: one row with each
  feature's exact contribution. Values outside the training range are accepted and listed in `warnings`.
- `GET /model`: the served model, its metrics, lineage and what each feature means.
- `GET /drift`: the pod's recent inputs tested against the training data.
- Every error is `{"error", "detail": [{"field", "message"}]}` with the statuses documented per operation.
"""
ERROR_SCHEMA = "#/components/schemas/ErrorResponse"
LICENSE_NAME = "MIT"  # the project's LICENSE
API_STATUSES = (400, 408, 413, 415, 422, 500, 503, 504)
INFO_STATUSES = (500, 503)
_INTERNAL_SCHEMAS = ("TaskStatusResponse", "InvalidArgument", "NotFound", "InternalServerError")

EXAMPLES: dict[int, list[errors.ErrorAnswer]] = {
    400: [errors.malformed_json("Expecting ',' delimiter: line 1 column 42 (char 41)"), errors.EMPTY_BODY],
    408: [errors.body_timeout(5)],
    413: [errors.too_large(65536)],
    415: [errors.unsupported_media_type("text/plain")],
    422: [
        errors.ErrorAnswer(
            422,
            "invalid request: 2 problems",
            (
                ("radius_mean", "Input should be greater than or equal to 0"),
                ("age", "unknown field"),
            ),
        )
    ],
    500: [errors.ErrorAnswer(500, "internal server error")],
    501: [errors.not_explainable("the served model is not StandardScaler + LogisticRegression")],
    503: [
        errors.model_unavailable("model breast_cancer:latest is not loaded; see the service's startup log"),
        errors.overloaded(64),
    ],
    504: [errors.ErrorAnswer(504, "timed out", (("request", "the service did not answer in time; retry"),))],
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


def _rename_io_descriptors(spec: dict[str, Any]) -> None:
    """BentoML's `<Model>IODescriptor` copies of our models, named and referenced as the models."""
    schemas = spec["components"]["schemas"]
    renamed = {}
    for name in [name for name in schemas if name.endswith("IODescriptor")]:
        plain = name.removesuffix("IODescriptor")
        if plain not in schemas:
            schemas[plain] = {**schemas[name], "title": plain}
        del schemas[name]
        renamed[f"#/components/schemas/{name}"] = f"#/components/schemas/{plain}"
        renamed[name] = plain
    text = json.dumps(spec)
    for old, new in renamed.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    spec.clear()
    spec.update(json.loads(text))


def document(bentoml_spec: dict[str, Any], version: str, model_info: dict[str, Any] | None) -> dict[str, Any]:
    spec = copy.deepcopy(bentoml_spec)
    spec["info"] = {
        "title": "Breast-cancer diagnosis (WDBC)",
        "version": version,
        "description": DESCRIPTION,
        "contact": {"name": "breast-cancer-classifier maintainers"},
        "license": {"name": LICENSE_NAME},
    }
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in _INTERNAL_SCHEMAS:
        schemas.pop(name, None)
    error_schema = errors.ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs"), ErrorResponse=error_schema)
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            # BentoML's keys are ints; its generic 400, 404 and 500 are replaced below.
            responses = {str(status): answer for status, answer in operation.get("responses", {}).items()}
            operation["responses"] = responses
            for status in ("400", "404", "500"):
                responses.pop(status, None)
            if method == "post":
                statuses = (*API_STATUSES, 501) if path == "/explain" else API_STATUSES
                operation["requestBody"]["content"]["application/json"]["example"] = (
                    {"instances": [MALIGNANT_EXAMPLE]} if path == "/predict_batch" else MALIGNANT_EXAMPLE
                )
            elif path == "/readyz":
                statuses = (503,)
            elif operation.get("tags") == ["Infrastructure"]:
                statuses = ()
            else:
                statuses = INFO_STATUSES
            for status in statuses:
                responses[str(status)] = _error_response(status)
    if model_info is not None:
        ok = spec["paths"]["/model"]["get"]["responses"]["200"]["content"]["application/json"]
        ok["example"] = model_info
    _rename_io_descriptors(spec)
    return spec
