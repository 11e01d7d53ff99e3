"""Limits over the API (issue 19, item 3): every size a request asks for is checked against the
settings before any work, numbers that overflow or are not finite and text that is not Unicode
are 422s, the body, the number of images and their decoded pixels are capped."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.engine.worker import JobContext
from modules.services import Services

pytestmark = pytest.mark.usefixtures("no_network")

BASE = {"prompt": "a cat", "steps": 1, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1}


def png_b64(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def busy_worker(api_services: Services) -> Iterator[None]:
    """The worker is running a job that waits: a request answered now was answered before queueing."""
    release, started = threading.Event(), threading.Event()

    def hold(ctx: JobContext) -> None:
        started.set()
        release.wait(60)

    handle = api_services.engine.submit_call(hold, "hold")
    assert started.wait(30)
    yield
    release.set()
    handle.result(30)  # type: ignore[union-attr]


@pytest.fixture
def option(api_services: Services) -> Iterator[Any]:
    """Set options for one test; restored afterwards."""
    saved: dict[str, object] = {}

    def set_option(key: str, value: object) -> None:
        saved.setdefault(key, api_services.options.get(key))
        api_services.options.set(key, value)

    yield set_option
    for key, value in saved.items():
        api_services.options.set(key, value)


def _assert_a1111_error(r: Any, status: int, needle: str) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    body: dict[str, Any] = r.json()
    assert set(body) >= {"error", "detail", "body", "errors"}
    assert needle in json.dumps(body["detail"]) and needle in body["errors"], body
    return body


@pytest.mark.parametrize(
    "change",
    [
        {"enable_hr": True, "hr_scale": 1000},
        {"enable_hr": True, "hr_resize_x": 9000},
        {"enable_hr": True, "hr_resize_y": 9000},
        {"enable_hr": True, "hr_resize_x": 64, "hr_resize_y": 9000},
        {"enable_hr": True, "hr_scale": 40, "batch_size": 8},  # 2560 px per side, but x8 over the pixel cap
    ],
)
def test_hires_target_over_the_limits_is_422_before_queueing(
    client: TestClient, busy_worker: None, change: dict[str, object]
) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**BASE, **change})
    _assert_a1111_error(r, 422, "hires fix")


def test_hires_limit_follows_the_setting(client: TestClient, option: Any) -> None:
    option("max_image_side", 96)
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "enable_hr": True, "hr_scale": 2})
    assert r.status_code == 422 and "max_image_side" in r.json()["errors"]
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "width": 128})
    assert r.status_code == 422 and "width" in r.json()["errors"]
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "enable_hr": True, "hr_scale": 1.5})
    assert r.status_code == 200, r.text[:300]


def test_limit_settings_cannot_be_raised_through_the_api(client: TestClient) -> None:
    before = client.get("/sdapi/v1/options").json()
    client.post("/sdapi/v1/options", json={"max_image_side": 100_000, "max_prompt_length": 10**9})
    after = client.get("/sdapi/v1/options").json()
    assert after["max_image_side"] == before["max_image_side"] == 8192
    assert after["max_prompt_length"] == before["max_prompt_length"]


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 2**70},
        {"subseed": 2**70},
        {"seed": -(2**70)},
        {"seed": 2**63 - 1, "batch_size": 2},  # the second image's seed overflows
        {"seed_resize_from_w": 2**64},
    ],
)
def test_integers_that_overflow_int64_are_422(client: TestClient, change: dict[str, object]) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**BASE, **change})
    _assert_a1111_error(r, 422, next(iter(change)))


@pytest.mark.parametrize("field", ["cfg_scale", "subseed_strength", "denoising_strength", "s_noise", "eta", "hr_scale"])
@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN"])
def test_non_finite_floats_are_422(client: TestClient, field: str, literal: str) -> None:
    body = json.dumps({**BASE, "enable_hr": field == "hr_scale"})[:-1] + f', "{field}": {literal}}}'
    r = client.post("/sdapi/v1/txt2img", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text[:300]
    assert field in r.json()["errors"]


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "hr_prompt"])
def test_lone_surrogate_in_a_prompt_is_422(client: TestClient, field: str) -> None:
    body = json.dumps({**BASE, field: "a cat \ud800 on a mat"})  # json.dumps writes the escape \\ud800
    assert "\\ud800" in body
    r = client.post("/sdapi/v1/txt2img", content=body, headers={"content-type": "application/json"})
    _assert_a1111_error(r, 422, field)
    assert client.get("/sdapi/v1/progress").status_code == 200


def test_prompt_length_is_capped_by_a_setting(client: TestClient, option: Any) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "cat " * 6000})  # 24000 characters
    _assert_a1111_error(r, 422, "max_prompt_length")
    option("max_prompt_length", 100)
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "negative_prompt": "x" * 101})
    _assert_a1111_error(r, 422, "negative_prompt")
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "x" * 100})
    assert r.status_code == 200, r.text[:300]


def test_images_per_request_are_capped(client: TestClient, option: Any) -> None:
    option("api_max_images_per_request", 2)
    small = png_b64(64, 64)
    r = client.post("/sdapi/v1/img2img", json={**BASE, "init_images": [small] * 3})
    _assert_a1111_error(r, 422, "api_max_images_per_request")
    r = client.post("/sdapi/v1/extra-batch-images", json={"imageList": [{"data": small, "name": "x"}] * 3})
    _assert_a1111_error(r, 422, "api_max_images_per_request")
    r = client.post("/sdapi/v1/img2img", json={**BASE, "batch_size": 2, "init_images": [small] * 2})
    assert r.status_code == 200, r.text[:300]


def test_decoded_pixels_per_request_are_capped_from_the_headers(client: TestClient, option: Any) -> None:
    option("api_max_request_megapixels", 1.0)
    r = client.post("/sdapi/v1/img2img", json={**BASE, "init_images": [png_b64(800, 800)] * 2})  # 0.64 MP each
    body = _assert_a1111_error(r, 422, "api_max_request_megapixels")
    assert "init_images[1]" in body["errors"]
    r = client.post("/sdapi/v1/img2img", json={**BASE, "init_images": [png_b64(800, 800)]})
    assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize(
    "change",
    [
        {"upscaling_resize": 16},  # the schema's own maximum; 600 px x 16 = 9600 px
        {"resize_mode": 1, "upscaling_resize_w": 9000, "upscaling_resize_h": 64},
    ],
)
def test_extras_upscale_target_is_checked_before_queueing(
    client: TestClient, busy_worker: None, change: dict[str, object]
) -> None:
    body = {"image": png_b64(600, 600), "upscaler_1": "Lanczos", **change}
    r = client.post("/sdapi/v1/extra-single-image", json=body)
    _assert_a1111_error(r, 422, "max_image_side")


# -- request body size ---------------------------------------------------------------------------


def _call_asgi(app: Any, headers: list[tuple[bytes, bytes]], chunks: Iterator[bytes]) -> tuple[int, bytes, int]:
    """POST /sdapi/v1/txt2img straight into the ASGI app; (status, body, receive calls)."""
    import asyncio

    calls = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/sdapi/v1/txt2img",
        "raw_path": b"/sdapi/v1/txt2img",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 7860),
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, calls


def test_a_declared_oversized_body_is_413_before_any_of_it_is_read(api_app: Any, api_services: Services) -> None:
    limit = api_services.settings.max_body_mb * 1024 * 1024
    assert limit == 100 * 1024 * 1024  # the flag's default

    def endless() -> Iterator[bytes]:
        raise AssertionError("the body was read")
        yield b""

    status, body, calls = _call_asgi(api_app, [(b"content-length", str(limit + 1).encode())], endless())
    assert status == 413 and calls == 0
    error = json.loads(body)
    assert set(error) >= {"error", "detail", "body", "errors"} and "--max-body-mb" in error["detail"]


def test_a_streamed_oversized_body_is_413_once_it_passes_the_cap(api_app: Any, api_services: Services) -> None:
    limit = api_services.settings.max_body_mb * 1024 * 1024
    chunk = b" " * (1024 * 1024)

    def forever() -> Iterator[bytes]:
        while True:
            yield chunk

    status, body, calls = _call_asgi(api_app, [(b"transfer-encoding", b"chunked")], forever())
    assert status == 413, body[:300]
    assert calls == limit // len(chunk) + 1  # stopped at the first chunk past the cap
    assert "--max-body-mb" in json.loads(body)["errors"]


def test_live_server_answers_413_without_waiting_for_the_body(live_server: str) -> None:
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(live_server)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", "/sdapi/v1/txt2img")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(200 * 1024 * 1024))  # 200 MB announced, 1 KB sent
    conn.endheaders()
    conn.send(b"{" + b" " * 1023)
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"] == "HTTPException"
    conn.close()


def test_body_limit_is_the_flag(tmp_path: Any) -> None:
    from fastapi import FastAPI

    from modules.api.body_limit import install_body_limit
    from modules.core.settings import parse_settings

    assert parse_settings(["--max-body-mb", "2"], {}).max_body_mb == 2
    app = FastAPI()

    @app.post("/echo")
    async def echo(payload: dict[str, Any]) -> dict[str, Any]:
        return {"n": len(payload["x"])}

    install_body_limit(app, 2 * 1024 * 1024)
    with TestClient(app) as c:
        assert c.post("/echo", json={"x": "a" * 1024 * 1024}).json() == {"n": 1024 * 1024}
        r = c.post("/echo", json={"x": "a" * 3 * 1024 * 1024})
        assert r.status_code == 413 and "2 MB" in r.json()["detail"]


# -- queue ---------------------------------------------------------------------------------------


def test_a_full_queue_is_429_with_retry_after(client: TestClient, api_services: Services, busy_worker: None) -> None:
    worker = api_services.worker
    assert worker.max_queue == api_services.settings.queue_limit == 64  # the flag's default
    saved = worker.max_queue
    worker.max_queue = 0
    try:
        r = client.post("/sdapi/v1/txt2img", json=BASE)
    finally:
        worker.max_queue = saved
    body = _assert_a1111_error(r, 429, "queue is full")
    assert body["error"] == "QueueFullError"
    assert int(r.headers["Retry-After"]) >= 1


def test_queue_limit_flag() -> None:
    from modules.core.settings import parse_settings

    assert parse_settings(["--queue-limit", "3"], {}).queue_limit == 3


# -- out of memory -------------------------------------------------------------------------------


def test_out_of_memory_in_the_unet_is_507_and_the_next_request_works(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.forward
    calls = 0

    def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 24.00 GiB")

    monkeypatch.setattr(UNet2DConditionModel, "forward", failing)
    r = client.post("/sdapi/v1/txt2img", json=BASE)
    body = _assert_a1111_error(r, 507, "Out of memory")
    assert body["error"] == "OutOfMemoryError" and calls == 1
    monkeypatch.setattr(UNet2DConditionModel, "forward", original)
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    r = client.post("/sdapi/v1/txt2img", json=BASE)
    assert r.status_code == 200, r.text[:300]
