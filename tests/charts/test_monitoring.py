"""The PrometheusRule, the Grafana dashboard and the ServiceMonitor they rely on.

promtool (Debian's `prometheus` package) checks the rendered rules and evaluates each alert on
synthetic series, both the case that must fire and the one that must not; the malignant-recall
alert and the dashboard's recall panel are checked against scipy's Wilson interval. The end-to-end
check that every metric name exists in the live service's /metrics uses tests/charts/monitoring.py.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
import yaml
from scipy.stats import binom, binomtest, norm

from harness.paths import chart_values
from tests.charts.monitoring import (
    IMMEDIATE_ALERTS,
    dashboard_expressions,
    promql_metric_names,
    recorded_names,
    rendered_dashboard,
    rendered_metric_names,
    rendered_rule_spec,
    rule_expressions,
)
from tests.conftest import require_tool
from training.evaluation import QUALITY_GATE

JOB = "bcc-breast-cancer-classifier"  # the full name of release "bcc"
NAMESPACE = "ml-serving"
SELECTOR = f'job="{JOB}", namespace="{NAMESPACE}"'
ALERTS = {
    "inputDrift": "BreastCancerClassifierInputDrift",
    "errorRate": "BreastCancerClassifierErrorRate",
    "latency": "BreastCancerClassifierLatencyP99",
    "noReadyPods": "BreastCancerClassifierNoReadyPods",
    "outOfRangeInputs": "BreastCancerClassifierOutOfRangeInputs",
    "malignantRecall": "BreastCancerClassifierMalignantRecallLow",
    "indeterminateRate": "BreastCancerClassifierIndeterminateRate",
}
RECALL = chart_values()["prometheusRule"]["alerts"]["malignantRecall"]
MODEL_TAG = "breast_cancer:abc123"


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool", "install Debian's `prometheus` package (apt-get install prometheus)")


def alert_rules(spec: dict) -> dict[str, dict]:
    return {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"] if "alert" in rule}


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
    recorded = recorded_names(rendered_rule_spec())
    assert all(per_expression) and set().union(*per_expression) == names | recorded
    # Histograms are queried through their buckets, the series name /metrics exposes.
    assert "http_request_duration_seconds_bucket" in names
    assert {"http_requests_total", "confirmed_outcomes_total", "refused_values_total"} <= names
    assert not {name for name in names if name.startswith("bentoml_")}, "BentoML's metrics are off"
    assert not names & {"le", "job", "namespace", "instance", "endpoint", "test", "feature", "diagnosis"}
    assert not names & {"model_tag", "predicted", "confirmed", "code"}


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
        "malignantRecall.floor": 0.875,
        "malignantRecall.minCount": 37,
        "malignantRecall.z": 1.25,
        "indeterminateRate.threshold": 0.125,
    }.items():
        alert = ALERTS[key.split(".")[0]]
        changed = alert_rules(rendered_rule_spec("--set", f"prometheusRule.alerts.{key}={value}"))[alert]
        assert f" {value}" in changed["expr"] and changed["expr"] != rules[alert]["expr"], changed["expr"]
    severities = alert_rules(rendered_rule_spec("--set", "prometheusRule.alerts.latency.severity=page"))
    assert severities[ALERTS["latency"]]["labels"] == {"severity": "page"}
    weekly = rule_expressions(rendered_rule_spec("--set", "prometheusRule.alerts.malignantRecall.window=7d"))
    assert sum("[7d]" in expression for expression in weekly) == 2  # the two recorded counts
    assert not any("[30d]" in expression for expression in weekly)


def test_recall_alert_defaults_follow_the_model_card() -> None:
    """The floor is the quality gate's; the minimum count lets a perfect record stay quiet and a
    model that misses one malignant case in ten fire. Prints how often the alert fires
    (pytest -s -k recall_alert_defaults): the table in docs/monitoring.md."""
    assert RECALL["floor"] == QUALITY_GATE["recall_malignant"]
    z, floor, count = RECALL["z"], RECALL["floor"], RECALL["minCount"]
    assert z == pytest.approx(norm.ppf(0.95), abs=1e-3)  # one-sided 95 %
    assert wilson_lower(count, count, z) >= floor

    def fires(answered: int, recall: float) -> float:
        """P(alert) with `answered` cases in the window and this true recall (scipy's Wilson bound)."""
        found = np.arange(answered + 1)
        below = np.array([wilson_lower(int(k), answered, z) < floor for k in found])
        return float(binom.pmf(found, answered, recall)[below].sum())

    recalls = (0.99, 0.972, 0.95, 0.90, 0.85)
    print(f"\nP(recall alert) by confirmed malignant cases answered in the window (z = {z}, floor {floor}):")
    print("  cases  " + "  ".join(f"recall {r:<5}" for r in recalls))
    for answered in (count, 200, 500, 1000):
        print(f"  {answered:5d}  " + "  ".join(f"{fires(answered, r):12.2f}" for r in recalls))
    assert fires(count, 0.90) >= 0.99
    assert fires(1000, 0.99) <= 0.01


def test_promtool_accepts_the_rules(promtool, helm, tmp_path, values_files, config):
    values = values_files[config]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rendered_rule_spec(*(["--values", str(values)] if values else []))))
    result = subprocess.run([promtool, "check", "rules", rules], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS) + 2} rules found" in result.stdout  # and the recall alert's two records


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    matchers = ", ".join([SELECTOR, *(f'{k}="{v}"' for k, v in labels.items())])
    return {"series": f"{name}{{{matchers}}}", "values": values}


def requests(code: str, per_minute: int, endpoint: str = "/predict") -> dict[str, str]:
    return series("http_requests_total", f"0+{per_minute}x120", endpoint=endpoint, code=code)


def latency(seconds_bucket: str) -> list[dict[str, str]]:
    """100 requests a minute, all within the given bucket of a 0.1/0.5/1 s histogram."""
    edges = ["0.1", "0.5", "1", "+Inf"]
    return [
        series(
            "http_request_duration_seconds_bucket",
            f"0+{100 if float(le) >= float(seconds_bucket) else 0}x120",
            endpoint="/predict",
            le=le,
        )
        for le in edges
    ]


def outcomes(predicted: str, confirmed: str, values: str) -> dict[str, str]:
    return series(
        "confirmed_outcomes_total", values, model_tag=MODEL_TAG, predicted=predicted, confirmed=confirmed
    )


def predictions(diagnosis: str, per_minute: int) -> dict[str, str]:
    return series("predictions_total", f"0+{per_minute}x120", diagnosis=diagnosis)


def wilson_lower(found: int, answered: int, z: float) -> float:
    """scipy's lower bound of the two-sided Wilson interval at the level whose lower end is one-sided z."""
    level = 2 * norm.cdf(z) - 1
    return float(binomtest(found, answered).proportion_ci(confidence_level=level, method="wilson").low)


# (alert key, input series where it must fire, input series where it must not). Series run two hours
# at one sample a minute; alerts are evaluated at 100 minutes, past every default `for`.
SCENARIOS = {
    "inputDrift": (
        [series("input_drift_status", "1x120", instance=pod) for pod in ("a", "b")]
        + [series("input_drift_status", "0x120", instance="c")],
        [series("input_drift_status", "1x120", instance="a")]
        + [series("input_drift_status", "0x120", instance=pod) for pod in ("b", "c")],
    ),
    # Every answer is counted in http_requests_total, shed 503s included; probes and unknown paths
    # ("other") are not API requests.
    "errorRate": (
        [requests("200", 90), requests("503", 10), requests("200", 50, "/predict_batch")],
        [
            requests("200", 99),
            requests("500", 1),
            requests("200", 50, "/livez"),
            requests("503", 50, "/readyz"),
            requests("404", 50, "other"),
        ],
    ),
    "errorRate-outcomes": (
        [requests("200", 90), requests("500", 10, "/outcomes")],
        [requests("200", 90), requests("500", 10, "other")],
    ),
    "latency": (latency("1"), latency("0.1")),
    "noReadyPods": (
        [series("model_ready", "0x120", instance=pod) for pod in ("a", "b")],
        [series("model_ready", "1x120", instance="a"), series("model_ready", "0x120", instance="b")],
    ),
    "outOfRangeInputs": (
        [predictions("benign", 100)]
        + [series("out_of_range_features_total", "0+10x120", feature="radius_mean", side="high")],
        [predictions("benign", 100)]
        + [series("out_of_range_features_total", "0+1x120", feature="radius_mean", side="high")],
    ),
    "indeterminateRate": (
        [predictions("benign", 60), predictions("malignant", 30), predictions("indeterminate", 10)],
        [predictions("benign", 69), predictions("malignant", 30), predictions("indeterminate", 1)],
    ),
    # A stream of confirmed outcomes where the model misses one malignant case in four, against one
    # where it misses one in 51. False alarms (benign confirmed, answered malignant) never count.
    "malignantRecall": (
        [
            outcomes("malignant", "malignant", "0+30x120"),
            outcomes("benign", "malignant", "0+10x120"),
            outcomes("benign", "benign", "0+100x120"),
        ],
        [
            outcomes("malignant", "malignant", "0+500x120"),
            outcomes("benign", "malignant", "0+10x120"),
            outcomes("malignant", "benign", "0+200x120"),
        ],
    ),
    # Indeterminate answers are neither hits nor misses: they do not rescue a model that misses
    # cases, nor sink one that finds them.
    "malignantRecall-indeterminate": (
        [
            outcomes("malignant", "malignant", "0+30x120"),
            outcomes("benign", "malignant", "0+10x120"),
            outcomes("indeterminate", "malignant", "0+100x120"),
        ],
        [
            outcomes("malignant", "malignant", "0+500x120"),
            outcomes("benign", "malignant", "0+10x120"),
            outcomes("indeterminate", "malignant", "0+100x120"),
        ],
    ),
    # Every case missed: no predicted="malignant" series at all. Quiet below the minimum count (at
    # 100 minutes, just under it; when firing, above it from 30 minutes on, past the default `for`).
    "malignantRecall-minimum": (
        [outcomes("benign", "malignant", f"0+{RECALL['minCount'] / 30}x120")],
        [outcomes("benign", "malignant", f"0+{(RECALL['minCount'] - 1) / 100}x120")],
    ),
}
EXPECTED_LABELS = {"malignantRecall": {"model_tag": MODEL_TAG}}


def promtool_test(
    promtool,
    tmp_path,
    spec: dict,
    input_series: list[dict],
    alert: str,
    fires: bool,
    labels: dict[str, str] | None = None,
    eval_time: str = "100m",
) -> str:
    """Runs `promtool test rules` with the alert evaluated at eval_time (100 minutes: past every
    default `for`); the failure report, empty when the alert fired (with labels) or not as expected."""
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # promtool compares annotations verbatim; check rules covers them
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    expected = [
        {
            "exp_labels": {
                "severity": alert_rules(spec)[alert]["labels"]["severity"],
                "job": JOB,
                "namespace": NAMESPACE,
                **(labels or {}),
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
                    {"eval_time": eval_time, "alertname": alert, "exp_alerts": expected if fires else []}
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
    name = key.split("-")[0]
    failure = promtool_test(
        promtool,
        tmp_path,
        rendered_rule_spec(),
        firing if fires else quiet,
        ALERTS[name],
        fires,
        EXPECTED_LABELS.get(name),
    )
    assert not failure, failure


@pytest.mark.parametrize(
    ("found", "answered"), [(97, 100), (98, 100), (99, 100), (100, 100), (137, 142), (138, 142)]
)
def test_recall_alert_fires_exactly_when_the_wilson_bound_is_below_the_floor(
    promtool, helm, tmp_path, found, answered
):
    """Counts received in one burst inside the window; the bound decides, as scipy computes it."""
    z, floor = RECALL["z"], RECALL["floor"]
    minimum = "prometheusRule.alerts.malignantRecall.minCount=100"  # the cases below reach it
    expected = wilson_lower(found, answered, z) < floor
    stream = [
        outcomes("malignant", "malignant", f"0x10 {found}x110"),
        outcomes("benign", "malignant", f"0x10 {answered - found}x110"),
    ]
    failure = promtool_test(
        promtool,
        tmp_path,
        rendered_rule_spec("--set", ",".join([*IMMEDIATE_ALERTS, minimum])),
        stream,
        ALERTS["malignantRecall"],
        expected,
        EXPECTED_LABELS["malignantRecall"],
        eval_time="60m",
    )
    assert not failure, failure


def test_recall_alert_forgets_outcomes_older_than_its_window(promtool, helm, tmp_path):
    """Misses two hours old no longer count against a model with a one-hour window."""
    spec = rendered_rule_spec(
        "--set", ",".join([*IMMEDIATE_ALERTS, "prometheusRule.alerts.malignantRecall.window=1h"])
    )
    stream = [
        outcomes("benign", "malignant", "0x5 500x300"),
        outcomes("malignant", "malignant", "0x5 500x300"),
    ]
    alert, labels = ALERTS["malignantRecall"], EXPECTED_LABELS["malignantRecall"]
    assert not promtool_test(promtool, tmp_path, spec, stream, alert, True, labels, eval_time="30m")
    assert not promtool_test(promtool, tmp_path, spec, stream, alert, False, labels, eval_time="180m")


def dashboard_panel(title_start: str) -> dict:
    (panel,) = [p for p in rendered_dashboard()["panels"] if p["title"].startswith(title_start)]
    return panel


def resolved(expression: str, **variables: str) -> str:
    """A dashboard expression with its Grafana variables replaced as Grafana would."""
    values = {"job": JOB, "namespace": NAMESPACE, "__rate_interval": "5m", "__range": "1h", **variables}
    return re.sub(r"\$\{?(\w+)\}?", lambda match: values[match.group(1)], expression)


def test_dashboard_queries_are_valid_promql(promtool, helm, tmp_path):
    dashboard = rendered_dashboard()
    constants = {v["name"]: v["query"] for v in dashboard["templating"]["list"] if v["type"] == "constant"}
    rules = [
        {"record": f"dashboard:query_{index}", "expr": resolved(expression, **constants)}
        for index, expression in enumerate(dashboard_expressions(dashboard))
    ]
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    result = subprocess.run(
        [promtool, "check", "rules", "dashboard.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_recall_panel_shows_the_wilson_bound_and_the_observed_recall(promtool, helm, tmp_path):
    panel = dashboard_panel("Malignant recall of confirmed outcomes")
    bound, observed = (target["expr"] for target in panel["targets"])
    variables = {"recall_window": "1h", "wilson_z": str(RECALL["z"])}
    stream = [
        outcomes("malignant", "malignant", "0x10 93x50"),
        outcomes("benign", "malignant", "0x10 7x50"),
        outcomes("indeterminate", "malignant", "0x10 40x50"),
        outcomes("malignant", "benign", "0x10 9x50"),
    ]
    samples = [
        (bound, wilson_lower(93, 100, RECALL["z"])),
        (observed, 0.93),
    ]
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": stream,
                "promql_expr_test": [
                    {
                        "expr": resolved(expression, **variables),
                        "eval_time": "40m",
                        "exp_samples": [{"labels": f'{{model_tag="{MODEL_TAG}"}}', "value": value}],
                    }
                    for expression, value in samples
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test))
    result = subprocess.run(
        [promtool, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    thresholds = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert thresholds[-1] == {"color": "green", "value": RECALL["floor"]}


def test_no_ready_pods_fires_when_no_pod_reports(promtool, helm, tmp_path):
    unrelated = [series("up", "1x120", instance="a")]
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
    for topic in ("malignant recall", "confirmed outcomes", "indeterminate", "refused"):
        assert topic in titles


def test_dashboard_is_bound_to_its_release(helm):
    dashboard = rendered_dashboard("--set", "drift.windowRows=500", release="prod", namespace="ml")
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    constants = {name: v["query"] for name, v in variables.items() if v["type"] == "constant"}
    assert constants == {
        "job": "prod-breast-cancer-classifier",
        "namespace": "ml",
        "window_rows": "500",
        # the recall alert's defaults, which the recall panels use
        "recall_window": RECALL["window"],
        "wilson_z": str(RECALL["z"]),
    }
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
