"""Shared API fixtures: an app over a tmp data dir with tiny sd1, sd1-inpaint and sd2 checkpoints
(sd1 loaded), a TestClient, and a real uvicorn server on 127.0.0.1 in a thread.

Module scope: each test module gets its own services (options it changes stay in that module),
built once per module; the tiny models themselves are built once per session.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modules.app import build_services, create_app
from modules.core.settings import parse_settings
from modules.services import Services
from tests.fixtures.module_tmp import ModuleTempDirs

CHECKPOINTS = {"sd1": "sd1.safetensors", "sd1-inpaint": "sd1-inpaint.safetensors", "sd2": "sd2.safetensors"}
"""family -> file name; a test module may set its own `API_CHECKPOINTS` (same shape)."""


@pytest.fixture(scope="module")
def api_data_dir(request: pytest.FixtureRequest, tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Path:
    root = module_tmp.mktemp("api-data")
    sd = root / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    for family, name in getattr(request.module, "API_CHECKPOINTS", CHECKPOINTS).items():
        shutil.copy(tiny_models[family], sd / name)
    return root


@pytest.fixture(scope="module")
def api_services(api_data_dir: Path) -> Iterator[Services]:
    settings = parse_settings(["--data-dir", str(api_data_dir), "--api"], {})
    services = build_services(settings, api_data_dir, {})
    services.engine.switch_model(checkpoint="sd1.safetensors")
    yield services
    services.worker.shutdown()


@pytest.fixture(scope="module")
def api_app(api_services: Services) -> FastAPI:
    return create_app(api_services)


@pytest.fixture(scope="module")
def client(api_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(api_app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def live_server(api_app: FastAPI) -> Iterator[str]:
    """Base URL (`http://127.0.0.1:<port>`) of a real uvicorn server running the app."""
    import uvicorn

    config = uvicorn.Config(api_app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api-test-uvicorn", daemon=True)
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
