"""The Swagger UI in a real browser: Playwright drives Debian's chromium (never a downloaded browser)
through the page a newcomer opens first, runs the shipped example and an invalid body, and, with
authentication on, gives the page a token."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from harness.paths import project_version
from harness.servers import Server
from tests.conftest import require_tool

# What the probe of these machines found necessary: no sandbox as root, no calls to Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.slow  # a real browser: not the inner loop's


@pytest.fixture(scope="module")
def browser() -> Iterator:
    chromium = require_tool("chromium", "apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, server: Server) -> Iterator:
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#operations-Service_APIs-breast_cancer_classifier__predict", timeout=60_000)
    return page


def test_the_page_is_this_projects(page) -> None:
    info = page.locator(".information-container").inner_text()
    assert "Breast-cancer diagnosis (WDBC)" in info and project_version() in info
    assert "Decision support and education only" in info
    assert page.locator(".info .version").first.inner_text().strip() == project_version()
    assert "BentoML Team" not in info and "Slack" not in info
    assert page.title() == "Breast-cancer diagnosis (WDBC): API"
    schemas = page.locator(".models").inner_text()
    assert (
        "ErrorResponse" in schemas and "IODescriptor" not in schemas and "TaskStatusResponse" not in schemas
    )


def _try_predict(page, body: str | None) -> tuple[str, str]:
    operation = page.locator("#operations-Service_APIs-breast_cancer_classifier__predict")
    if not operation.locator(".try-out__btn").is_visible():
        operation.locator(".opblock-summary").click()
    operation.locator(".try-out__btn").wait_for(timeout=30_000)
    if operation.locator(".try-out__btn", has_text="Try it out").is_visible():
        operation.locator(".try-out__btn", has_text="Try it out").click()
    editor = operation.locator("textarea.body-param__text")
    if body is not None:
        editor.fill(body)
    operation.locator(".execute").click()
    live = operation.locator(".live-responses-table .response").first
    live.wait_for(timeout=30_000)
    return live.locator(".response-col_status").inner_text(), live.locator(
        ".response-col_description"
    ).inner_text()


def test_try_it_out_with_the_shipped_example(page) -> None:
    operation = page.locator("#operations-Service_APIs-breast_cancer_classifier__predict")
    operation.locator(".opblock-summary").click()
    operation.locator(".try-out__btn").click()
    example = json.loads(operation.locator("textarea.body-param__text").input_value())
    assert list(example)[:3] == ["radius_mean", "texture_mean", "perimeter_mean"]  # model order
    status, body = _try_predict(page, None)
    assert status.strip().startswith("200")
    assert '"diagnosis": "malignant"' in body or '"diagnosis":"malignant"' in body


def test_an_invalid_body_shows_a_documented_422(page) -> None:
    status, body = _try_predict(page, json.dumps({"radius_mean": -1}))
    assert status.strip().startswith("422") and "Undocumented" not in status
    assert "radius_mean" in body and "texture_mean" in body  # the negative value and the missing fields


def test_the_page_has_no_framework_boilerplate(page) -> None:
    text = page.locator("#swagger-ui").inner_text()
    for boilerplate in (
        "BentoML Service API endpoints for inference",
        "Common infrastructure endpoints for observability",
        "Successful Response",
    ):
        assert boilerplate not in text, boilerplate
    assert "Diagnoses, confirmed outcomes, the served model and its drift" in text
    assert page.locator(".servers").count() == 0  # no "Servers: ." drop-down
    licence = page.locator(".info__license a, .info a", has_text="MIT").first
    assert licence.get_attribute("href", timeout=5000).startswith("https://opensource.org/")
    operation = page.locator("#operations-Service_APIs-breast_cancer_classifier__predict_batch")
    operation.locator(".opblock-summary").click()
    assert "one diagnosis per instance, in order" in operation.inner_text()


def test_with_authentication_the_page_asks_for_a_token_and_authorizes_with_it(
    browser, model_store, tmp_path_factory, tmp_path
) -> None:
    from tests.bento.issuer import running_issuer
    from tests.conftest import own_server

    with running_issuer() as issuer:
        settings = issuer.settings(str(tmp_path / "absent"), AUTH_ALLOW_DIAGNOSIS="apps/*")
        with own_server(model_store, tmp_path_factory, **settings) as server:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("#token-form:not([hidden])", timeout=30_000)
            page.fill("#token", "not-a-token")
            page.click("#token-form button")
            page.wait_for_selector("#token-error:has-text('not a JWT')", timeout=30_000)
            page.fill("#token", issuer.token("apps", "browser"))
            page.click("#token-form button")
            page.wait_for_selector(
                "#operations-Service_APIs-breast_cancer_classifier__predict", timeout=60_000
            )
            status, body = _try_predict(page, None)
    assert status.strip().startswith("200") and "malignant" in body
