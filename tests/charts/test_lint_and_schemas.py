"""helm lint --strict and Kubernetes schema validation of every configuration (default + ci/)."""

from __future__ import annotations

import kubernetes_validate
import pytest

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and two later releases.
KUBERNETES_VERSIONS = ("1.29.0", "1.31.0", "1.33.0")
# Custom resources have no schema in kubernetes-validate; anything else without one is an error
# (the CLI only warns, which would let a removed apiVersion such as autoscaling/v2beta2 through).
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def test_helm_is_the_pinned_version(helm_run):
    result = helm_run("version", "--short")
    assert result.stdout.startswith("v4.1.4"), (
        f"helm on PATH is {result.stdout!r}, not install-tools.sh's v4.1.4"
    )


def test_helm_lint_strict(helm_run, chart, values_files, config):
    values = values_files[config]
    result = helm_run("lint", "--strict", chart, *(["--values", values] if values else []))
    assert result.returncode == 0, f"helm lint --strict ({config}):\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_validate_strictly(objects, config, version):
    # helm template includes the test hooks, so the smoke-test Pod is validated too.
    problems = []
    for obj in objects(config):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_RESOURCES:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name}: no schema for {obj['apiVersion']} in Kubernetes {version}")
        except kubernetes_validate.ValidationError as error:
            path = ".".join(map(str, error.path))
            problems.append(f"{name}: {path}: {error.message}")
    assert not problems, f"{config} against Kubernetes {version}:\n" + "\n".join(problems)


def test_validation_catches_an_unknown_field():
    """Guards the check above: strict mode must reject fields the API does not know."""
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"prots": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSIONS[0], strict=True)
