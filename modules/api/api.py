"""A1111's `modules.api.api` helpers for extension code (a facade, though it sits in the api
package: internal packages never import it): image <-> base64 as the API does it."""

from __future__ import annotations

from typing import Any

from PIL import Image

from modules.api.images import DecodeOptions, decode_image, encode_b64, encode_png_b64
from modules.extensions import runtime

__all__ = ["decode_base64_to_image", "encode_pil_to_base64"]


def decode_base64_to_image(encoding: str) -> Image.Image:
    """A base64 string (a `data:` URI too; an http(s) URL when `api_enable_requests` is on) ->
    image; a bad one raises the API's 422 error."""
    env = runtime.maybe_environment()
    if env is None:
        opts = DecodeOptions(max_pixels=200_000_000, allow_urls=False)
    else:
        opts = DecodeOptions.from_options(env.options)
    return decode_image(encoding, "image", opts)


def encode_pil_to_base64(image: Any) -> bytes:
    """The image in the `samples_format` as base64 bytes (A1111 returns bytes), its
    `parameters` text embedded; a string is returned as it is."""
    if isinstance(image, str):  # A1111 passes strings through
        return image  # type: ignore[return-value]
    env = runtime.maybe_environment()
    if env is None:
        return encode_png_b64(image).encode("ascii")
    info = image.info.get("parameters") if isinstance(image.info.get("parameters"), str) else None
    return encode_b64(image, env.options, infotext=info).encode("ascii")
