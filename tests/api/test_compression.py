"""Gzip on the whole app (modules/api/compression.py): the UI page and JSON answers of 1000 bytes
and more go gzipped to clients that ask for it, plain to the others; small answers, images and
event streams are never compressed."""

from __future__ import annotations

import gzip
import io
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import Response
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from PIL import Image

from modules.app import build_services, create_app
from modules.core.settings import parse_settings

GZIP = {"Accept-Encoding": "gzip"}
PLAIN = {"Accept-Encoding": "identity"}


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (10, 20, 30)).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def test_gzip_for_large_answers_only_and_never_for_images_or_event_streams(tmp_path: Path) -> None:
    services = build_services(parse_settings(["--api"], {}), tmp_path, {})
    app = create_app(services)
    png = _png()
    assert len(png) > 100_000  # uncompressed pixels: gzip would shrink it a lot, were it applied

    async def image() -> Response:
        return Response(png, media_type="image/png")

    async def events() -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"data: {'x' * 800} {i}\n\n".encode()

        return StreamingResponse(stream(), media_type="text/event-stream")

    app.add_api_route("/x-probe/image.png", image, methods=["GET"])
    app.add_api_route("/x-probe/events", events, methods=["GET"])
    client = TestClient(app)

    # the UI page: ~3 MB of HTML, several times smaller gzipped; the same page either way
    plain = client.get("/", headers=PLAIN)
    zipped = client.get("/", headers=GZIP)
    assert plain.status_code == zipped.status_code == 200
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["vary"]
    assert int(zipped.headers["content-length"]) * 5 < len(plain.content)
    assert zipped.content == plain.content  # httpx decodes it

    # JSON of 1000 bytes and more is gzipped, a smaller answer is not
    options = client.get("/sdapi/v1/options", headers=GZIP)
    assert len(options.content) >= 1000 and options.headers["content-encoding"] == "gzip"
    small = client.get("/internal/ping", headers=GZIP)
    assert small.json() == {} and "content-encoding" not in small.headers

    # images and event streams go as they are
    picture = client.get("/x-probe/image.png", headers=GZIP)
    assert "content-encoding" not in picture.headers and picture.content == png
    with client.stream("GET", "/x-probe/events", headers=GZIP) as stream:
        assert "content-encoding" not in stream.headers
        body = b"".join(stream.iter_raw())
    assert body.count(b"data: ") == 3 and not body.startswith(b"\x1f\x8b")

    # and what goes over the wire is real gzip
    with client.stream("GET", "/sdapi/v1/options", headers=GZIP) as stream:
        wire = b"".join(stream.iter_raw())
    assert gzip.decompress(wire) == options.content
