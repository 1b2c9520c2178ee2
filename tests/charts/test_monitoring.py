"""The PrometheusRule, the Grafana dashboard and the ServiceMonitor they rely on.

promtool (Debian's `prometheus` package) checks the rendered rules and evaluates each alert on
synthetic series, both the case that must fire and the one that must not. The end-to-end check that
every metric name exists in the live service's /metrics uses tests/charts/monitoring.py.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.charts.monitoring import (
    IMMEDIATE_ALERTS,
    dashboard_expressions,
    promql_metric_names,
    rendered_dashboard,
    rendered_metric_names,
    rendered_rule_spec,
    rule_expressions,
)
from tests.conftest import require_tool

JOB = "bcc-breast-cancer-classifier"  # the full name of release "bcc"
NAMESPACE = "ml-serving"
SELECTOR = f'job="{JOB}", namespace="{NAMESPACE}"'
ALERTS = {
    "inputDrift": "BreastCancerClassifierInputDrift",
    "errorRate": "BreastCancerClassifierErrorRate",
    "latency": "BreastCancerClassifierLatencyP99",
    "noReadyPods": "BreastCancerClassifierNoReadyPods",
    "outOfRangeInputs": "BreastCancerClassifierOutOfRangeInputs",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool", "install Debian's `prometheus` package (apt-get install prometheus)")


def alert_rules(spec: dict) -> dict[str, dict]:
    return {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"]}


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ('sum by (le) (rate(a_bucket{job="x", endpoint="/predict"}[5m]))', {"a_bucket"}),
        ("histogram_quantile(0.99, sum(rate(b[1m])) by (le)) > 1e3", {"b"}),
        ('x{l=~"a|b{2}"} / on (pod) group_left(node) y offset 5m and bool z', {"x", "y", "z"}),
        ('time() - max(ts{job="$job"}) / $window_rows', {"ts"}),
        ('sum(increase(c_total{n="${namespace}"}[$__range])) or absent(up)', {"c_total", "up"}),
        ("recorded:rate5m * 2", {"recorded:rate5m"}),
    ],
)
def test_metric_names_are_read_from_promql(expression, names):
    assert promql_metric_names(expression) == names


def test_rendered_metric_names_cover_rules_and_dashboard(helm):
    names = rendered_metric_names()
    per_expression = [promql_metric_names(e) for e in rule_expressions(rendered_rule_spec())]
    per_expression += [promql_metric_names(e) for e in dashboard_expressions(rendered_dashboard())]
    assert all(per_expression) and set().union(*per_expression) == names
    # Histograms are queried through their buckets, the series name /metrics exposes.
    assert "bentoml_service_request_duration_seconds_bucket" in names
    assert not names & {"le", "job", "namespace", "instance", "endpoint", "test", "feature", "diagnosis"}


def test_monitoring_objects_are_labelled_for_their_selectors(objects, one):
    docs = objects("all-options")
    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"  # the Prometheus ruleSelector
    (dashboard,) = [
        d for d in docs if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's default label
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "ML"}


def test_every_alert_is_configurable_and_selects_the_release(helm):
    spec = rendered_rule_spec()
    rules = alert_rules(spec)
    assert set(rules) == set(ALERTS.values())
    for expression in rule_expressions(spec):
        # every selector names the release, once per metric it reads
        assert expression.count(SELECTOR) >= len(promql_metric_names(expression)), expression
    custom = alert_rules(
        rendered_rule_spec("--set", ",".join(IMMEDIATE_ALERTS) + ",prometheusRule.rateWindow=1m")
    )
    assert {rule["for"] for rule in custom.values()} == {"0s"}
    assert all("[5m]" not in rule["expr"] for rule in custom.values())
    for key, value in {
        "inputDrift.podShare": 0.25,
        "errorRate.threshold": 0.125,
        "latency.p99Seconds": 0.75,
        "noReadyPods.minReadyPods": 3,
        "outOfRangeInputs.threshold": 0.375,
    }.items():
        alert = ALERTS[key.split(".")[0]]
        changed = alert_rules(rendered_rule_spec("--set", f"prometheusRule.alerts.{key}={value}"))[alert]
        assert f" {value}" in changed["expr"] and changed["expr"] != rules[alert]["expr"], changed["expr"]
    severities = alert_rules(rendered_rule_spec("--set", "prometheusRule.alerts.latency.severity=page"))
    assert severities[ALERTS["latency"]]["labels"] == {"severity": "page"}


def test_promtool_accepts_the_rules(promtool, helm, tmp_path, values_files, config):
    values = values_files[config]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rendered_rule_spec(*(["--values", str(values)] if values else []))))
    result = subprocess.run([promtool, "check", "rules", rules], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    matchers = ", ".join([SELECTOR, *(f'{k}="{v}"' for k, v in labels.items())])
    return {"series": f"{name}{{{matchers}}}", "values": values}


def requests(code: str, per_minute: int, endpoint: str = "/predict") -> dict[str, str]:
    return series(
        "bentoml_service_request_total", f"0+{per_minute}x30", endpoint=endpoint, http_response_code=code
    )


def shed(per_minute: int) -> dict[str, str]:
    return series("requests_shed_total", f"0+{per_minute}x30")


def latency(seconds_bucket: str) -> list[dict[str, str]]:
    """100 requests a minute, all within the given bucket of a 0.1/0.5/1 s histogram."""
    edges = ["0.1", "0.5", "1", "+Inf"]
    return [
        series(
            "bentoml_service_request_duration_seconds_bucket",
            f"0+{100 if float(le) >= float(seconds_bucket) else 0}x30",
            endpoint="/predict",
            http_response_code="200",
            le=le,
        )
        for le in edges
    ]


# (alert key, input series where it must fire, input series where it must not)
SCENARIOS = {
    "inputDrift": (
        [series("input_drift_status", "1x30", instance=pod) for pod in ("a", "b")]
        + [series("input_drift_status", "0x30", instance="c")],
        [series("input_drift_status", "1x30", instance="a")]
        + [series("input_drift_status", "0x30", instance=pod) for pod in ("b", "c")],
    ),
    # The service always exposes requests_shed_total (0 until it sheds); shed requests never reach
    # BentoML's request counter, so the rule adds them to both sides.
    "errorRate": (
        [requests("200", 90), requests("503", 10), requests("200", 50, "/predict_batch"), shed(0)],
        [
            requests("200", 99),
            requests("500", 1),
            requests("200", 50, "/livez"),
            requests("503", 50, "/readyz"),
            shed(0),
        ],
    ),
    # BentoML also exposes a 0 series per route for 500 from the start (its placeholder counters).
    "errorRate-shedding": (
        [requests("200", 90), requests("500", 0), shed(10)],
        [requests("200", 99), requests("500", 0), shed(1)],
    ),
    "latency": (latency("1"), latency("0.1")),
    "noReadyPods": (
        [series("model_ready", "0x30", instance=pod) for pod in ("a", "b")],
        [series("model_ready", "1x30", instance="a"), series("model_ready", "0x30", instance="b")],
    ),
    "outOfRangeInputs": (
        [series("predictions_total", "0+100x30", diagnosis="benign")]
        + [series("out_of_range_features_total", "0+10x30", feature="radius_mean", side="high")],
        [series("predictions_total", "0+100x30", diagnosis="benign")]
        + [series("out_of_range_features_total", "0+1x30", feature="radius_mean", side="high")],
    ),
}


def promtool_test(promtool, tmp_path, spec: dict, input_series: list[dict], alert: str, fires: bool) -> str:
    """Runs `promtool test rules` with the alert evaluated 25 minutes in, past every default `for`."""
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")  # promtool compares annotations verbatim; check rules covers them
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    expected = [
        {
            "exp_labels": {
                "severity": alert_rules(spec)[alert]["labels"]["severity"],
                "job": JOB,
                "namespace": NAMESPACE,
            }
        }
    ]
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "alert_rule_test": [
                    {"eval_time": "25m", "alertname": alert, "exp_alerts": expected if fires else []}
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test))
    result = subprocess.run(
        [promtool, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    return result.stdout + result.stderr if result.returncode else ""


@pytest.mark.parametrize("fires", [True, False], ids=["fires", "stays quiet"])
@pytest.mark.parametrize("key", SCENARIOS)
def test_alert_fires_only_when_it_should(promtool, helm, tmp_path, key, fires):
    firing, quiet = SCENARIOS[key]
    alert = ALERTS[key.split("-")[0]]
    failure = promtool_test(
        promtool, tmp_path, rendered_rule_spec(), firing if fires else quiet, alert, fires
    )
    assert not failure, failure


def test_no_ready_pods_fires_when_no_pod_reports(promtool, helm, tmp_path):
    unrelated = [series("up", "1x30", instance="a")]
    failure = promtool_test(promtool, tmp_path, rendered_rule_spec(), unrelated, ALERTS["noReadyPods"], True)
    assert not failure, failure


def test_dashboard_panels_all_query_prometheus(helm):
    dashboard = rendered_dashboard()
    assert dashboard["panels"], "no panels"
    for panel in dashboard["panels"]:
        exprs = [target.get("expr", "") for target in panel.get("targets", [])]
        assert exprs and all(promql_metric_names(expr) for expr in exprs), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    for expression in dashboard_expressions(dashboard):
        assert 'job="$job", namespace="$namespace"' in expression, expression
    titles = " / ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("status", "latency", "p-values", "drift status", "window fill", "malignant share"):
        assert topic in titles
    for topic in ("out-of-range", "shed", "ready pods"):
        assert topic in titles


def test_dashboard_is_bound_to_its_release(helm):
    dashboard = rendered_dashboard("--set", "drift.windowRows=500", release="prod", namespace="ml")
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    constants = {name: v["query"] for name, v in variables.items() if v["type"] == "constant"}
    assert constants == {"job": "prod-breast-cancer-classifier", "namespace": "ml", "window_rows": "500"}
    other = rendered_dashboard(release="staging", namespace="ml")
    assert dashboard["uid"] != other["uid"] and len(dashboard["uid"]) <= 40  # Grafana's limit
    assert "ml/prod-breast-cancer-classifier" in dashboard["title"]


def test_service_monitor_honors_the_service_endpoint_label(objects, one):
    (endpoint,) = one(objects("all-options"), "ServiceMonitor")["spec"]["endpoints"]
    # Without it the operator's `endpoint` target label would rename BentoML's to exported_endpoint.
    assert endpoint["honorLabels"] is True
    assert any('endpoint="/predict"' in expr for expr in rule_expressions(rendered_rule_spec()))


def test_monitoring_is_off_by_default(objects):
    docs = objects("default")
    assert not [d for d in docs if d["kind"] in {"PrometheusRule", "ServiceMonitor"}]
    assert not [d for d in docs if "grafana_dashboard" in d["metadata"]["labels"]]
