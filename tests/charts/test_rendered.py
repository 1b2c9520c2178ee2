"""Assertions on the objects `helm template` renders, for the default values and each ci/ file.

The image's facts (port, uid/gid, probe paths, writable paths, env vars) come from
k8s/runtime-contract.yaml, which the container test checks against the real image.
"""

from __future__ import annotations

import re

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


def test_container_ports_and_service_ports_are_the_contract_ones(objects, one, config, contract):
    docs = objects(config)
    _, _, container = deployment_parts(docs, one)
    assert container["ports"] == [
        {"name": contract["portName"], "containerPort": contract["port"], "protocol": "TCP"},
        {"name": contract["metricsPortName"], "containerPort": contract["metricsPort"], "protocol": "TCP"},
    ]
    service = one(docs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    names = [contract["portName"], contract["metricsPortName"]]
    assert [port["targetPort"] for port in service["spec"]["ports"]] == names
    assert [port["name"] for port in service["spec"]["ports"]] == names


def test_service_selects_the_service_pods_only(objects, one, config):
    docs = objects(config)
    deployment, pod, _ = deployment_parts(docs, one)
    selector = one(docs, "Service")["spec"]["selector"]
    assert selects(selector, pod["metadata"]["labels"])
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    smoke_test = one(docs, "Pod")
    assert not selects(selector, smoke_test["metadata"]["labels"]), "the Service would route to the test pod"


def test_replica_count_applies_only_without_autoscaling(objects, one):
    docs = objects("default", "--set", "autoscaling.enabled=false,replicaCount=3")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert not [doc for doc in docs if doc["kind"] == "HorizontalPodAutoscaler"]
    # Three pods are worth a budget, as the HPA's minimum is.
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    docs = objects("default", "--set", "autoscaling.enabled=false")
    assert one(docs, "Deployment")["spec"]["replicas"] == 1  # unset means one pod
    assert not [doc for doc in docs if doc["kind"] == "PodDisruptionBudget"]
    docs = objects("default", "--set", "autoscaling.enabled=false,replicaCount=0")
    assert one(docs, "Deployment")["spec"]["replicas"] == 0  # scaled to zero, not to the default


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


def test_rollout_never_drops_below_the_desired_count(objects, one, config):
    deployment, _, container = deployment_parts(objects(config), one)
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["resources"]["requests"] and container["resources"]["limits"]["cpu"]


def test_pre_stop_starts_the_contract_drain_then_waits(objects, one, config, contract):
    _, pod, container = deployment_parts(objects(config), one)
    drain_file = contract["drainFile"]
    assert env_of(container)["DRAIN_FILE"] == drain_file
    shell, flag, script = container["lifecycle"]["preStop"]["exec"]["command"]
    assert (shell, flag) == ("/bin/sh", "-c")  # the image has /bin/sh
    touch, sleep = script.split("; ")
    assert touch == f"touch {drain_file}"
    seconds = int(sleep.removeprefix("sleep "))
    assert sleep == f"sleep {seconds}" and 0 < seconds < pod["spec"]["terminationGracePeriodSeconds"]
    # The drain file must land on a writable emptyDir: the root filesystem is read-only.
    empty_dirs = {volume["name"] for volume in pod["spec"]["volumes"] if "emptyDir" in volume}
    writable = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs]
    assert any(drain_file.startswith(path.rstrip("/") + "/") for path in writable), (drain_file, writable)


def test_service_settings_default_to_the_contract_defaults(objects, one, contract):
    """The chart's defaults are the service's own (k8s/runtime-contract.yaml states each)."""
    _, _, container = deployment_parts(objects("default"), one)
    env = env_of(container)
    for name in ("MAX_CONCURRENCY", "DRIFT_WINDOW_ROWS", "DRIFT_EVALUATION_SECONDS"):
        (default,) = re.findall(r"\(default ([0-9.]+)\)", contract["env"][name])
        assert float(env[name]) == float(default), name


def test_service_settings_reach_the_container(objects, one):
    _, _, container = deployment_parts(objects("all-options"), one)
    env = env_of(container)
    assert (env["MAX_CONCURRENCY"], env["DRIFT_WINDOW_ROWS"], env["DRIFT_EVALUATION_SECONDS"]) == (
        "32",
        "500",
        "60",
    )
    docs = objects("default", "--set-json", "drift.evaluationSeconds=2.5", "--set", "maxConcurrency=8")
    env = env_of(deployment_parts(docs, one)[2])
    assert (env["DRIFT_EVALUATION_SECONDS"], env["MAX_CONCURRENCY"]) == ("2.5", "8")


QUANTITY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
SCALE = {None: 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(quantity: str | int) -> float:
    number, suffix = QUANTITY.match(str(quantity)).groups()
    return float(number) * SCALE[suffix]


def test_writable_volumes_hold_what_the_service_writes(objects, one, config, contract):
    """The emptyDir cap keeps a margin over the most the service writes: exceeding it evicts the pod."""
    _, pod, _ = deployment_parts(objects(config), one)
    limits = [volume["emptyDir"]["sizeLimit"] for volume in pod["spec"]["volumes"] if "emptyDir" in volume]
    assert limits and all(
        quantity_bytes(limit) >= 2 * quantity_bytes(contract["writableBytesLimit"]) for limit in limits
    )


# Measured on this project's image: /readyz answers 3.4 to 4.7 s after the container starts; a
# slower node may take twice that.
HEALTHY_START_SECONDS = 2 * 4.7


def test_probes_raise_no_warning_on_a_healthy_start(objects, one, config):
    """Every failed probe is a Warning event. The startup probe's first call must not come before the
    port is bound, and must still be waiting, not timed out, while the worker loads its model."""
    _, _, container = deployment_parts(objects(config), one)
    startup = container["startupProbe"]
    assert startup["initialDelaySeconds"] >= 3  # the supervisor binds the port after its imports
    assert startup["initialDelaySeconds"] + startup["timeoutSeconds"] >= HEALTHY_START_SECONDS
    budget = startup["initialDelaySeconds"] + startup["periodSeconds"] * startup["failureThreshold"]
    assert 100 <= budget <= 140, f"startup budget {budget} s, meant to be about 120 s"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["timeoutSeconds"] <= container[probe]["periodSeconds"], probe


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


def contract_default(contract: dict, name: str) -> str:
    """The default the runtime contract states for an environment variable."""
    (default,) = re.findall(r"\(default (\S+?)\)", contract["env"][name])
    return default


def test_service_account_token_reaches_only_the_service_container_and_only_with_auth(
    objects, one, config, contract
):
    """No automounted token anywhere. With auth on, the service container alone mounts a projected
    token of its account for the API server (no audience: the API server's own) and the cluster CA,
    at the paths the service reads by default, to fetch the token-signing keys."""
    docs = objects(config)
    _, pod, container = deployment_parts(docs, one)
    service_accounts = [
        doc
        for doc in docs
        if doc["kind"] == "ServiceAccount" and "component" not in str(doc["metadata"]["labels"])
    ]
    if config == "minimal":  # serviceAccount.create false: the namespace's default account
        assert not service_accounts and pod["spec"]["serviceAccountName"] == "default"
    else:
        (account,) = service_accounts
        assert account["automountServiceAccountToken"] is False
        assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    projected = {v["name"]: v["projected"]["sources"] for v in pod["spec"]["volumes"] if "projected" in v}
    if env_of(container)["AUTH_ENABLED"] != "true":
        assert not projected
        return
    (volume,) = projected
    mount = one_mount(container, volume)
    assert mount["readOnly"] is True
    token, ca = projected[volume]
    assert "audience" not in token["serviceAccountToken"]
    assert ca["configMap"]["name"] == "kube-root-ca.crt"
    (item,) = ca["configMap"]["items"]
    assert item["key"] == "ca.crt"
    files = {
        f"{mount['mountPath']}/{token['serviceAccountToken']['path']}",
        f"{mount['mountPath']}/{item['path']}",
    }
    assert files == {
        contract_default(contract, "AUTH_CREDENTIALS_FILE"),
        contract_default(contract, "AUTH_CA_FILE"),
    }
    assert not {"AUTH_CREDENTIALS_FILE", "AUTH_CA_FILE"} & set(env_of(container))  # the defaults apply


def one_mount(container: dict, volume: str) -> dict:
    (mount,) = [mount for mount in container["volumeMounts"] if mount["name"] == volume]
    return mount


def test_authentication_settings_reach_the_service(objects, one, contract):
    """Default: on, the Service's name as audience, the release's namespace in every group."""
    docs = objects("default")
    env = env_of(deployment_parts(docs, one)[2])
    groups = ("AUTH_ALLOW_DIAGNOSIS", "AUTH_ALLOW_OUTCOMES", "AUTH_ALLOW_MODEL_DATA")
    assert env["AUTH_ENABLED"] == "true"
    assert env["AUTH_AUDIENCE"] == one(docs, "Service")["metadata"]["name"]
    assert "AUTH_ISSUER" not in env  # discovered by the service
    assert [env[group] for group in groups] == ["ml-serving/*"] * 3
    assert float(env["AUTH_JWKS_REFRESH_SECONDS"]) == float(
        contract_default(contract, "AUTH_JWKS_REFRESH_SECONDS")
    )

    env = env_of(deployment_parts(objects("all-options"), one)[2])
    assert env["AUTH_AUDIENCE"] == "classifier.example.com"
    assert env["AUTH_ISSUER"] == "https://kubernetes.default.svc.cluster.local"
    assert [env[group].split(",") for group in groups] == [
        ["ml-serving/*", "clinic/frontend", "ml-serving/batch-scorer"],
        ["ml-serving/*", "pathology/*"],
        ["ml-serving/*", "clinic/frontend", "audit/*"],
    ]

    docs = objects("default", "--set", "auth.allowReleaseNamespace=false,smokeTest.enabled=false")
    env = env_of(deployment_parts(docs, one)[2])
    assert [env[group] for group in groups] == ["", "", ""]  # nobody

    env = env_of(deployment_parts(objects("minimal"), one)[2])
    assert env["AUTH_ENABLED"] == "false"
    assert not [name for name in env if name.startswith("AUTH_") and name != "AUTH_ENABLED"]


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
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "Ingress", "Job"}


def peer_matches(peer: dict, source: dict, policy_namespace: str) -> bool:
    """NetworkPolicyPeer semantics: podSelector alone means pods of the policy's namespace;
    namespaceSelector alone, every pod of the matching namespaces; both, matching pods there."""
    namespaces, pods = peer.get("namespaceSelector"), peer.get("podSelector")
    if namespaces is None and pods is None:
        return False  # an ipBlock: never a pod
    if namespaces is None and source["namespace"] != policy_namespace:
        return False
    labels = {"kubernetes.io/metadata.name": source["namespace"]}
    if namespaces is not None and not selector_holds(namespaces, labels):
        return False
    return pods is None or selector_holds(pods, source.get("labels", {}))


def selector_holds(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # the chart's peers use matchLabels only
    return all(labels.get(key) == value for key, value in (selector.get("matchLabels") or {}).items())


def admitted(policy: dict, port: str, source: dict) -> bool:
    """Whether a NetworkPolicy lets a pod (namespace and labels) connect to the named port."""
    namespace = policy["metadata"]["namespace"]
    for rule in policy["spec"].get("ingress") or []:
        ports = [entry["port"] for entry in rule.get("ports") or []]
        if ports and port not in ports:
            continue
        peers = rule.get("from")
        if not peers or any(peer_matches(peer, source, namespace) for peer in peers):
            return True
    return False


NEIGHBOUR = {"namespace": "ml-serving", "labels": {"app": "clinic-app"}}
CLINIC = {"namespace": "clinic", "labels": {"app": "frontend"}}
STRANGER = {"namespace": "elsewhere", "labels": {}}
INGRESS = {"namespace": "ingress-nginx", "labels": {"app.kubernetes.io/name": "ingress-nginx"}}
PROMETHEUS = {"namespace": "monitoring", "labels": {"app.kubernetes.io/name": "prometheus"}}
GRAFANA = {"namespace": "monitoring", "labels": {"app.kubernetes.io/name": "grafana"}}


@pytest.mark.parametrize(
    ("values", "source", "api", "metrics"),
    [
        # Default: the release's namespace on the API port; the metrics port closed to everyone.
        ("default", NEIGHBOUR, True, False),
        ("default", CLINIC, False, False),
        ("default", PROMETHEUS, False, False),
        # all-options: auth.allow's namespaces and the ingress controller on the API port, and
        # only Prometheus' pods on the metrics port.
        ("all-options", NEIGHBOUR, True, False),
        ("all-options", CLINIC, True, False),
        ("all-options", INGRESS, True, False),
        ("all-options", STRANGER, False, False),
        ("all-options", PROMETHEUS, False, True),
        ("all-options", GRAFANA, False, False),
    ],
)
def test_network_policy_admits_each_peer_to_its_port_only(
    objects, one, values, source, api, metrics, contract
):
    docs = objects(values)
    _, pod, _ = deployment_parts(docs, one)
    policy = one(docs, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress (the API server, DNS) stays open
    assert admitted(policy, contract["portName"], source) is api
    assert admitted(policy, contract["metricsPortName"], source) is metrics


def test_the_policy_evaluator_reads_peers_as_kubernetes_does():
    """Guards the evaluator above on a policy written for it."""
    policy = {
        "metadata": {"namespace": "a"},
        "spec": {
            "ingress": [
                {"ports": [{"port": "http"}], "from": [{"podSelector": {"matchLabels": {"x": "1"}}}]},
                {"ports": [{"port": "metrics"}], "from": [{"namespaceSelector": {}}]},
            ]
        },
    }
    assert admitted(policy, "http", {"namespace": "a", "labels": {"x": "1"}})
    assert not admitted(
        policy, "http", {"namespace": "b", "labels": {"x": "1"}}
    )  # podSelector: own namespace
    assert not admitted(policy, "http", {"namespace": "a", "labels": {}})
    assert admitted(policy, "metrics", {"namespace": "b", "labels": {}})  # empty namespaceSelector: all
    assert not admitted(policy, "grpc", {"namespace": "a", "labels": {"x": "1"}})


def test_network_policy_can_be_left_out(objects):
    kinds = {doc["kind"] for doc in objects("default", "--set", "networkPolicy.enabled=false")}
    assert "NetworkPolicy" not in kinds


def test_service_monitor_scrapes_the_metrics_port(objects, one, contract):
    docs = objects("all-options")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # A ServiceMonitor selects Services by their labels, then scrapes the named Service port.
    service = one(docs, "Service")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (
        contract["metricsPortName"],
        contract["probes"]["metrics"],
    )
    (port,) = [port for port in service["spec"]["ports"] if port["name"] == endpoint["port"]]
    assert port["targetPort"] == contract["metricsPortName"]


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


def test_the_chart_grants_no_rbac(objects, config):
    """Reading the signing keys needs only Kubernetes' default system:service-account-issuer-discovery
    binding, and callers need no permission at all: the chart creates no Role or binding."""
    kinds = {doc["kind"] for doc in objects(config)}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
