"""The hooks into library internals (bento/hooks.py) are checked when a worker starts: with one
undone, as an upgrade could undo it, the worker stays unready and its log names the hook."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from bento import hooks
from tests.conftest import own_server
from wdbc import MALIGNANT_EXAMPLE

UNHOOKED = "tests.bento.services.unhooked:BreastCancerClassifier"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("undo", "hook"), [("protocol", hooks.PROTOCOL), ("renamed", hooks.PROTOCOL), ("parse", hooks.PARSE)]
)
def test_a_hook_out_of_effect_leaves_the_worker_unready_and_named(
    model_store: Path, tmp_path_factory: pytest.TempPathFactory, undo: str, hook: str
) -> None:
    with own_server(model_store, tmp_path_factory, ready=False, service=UNHOOKED, UNDO=undo) as server:
        deadline = time.monotonic() + 30
        while not (named := [line for line in _lines(server) if line.get("hook") == hook]):
            assert httpx.get(f"{server.url}/readyz").status_code == 503
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.2)
        assert named[0]["level"] == "ERROR"
        assert httpx.get(f"{server.url}/readyz").status_code == 503
        # Unready, not broken: what the hook saved was speed or a safeguard, the answers stay right.
        response = httpx.post(f"{server.url}/predict_batch", json={"instances": [MALIGNANT_EXAMPLE]})
        assert response.status_code == 200 and response.json()["predictions"][0]["diagnosis"] == "malignant"


def test_with_every_hook_in_effect_the_worker_is_ready_and_says_nothing(server) -> None:
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert not [line for line in _lines(server) if "hook" in line]


def _lines(server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
