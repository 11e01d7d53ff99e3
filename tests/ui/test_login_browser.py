"""`--gradio-auth user:pass` in a real browser: without credentials the page is a 401 (the
browser's auth prompt); with them the UI loads and the txt2img prompt box is there."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from modules.app import create_app
from tests.fixtures.module_tmp import ModuleTempDirs
from tests.ui.conftest import serve, start_services


@pytest.fixture(scope="module")
def auth_server(module_tmp: ModuleTempDirs) -> Iterator[str]:
    """A server of its own (other flags; no models), in the shared browser."""
    services = start_services(module_tmp.mktemp("auth-data"), "--gradio-auth", "user:pass")
    try:
        with serve(create_app(services), "auth-test-uvicorn") as url:
            yield url
    finally:
        services.worker.shutdown()


def main_page_status(browser: Any, url: str, **context_args: Any) -> tuple[int, str]:
    """(status, WWW-Authenticate) of the main page's response. Headless Chromium answers a 401
    it cannot satisfy with `net::ERR_INVALID_AUTH_CREDENTIALS` (the auth prompt it would show),
    so the response is taken from the network events, not from `goto`'s result."""
    sync_api = pytest.importorskip("playwright.sync_api")
    context = browser.new_context(viewport={"width": 1280, "height": 800}, **context_args)
    try:
        page = context.new_page()
        seen: list[Any] = []
        page.on("response", lambda r: seen.append(r) if r.url.rstrip("/") == url.rstrip("/") else None)
        try:
            response = page.goto(url)
        except sync_api.Error as exc:
            assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
            response = None
        if response is None:
            assert seen, "no response for the main page"
            response = seen[-1]
        return response.status, response.headers.get("www-authenticate") or ""
    finally:
        context.close()


def test_no_credentials_gets_401(browser: Any, auth_server: str) -> None:
    status, challenge = main_page_status(browser, auth_server + "/")
    assert status == 401
    assert challenge.startswith("Basic")


def test_wrong_password_gets_401(browser: Any, auth_server: str) -> None:
    status, _ = main_page_status(browser, auth_server + "/", http_credentials={"username": "user", "password": "nope"})
    assert status == 401


def test_with_credentials_the_ui_loads(browser: Any, auth_server: str) -> None:
    context = browser.new_context(
        viewport={"width": 1280, "height": 800}, http_credentials={"username": "user", "password": "pass"}
    )
    context.set_default_timeout(30_000)
    try:
        page = context.new_page()
        response = page.goto(auth_server + "/")
        assert response is not None
        assert response.status == 200
        page.locator("#txt2img_prompt textarea").wait_for(state="visible")
        page.locator("#txt2img_generate").wait_for(state="visible")
    finally:
        context.close()
