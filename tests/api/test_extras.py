"""POST /sdapi/v1/extra-single-image and /extra-batch-images (a1111.md 1.6), and the pure
`run_extras` behind them (order, infotext, scale-to with crop, second upscaler)."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401  (see below)
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from modules.core.errors import NotFoundError
from modules.engine.extras import run_extras
from modules.services import Services
from tests.fixtures.face_models import synthetic_face, write_gfpgan
from tests.fixtures.upscaler_models import write_esrgan_old

# `import hypothesis` above: run alone, this module otherwise ends with CPython 3.11.7's
# "AST constructor recursion depth mismatch" (a CPython bug, fixed in 3.11.8) when the hypothesis
# pytest plugin imports hypothesis at session end (tests/api/test_resources.py alone shows the
# same); importing it up front avoids the late import.

SINGLE = "/sdapi/v1/extra-single-image"
BATCH = "/sdapi/v1/extra-batch-images"


def b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


# -- run_extras ------------------------------------------------------------------------------


def test_run_extras_defaults_do_nothing() -> None:
    image = noise(40, 24)
    result = run_extras(image)
    assert result.image.size == (40, 24) and result.info == {} and result.infotext == ""


def test_run_extras_order_and_infotext() -> None:
    calls: list[tuple[str, tuple[int, int], float, float]] = []

    def restore(image: Image.Image, name: str, visibility: float, weight: float) -> Image.Image:
        calls.append((name, image.size, visibility, weight))
        return image

    result = run_extras(
        noise(32, 16),
        upscaler_1="Lanczos",
        upscaling_resize=2,
        gfpgan_visibility=0.5,
        codeformer_visibility=1.0,
        codeformer_weight=0.25,
        restore_faces=restore,
    )
    assert [c[0] for c in calls] == ["GFPGAN", "CodeFormer"]
    assert calls[0][1] == (64, 32)  # faces restored after the upscale
    assert calls[1][2:] == (1.0, 0.25)
    assert result.infotext == (
        "Postprocess upscale by: 2, Postprocess upscaler: Lanczos, GFPGAN visibility: 0.5, "
        "CodeFormer visibility: 1, CodeFormer weight: 0.25"
    )
    assert result.html_info.startswith("<p>") and result.html_info.endswith("</p>")
    reordered: list[str] = []
    run_extras(
        noise(32, 16),
        upscaler_1="Lanczos",
        gfpgan_visibility=1,
        restore_faces=lambda im, name, v, w: reordered.append(f"{name}{im.size}") or im,
        operation_order=["GFPGAN", "Upscale"],
    )
    assert reordered == ["GFPGAN(32, 16)"]


def test_run_extras_second_upscaler_and_named_upscalers() -> None:
    seen: list[tuple[str, float]] = []

    def upscale(image: Image.Image, name: str, scale: float) -> Image.Image:
        seen.append((name, scale))
        return Image.new("RGB", (int(image.width * scale), int(image.height * scale)), (255, 255, 255))

    black = Image.new("RGB", (16, 16))
    result = run_extras(
        black, upscaler_1="Nearest", upscaler_2="My-ESRGAN", extras_upscaler_2_visibility=0.5, upscale=upscale
    )
    assert seen == [("My-ESRGAN", 2.0)]
    assert result.image.size == (32, 32) and abs(result.image.getpixel((5, 5))[0] - 128) <= 1
    assert result.info["Postprocess upscaler 2"] == "My-ESRGAN"
    with pytest.raises(NotFoundError):
        run_extras(black, upscaler_1="Unknown")


def test_run_extras_scale_to() -> None:
    image = noise(64, 48)
    cropped = run_extras(image, resize_mode=1, upscaler_1="Lanczos", upscaling_resize_w=96, upscaling_resize_h=96)
    assert cropped.image.size == (96, 96)
    assert cropped.info["Postprocess upscale to"] == "96x96" and cropped.info["Postprocess crop to"] == "96x96"
    kept = run_extras(
        image,
        resize_mode=1,
        upscaler_1="Lanczos",
        upscaling_resize_w=96,
        upscaling_resize_h=96,
        upscaling_crop=False,
    )
    assert kept.image.size == (128, 96)  # scaled by max(96/64, 96/48) = 2, aspect kept
    assert "Postprocess crop to" not in kept.info


# -- the routes ------------------------------------------------------------------------------


def test_single_image_lanczos_x2(client: TestClient) -> None:
    response = client.post(SINGLE, json={"image": b64(noise(64, 48)), "upscaler_1": "Lanczos", "upscaling_resize": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert decode(body["image"]).size == (128, 96)
    assert "Postprocess upscale by: 2" in body["html_info"]
    assert "Postprocess upscaler: Lanczos" in body["html_info"]


def test_single_image_data_uri_and_defaults(client: TestClient) -> None:
    image = noise(40, 24, seed=1)
    response = client.post(SINGLE, json={"image": "data:image/png;base64," + b64(image)})
    assert response.status_code == 200, response.text
    out = decode(response.json()["image"]).convert("RGB")
    assert np.array_equal(np.asarray(out), np.asarray(image))  # upscaler_1 "None": unchanged


def test_single_image_scale_to_with_crop(client: TestClient) -> None:
    payload = {
        "image": b64(noise(64, 48)),
        "resize_mode": 1,
        "upscaling_resize_w": 100,
        "upscaling_resize_h": 72,
        "upscaling_crop": True,
        "upscaler_1": "Lanczos",
    }
    response = client.post(SINGLE, json=payload)
    assert response.status_code == 200, response.text
    assert decode(response.json()["image"]).size == (100, 72)
    assert "Postprocess upscale to: 100x72" in response.json()["html_info"]


def test_batch_images(client: TestClient) -> None:
    payload = {
        "imageList": [{"data": b64(noise(32, 32)), "name": "a.png"}, {"data": b64(noise(16, 24, 2)), "name": "b.png"}],
        "upscaler_1": "Nearest",
        "upscaling_resize": 2,
    }
    response = client.post(BATCH, json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [decode(i).size for i in body["images"]] == [(64, 64), (32, 48)]
    assert "Postprocess upscaler: Nearest" in body["html_info"]
    assert client.post(BATCH, json={"imageList": []}).json() == {"html_info": "", "images": []}


@pytest.mark.parametrize(
    ("url", "payload"),
    [
        (SINGLE, {"image": "not an image"}),
        (SINGLE, {"image": base64.b64encode(b"garbage bytes").decode()}),
        (SINGLE, {"image": b64(noise(8, 8)), "resize_mode": 3}),
        (SINGLE, {"image": b64(noise(8, 8)), "upscaling_resize": 0}),
        (SINGLE, {"image": b64(noise(8, 8)), "gfpgan_visibility": 2}),
        (BATCH, {"imageList": [{"data": "%%%", "name": "x"}]}),
    ],
)
def test_bad_input_422(client: TestClient, url: str, payload: dict[str, Any]) -> None:
    response = client.post(url, json=payload)
    assert response.status_code == 422, response.text


def test_model_upscaler_from_models_esrgan(client: TestClient, api_app: FastAPI, api_services: Services) -> None:
    """A tiny random ESRGAN (x4) in models/ESRGAN, asked for x2: the upscaler registry finds and
    runs it, the result is the asked size."""
    write_esrgan_old(api_services.paths.esrgan_dir / "tiny-esrgan.pth")  # dropped in after start-up
    payload = {"image": b64(noise(32, 24)), "upscaler_1": "tiny-esrgan", "upscaling_resize": 2}
    response = client.post(SINGLE, json=payload)
    assert response.status_code == 200, response.text
    assert decode(response.json()["image"]).size == (64, 48)
    assert "Postprocess upscaler: tiny-esrgan" in response.json()["html_info"]


def test_unknown_upscaler_404(client: TestClient) -> None:
    response = client.post(SINGLE, json={"image": b64(noise(8, 8)), "upscaler_1": "No-Such-Upscaler"})
    assert response.status_code == 404, response.text
    assert "No-Such-Upscaler" in response.text
    # also with nothing to upscale: the name is checked before anything is queued
    response = client.post(BATCH, json={"imageList": [], "upscaler_1": "No-Such-Upscaler"})
    assert response.status_code == 404 and "No-Such-Upscaler" in response.json()["detail"], response.text
    second = {"upscaler_2": "No-Such-Second", "extras_upscaler_2_visibility": 0.5}
    response = client.post(SINGLE, json={"image": b64(noise(8, 8)), **second})
    assert response.status_code == 404 and "No-Such-Second" in response.json()["detail"], response.text
    unused = {"upscaler_2": "No-Such-Second", "extras_upscaler_2_visibility": 0}  # not used: not looked up
    assert client.post(SINGLE, json={"image": b64(noise(8, 8)), **unused}).status_code == 200


def test_face_restoration_without_weights_is_a_clear_404(client: TestClient) -> None:
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        response = client.post(SINGLE, json={"image": b64(noise(32, 32)), field: 1})
        assert response.status_code == 404, response.text
        assert "no model file" in response.text and "nothing is downloaded" in response.text


def test_face_restoration_with_gfpgan_weights(client: TestClient, api_services: Services) -> None:
    """Random full-size GFPGAN weights in models/GFPGAN; the Haar detector finds the drawn face;
    GFPGAN runs on CPU (a few seconds)."""
    folder: Path = api_services.paths.gfpgan_dir
    write_gfpgan(folder / "GFPGANv1.4.pth")
    try:
        image = synthetic_face(160, canvas=384)
        response = client.post(SINGLE, json={"image": b64(image), "gfpgan_visibility": 1})
        assert response.status_code == 200, response.text
        body = response.json()
        assert "GFPGAN visibility: 1" in body["html_info"]
        out = np.asarray(decode(body["image"]).convert("RGB"))
        before = np.asarray(image)
        assert out.shape == before.shape
        assert not np.array_equal(out[150:230, 150:230], before[150:230, 150:230])  # the face changed
        assert np.array_equal(out[:30, :30], before[:30, :30])  # far corners untouched
    finally:
        shutil.rmtree(folder, ignore_errors=True)
