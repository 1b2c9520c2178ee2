"""The chart's monitoring objects as data: alert rules, the Grafana dashboard, and the metric names they use.

For the offline chart tests (tests/charts/test_monitoring.py) and for end-to-end tests that load the
rules into a real Prometheus scraping the service and check every metric name exists in /metrics:

    from tests.charts.monitoring import IMMEDIATE_ALERTS, rendered_metric_names, rendered_rule_spec

    spec = rendered_rule_spec("--set", ",".join(IMMEDIATE_ALERTS), release="e2e", namespace="default")
    yaml.safe_dump(spec, rules_file)            # spec == {"groups": [...]}: a Prometheus rule file
    rendered_metric_names()                     # {"model_ready", "http_requests_total", ...}

Series are selected by job="<full name>", namespace="<namespace>"; the full name is
"<release>-breast-cancer-classifier" (just the release when it contains the chart name), or the value
of fullnameOverride. Functions that render need helm on PATH: without it they skip the calling test
(fail under CI=true), like every chart test.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
from typing import Any

import yaml

from harness.paths import CHART, chart_values
from tests.conftest import require_tool

# --set assignments that make every alert fire as soon as its expression holds (`for: 0s`).
IMMEDIATE_ALERTS = tuple(
    f"prometheusRule.alerts.{name}.for=0s" for name in chart_values()["prometheusRule"]["alerts"]
)
MONITORING_ON = ("--set", "prometheusRule.enabled=true,grafanaDashboard.enabled=true")

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'|`[^`]*`")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VARIABLES = re.compile(r"\$\{?\w+\}?")
# Not preceded by a digit or a dot, so exponents (1e3) and durations (5m) are not identifiers.
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def promql_metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects, exactly as written (e.g. ..._seconds_bucket).

    A metric name is an identifier that is not a function or aggregation (followed by `(`), not a
    keyword, not a label name (inside `{...}`, `by (...)`, `on (...)` and the like) and not inside a
    string. Grafana variables ($job, ${datasource}, $__rate_interval) are ignored.
    """
    text = _STRINGS.sub('""', expression)
    text = _MATCHERS.sub("{}", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _GRAFANA_VARIABLES.sub(" 0 ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        if name.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


@functools.cache
def _render(release: str, namespace: str, *helm_args: str) -> tuple[dict[str, Any], ...]:
    command = [require_tool("helm"), "template", release, str(CHART), "--namespace", namespace]
    result = subprocess.run(
        [*command, *MONITORING_ON, *helm_args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{' '.join(command + list(helm_args))} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def rendered_rule_spec(
    *helm_args: str, release: str = "bcc", namespace: str = "ml-serving"
) -> dict[str, Any]:
    """The `spec` of the chart's PrometheusRule, {"groups": [...]}, which is also a Prometheus rule file.

    helm_args are extra `helm template` arguments, e.g. ("--set", ",".join(IMMEDIATE_ALERTS)).
    """
    (rule,) = [doc for doc in _render(release, namespace, *helm_args) if doc["kind"] == "PrometheusRule"]
    return copy.deepcopy(rule["spec"])  # the render is cached; callers may change their copy


def rendered_dashboard(
    *helm_args: str, release: str = "bcc", namespace: str = "ml-serving"
) -> dict[str, Any]:
    """The Grafana dashboard the chart's ConfigMap carries, parsed."""
    (config_map,) = [
        doc
        for doc in _render(release, namespace, *helm_args)
        if doc["kind"] == "ConfigMap" and "grafana_dashboard" in doc["metadata"]["labels"]
    ]
    (dashboard,) = config_map["data"].values()
    return json.loads(dashboard)


def rule_expressions(spec: dict[str, Any]) -> list[str]:
    """Every rule's expression, recording rules' included."""
    return [rule["expr"] for group in spec["groups"] for rule in group["rules"]]


def recorded_names(spec: dict[str, Any]) -> set[str]:
    """The series the recording rules write (Prometheus makes them; the service does not expose them)."""
    return {rule["record"] for group in spec["groups"] for rule in group["rules"] if "record" in rule}


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def rendered_metric_names(*helm_args: str, release: str = "bcc", namespace: str = "ml-serving") -> set[str]:
    """Every metric name the rendered alert rules and dashboard query, exactly as written, but for
    the series the rules record themselves: the names the service's /metrics must expose.

    Histograms appear as the series actually queried (http_request_duration_seconds_bucket), which is
    also the name the service's /metrics exposes for them.
    """
    spec = rendered_rule_spec(*helm_args, release=release, namespace=namespace)
    expressions = rule_expressions(spec)
    expressions += dashboard_expressions(rendered_dashboard(*helm_args, release=release, namespace=namespace))
    return set().union(*map(promql_metric_names, expressions)) - recorded_names(spec)
