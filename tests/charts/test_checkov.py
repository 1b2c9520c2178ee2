"""checkov finds nothing to fix in the chart: zero failed checks, and every skip carries its reason.

Two scans, run in parallel (each is ~10 s of one core): the helm framework on the chart as users
install it (default values), and the kubernetes framework on the ci/ configurations rendered by helm,
which adds the NetworkPolicy, Ingress, ServiceMonitor and client Job the defaults leave out.
Skips live in the chart as checkov.io/skipN annotations (templates/_helpers.tpl).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

pytestmark = pytest.mark.slow  # ~25 s

# Without these checkov asks PyPI for a newer version and a SaaS for guideline links on every run.
# HELM_NAMESPACE: the namespace checkov's `helm template` renders into (else `default`, CKV_K8S_21).
CHECKOV_ENV = {
    "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
    "BC_SKIP_MAPPING": "TRUE",
    "HELM_NAMESPACE": "ml-serving",
}


@pytest.fixture(scope="module")
def scans(helm, checkov, helm_run, tmp_path_factory, chart, values_files):
    # checkov renders charts with the helm on PATH and silently scans nothing without it; the helm
    # fixture has made sure it is there.
    renders = tmp_path_factory.mktemp("ci-renders")
    for config, values in values_files.items():
        if values is not None:  # distinct release names, so no object or label selector is shared
            result = helm_run("template", config, chart, "--namespace", "ml-serving", "--values", values)
            assert result.returncode == 0, result.stderr
            (renders / f"{config}.yaml").write_text(result.stdout)
    commands = {
        "chart (helm, default values)": ["--framework", "helm", "--directory", chart],
        "ci/ renders (kubernetes)": ["--framework", "kubernetes", "--directory", renders],
    }
    running = {
        name: subprocess.Popen(
            [checkov, *map(str, args), "--skip-download", "--output", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ | CHECKOV_ENV,
        )
        for name, args in commands.items()
    }
    reports = {}
    for name, process in running.items():
        stdout, stderr = process.communicate()
        assert stdout.strip(), f"checkov on {name} printed nothing (exit {process.returncode}):\n{stderr}"
        reports[name] = json.loads(stdout)
    return reports


@pytest.mark.parametrize("scan", ["chart (helm, default values)", "ci/ renders (kubernetes)"])
def test_checkov_passes(scans, scan):
    # With nothing scanned (e.g. no helm for checkov to render with) checkov prints a bare summary.
    summary = scans[scan].get("summary", scans[scan])
    print(f"checkov {scan}: {summary}")  # the counts, for the report (pytest -s)
    assert summary["resource_count"] >= 7 and summary["passed"] > 100, (
        f"checkov scanned too little: {summary}"
    )
    results = scans[scan]["results"]
    assert summary["parsing_errors"] == 0, results["parsing_errors"]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} {c['file_path']}"
        for c in results["failed_checks"]
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)


def test_checkov_skips_carry_a_reason(scans):
    skipped = [check for report in scans.values() for check in report["results"]["skipped_checks"]]
    assert skipped, "expected the documented skips (templates/_helpers.tpl)"
    unexplained = [c["check_id"] for c in skipped if len(c["check_result"].get("suppress_comment", "")) < 20]
    assert not unexplained, f"skips without a written reason: {unexplained}"


def test_network_policy_check_runs_when_the_policy_is_on(scans):
    """CKV2_K8S_6 is skipped only while the NetworkPolicy is off; with it on, it must pass."""
    results = scans["ci/ renders (kubernetes)"]["results"]
    assert any(
        check["check_id"] == "CKV2_K8S_6" and check["file_path"].endswith("/all-options.yaml")
        for check in results["passed_checks"]
    )
