"""The service's environment variables are documented once, in k8s/runtime-contract.yaml: the service
reads exactly those, only in bento/config.py, with the defaults the contract states, and refuses a
value it cannot use with one JSON line naming it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from harness.paths import REPO_ROOT, runtime_contract

# Imports the service with os.environ replaced by a mapping that records which variables are read
# and from which file, then prints them: what the service reads, whatever the way it reads them.
RECORD = """
import json, os, sys
from collections.abc import MutableMapping

class Recording(MutableMapping):
    def __init__(self, data): self.data, self.reads = dict(data), []
    def _note(self, key):
        self.reads.append((key, sys._getframe(2).f_code.co_filename))
    def __getitem__(self, key): self._note(key); return self.data[key]
    def get(self, key, default=None): self._note(key); return self.data.get(key, default)
    def __contains__(self, key): self._note(key); return key in self.data
    def __setitem__(self, key, value): self.data[key] = value
    def __delitem__(self, key): del self.data[key]
    def __iter__(self): return iter(self.data)
    def __len__(self): return len(self.data)

os.environ = Recording(os.environ)
import bento.service
print(json.dumps(os.environ.reads))
"""


def _reads_of_the_service() -> list[tuple[str, str]]:
    done = subprocess.run(
        [sys.executable, "-c", RECORD], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return [tuple(read) for read in json.loads(done.stdout.strip().splitlines()[-1])]


def test_the_service_reads_exactly_the_contracts_variables_and_only_in_config() -> None:
    bento = str(REPO_ROOT / "bento")
    reads = [(name, path) for name, path in _reads_of_the_service() if path.startswith(bento)]
    assert {name for name, _ in reads} == set(runtime_contract()["env"])
    assert {path for _, path in reads} == {str(REPO_ROOT / "bento" / "config.py")}


def test_the_contract_states_each_default_the_service_uses() -> None:
    """Every number, flag and name the contract gives as a default is the service's default."""
    from bento import config

    compared = 0
    for name, text in runtime_contract()["env"].items():
        stated = re.search(r"\(default ([^ ;,)]+)", text)
        value = getattr(config, name, None)
        if stated is None or not isinstance(value, (int, float, str)):
            continue
        shown = f"{value:g}" if isinstance(value, float) else str(value).lower() or "unset"
        assert stated.group(1).lower() == shown, (name, stated.group(1), shown)
        compared += 1
    assert compared >= 15


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_CONCURRENCY", "many"), ("HEADER_TIMEOUT_SECONDS", "-1"), ("AUTH_ENABLED", "yes"),
     ("AUTH_ALLOW_DIAGNOSIS", "just-a-namespace")],
)  # fmt: skip
def test_a_setting_that_cannot_work_stops_the_service_with_one_line_naming_it(name: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import bento.config"],
        cwd=REPO_ROOT,
        env={**os.environ, name: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    (line,) = done.stdout.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "CRITICAL" and entry["setting"] == name and value in entry["message"]
