"""The service's environment variables are documented once, in k8s/runtime-contract.yaml: the service
reads exactly those, and every one of them is read in bento/config.py."""

from __future__ import annotations

import re

from harness.paths import REPO_ROOT, runtime_contract

READ = re.compile(
    r"""os\.environ(?:\.get)?\s*[\[(]\s*["']([A-Z_][A-Z0-9_]*)["']|["']([A-Z_][A-Z0-9_]*)["']\s+in\s+os\.environ"""
)
# Read by `_number`/`os.environ.get` through a name: found by the call sites' first argument.
NUMBER = re.compile(r"""_number\(\s*["']([A-Z_][A-Z0-9_]*)["']""")


def variables_read(text: str) -> set[str]:
    return {a or b for a, b in READ.findall(text)} | set(NUMBER.findall(text))


def test_the_service_reads_exactly_the_contracts_variables() -> None:
    sources = {path.name: path.read_text() for path in (REPO_ROOT / "bento").glob("*.py")}
    read = set().union(*map(variables_read, sources.values()))
    assert read == set(runtime_contract()["env"]), f"undocumented: {read - set(runtime_contract()['env'])}"
    elsewhere = {name for name, text in sources.items() if name != "config.py" and variables_read(text)}
    assert not elsewhere, f"environment read outside bento/config.py: {elsewhere}"


def test_the_contract_states_each_default_the_service_uses() -> None:
    from bento import config

    contract = runtime_contract()["env"]
    for name in ("MAX_REQUEST_BYTES", "MAX_CONCURRENCY", "DRIFT_WINDOW_ROWS", "PREDICTION_SUMMARY_SECONDS"):
        assert f"(default {int(getattr(config, name))})" in contract[name], name
    for name in ("BODY_TIMEOUT_SECONDS", "DRIFT_EVALUATION_SECONDS", "DRIFT_ALPHA"):
        assert f"(default {getattr(config, name):g})" in contract[name], name
