"""Values the schema accepts one by one but the templates refuse together, each with its reason.

The checks live in templates/_helpers.tpl ("validate"); helm template, lint and install all stop on them.
"""

from __future__ import annotations

import pytest

# (helm arguments, the start of the message helm must print)
REFUSED = {
    "replicaCount while autoscaling is on": (
        ["--set", "replicaCount=3"],
        (
            "replicaCount (3) is ignored while autoscaling.enabled is true, because the HorizontalPodAutoscaler "
            "owns the pod count: set autoscaling.minReplicas"
        ),
    ),
    "minReplicas above maxReplicas": (
        ["--set", "autoscaling.minReplicas=7,autoscaling.maxReplicas=6"],
        "autoscaling.minReplicas (7) exceeds autoscaling.maxReplicas (6)",
    ),
    "a one-byte memory limit": (
        ["--set", "resources.limits.memory=1,resources.requests.memory=1"],
        "resources.limits.memory (1) is below 256Mi, the least the service runs in",
    ),
    "a memory limit just below the floor": (
        ["--set", "resources.limits.memory=255Mi,resources.requests.memory=128Mi"],
        "resources.limits.memory (255Mi) is below 256Mi",
    ),
    "a decimal memory limit below the binary floor": (
        ["--set", "resources.limits.memory=268M,resources.requests.memory=128Mi"],
        "resources.limits.memory (268M) is below 256Mi",
    ),
    "no resources at all": (
        ["--set", "resources=null"],
        "resources must be set: resources.limits.cpu decides the number of BentoML workers",
    ),
    "no limits": (["--set", "resources.limits=null"], "resources.limits.cpu is required"),
    "no CPU limit": (
        ["--set", "resources.limits.cpu=null"],
        "resources.limits.cpu is required: BentoML starts one worker per whole CPU of the limit",
    ),
    "no memory limit": (["--set", "resources.limits.memory=null"], "resources.limits.memory is required"),
    "grace period not above the pre-stop pause": (
        ["--set", "preStopSleepSeconds=30,terminationGracePeriodSeconds=30"],
        "terminationGracePeriodSeconds must exceed preStopSleepSeconds",
    ),
    "a smoke test whose account may not diagnose": (
        ["--namespace", "ml", "--set", "auth.allowReleaseNamespace=false,auth.allow.diagnosis={clinic/*}"],
        (
            "the smoke test calls /predict as ml/x-breast-cancer-classifier-client, which auth.allow.diagnosis "
            "does not allow"
        ),
    ),
    "a client Job whose account may not diagnose": (
        [
            "--namespace",
            "ml",
            "--set",
            "auth.allowReleaseNamespace=false,smokeTest.enabled=false,clientJob.enabled=true",
        ],
        "the smoke test calls /predict as ml/x-breast-cancer-classifier-client",
    ),
}


@pytest.mark.parametrize(("args", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_with_the_reason(helm_run, chart, args, message):
    result = helm_run("template", "x", chart, *args)
    assert result.returncode != 0, f"helm accepted {args}"
    assert (
        f"execution error at (breast-cancer-classifier/templates/deployment.yaml:1:4): {message}"
        in result.stderr
    ), result.stderr
    assert "nil pointer" not in result.stderr


ACCEPTED = {
    "requests equal to the limits": ["--set", "resources.requests.cpu=1,resources.requests.memory=1Gi"],
    "the smoke test's account allowed by name": [
        "--namespace",
        "ml",
        "--set",
        "auth.allowReleaseNamespace=false,auth.allow.diagnosis={ml/x-breast-cancer-classifier-client}",
    ],
    "only other namespaces allowed, without smoke test": [
        "--set",
        "auth.allowReleaseNamespace=false,auth.allow.diagnosis={clinic/*},smokeTest.enabled=false",
    ],
    "only other namespaces allowed, without authentication": [
        "--set",
        "auth.enabled=false,auth.allowReleaseNamespace=false",
    ],
    "memory limit at the floor": ["--set", "resources.limits.memory=256Mi,resources.requests.memory=256Mi"],
    "the floor in bytes": [
        "--set-json",
        "resources.limits.memory=268435456,resources.requests.memory=268435456",
    ],
    "no requests": ["--set", "resources.requests=null"],
    "minReplicas equal to maxReplicas": ["--set", "autoscaling.minReplicas=4,autoscaling.maxReplicas=4"],
    "minReplicas above maxReplicas with autoscaling off": [
        "--set",
        "autoscaling.enabled=false,autoscaling.minReplicas=7,replicaCount=2",
    ],
}


@pytest.mark.parametrize("args", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted(helm_run, chart, args):
    result = helm_run("template", "x", chart, *args)
    assert result.returncode == 0, result.stderr


def notes(helm_run, chart, *args: str) -> str:
    result = helm_run("install", "demo", chart, "--namespace", "ml", "--dry-run=client", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def test_notes_say_which_replica_setting_is_in_force(helm_run, chart):
    autoscaled = notes(helm_run, chart, "--set", "autoscaling.minReplicas=3,autoscaling.maxReplicas=9")
    assert (
        "Replicas: 3..9, set by the HorizontalPodAutoscaler (autoscaling.minReplicas..maxReplicas)."
        in autoscaled
    )
    fixed = notes(helm_run, chart, "--set", "autoscaling.enabled=false,replicaCount=4")
    assert "Replicas: 4, fixed (replicaCount; autoscaling is off)." in fixed
    assert "HorizontalPodAutoscaler" not in fixed
    assert "Replicas: 1, fixed" in notes(helm_run, chart, "--set", "autoscaling.enabled=false")
