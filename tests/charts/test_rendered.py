"""Assertions on the objects `helm template` renders, for the default values and each ci/ file.

The image's facts (port, uid/gid, probe paths, writable paths, env vars) come from
k8s/runtime-contract.yaml, which the container test checks against the real image.
"""

from __future__ import annotations

import json

import pytest
import yaml


def deployment_parts(docs, one):
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    return deployment, pod, pod["spec"]["containers"][0]


def env_of(container) -> dict[str, str]:
    return {var["name"]: var.get("value") for var in container.get("env", [])}


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def test_probes_use_the_contract_paths_on_the_named_port(objects, one, config, contract):
    _, _, container = deployment_parts(objects(config), one)
    expected = {
        "startupProbe": contract["probes"]["liveness"],
        "livenessProbe": contract["probes"]["liveness"],
        "readinessProbe": contract["probes"]["readiness"],
    }
    for probe, path in expected.items():
        assert container[probe]["httpGet"] == {"path": path, "port": contract["portName"]}, probe


def test_container_port_service_target_and_probes_agree(objects, one, config, contract):
    docs = objects(config)
    _, _, container = deployment_parts(docs, one)
    assert container["ports"] == [
        {"name": contract["portName"], "containerPort": contract["port"], "protocol": "TCP"}
    ]
    service = one(docs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert [port["targetPort"] for port in service["spec"]["ports"]] == [contract["portName"]]
    assert [port["name"] for port in service["spec"]["ports"]] == [contract["portName"]]


def test_service_selects_the_service_pods_only(objects, one, config):
    docs = objects(config)
    deployment, pod, _ = deployment_parts(docs, one)
    selector = one(docs, "Service")["spec"]["selector"]
    assert selects(selector, pod["metadata"]["labels"])
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    smoke_test = one(docs, "Pod")
    assert not selects(selector, smoke_test["metadata"]["labels"]), "the Service would route to the test pod"


def test_hpa_scales_the_deployment(objects, one, config):
    docs = objects(config)
    deployment = one(docs, "Deployment")
    hpas = [doc for doc in docs if doc["kind"] == "HorizontalPodAutoscaler"]
    if config == "minimal":
        assert not hpas and deployment["spec"]["replicas"] == 1
        return
    (hpa,) = hpas
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert {"scaleUp", "scaleDown"} <= hpa["spec"]["behavior"].keys()
    assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    # The HPA owns the replica count; a fixed one would reset it on every upgrade.
    assert "replicas" not in deployment["spec"]


def test_memory_target_is_optional(objects, one):
    def resources(config):
        return [
            m["resource"]["name"] for m in one(objects(config), "HorizontalPodAutoscaler")["spec"]["metrics"]
        ]

    assert resources("default") == ["cpu"]
    assert resources("all-options") == ["cpu", "memory"]


def test_pod_disruption_budget_only_with_several_replicas(objects, one, config):
    docs = objects(config)
    _, pod, _ = deployment_parts(docs, one)
    budgets = [doc for doc in docs if doc["kind"] == "PodDisruptionBudget"]
    if config == "minimal":
        assert not budgets
        return
    (budget,) = budgets
    assert selects(budget["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    expected = {"default": {"maxUnavailable": 1}, "all-options": {"minAvailable": 1}}
    assert {k: v for k, v in budget["spec"].items() if k != "selector"} == expected.get(
        config, {"minAvailable": 2}
    )


def test_pods_run_as_the_image_user_hardened(objects, one, config, contract):
    docs = objects(config)
    _, pod, _ = deployment_parts(docs, one)
    for spec in (pod["spec"], one(docs, "Pod")["spec"]):  # the service pod and the smoke test
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True
        assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (
            contract["uid"],
            contract["gid"],
            contract["gid"],
        )
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        for each in spec["containers"]:
            context = each["securityContext"]
            assert context["runAsUser"] == contract["uid"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}


def test_every_writable_path_is_an_empty_dir(objects, one, config, contract):
    _, pod, container = deployment_parts(objects(config), one)
    empty_dirs = {volume["name"] for volume in pod["spec"]["volumes"] if "emptyDir" in volume}
    mounted = {mount["mountPath"] for mount in container["volumeMounts"] if mount["name"] in empty_dirs}
    missing = set(contract["writablePaths"]) - mounted
    assert not missing, f"writable paths without an emptyDir (update writablePaths in values.yaml): {missing}"


def test_env_vars_are_the_contract_ones(objects, one, config, contract):
    _, _, container = deployment_parts(objects(config), one)
    names = set(env_of(container))
    extra = {"BENTOML_DEBUG"} if config == "all-options" else set()  # that file's extraEnv
    assert names - extra <= set(contract["env"]), (
        f"not in the runtime contract: {names - extra - set(contract['env'])}"
    )
    assert "SERVICE_WORKERS" in names


@pytest.mark.parametrize(
    ("cpu_limit", "workers"),
    [("100m", 1), ("500m", 1), ("1000m", 1), ("1999m", 1), ("1500m", 1), ("2000m", 2)]
    + [("1", 1), ("2", 2), (2, 2), (2.5, 2), ("0.5", 1), ("3", 3)],
)
def test_service_workers_follow_the_cpu_limit(objects, one, cpu_limit, workers):
    docs = objects("default", "--set-json", f"resources.limits.cpu={json.dumps(cpu_limit)}")
    _, _, container = deployment_parts(docs, one)
    assert container["resources"]["limits"]["cpu"] == cpu_limit
    assert env_of(container)["SERVICE_WORKERS"] == str(workers)


def test_rollout_never_drops_below_the_desired_count_and_drains(objects, one, config):
    deployment, pod, container = deployment_parts(objects(config), one)
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and 0 < int(sleep[1]) < pod["spec"]["terminationGracePeriodSeconds"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["cpu"]


def test_grace_period_shorter_than_the_pre_stop_pause_is_refused(helm_run, chart):
    result = helm_run(
        "template", "x", chart, "--set", "preStopSleepSeconds=30,terminationGracePeriodSeconds=30"
    )
    assert result.returncode != 0 and "terminationGracePeriodSeconds must exceed" in result.stderr


def test_replicas_spread_across_nodes(objects, one, config):
    _, pod, _ = deployment_parts(objects(config), one)
    constraints = pod["spec"].get("topologySpreadConstraints", [])
    if config == "minimal":
        assert not constraints
        return
    by_key = {c["topologyKey"]: c for c in constraints}
    assert by_key["kubernetes.io/hostname"]["maxSkew"] == 1
    for constraint in constraints:
        assert selects(constraint["labelSelector"]["matchLabels"], pod["metadata"]["labels"])


def test_service_account_never_mounts_a_token(objects, one, config):
    docs = objects(config)
    _, pod, _ = deployment_parts(docs, one)
    accounts = [doc for doc in docs if doc["kind"] == "ServiceAccount"]
    if config == "minimal":  # serviceAccount.create false: the namespace's default account
        assert not accounts and pod["spec"]["serviceAccountName"] == "default"
    else:
        (account,) = accounts
        assert account["automountServiceAccountToken"] is False
        assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_image_by_tag_defaults_to_the_app_version(objects, one, chart):
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    _, _, container = deployment_parts(objects("default"), one)
    assert container["image"] == f"breast-cancer-classifier:{app_version}"


def test_image_by_digest_and_pull_secrets(objects, one):
    _, pod, container = deployment_parts(objects("all-options"), one)
    assert container["image"] == ("example/breast-cancer-classifier@sha256:" + "0123456789abcdef" * 4)
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


def test_optional_objects_are_off_by_default(objects):
    kinds = {doc["kind"] for doc in objects("default")}
    assert not kinds & {"NetworkPolicy", "ServiceMonitor", "Ingress", "Job"}


def test_network_policy_admits_only_the_service_port(objects, one):
    docs = objects("all-options")
    _, pod, _ = deployment_parts(docs, one)
    policy = one(docs, "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert len(rule["from"]) == 3


def test_service_monitor_scrapes_the_contract_metrics_path(objects, one, contract):
    docs = objects("all-options")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # A ServiceMonitor selects Services by their labels, then scrapes the named port.
    assert selects(monitor["spec"]["selector"]["matchLabels"], one(docs, "Service")["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (contract["portName"], contract["probes"]["metrics"])


def test_ingress_routes_to_the_service(objects, one):
    docs = objects("all-options")
    path = one(docs, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]
    assert path["backend"]["service"] == {
        "name": one(docs, "Service")["metadata"]["name"],
        "port": {"name": "http"},
    }


def test_names_and_labels_fit_in_63_characters(objects):
    long_name = "n" * 63
    for doc in objects("all-options", "--set", f"fullnameOverride=,nameOverride={long_name}"):
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        assert all(len(value) <= 63 for value in doc["metadata"]["labels"].values()), doc["metadata"][
            "labels"
        ]
