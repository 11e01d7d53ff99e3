"""UI fixtures: the full app (API + Gradio UI) served by a real uvicorn over a tmp data dir with
the tiny sd1 and sd2 checkpoints (sd1 loaded), and a headless Debian Chromium.

Sharing (the browser tests are the slow part of the suite):
- one Chromium for the whole run (`browser`, session scope); every test gets a fresh browser
  context and page (`page`), so nothing on the browser side carries over;
- one default app (`ui_services` / `ui_server` over conftest's `ui_data_dir`) for every module
  that keeps that data dir. When such a module ends, what it changed is put back: options,
  the active checkpoint, the styles files, and files it added to the data dir (see `AppState`);
- a module that overrides `ui_data_dir` (its own config files or models) gets its own services
  and server for the module, and still shares the browser. A module that needs other flags builds
  its own server with `serve` (e.g. `--gradio-auth` in test_login_browser.py).

tests/conftest.py marks every test that uses `browser` or `page` as `browser` and runs those last,
so the browser's event loop (Playwright's sync API keeps one running on the main thread) is only
up after every other test has finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from modules.app import build_services, create_app
from modules.core.settings import parse_settings
from modules.services import Services

CHECKPOINTS = {"sd1": "sd1.safetensors", "sd2": "sd2.safetensors"}
DEFAULT_CHECKPOINT = "sd1.safetensors"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def make_ui_data_dir(tiny_models: dict[str, Path], root: Path) -> Path:
    """`root` as a data dir holding the tiny sd1 and sd2 checkpoints."""
    sd = root / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    for family, name in CHECKPOINTS.items():
        shutil.copy(tiny_models[family], sd / name)
    return root


def start_services(data_dir: Path, *flags: str) -> Services:
    """The app's services over `data_dir` (with `--api` and `flags`), sd1 loaded, hashes done."""
    settings = parse_settings(["--data-dir", str(data_dir), "--api", *flags], {})
    services = build_services(settings, data_dir, {})
    services.registry.refresh()
    if (services.paths.checkpoint_dir / DEFAULT_CHECKPOINT).is_file():
        services.engine.switch_model(checkpoint=DEFAULT_CHECKPOINT)
        services.models.wait_for_hashes(30)
    return services


@contextlib.contextmanager
def serve(app: FastAPI, name: str = "ui-test-uvicorn") -> Iterator[str]:
    """Base URL of a real uvicorn server running `app` in a thread (lifespan on: Gradio's queue)."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclasses.dataclass(frozen=True)
class AppState:
    """What a test module can change on the shared app, recorded so it can be put back."""

    checkpoint: str | None
    options: dict[str, object]
    styles: dict[Path, bytes | None]
    files: frozenset[Path]

    @classmethod
    def record(cls, services: Services) -> AppState:
        active = services.models.status().checkpoint
        return cls(
            checkpoint=active.name if active is not None else None,
            options=services.options.stored(),
            styles={path: path.read_bytes() if path.is_file() else None for path in services.styles.files},
            files=frozenset(services.paths.data_dir.rglob("*")),
        )

    def restore(self, services: Services) -> None:
        """Put `services` back in this state: checkpoint, options (and config.json), styles,
        and the data dir (files and folders added since are removed; the app's own state files
        are restored by content instead)."""
        active = services.models.status().checkpoint
        if self.checkpoint is not None and (active is None or active.name != self.checkpoint):
            services.engine.switch_model(checkpoint=self.checkpoint)
        self._restore_options(services)
        for path, content in self.styles.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        services.styles.reload()
        if self._remove_added_files(services):
            services.registry.refresh()

    def _restore_options(self, services: Services) -> None:
        options = services.options
        for key in sorted(set(options.stored()) | set(self.options)):
            # the checkpoint is put back by switching (which sets this option itself)
            if key == "sd_model_checkpoint" or key not in options or options.info(key).readonly:
                continue
            wanted = self.options[key] if key in self.options else options.info(key).default_value()
            if options.get(key) != wanted:
                options.set(key, wanted)
        options.save()

    def _remove_added_files(self, services: Services) -> bool:
        """Remove what was added to the data dir; True if that touched the models folder."""
        paths = services.paths
        own_files = {paths.config_file, paths.ui_config_file, paths.cache_file, paths.params_file}
        own_files.update(services.styles.files)
        added = set(paths.data_dir.rglob("*")) - self.files - own_files
        models_touched = False
        for path in sorted(added, key=lambda p: len(p.parts)):
            if path.parent in added or not os.path.lexists(path):
                continue  # inside an added folder: removed with it
            models_touched = models_touched or path.is_relative_to(paths.models_dir)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        return models_touched


# --- the default app, shared by the whole run -------------------------------------------------


@pytest.fixture(scope="session")
def shared_ui_data_dir(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ui_data_dir(tiny_models, tmp_path_factory.mktemp("ui-data"))


@pytest.fixture(scope="session")
def shared_ui_services(shared_ui_data_dir: Path) -> Iterator[Services]:
    services = start_services(shared_ui_data_dir)
    yield services
    services.worker.shutdown()


@pytest.fixture(scope="session")
def shared_ui_server(shared_ui_services: Services) -> Iterator[str]:
    with serve(create_app(shared_ui_services)) as url:
        yield url


# --- what tests ask for ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ui_data_dir(shared_ui_data_dir: Path) -> Path:
    """The module's data dir: the shared one, unless the module overrides this fixture."""
    return shared_ui_data_dir


@pytest.fixture(scope="module")
def ui_services(ui_data_dir: Path, shared_ui_data_dir: Path, request: pytest.FixtureRequest) -> Iterator[Services]:
    """The shared services (reset to how the module found them when it ends), or the module's
    own over its own `ui_data_dir`."""
    if ui_data_dir == shared_ui_data_dir:
        services: Services = request.getfixturevalue("shared_ui_services")
        state = AppState.record(services)
        yield services
        state.restore(services)
        return
    services = start_services(ui_data_dir)
    yield services
    services.worker.shutdown()


@pytest.fixture(scope="module")
def ui_server(ui_services: Services, shared_ui_data_dir: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """Base URL of a real uvicorn server running the full app over `ui_services`."""
    if ui_services.paths.data_dir == shared_ui_data_dir:
        yield request.getfixturevalue("shared_ui_server")
        return
    with serve(create_app(ui_services)) as url:
        yield url


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the run; make a context per test (`browser.new_context()`)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    # `expect(...)` waits 5 s by default; the browser tests run beside the others (test.sh), where a
    # tab switch or an event can take longer on a busy 2-core machine
    sync_api.expect.set_options(timeout=20_000)
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Any, ui_server: str) -> Iterator[Any]:
    """A fresh browser context with the app's main page loaded."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    try:
        pg = context.new_page()
        pg.goto(ui_server + "/")
        pg.locator("#txt2img_generate").wait_for(state="visible")
        yield pg
    finally:
        context.close()


def screenshot_dirs(tmp_path: Path) -> list[Path]:
    """Where screenshots go: the test's tmp dir, plus `$SD_WEBUI_SCREENSHOTS` when set."""
    dirs = [tmp_path]
    extra = os.environ.get("SD_WEBUI_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        dirs.append(Path(extra))
    return dirs
