"""Stand-ins for kind, docker, kubectl, helm, make, curl and the venv's python, for a dry run of
scripts/e2e-kind.sh (tests/workflows/test_e2e_kind.py). Standard library only: every call of the
script starts this file anew.

    python e2e_fakes.py PROGRAM ARGS...

Each call is appended to $FAKE_STATE/calls.jsonl (program, arguments, namespace, and what it read
from stdin or from a file it applied). $FAKE_STATE/state.json holds what the fake cluster knows: the
namespaces, the release's revisions and the model each one serves. The fake service behind
`kubectl port-forward` (answered by the fake curl) checks tokens as the chart's defaults configure
the real one: none is 401, another namespace's account 403.

Knobs (environment), for the failure cases: FAKE_CONTEXT (the current kubectl context),
FAKE_WARN_AT (the n-th write to the namespace prints an admission warning), FAKE_WARNING (its text),
FAKE_FAIL (a program and subcommand that fails, e.g. "helm test"), FAKE_OPEN_SERVICE (the service
takes calls without a token), FAKE_SAME_MODEL (training saves no new model), FAKE_SERVED_MODEL (the
model k8s.verify reports, whatever was deployed).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_STATE"])
RELEASE = NAMESPACE = "breast-cancer-classifier"
CLUSTER = "breast-cancer-classifier"
MODEL_A, MODEL_B = "breast_cancer:aaaaaaaaaaaaaaaa", "breast_cancer:bbbbbbbbbbbbbbbb"
WRITES = {
    ("kubectl", "apply"),
    ("kubectl", "create"),
    ("helm", "upgrade"),
    ("helm", "test"),
    ("helm", "rollback"),
}


def load_state() -> dict:
    path = STATE / "state.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"namespaces": [], "revisions": [], "trained": False, "writes": 0}


def save_state(state: dict) -> None:
    """Atomically: a call running in the background (the port-forward) reads it meanwhile."""
    temporary = STATE / f"state.{os.getpid()}.json"
    temporary.write_text(json.dumps(state))
    temporary.replace(STATE / "state.json")


def option(args: list[str], *names: str) -> str | None:
    """The value of --name VALUE or --name=VALUE (or a short -n VALUE)."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    return None


def positional(args: list[str], takes_value: set[str]) -> list[str]:
    """The arguments that are neither options nor option values."""
    found, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in takes_value
        else:
            found.append(arg)
    return found


def set_values(args: list[str]) -> dict[str, str]:
    return dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "--set")


def deployed_model(state: dict) -> str:
    return state["revisions"][-1] if state["revisions"] else ""


def main(program: str, args: list[str]) -> int:
    state = load_state()
    record = {"program": program, "args": args}
    namespace = option(args, "--namespace", "-n")
    words = positional(args, {"--namespace", "-n", "-f", "-o", "--selector", "--set", "--timeout", "--name"})
    verb = (words or [""])[0]
    token_request = program == "kubectl" and words[1:2] == ["token"]
    # helm writes to the release's namespace; `kubectl apply -f -` creates the namespace itself.
    into_namespace = program == "helm" or namespace == NAMESPACE or option(args, "-f") == "-"
    if (program, verb) in WRITES and into_namespace and not token_request:
        state["writes"] += 1
        record["write"] = state["writes"]
    if program == "kubectl" and verb == "apply":
        source = option(args, "-f")
        record["applied"] = sys.stdin.read() if source == "-" else Path(source).read_text()
    record["namespace"] = namespace
    with (STATE / "calls.jsonl").open("a") as calls:
        calls.write(json.dumps(record) + "\n")

    if os.environ.get("FAKE_FAIL") == f"{program} {verb}":
        print(f"{program} {verb}: failed (FAKE_FAIL)", file=sys.stderr)
        return 1
    if record.get("write") and str(record["write"]) == os.environ.get("FAKE_WARN_AT"):
        print(
            os.environ.get("FAKE_WARNING", 'Warning: would violate PodSecurity "restricted:latest"'),
            file=sys.stderr,
        )
    code = {
        "kind": kind,
        "docker": lambda *_: 0,
        "make": make,
        "python": python,
        "helm": helm,
        "kubectl": kubectl,
    }.get(program, curl)(state, args, words, namespace)
    save_state(state)
    return code


def kind(state, args, words, namespace) -> int:
    if words[:2] == ["get", "clusters"]:
        print(CLUSTER)
    return 0


def make(state, args, words, namespace) -> int:
    if words[:1] == ["train"]:
        state["trained"] = True
    elif words == ["image"]:
        model = os.environ.get("MODEL_TAG") or MODEL_A
        tag = model.split(":")[1][:8]
        record = Path(os.environ.get("IMAGE_INFO_FILE") or ".bentoml/last-image.env")
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(
            f"IMAGE=breast-cancer-classifier:{tag}\nIMAGE_NAME=breast-cancer-classifier\n"
            f"IMAGE_REPOSITORY=breast-cancer-classifier\nIMAGE_TAG={tag}\nMODEL_TAG={model}\nVERSION=0.0.0\n"
        )
    return 0


def python(state, args, words, namespace) -> int:
    if args[:3] == ["-m", "training.image", "model-tag"]:
        print(MODEL_B if state["trained"] and not os.environ.get("FAKE_SAME_MODEL") else MODEL_A)
    elif args[:2] == ["-m", "k8s.verify"]:
        served = os.environ.get("FAKE_SERVED_MODEL") or deployed_model(state)
        print(f"verify: pod {RELEASE}-5d4f-0 serves model {served}\nverify: OK")
    return 0


def helm(state, args, words, namespace) -> int:
    verb = words[0]
    if verb == "upgrade":
        state["revisions"].append(set_values(args)["modelTag"])
    elif verb == "rollback":
        state["revisions"].append(state["revisions"][int(words[2]) - 1])
    elif verb == "status":
        print(json.dumps({"name": RELEASE, "version": len(state["revisions"])}))
    elif verb == "test":
        print(
            os.environ.get(
                "FAKE_TEST_OUTPUT", 'ok: POST /predict -> {"diagnosis": "malignant", "warnings": []}'
            )
        )
    elif verb == "history":
        print("REVISION\tSTATUS")
    return 0


def kubectl(state, args, words, namespace) -> int:
    verb, rest = words[0], words[1:]
    output = option(args, "-o") or ""
    if verb == "config":
        print(os.environ.get("FAKE_CONTEXT", f"kind-{CLUSTER}"))
    elif verb == "get" and rest[:1] == ["namespace"]:
        return 0 if rest[1] in state["namespaces"] else 1
    elif verb == "apply" and option(args, "-f") == "-":  # the namespace's manifest
        state["namespaces"].append(NAMESPACE)
    elif verb == "create" and rest[:1] == ["namespace"]:
        state["namespaces"].append(rest[1])
    elif verb == "create" and rest[:1] == ["token"]:
        print(f"token.{namespace}.{rest[1]}.{option(args, '--audience')}")
    elif verb == "delete" and rest[:1] == ["namespace"]:
        state["namespaces"] = [n for n in state["namespaces"] if n != rest[1]]
    elif verb == "port-forward":
        time.sleep(600)  # killed by the script
    elif verb == "get" and rest[:1] == ["deployment"] and "MODEL_TAG" in output:
        print(deployed_model(state), end="")
    elif verb == "get" and rest[:1] == ["deployment"] and "AUTH_AUDIENCE" in output:
        print(os.environ["FAKE_AUDIENCE"], end="")
    elif verb == "get" and rest[:1] == ["pods"]:
        print(f"pod/{RELEASE}-old-0\npod/{RELEASE}-old-1")
    elif verb == "get" and rest[:1] and rest[0].startswith("job/"):
        print(
            {"{.status.active}": "1", "{.status.failed}": ""}.get(output.removeprefix("jsonpath="), "1/"),
            end="",
        )
    elif verb == "logs" and rest[:1] == [f"job/{RELEASE}-load"]:
        models = {model: 100 for model in dict.fromkeys(state["revisions"])}
        print("load: running: 8 keep-alive connections")
        print(
            "summary: "
            + json.dumps(
                {"requests": 200, "requests_per_second": 100.0, "closed_by_server": 4, "models": models}
            )
        )
    elif verb == "set" and rest[:1] == ["image"]:
        _container, image = rest[1].split("=", 1)
        text = Path(option(args, "-f")).read_text()
        print(text.replace("image: breast-cancer-classifier\n", f"image: {image}\n"), end="")
    return 0


def curl(state, args, words, namespace) -> int:
    """curl against the fake service behind the port-forward."""
    url = next(arg for arg in reversed(args) if arg.startswith("http"))
    headers = {}
    for i, arg in enumerate(args):
        if arg == "-H":
            value = args[i + 1]
            lines = Path(value[1:]).read_text().splitlines() if value.startswith("@") else [value]
            headers |= {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in lines}
    status, extra, body = 200, "", ""
    if url.endswith("/predict"):
        token = headers.get("authorization", "").removeprefix("Bearer ")
        parts = token.split(".", 3)
        if os.environ.get("FAKE_OPEN_SERVICE"):
            body = '{"diagnosis": "malignant"}'
        elif len(parts) != 4 or parts[3] != os.environ["FAKE_AUDIENCE"]:
            status, extra, body = 401, "WWW-Authenticate: Bearer\r\n", '{"error": "unauthorized"}'
        elif parts[1] != NAMESPACE:
            status, body = 403, '{"error": "forbidden"}'
        else:
            body = '{"diagnosis": "malignant", "probability_malignant": 0.99}'
    if dump := option(args, "-D"):
        Path(dump).write_text(f"HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\n\r\n")
    if out := option(args, "-o"):
        Path(out).write_text(body)
    else:
        print(body, end="")
    if fmt := option(args, "-w"):
        print(fmt.replace("%{http_code}", str(status)), end="")
    fail = any(arg.startswith("-") and not arg.startswith("--") and "f" in arg for arg in args)
    return 22 if fail and status >= 400 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
