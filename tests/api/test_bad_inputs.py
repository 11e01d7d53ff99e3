"""Bad inputs get clean 4xx answers and the server stays healthy (ecosystem-security R16-R19)."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

pytestmark = pytest.mark.usefixtures("no_network")

BASE = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encoded(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def huge_png_header() -> bytes:
    """A valid PNG signature + IHDR claiming 100000 x 100000 pixels, and no real data."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


GOOD = Image.new("RGB", (64, 64), (120, 80, 40))
BAD_IMAGES = {
    "garbage base64": "!!!not base64$$$",
    "not an image": b64(b"hello world, definitely not an image"),
    "truncated png": b64(encoded(GOOD, "PNG")[:40]),
    "100k x 100k header": b64(huge_png_header()),
}
ODD_BUT_VALID = {
    "data: prefix with jpeg": "data:image/jpeg;base64," + b64(encoded(GOOD, "JPEG")),
    "1x1 image": b64(encoded(Image.new("RGB", (1, 1), "white"), "PNG")),
    "cmyk jpeg": b64(encoded(Image.new("CMYK", (64, 64), (10, 20, 30, 40)), "JPEG")),
    "animated gif": b64(animated_gif()),
}


def _healthy(client: TestClient) -> None:
    assert client.get("/sdapi/v1/progress").status_code == 200


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_images_are_422_with_a_message(client: TestClient, name: str) -> None:
    r = client.post("/sdapi/v1/img2img", json={**BASE, "init_images": [BAD_IMAGES[name]]})
    assert r.status_code == 422, (name, r.status_code, r.text[:300])
    body = r.json()
    assert set(body) >= {"error", "detail", "body", "errors"} and "init_images" in json.dumps(body["detail"])
    _healthy(client)


@pytest.mark.parametrize("name", list(ODD_BUT_VALID))
def test_odd_but_valid_images_work(client: TestClient, name: str) -> None:
    r = client.post("/sdapi/v1/img2img", json={**BASE, "init_images": [ODD_BUT_VALID[name]], "denoising_strength": 0.5})
    assert r.status_code == 200, (name, r.text[:300])
    assert len(r.json()["images"]) == 1
    _healthy(client)


def test_width_513_gives_512_and_the_infotext_says_so(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "width": 69, "height": 64})
    assert r.status_code == 200
    info = json.loads(r.json()["info"])
    assert info["width"] == 64 and "Size: 64x64" in info["infotexts"][0]
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert image.size == (64, 64)


@pytest.mark.parametrize(
    "change",
    [{"width": 0}, {"width": -64}, {"width": 1_000_000_000}, {"steps": 0}, {"batch_size": 10_000}, {"steps": "many"}],
)
def test_absurd_numbers_are_422(client: TestClient, change: dict[str, object]) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**BASE, **change})
    assert r.status_code == 422, (change, r.text[:300])
    _healthy(client)


def test_unknown_sampler_is_404_sampler_not_found(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "sampler_name": "Nope"})
    assert r.status_code == 404 and "Sampler not found" in r.json()["detail"]
