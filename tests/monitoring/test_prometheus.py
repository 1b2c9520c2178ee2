"""The chart's alert rules and dashboard against the real service and a real Prometheus.

Every metric name the rules and the dashboard query exists in the service's /metrics; and Prometheus
(Debian's package, on loopback, scraping a local `bentoml serve` every second) loads the rules the
chart renders and fires the drift alert once a shifted stream of inputs arrives, and not before.
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
from wdbc import BENIGN_EXAMPLE

RELEASE, NAMESPACE = "e2e", "monitoring-test"
JOB = f"{RELEASE}-breast-cancer-classifier"  # the chart's full name, which its rules select on
DRIFT_ALERT = "BreastCancerClassifierInputDrift"


def metric_names(exposition: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0] for line in exposition.splitlines() if line and line[0] != "#"
    }


def test_every_metric_the_rules_and_dashboard_use_exists(client: httpx.Client) -> None:
    client.post("/predict", json={**BENIGN_EXAMPLE, "area_worst": 9000.0})  # an out-of-range value
    client.post("/predict_batch", json={"instances": held_out_rows()[:40]})  # enough rows to test drift on
    assert client.get("/drift").json()["status"] != "collecting"  # this evaluation publishes the gauges
    exposed = metric_names(client.get("/metrics").text)
    used = rendered_metric_names()
    assert used, "the rules and the dashboard query nothing"
    assert used <= exposed, f"queried but not exposed: {sorted(used - exposed)}"


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
        rules = rendered_rule_spec(
            "--set",
            ",".join(IMMEDIATE_ALERTS),
            "--set",
            "prometheusRule.rateWindow=1m",
            release=RELEASE,
            namespace=NAMESPACE,
        )
        (workdir / "rules.yml").write_text(yaml.safe_dump(rules))
        target = service.url.removeprefix("http://")
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
    assert DRIFT_ALERT in loaded and len(loaded) == 5, loaded
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
