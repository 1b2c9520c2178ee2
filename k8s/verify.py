"""Verify a Helm release of the classifier on a live cluster, through the Kubernetes API.

    python -m k8s.verify --release R --namespace N [--timeout SECONDS] [--context C]
                         [--service-account NAME]

The e2e and deploy jobs of .github/workflows/ci.yml run it after `helm upgrade`. It waits for the
Deployment's rollout, checks that the HPA and the PDB target it and that its pods are Ready, then
port-forwards to each pod through the API server, checks that the pod serves the release's model
(GET /model against the Deployment's MODEL_TAG) and the diagnoses of a known malignant and a known
benign row. When pods never become ready, the failure names why: the readiness probe's last failure
(from the pod's events) and the service's last ERROR log line. On failure it prints events and pod
logs and exits 1 with the reason.

When the Deployment requires tokens (AUTH_ENABLED), it first checks that each pod refuses POST
/predict without one (401), then calls as a ServiceAccount of the namespace, with a token bound to
the Deployment's AUTH_AUDIENCE that it obtains through the TokenRequest API (what `kubectl create
token` does; your credentials need `create` on `serviceaccounts/token`). The account is
--service-account, else the chart's client account (the one `helm test` runs as).

The checks are pure functions on the API's JSON form of each object, the shape `helm template`
renders, so tests/k8s/test_verify.py runs them on the chart without a cluster. Only `Cluster` and
`main` talk to an API server, and that live path runs only in the workflow.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.stream import portforward

from wdbc import BENIGN_EXAMPLE, BENIGN_LABEL, MALIGNANT_EXAMPLE, MALIGNANT_LABEL

Obj = Mapping[str, Any]
EXAMPLES = ((MALIGNANT_LABEL, MALIGNANT_EXAMPLE), (BENIGN_LABEL, BENIGN_EXAMPLE))


class VerificationError(Exception):
    """A check failed; the message says which object and why."""


# --- Pure checks --------------------------------------------------------------------------------


def rollout_status(deployment: Obj, hpa: Obj | None = None) -> tuple[bool, str]:
    """(done, progress message), by the rules of `kubectl rollout status`.

    Done means the controller has observed the latest spec, every desired replica runs the new
    template and is available, and no old replica is left. With an HPA, also that it has raised
    the replica count to its minReplicas: a fresh install starts at one replica, and a pod the HPA
    adds after that would fail the readiness check. A rollout past its progress deadline will not
    finish by waiting, so that raises.
    """
    name = deployment["metadata"]["name"]
    generation = deployment["metadata"].get("generation", 0)
    status = deployment.get("status") or {}
    if status.get("observedGeneration", 0) < generation:
        return False, f"waiting for the controller to observe generation {generation} of {name}"
    for condition in status.get("conditions") or []:
        if condition.get("reason") == "ProgressDeadlineExceeded":
            reason = condition.get("message", "progress deadline exceeded")
            raise VerificationError(f"deployment {name}: {reason}")
    desired = deployment["spec"].get("replicas", 1)  # the API's default when the chart omits it
    updated = status.get("updatedReplicas", 0)
    current = status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < desired:
        return False, f"{name}: {updated} of {desired} replicas updated"
    if current > updated:
        return False, f"{name}: {current - updated} old replicas pending termination"
    if available < updated:
        return False, f"{name}: {available} of {updated} updated replicas available"
    minimum = (hpa or {}).get("spec", {}).get("minReplicas", 1)
    if desired < minimum:
        return False, f"{name}: waiting for the HPA to scale from {desired} to minReplicas {minimum}"
    return True, f"{name}: rolled out, {available} of {desired} replicas available"


def hpa_problems(hpa: Obj, deployment: Obj) -> list[str]:
    """The HPA must scale this Deployment (an HPA pointing elsewhere silently does nothing)."""
    ref = hpa["spec"]["scaleTargetRef"]
    target = (ref.get("apiVersion", "apps/v1"), ref.get("kind"), ref.get("name"))
    expected = ("apps/v1", "Deployment", deployment["metadata"]["name"])
    if target != expected:
        got, want = "/".join(map(str, target)), "/".join(expected)
        return [f"HPA {hpa['metadata']['name']} targets {got}, not {want}"]
    return []


def pdb_problems(pdb: Obj, deployment: Obj) -> list[str]:
    """The PDB must select this Deployment's pods, or it protects nothing during node drains."""
    name = pdb["metadata"]["name"]
    selector = pdb["spec"].get("selector")
    labels = deployment["spec"]["template"]["metadata"].get("labels") or {}
    if not selector:  # policy/v1: an empty selector matches every pod in the namespace
        return [f"PDB {name} has no selector"]
    if not selector_matches(selector, labels):
        return [f"PDB {name} selector {dict(selector)} does not match the pod labels {dict(labels)}"]
    return []


def selector_matches(selector: Obj, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions, all must hold)."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        holds = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not holds:
            return False
    return True


def is_ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def pod_problems(
    pods: Iterable[Obj], events: Iterable[Obj] = (), logs: Mapping[str, str] | None = None
) -> list[str]:
    """Every pod that is not being deleted must be Ready; say why not.

    The reasons: the container's waiting state (e.g. CrashLoopBackOff), the last probe failure among
    the pod's events, and the last ERROR line of its log (`logs` maps pod names to log text).
    """
    live = [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]
    if not live:
        return ["no running pods match the deployment's selector"]
    events = list(events)
    problems = []
    for pod in live:
        status = pod.get("status") or {}
        if not is_ready(pod):
            name = pod["metadata"]["name"]
            waiting = [
                f"{c['name']}: {c['state']['waiting'].get('reason')}"
                for c in status.get("containerStatuses") or []
                if (c.get("state") or {}).get("waiting")
            ]
            detail = "; ".join([status.get("phase", "unknown phase"), *waiting])
            reasons = [
                f"{source}: {reason}"
                for source, reason in (
                    ("probe", last_probe_failure(events, name)),
                    ("service log", last_error((logs or {}).get(name, ""))),
                )
                if reason
            ]
            problems.append(f"pod {name} is not Ready ({detail})" + "".join(f"; {r}" for r in reasons))
    return problems


def _event_time(event: Obj) -> datetime:
    """When the event last happened (core/v1 Events carry one of several timestamps)."""
    stamp = (
        (event.get("series") or {}).get("lastObservedTime")
        or event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("firstTimestamp")
    )
    if not stamp:
        return datetime.min.replace(tzinfo=UTC)
    moment = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(stamp)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def last_probe_failure(events: Iterable[Obj], pod: str) -> str | None:
    """The message of the pod's latest failed-probe event, e.g. "Readiness probe failed: HTTP probe
    failed with statuscode: 503"; readiness first, as it is what keeps a pod unready."""
    failures = [
        event
        for event in events
        if (event.get("involvedObject") or {}).get("name") == pod
        and event.get("reason") == "Unhealthy"
        and "probe failed" in (event.get("message") or "")
    ]
    readiness = [event for event in failures if event["message"].startswith("Readiness")]
    if not failures:
        return None
    return max(readiness or failures, key=_event_time)["message"].strip()


def last_error(log: str) -> str | None:
    """The message of the last ERROR (or CRITICAL) line of the service's JSON log, which names the
    model problem (e.g. "model breast_cancer:abc not found in the BentoML model store ...")."""
    message = None
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # BentoML's own startup lines, or a truncated line
            continue
        if isinstance(entry, dict) and entry.get("level") in ("ERROR", "CRITICAL") and entry.get("message"):
            message = str(entry["message"])
    return message


def http_port(deployment: Obj, name: str = "http") -> int:
    """The container port named `name` (the chart's contract), so the port is never hard-coded."""
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for port in container.get("ports") or []:
            if port.get("name") == name:
                return int(port["containerPort"])
    deployment_name = deployment["metadata"]["name"]
    raise VerificationError(f"deployment {deployment_name} has no container port named {name!r}")


def auth_audience(deployment: Obj) -> str | None:
    """The audience callers' tokens must be bound to, or None when the service takes no token
    (AUTH_ENABLED is not true); the service's own default audience when AUTH_AUDIENCE is unset."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {variable.get("name"): variable.get("value") for variable in container.get("env") or []}
    if (env.get("AUTH_ENABLED") or "").lower() != "true":
        return None
    return env.get("AUTH_AUDIENCE") or "breast-cancer-classifier"


def client_account(accounts: Iterable[Obj], selector: str) -> str:
    """The name of the release's one client ServiceAccount (listed by `selector`)."""
    names = [account["metadata"]["name"] for account in accounts]
    if len(names) != 1:
        raise VerificationError(
            f"expected one ServiceAccount labelled {selector}, found {names or 'none'} (the chart renders "
            "it with auth.enabled): pass --service-account"
        )
    return names[0]


def access_problem(status: int, body: str, caller: str, audience: str, group: str) -> str | None:
    """What a 401 or 403 answer to the verifier's own token means, else None."""
    if status == 401:
        return f"refused the token of {caller} for audience {audience} (HTTP 401): {body[:300]}"
    if status == 403:
        return f"{caller} may not call it (HTTP 403): allow it in auth.allow.{group}"
    return None


def answer_problem(expected: str, status: int, body: str) -> str | None:
    """None when /predict answered 200 with the expected diagnosis, else what was wrong."""
    if status != 200:
        return f"/predict answered HTTP {status}: {body[:300]}"
    try:
        diagnosis = json.loads(body)["diagnosis"]
    except (ValueError, KeyError, TypeError):
        return f"/predict answered without a diagnosis: {body[:300]}"
    if diagnosis != expected:
        return f"/predict diagnosed a known {expected} row as {diagnosis!r}"
    return None


def expected_model_tag(deployment: Obj) -> str | None:
    """The release's model: the service container's MODEL_TAG (the chart's modelTag), if set."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for variable in container.get("env") or []:
        if variable.get("name") == "MODEL_TAG":
            return variable.get("value") or None  # valueFrom cannot be resolved here
    return None


def model_problem(expected: str | None, status: int, body: str) -> tuple[str | None, str | None]:
    """(problem or None, served tag) from GET /model's answer.

    A tag without a version, or with version `latest`, is resolved by the service to the newest
    version of that model, so only the name is compared then.
    """
    if status != 200:
        return f"/model answered HTTP {status}: {body[:300]}", None
    try:
        served = json.loads(body)["tag"]
    except (ValueError, KeyError, TypeError):
        return f"/model answered without a tag: {body[:300]}", None
    if not isinstance(served, str):
        return f"/model answered a tag that is not a string: {served!r}", None
    if expected is None:
        return None, served
    name, _, version = expected.partition(":")
    if version in ("", "latest"):
        matches = served.partition(":")[0] == name
    else:
        matches = served == expected
    if not matches:
        return f"serves model {served}, not the release's {expected} (MODEL_TAG)", served
    return None, served


def request(
    sock: Any,
    method: str,
    path: str,
    payload: Obj | None = None,
    timeout: float = 30,
    token: str | None = None,
) -> tuple[int, str]:
    """One HTTP request over an already-connected socket (a port-forward stream or a plain TCP
    socket), with `Authorization: Bearer <token>` when a token is given."""
    sock.settimeout(timeout)
    connection = http.client.HTTPConnection("localhost")  # the host only names the Host header
    connection.sock = sock
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        if payload is None:
            connection.request(method, path, headers=headers)
        else:
            headers["Content-Type"] = "application/json"
            connection.request(method, path, body=json.dumps(payload), headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


# --- Live path (runs only in the workflow) --------------------------------------------------------

# Lifetime asked of the verifier's tokens (the least the API server grants), and how long before
# its end a token is replaced.
TOKEN_SECONDS = 600
TOKEN_MARGIN_SECONDS = 60


class Cluster:
    """The release's objects, as JSON dicts, from the API server of the current kube context."""

    def __init__(self, namespace: str, selector: str, context: str | None = None):
        try:
            config.load_kube_config(context=context)
        except config.ConfigException:
            config.load_incluster_config()
        self.namespace, self.selector = namespace, selector
        self.api = client.ApiClient()
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.autoscaling = client.AutoscalingV2Api(self.api)
        self.policy = client.PolicyV1Api(self.api)
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    def _items(self, list_call, label_selector: str) -> list[dict]:
        found = list_call(self.namespace, label_selector=label_selector)
        return self.api.sanitize_for_serialization(found)["items"]

    def one(self, list_call, kind: str) -> dict:
        found = self.optional(list_call, kind)
        if found is None:
            raise VerificationError(
                f"expected one {kind} labelled {self.selector} in {self.namespace}, found none"
            )
        return found

    def optional(self, list_call, kind: str) -> dict | None:
        """The release's one object of this kind, or None when the chart's values rendered none."""
        items = self._items(list_call, self.selector)
        if len(items) > 1:
            names = [item["metadata"]["name"] for item in items]
            raise VerificationError(
                f"expected at most one {kind} labelled {self.selector} in {self.namespace}, found {names}"
            )
        return items[0] if items else None

    def deployment(self) -> dict:
        return self.one(self.apps.list_namespaced_deployment, "Deployment")

    def pods(self, deployment: Obj) -> list[dict]:
        selector = deployment["spec"]["selector"]
        match_labels = ",".join(f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items())
        pods = self._items(self.core.list_namespaced_pod, match_labels)
        return [pod for pod in pods if selector_matches(selector, pod["metadata"].get("labels") or {})]

    def client_account(self) -> str:
        """The chart's client ServiceAccount of the release (the one `helm test` runs as)."""
        selector = f"{self.selector},app.kubernetes.io/component=client"
        return client_account(self._items(self.core.list_namespaced_service_account, selector), selector)

    def token(self, account: str, audience: str) -> str:
        """A token of the namespace's ServiceAccount `account` bound to `audience`, from the
        TokenRequest API; reused until a minute before it expires."""
        token, expires = self._tokens.get((account, audience), ("", 0.0))
        if time.monotonic() < expires - TOKEN_MARGIN_SECONDS:
            return token
        spec = client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=TOKEN_SECONDS)
        answer = self.core.create_namespaced_service_account_token(
            account, self.namespace, client.AuthenticationV1TokenRequest(spec=spec)
        )
        lifetime = (answer.status.expiration_timestamp - datetime.now(UTC)).total_seconds()
        self._tokens[(account, audience)] = (answer.status.token, time.monotonic() + lifetime)
        return answer.status.token

    def request(
        self,
        pod: str,
        port: int,
        method: str,
        path: str,
        payload: Obj | None = None,
        token: str | None = None,
    ) -> tuple[int, str]:
        """One HTTP request to the pod's port, through the API server's port-forward."""
        connect = self.core.connect_get_namespaced_pod_portforward
        forward = portforward(connect, pod, self.namespace, ports=str(port))
        try:
            return request(forward.socket(port), method, path, payload, token=token)
        except OSError as exc:
            detail = forward.error(port) or ""
            raise VerificationError(f"port-forward to {pod}:{port} failed: {exc} {detail}") from exc
        finally:
            forward.close()

    def events(self, pod: str) -> list[dict]:
        found = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={pod}")
        return self.api.sanitize_for_serialization(found)["items"]

    def log(self, pod: Obj) -> str:
        """The tail of the service container's log; empty when the container never started."""
        name, container = pod["metadata"]["name"], pod["spec"]["containers"][0]["name"]
        try:
            return self.core.read_namespaced_pod_log(
                name, self.namespace, container=container, tail_lines=200
            )
        except client.ApiException:
            return ""

    def dump_diagnostics(self, prefix: str) -> None:
        """Events about the release's objects and the tail of every pod's logs, to stderr."""
        events = self.api.sanitize_for_serialization(self.core.list_namespaced_event(self.namespace))["items"]
        print(f"--- events in {self.namespace} for {prefix}*", file=sys.stderr)
        for event in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or ""):
            involved = event["involvedObject"]
            if involved.get("name", "").startswith(prefix):
                print(
                    f"{event.get('lastTimestamp') or event.get('eventTime')} {event.get('type')} "
                    f"{involved['kind']}/{involved['name']} {event.get('reason')}: {event.get('message')}",
                    file=sys.stderr,
                )
        for pod in self._items(self.core.list_namespaced_pod, self.selector):
            name = pod["metadata"]["name"]
            for container in pod["spec"]["containers"]:
                print(f"--- logs of {name}/{container['name']}", file=sys.stderr)
                try:
                    log = self.core.read_namespaced_pod_log(
                        name, self.namespace, container=container["name"], tail_lines=100
                    )
                except client.ApiException as exc:  # a pod that never started has no logs
                    log = f"(no logs: {exc})"
                print(log, file=sys.stderr)


def unready_pod_problems(cluster: Cluster, deployment: Obj, pods: list[dict] | None = None) -> list[str]:
    """pod_problems with the events and logs of the pods that are not Ready (listed here unless given)."""
    pods = cluster.pods(deployment) if pods is None else pods
    unready = [pod for pod in pods if not is_ready(pod)]
    events = [event for pod in unready for event in cluster.events(pod["metadata"]["name"])]
    logs = {pod["metadata"]["name"]: cluster.log(pod) for pod in unready}
    return pod_problems(pods, events, logs)


def verify(cluster: Cluster, timeout: float, poll: float = 2, service_account: str | None = None) -> str:
    """Run every check against the live release; returns the Deployment's name or raises."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        deployment = cluster.deployment()
        # Both are optional in the chart (autoscaling.enabled, podDisruptionBudget.enabled).
        hpa = cluster.optional(cluster.autoscaling.list_namespaced_horizontal_pod_autoscaler, "HPA")
        try:
            done, message = rollout_status(deployment, hpa)
        except VerificationError as exc:  # past its progress deadline: say what holds the pods back
            raise VerificationError(
                "; ".join([str(exc), *unready_pod_problems(cluster, deployment)])
            ) from None
        if message != last:
            print(f"verify: {message}", flush=True)
            last = message
        if done:
            break
        if time.monotonic() > deadline:
            reasons = unready_pod_problems(cluster, deployment)
            raise VerificationError(
                "; ".join([f"rollout did not finish within {timeout:.0f}s: {message}", *reasons])
            )
        time.sleep(poll)

    pdb = cluster.optional(cluster.policy.list_namespaced_pod_disruption_budget, "PDB")
    pods = [p for p in cluster.pods(deployment) if not p["metadata"].get("deletionTimestamp")]
    problems = (hpa_problems(hpa, deployment) if hpa else []) + (pdb_problems(pdb, deployment) if pdb else [])
    if pod_problems(pods):
        problems += unready_pod_problems(cluster, deployment, pods)
    if problems:
        raise VerificationError("; ".join(problems))
    targets = (
        " and ".join(kind for kind, obj in (("the HPA", hpa), ("the PDB", pdb)) if obj) or "no HPA or PDB"
    )
    print(f"verify: {targets} target {deployment['metadata']['name']}; {len(pods)} pods are Ready")

    port = http_port(deployment)
    expected_tag = expected_model_tag(deployment)
    audience = auth_audience(deployment)
    account = caller = None
    if audience:
        account = service_account or cluster.client_account()
        caller = f"{cluster.namespace}/{account}"
        print(f"verify: calling as ServiceAccount {caller} with tokens for audience {audience}", flush=True)

    def call(pod: str, method: str, path: str, group: str, payload: Obj | None = None) -> tuple[int, str]:
        token = cluster.token(account, audience) if audience else None
        status, body = cluster.request(pod, port, method, path, payload, token=token)
        problem = access_problem(status, body, caller, audience, group) if audience else None
        if problem:
            raise VerificationError(f"pod {pod}: {method} {path}: {problem}")
        return status, body

    for pod in (p["metadata"]["name"] for p in pods):
        if audience:
            status, body = cluster.request(pod, port, "POST", "/predict", EXAMPLES[0][1])
            if status != 401:
                raise VerificationError(
                    f"pod {pod}: POST /predict without a token answered HTTP {status}, not 401: {body[:300]}"
                )
            print(f"verify: pod {pod} refuses a call without a token (401)", flush=True)
        problem, served = model_problem(expected_tag, *call(pod, "GET", "/model", "modelData"))
        if problem:
            raise VerificationError(f"pod {pod}: {problem}")
        unchecked = "" if expected_tag else " (the Deployment sets no MODEL_TAG to compare it with)"
        print(f"verify: pod {pod} serves model {served}{unchecked}", flush=True)
        for expected, row in EXAMPLES:
            problem = answer_problem(expected, *call(pod, "POST", "/predict", "diagnosis", row))
            if problem:
                raise VerificationError(f"pod {pod}: {problem}")
        print(f"verify: pod {pod} diagnosed the known malignant and benign rows correctly", flush=True)
    return deployment["metadata"]["name"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m k8s.verify", description="Verify a Helm release of the classifier on a live cluster."
    )
    parser.add_argument("--release", required=True, help="Helm release name")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--selector", help="labels of the release's objects (default: its instance label)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the rollout")
    parser.add_argument("--context", help="kubeconfig context (default: the current one, else in-cluster)")
    parser.add_argument(
        "--service-account",
        help="ServiceAccount of the namespace to call as, when the service requires tokens "
        "(default: the chart's client account, which `helm test` runs as)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selector = args.selector or f"app.kubernetes.io/instance={args.release}"
    cluster = None
    try:
        cluster = Cluster(args.namespace, selector, args.context)
        name = verify(cluster, args.timeout, service_account=args.service_account)
    # Any failure, including API or connection errors, must end in diagnostics and a one-line reason.
    except Exception as exc:  # noqa: BLE001
        if cluster is not None:
            try:
                cluster.dump_diagnostics(args.release)
            except Exception as dump_error:  # noqa: BLE001 (the original failure matters more)
                print(f"verify: could not dump diagnostics: {dump_error}", file=sys.stderr)
        where = f"release {args.release} in {args.namespace}"
        print(f"verify: FAILED: {where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"verify: OK: release {args.release}, deployment {name} in {args.namespace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
