"""Fast start (issue 18): the server answers before the heavy part of a start is done.

The start-up gate (modules.api.startup) answers ping, health, a starting page and 503 + Retry-After
for the API until the real app is handed over; importing the entry point loads no torch or Gradio;
a real process answers ping while its services are held back by the test hook."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modules.api.startup import RETRY_AFTER_S, StartupGate, StartupState
from modules.core.settings import parse_settings

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers", "gradio")


def test_the_early_path_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "import webui, modules.app\n"
        "from modules.api.startup import StartupGate, StartupState\n"
        "from modules.core.settings import parse_settings\n"
        "StartupGate(parse_settings(['--api'], {}), StartupState())\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _real_app(events: list[str]) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/sdapi/v1/options")
    def options() -> dict[str, str]:
        return {"sd_model_checkpoint": "one"}

    @app.get("/")
    def page() -> dict[str, str]:
        return {"page": "real"}

    return app


@contextlib.contextmanager
def _serving(gate: StartupGate) -> Iterator[TestClient]:
    with TestClient(gate) as client:  # runs the gate's lifespan on the client's loop thread
        yield client


def test_the_gate_answers_early_then_hands_over_to_the_real_app() -> None:
    state = StartupState(hold_page=True)
    gate = StartupGate(parse_settings(["--api"], {}), state)
    events: list[str] = []
    with _serving(gate) as client:
        state.set_phase("importing libraries")
        assert client.get("/internal/ping").json() == {}
        health = client.get("/health").json()
        assert (health["status"], health["phase"]) == ("starting", "importing libraries")
        page = client.get("/")
        assert page.status_code == 200 and "importing libraries" in page.text and "http-equiv='refresh'" in page.text
        for method, path in (("GET", "/sdapi/v1/options"), ("POST", "/sdapi/v1/txt2img"), ("GET", "/assets/x.js")):
            r = client.request(method, path, json={} if method == "POST" else None)
            assert r.status_code == 503, path
            assert r.headers["Retry-After"] == str(RETRY_AFTER_S)
            assert set(r.json()) == {"error", "detail", "body", "errors"}
            assert "starting" in r.json()["detail"]

        assert gate.open(_real_app(events)) is True
        assert events == ["startup"]  # the real app's lifespan ran (Gradio's queue starts there)
        assert client.get("/sdapi/v1/options").json() == {"sd_model_checkpoint": "one"}
        state.set_phase("loading model one")
        assert "loading model one" in client.get("/").text  # the page waits for the first model
        state.release_page()
        assert client.get("/").json() == {"page": "real"}
    assert events == ["startup", "shutdown"]


def test_the_early_app_keeps_auth_and_ping_stays_public() -> None:
    gate = StartupGate(parse_settings(["--api", "--api-auth", "u:p"], {}), StartupState())
    with _serving(gate) as client:
        assert client.get("/internal/ping").status_code == 200
        assert client.get("/health").status_code == 401
        assert client.get("/sdapi/v1/options").status_code == 401
        assert client.get("/sdapi/v1/options", auth=("u", "p")).status_code == 503


def test_open_gives_up_when_the_server_stopped_first() -> None:
    gate = StartupGate(parse_settings([], {}), StartupState())
    with _serving(gate):
        pass
    events: list[str] = []
    assert gate.open(_real_app(events)) is False
    assert events == []


def test_extension_preload_flags_are_found_without_the_script_loader(tmp_path: Path) -> None:
    from modules.app import _has_extension_preloads

    settings = parse_settings(["--data-dir", str(tmp_path)], {})
    (tmp_path / "extensions" / "plain").mkdir(parents=True)
    assert _has_extension_preloads(settings, {}) is False  # all flags parsed before serving
    (tmp_path / "extensions" / "plain" / "preload.py").write_text("def preload(parser): pass\n", encoding="utf-8")
    assert _has_extension_preloads(settings, {}) is True  # parsed on the start-up thread
    disabled = parse_settings(["--data-dir", str(tmp_path), "--disable-all-extensions"], {})
    assert _has_extension_preloads(disabled, {}) is False


# --- a real process ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _poll(fn: Callable[[], httpx.Response | None], what: str, timeout: float = 180) -> httpx.Response:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            r = fn()
            if r is not None:
                return r
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_real_start_answers_before_the_services_exist(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    sd = tmp_path / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    shutil.copy(tiny_models["sd1"], sd / "one.safetensors")
    hold = tmp_path / "go"
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if k not in ("SDW_ROOT", "INVOCATION_ID", "COMMANDLINE_ARGS")}
    environ["SDW_TEST_HOLD_STARTUP"] = str(hold)
    log = tmp_path / "log.txt"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "webui.py", "--data-dir", str(tmp_path), "--port", str(port), "--api"],
            cwd=ROOT,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ping() -> httpx.Response | None:
            assert proc.poll() is None, log.read_text()
            r = httpx.get(url + "/internal/ping", timeout=2)
            return r if r.status_code == 200 else None

        _poll(ping, "ping")
        # held by the test hook: nothing is built yet, the API says so in A1111's shape
        r = httpx.get(url + "/sdapi/v1/options", timeout=5)
        assert r.status_code == 503 and "Retry-After" in r.headers
        assert httpx.get(url + "/health", timeout=5).json()["status"] == "starting"
        assert "sd-webui is starting" in httpx.get(url + "/", timeout=5).text
        text = log.read_text()
        assert "building the services" not in text and "listing checkpoints" not in text
        hold.touch()

        def options() -> httpx.Response | None:
            r = httpx.get(url + "/sdapi/v1/options", timeout=5)
            assert r.status_code in (200, 503), r.text  # never a 500 on the way
            return r if r.status_code == 200 else None

        assert "sd_model_checkpoint" in _poll(options, "/options").json()

        def loaded() -> httpx.Response | None:
            r = httpx.get(url + "/health", timeout=5)
            return r if r.json()["model"]["checkpoint"] else None

        assert "one" in _poll(loaded, "the model").json()["model"]["checkpoint"]
        assert "one" in httpx.get(url + "/sdapi/v1/options", timeout=5).json()["sd_model_checkpoint"]

        def ui() -> httpx.Response | None:
            r = httpx.get(url + "/", timeout=5)
            return r if "sd-webui is starting" not in r.text else None

        page = _poll(ui, "the UI page")
        assert page.status_code == 200 and "gradio" in page.text.lower()
        text = log.read_text()
        assert text.index("building the services") < text.index("the API and the UI are served")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
