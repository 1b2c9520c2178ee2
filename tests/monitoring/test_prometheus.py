"""The chart's alert rules and dashboard against the real service and a real Prometheus.

Prometheus (Debian's package, on loopback, scraping a local `bentoml serve` every second) loads the
rules the chart renders; it fires the drift alert once a shifted stream of inputs arrives, and not
before, and the malignant-recall alert once confirmed outcomes show the model missing malignant
cases, and not while it finds them. Every metric name the rules and the dashboard query exists in
the service's /metrics.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from harness.servers import Server, free_port
from tests.bento.test_drift import SIZE_FEATURES, held_out_rows
from tests.charts.monitoring import IMMEDIATE_ALERTS, rendered_metric_names, rendered_rule_spec
from tests.conftest import own_server, require_tool
from wdbc import BENIGN_EXAMPLE, MALIGNANT_EXAMPLE

RELEASE, NAMESPACE = "e2e", "monitoring-test"
JOB = f"{RELEASE}-breast-cancer-classifier"  # the chart's full name, which its rules select on
DRIFT_ALERT = "BreastCancerClassifierInputDrift"
RECALL_ALERT = "BreastCancerClassifierMalignantRecallLow"
RULE_VALUES = [
    *IMMEDIATE_ALERTS,
    "prometheusRule.rateWindow=1m",
    # the whole test's outcomes in the window, and a minimum count a short test reaches
    "prometheusRule.alerts.malignantRecall.window=10m",
    "prometheusRule.alerts.malignantRecall.minCount=100",
]


def metric_names(exposition: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0] for line in exposition.splitlines() if line and line[0] != "#"
    }


@pytest.fixture(scope="module")
def monitored(model_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """A service whose drift window is evaluated every second, and a Prometheus scraping it."""
    prometheus = require_tool("prometheus", "apt-get install prometheus (.ci/run does)")
    workdir = tmp_path_factory.mktemp("prometheus")
    with own_server(
        model_store,
        tmp_path_factory,
        SERVICE_WORKERS="2",
        DRIFT_WINDOW_ROWS="100",
        DRIFT_EVALUATION_SECONDS="1",
    ) as service:
        rules = rendered_rule_spec("--set", ",".join(RULE_VALUES), release=RELEASE, namespace=NAMESPACE)
        (workdir / "rules.yml").write_text(yaml.safe_dump(rules))
        target = metrics_url(service).removeprefix("http://").removesuffix("/metrics")
        (workdir / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(workdir / "rules.yml")],
                    "scrape_configs": [
                        {
                            "job_name": JOB,
                            "static_configs": [{"targets": [target], "labels": {"namespace": NAMESPACE}}],
                        }
                    ],
                }
            )
        )
        check = subprocess.run(
            [require_tool("promtool"), "check", "config", str(workdir / "prometheus.yml")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        port = free_port()
        log = (workdir / "prometheus.log").open("w")
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        api = f"http://127.0.0.1:{port}/api/v1"
        try:
            deadline = time.monotonic() + 60
            while not _up(api):
                assert process.poll() is None and time.monotonic() < deadline, (
                    workdir / "prometheus.log"
                ).read_text()
                time.sleep(0.5)
            yield service, api
        finally:
            process.terminate()
            process.wait(30)


def metrics_url(service: Server) -> str:
    """Where the service serves /metrics: its own port (METRICS_PORT)."""
    return service.metrics_url


def _up(api: str) -> bool:
    try:
        result = httpx.get(f"{api}/query", params={"query": f'up{{job="{JOB}"}}'}).json()["data"]["result"]
    except (httpx.TransportError, KeyError, ValueError):
        return False
    return bool(result) and result[0]["value"][1] == "1"


def alerts(api: str) -> dict[str, str]:
    return {
        alert["labels"]["alertname"]: alert["state"]
        for alert in httpx.get(f"{api}/alerts").json()["data"]["alerts"]
    }


def query(api: str, expression: str) -> float | None:
    """The value of a PromQL expression that gives one sample, None when it gives none."""
    result = httpx.get(f"{api}/query", params={"query": expression}).json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def wait_for(condition, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(1)
    return condition()


@pytest.mark.slow
def test_prometheus_fires_the_drift_alert_on_a_shifted_stream(monitored: tuple[Server, str]) -> None:
    service, api = monitored
    rules = httpx.get(f"{api}/rules").json()["data"]["groups"]
    loaded = {rule["name"] for group in rules for rule in group["rules"]}
    rendered = rendered_rule_spec("--set", ",".join(RULE_VALUES), release=RELEASE, namespace=NAMESPACE)
    assert loaded == {
        rule.get("alert", rule.get("record")) for group in rendered["groups"] for rule in group["rules"]
    }
    assert DRIFT_ALERT in loaded and RECALL_ALERT in loaded
    rows = held_out_rows()[:100]
    with httpx.Client(base_url=service.url) as client:
        for start in range(0, 100, 10):
            client.post("/predict_batch", json={"instances": rows[start : start + 10]})
        assert wait_for(lambda: client.get("/drift").json()["window_rows"] == 100)
        time.sleep(3)  # a few scrapes and evaluations of the undrifted window
        assert DRIFT_ALERT not in alerts(api), alerts(api)
        assert "BreastCancerClassifierNoReadyPods" not in alerts(api)

        scaled = [{**row, **{name: row[name] * 1.3 for name in SIZE_FEATURES}} for row in rows]
        for start in range(0, 100, 10):
            client.post("/predict_batch", json={"instances": scaled[start : start + 10]})
    firing = wait_for(lambda: alerts(api).get(DRIFT_ALERT) == "firing")
    print(
        f"alerts after the shifted stream: {alerts(api)}; /drift: {json.dumps(httpx.get(f'{service.url}/drift').json()['drifted'])}"
    )
    assert firing, alerts(api)


def post_outcomes(url: str, row: dict[str, float], confirmed: str, count: int) -> None:
    body = {"outcomes": [{"features": row, "diagnosis": confirmed}] * count}
    response = httpx.post(f"{url}/outcomes", json=body, timeout=30)
    assert response.status_code == 200, response.text


@pytest.mark.slow
def test_prometheus_fires_the_recall_alert_when_confirmed_outcomes_show_missed_cancers(
    monitored: tuple[Server, str],
) -> None:
    """Confirmed malignant cases the model finds, then as many it misses (benign-looking rows whose
    pathology came back malignant): quiet while the Wilson bound clears the floor, firing after."""
    service, api = monitored
    answered = f'breast_cancer_classifier:confirmed_malignant_answered:increase_window{{job="{JOB}"}}'
    missed = f'sum(confirmed_outcomes_total{{job="{JOB}", predicted="benign", confirmed="malignant"}})'
    # One of each first, so that both series exist before the stream (increase() counts from a
    # series' first sample).
    post_outcomes(service.url, MALIGNANT_EXAMPLE, "malignant", 1)
    post_outcomes(service.url, BENIGN_EXAMPLE, "malignant", 1)
    assert wait_for(lambda: query(api, missed) == 1), "the outcome counters did not reach Prometheus"

    post_outcomes(service.url, MALIGNANT_EXAMPLE, "malignant", 120)  # found: recall ~0.99
    assert wait_for(lambda: (query(api, answered) or 0) >= 120), query(api, answered)
    time.sleep(3)  # a few more evaluations
    assert RECALL_ALERT not in alerts(api), alerts(api)

    post_outcomes(service.url, BENIGN_EXAMPLE, "malignant", 120)  # missed: recall ~0.5
    firing = wait_for(lambda: alerts(api).get(RECALL_ALERT) == "firing")
    print(f"after the missed cases: {query(api, missed):.0f} missed in Prometheus; alerts: {alerts(api)}")
    assert firing, alerts(api)


# Last: it sends rows of every kind (out of range, outside the validity domain, refused), which the
# drift test above must not see in its window.
def test_every_metric_the_rules_and_dashboard_use_exists(monitored: tuple[Server, str]) -> None:
    service, _ = monitored
    with httpx.Client(base_url=service.url, timeout=30) as client:
        client.post("/predict", json={**BENIGN_EXAMPLE, "area_worst": 9000.0})  # out of the training range
        client.post(
            "/predict", json={name: value * 0.1 for name, value in BENIGN_EXAMPLE.items()}
        )  # indeterminate
        client.post("/predict", json={**BENIGN_EXAMPLE, "area_worst": 1e5})  # refused: beyond a hard limit
        client.post(
            "/predict_batch", json={"instances": held_out_rows()[:40]}
        )  # enough rows to test drift on
        assert client.get("/drift").json()["status"] != "collecting"  # this evaluation publishes the gauges
        post_outcomes(service.url, MALIGNANT_EXAMPLE, "malignant", 1)
        exposed = metric_names(httpx.get(metrics_url(service)).text)
    used = rendered_metric_names()
    assert used, "the rules and the dashboard query nothing"
    assert used <= exposed, f"queried but not exposed: {sorted(used - exposed)}"
