"""The app: the BentoML service (bento/api.py), its edge (bento/edge.py) and its documentation, wired.

    bentoml serve bento.service:BreastCancerClassifier

Settings come from the environment, documented in k8s/runtime-contract.yaml and read in bento/config.py.
"""

from __future__ import annotations

import bentoml
import orjson
from fastapi.responses import HTMLResponse
from starlette.responses import Response

from bento import api, config, hooks, logs, openapi
from bento.edge import Edge
from bento.explain import Explanation
from bento.requests import Outcome

logs.configure()
hooks.install()


@api.info.head("/", include_in_schema=False)
@api.info.get("/", include_in_schema=False)
async def swagger_ui() -> HTMLResponse:
    """The Swagger UI page, served here before BentoML's (which loads a third-party tag manager)."""
    return HTMLResponse(api.SWAGGER_PAGE)


_documents: dict[str | None, bytes] = {}  # by the served model's tag: made once per worker


@api.info.head("/docs.json", include_in_schema=False)
@api.info.get("/docs.json", include_in_schema=False)
async def openapi_document() -> Response:
    """BentoML's OpenAPI document, made to say what the service does (bento/openapi.py); making it
    costs about 35 ms, a hundred single-row predictions."""
    model = api.served()
    tag = model.tag if model is not None else None
    if tag not in _documents:
        info = model.info.model_dump(mode="json") if model is not None else None
        spec = BreastCancerClassifier.openapi_spec.asdict()
        document = openapi.document(spec, api.ROUTES, info, (api.Prediction, Explanation, Outcome))
        _documents[tag] = orjson.dumps(document)
    return Response(_documents[tag], media_type="application/json")


BreastCancerClassifier = bentoml.asgi_app(api.info, path="/")(
    bentoml.service(
        name="breast_cancer_classifier",
        workers=config.WORKERS,
        resources={"cpu": "1", "memory": "512Mi"},
        # The edge answers a request that takes REQUEST_TIMEOUT_SECONDS; BentoML's own timeout is the backstop.
        traffic={"timeout": config.BACKSTOP_TIMEOUT_SECONDS},
        # The edge counts requests by route (bento/metrics.py): BentoML's metrics label them by the raw
        # path, a series for every path a client invents, and cost a tenth of a single-row request.
        metrics={"enabled": False},
        # Requests are counted by the edge and summarised in our own log (bento/logs.py).
        logging={"access": {"enabled": False}},
        # No trace exporter is configured, yet OpenTelemetry's middleware costs about a third of a
        # /predict call; excluding every path skips it. Remove when exporting traces.
        tracing={"excluded_urls": [".*"]},
    )(api.BreastCancerClassifier)
)
BreastCancerClassifier.add_asgi_middleware(Edge, routes=api.ROUTES, served=api.served)
