"""values.schema.json: helm refuses bad values before rendering anything (one test per rejection)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

# (helm --set-json assignment, the value path helm's error must point at)
REJECTED = {
    "replicaCount of the wrong type": ('replicaCount="two"', "/replicaCount"),
    "negative replicaCount": ("replicaCount=-1", "/replicaCount"),
    "unknown top-level key": ("replicas=2", "additional properties 'replicas'"),
    "unknown key in image": ('image.name="x"', "additional properties 'name'"),
    "bad image.pullPolicy": ('image.pullPolicy="Sometimes"', "/image/pullPolicy"),
    "image tag with a colon": ('image.tag="1.0:latest"', "/image/tag"),
    "image digest that is not sha256": ('image.digest="md5:abc"', "/image/digest"),
    "negative service port": ("service.port=-1", "/service/port"),
    "service port above 65535": ("service.port=70000", "/service/port"),
    "service type ExternalName": ('service.type="ExternalName"', "/service/type"),
    "CPU limit that is not a quantity": ('resources.limits.cpu="one core"', "/resources/limits/cpu"),
    "memory limit that is not a quantity": ('resources.limits.memory="1 GB"', "/resources/limits/memory"),
    "unknown log level": ('logLevel="VERBOSE"', "/logLevel"),
    "replicaCount that is not a whole number": ("replicaCount=1.5", "/replicaCount"),
    "maxConcurrency 0": ("maxConcurrency=0", "/maxConcurrency"),
    "drift window as a string": ('drift.windowRows="many"', "/drift/windowRows"),
    "drift evaluation every 0 s": ("drift.evaluationSeconds=0", "/drift/evaluationSeconds"),
    "unknown key in drift": ("drift.alpha=0.01", "additional properties 'alpha'"),
    "error-rate threshold above 1": (
        "prometheusRule.alerts.errorRate.threshold=1.5",
        "/prometheusRule/alerts/errorRate/threshold",
    ),
    "alert duration without a unit": (
        'prometheusRule.alerts.latency.for="10"',
        "/prometheusRule/alerts/latency/for",
    ),
    "unknown alert": ('prometheusRule.alerts.diskFull={"for":"1m"}', "additional properties 'diskFull'"),
    "dashboard label that is not a string": (
        "grafanaDashboard.labels.grafana_dashboard=1",
        "/grafanaDashboard/labels/grafana_dashboard",
    ),
    "autoscaling minReplicas 0": ("autoscaling.minReplicas=0", "/autoscaling/minReplicas"),
    "autoscaling enabled as a string": ('autoscaling.enabled="yes"', "/autoscaling/enabled"),
    "unknown HPA scaling policy type": (
        'autoscaling.behavior.scaleUp.policies=[{"type":"Nodes","value":1,"periodSeconds":60}]',
        "/autoscaling/behavior/scaleUp/policies/0/type",
    ),
    "probe period of the wrong type": (
        'probes.liveness.periodSeconds="10s"',
        "/probes/liveness/periodSeconds",
    ),
    "relative writable path": ('writablePaths=["tmp"]', "/writablePaths/0"),
    "PDB maxUnavailable that is not a count or percentage": (
        'podDisruptionBudget.maxUnavailable="half"',
        "/podDisruptionBudget/maxUnavailable",
    ),
    "topology spread with an unknown policy": (
        'topologySpreadConstraints=[{"topologyKey":"zone","maxSkew":1,"whenUnsatisfiable":"Maybe"}]',
        "/topologySpreadConstraints/0/whenUnsatisfiable",
    ),
    "ingress path type not in the API": (
        'ingress.hosts=[{"host":"a","paths":[{"path":"/","pathType":"Anything"}]}]',
        "/ingress/hosts/0/paths/0/pathType",
    ),
    "imagePullSecrets as strings": ('imagePullSecrets=["regcred"]', "/imagePullSecrets/0"),
    "unknown key in the container securityContext": (
        "containerSecurityContext.runAsRoot=true",
        "additional properties 'runAsRoot'",
    ),
    "allow-list entry without a namespace": ('auth.allow.diagnosis=["frontend"]', "/auth/allow/diagnosis/0"),
    "allow-list entry with capitals": ('auth.allow.outcomes=["Clinic/frontend"]', "/auth/allow/outcomes/0"),
    "allow-list wildcard for every namespace": ('auth.allow.modelData=["*/*"]', "/auth/allow/modelData/0"),
    "allow-list as one comma-separated string": ('auth.allow.diagnosis="a/b,c/d"', "/auth/allow/diagnosis"),
    "unknown route group": ('auth.allow.metrics=["a/*"]', "additional properties 'metrics'"),
    "audience with a comma": ('auth.audience="a,b"', "/auth/audience"),
    "auth enabled as a string": ('auth.enabled="yes"', "/auth/enabled"),
    "the old networkPolicy.from list": ("networkPolicy.from=[]", "additional properties 'from'"),
    "Prometheus peer that is not a NetworkPolicyPeer": (
        'networkPolicy.prometheus=[{"namespace":"monitoring"}]',
        "additional properties 'namespace'",
    ),
    "metrics port above 65535": ("service.metricsPort=70000", "/service/metricsPort"),
}


@pytest.mark.parametrize(("assignment", "where"), REJECTED.values(), ids=REJECTED.keys())
def test_schema_rejects(helm_run, chart, assignment, where):
    result = helm_run("template", "x", chart, "--set-json", assignment)
    assert result.returncode != 0, f"helm accepted {assignment}"
    assert "don't meet the specifications of the schema" in result.stderr, result.stderr
    assert where in result.stderr, result.stderr


def test_schema_accepts_parent_chart_globals(helm_run, chart):
    """A parent chart passes `global`; the strict top level must still allow it."""
    result = helm_run("template", "x", chart, "--set", "global.imageRegistry=example")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "assignment",
    [
        "prometheusRule.alerts.errorRate.threshold=0.02",
        "prometheusRule.alerts.latency.p99Seconds=0.25",
        "drift.evaluationSeconds=0.5",
        "prometheusRule.alerts.inputDrift.podShare=1",
    ],
)
def test_decimals_from_helm_set_are_accepted(helm_run, chart, assignment):
    """`helm --set` passes 0.02 as a string; refusing it would force every user onto --set-json."""
    result = helm_run("template", "x", chart, "--set", assignment)
    assert result.returncode == 0, result.stderr


def schema_nodes(node: dict, path: str = ""):
    """(path, node) for every property, definition and item schema below node."""
    for keyword in ("properties", "definitions"):
        for name, child in node.get(keyword, {}).items():
            yield f"{path}/{keyword}/{name}", child
            yield from schema_nodes(child, f"{path}/{keyword}/{name}")
    if isinstance(node.get("items"), dict):
        yield f"{path}/items", node["items"]
        yield from schema_nodes(node["items"], f"{path}/items")


def test_every_schema_entry_has_a_description(chart):
    schema = json.loads((chart / "values.schema.json").read_text())
    nodes = dict(schema_nodes(schema))
    assert len(nodes) > 150
    missing = [path for path, node in nodes.items() if not node.get("description")]
    assert not missing, f"schema entries without a description: {missing}"


def test_schema_is_valid_draft_7_and_accepts_the_defaults(chart):
    # helm lint covers the ci/ files, merged with the defaults the way helm merges them.
    schema = json.loads((chart / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((chart / "values.yaml").read_text()), schema)
