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
    "no CPU limit (workers derive from it)": ("resources.limits.cpu=null", "missing property 'cpu'"),
    "CPU limit that is not a quantity": ('resources.limits.cpu="one core"', "/resources/limits/cpu"),
    "memory limit that is not a quantity": ('resources.limits.memory="1 GB"', "/resources/limits/memory"),
    "unknown log level": ('logLevel="VERBOSE"', "/logLevel"),
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


def test_schema_is_valid_draft_7_and_accepts_the_defaults(chart):
    # helm lint covers the ci/ files, merged with the defaults the way helm merges them.
    schema = json.loads((chart / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((chart / "values.yaml").read_text()), schema)
