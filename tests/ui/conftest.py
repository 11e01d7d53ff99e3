"""UI fixtures: the full app (API + Gradio UI) served by a real uvicorn over a tmp data dir with
the tiny sd1 and sd2 checkpoints (sd1 loaded), and a headless Debian Chromium page.

Module scope: the server and browser start once per test module.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modules.app import build_services, create_app
from modules.core.settings import parse_settings
from modules.services import Services

CHECKPOINTS = {"sd1": "sd1.safetensors", "sd2": "sd2.safetensors"}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def ui_data_dir(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ui-data")
    sd = root / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    for family, name in CHECKPOINTS.items():
        shutil.copy(tiny_models[family], sd / name)
    return root


@pytest.fixture(scope="module")
def ui_services(ui_data_dir: Path) -> Iterator[Services]:
    settings = parse_settings(["--data-dir", str(ui_data_dir), "--api"], {})
    services = build_services(settings, ui_data_dir, {})
    services.registry.refresh()
    services.engine.switch_model(checkpoint="sd1.safetensors")
    services.models.wait_for_hashes(30)
    yield services
    services.worker.shutdown()


@pytest.fixture(scope="module")
def ui_server(ui_services: Services) -> Iterator[str]:
    """Base URL of a real uvicorn server running the full app (lifespan on: Gradio's queue)."""
    import uvicorn

    app = create_app(ui_services)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="ui-test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Any, ui_server: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    pg.goto(ui_server + "/")
    pg.locator("#txt2img_generate").wait_for(state="visible")
    yield pg
    context.close()


def screenshot_dirs(tmp_path: Path) -> list[Path]:
    """Where screenshots go: the test's tmp dir, plus `$SD_WEBUI_SCREENSHOTS` when set."""
    dirs = [tmp_path]
    extra = os.environ.get("SD_WEBUI_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        dirs.append(Path(extra))
    return dirs
