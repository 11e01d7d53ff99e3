"""Test-session setup: no model hub, an empty HF cache, tiny checkpoints built once; the
`browser` marker (every test that drives the browser) and those tests run last."""

from __future__ import annotations

import os
import socket
import tempfile
import tracemalloc  # noqa: F401  (see below)
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401  (see below)
import pytest

from tests.fixtures.module_tmp import ModuleTempDirs

# hypothesis is imported here, at collection, not lazily by its pytest plugin's end-of-session
# summary: in runs that never imported it (e.g. only tests/ui), that late import after the
# browser/server threads crashed CPython 3.11's compiler ("SystemError: AST constructor recursion
# depth mismatch") after every test had passed.

# tracemalloc likewise, at collection: pytest's unraisable-exception hook imports it the first time
# an object's finalizer warns during a garbage collection (Gradio leaves an unclosed event loop per
# `gr.Blocks()` built outside a running loop). A collection can run while the same thread is taking
# an import lock, and that nested first import broke CPython 3.11's import lock bookkeeping
# ("KeyError" in `_ModuleLock.acquire`, fixed in 3.12): about 1 in 4 runs of tests/ui's fast lane
# errored in the first test that built the page.

# Before anything imports huggingface_hub: the app must never need the hub, and an empty HF_HOME
# proves no cached config is quietly used.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="sdwebui-empty-hf-home-")


# fixtures of tests/ui/conftest.py that drive Chromium
BROWSER_FIXTURES = frozenset({"browser", "page"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use a browser fixture `browser` (first, so `-m` sees the marker;
    `-m "not browser"` is the fast lane) and move them, in their order, after all the others:
    the browser is shared by the whole run, and Playwright's sync API keeps an asyncio loop
    running on the main thread while it is up, so no other test may run after it starts."""
    browser_tests: list[pytest.Item] = []
    others: list[pytest.Item] = []
    for item in items:
        if BROWSER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.browser)
            browser_tests.append(item)
        else:
            others.append(item)
    items[:] = others + browser_tests


class NetworkAttempt(AssertionError):
    pass


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test on any outgoing connection except to this machine (servers under test)."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if self.family == socket.AF_UNIX or host in ("127.0.0.1", "::1", "localhost"):
            return real_connect(self, address)
        raise NetworkAttempt(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    assert not any(Path(os.environ["HF_HOME"]).iterdir())
    yield


@pytest.fixture(scope="module")
def module_tmp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleTempDirs]:
    """Folders for module fixtures, removed when the module is done (kept if one of its tests
    failed): see tests/fixtures/module_tmp.py."""
    dirs = ModuleTempDirs(tmp_path_factory)
    failed_before = request.session.testsfailed
    yield dirs
    if request.session.testsfailed == failed_before:
        dirs.remove()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny model family in real on-disk layouts (see tests/fixtures/ldm_checkpoints.py)."""
    from tests.fixtures.ldm_checkpoints import build_fixture_set

    return build_fixture_set(tmp_path_factory.mktemp("models"))
