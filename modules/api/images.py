"""Images in and out of the API.

In: raw base64 or a `data:image/...;base64,` URI; an `http(s)://` URL only when the option
`api_enable_requests` is on, and then only to global addresses (loopback, private, link-local,
reserved, multicast and unspecified addresses are refused, for the first hop and every redirect;
the connection goes to the address that was checked, so DNS cannot change it in between).
Every failure is a 422 naming the field. Decoding checks the size from the header before
pixels are read (`img_max_size_mp`), verifies the file, then reads it.

Out: raw base64 (never a `data:` prefix) of the file bytes from `encode_image`.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import threading
import warnings
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import httpx
from PIL import Image

from modules.core import addresses
from modules.core.errors import ValidationError
from modules.core.options import Options
from modules.engine.image_metadata import encode_image

DATA_URI = re.compile(r"^data:[\w.+/-]*(;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)
MAX_REDIRECTS = 3
URL_TIMEOUT_S = 30.0
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
KEEP_MODES = ("RGB", "RGBA", "L")

IPAddress = addresses.IPAddress
Resolver = addresses.Resolver


class RequestTally:
    """Images decoded so far for one request and their pixels (one `DecodeOptions` per request)."""

    def __init__(self) -> None:
        self.images = 0
        self.pixels = 0
        self._lock = threading.Lock()

    def add_image(self, field: str, limit: int) -> None:
        with self._lock:
            if self.images >= limit:
                raise ValidationError(
                    f"{field}: more than {limit} images in one request (setting api_max_images_per_request)"
                )
            self.images += 1

    def add_pixels(self, field: str, pixels: int, limit: int) -> None:
        with self._lock:
            if self.pixels + pixels > limit:
                raise ValidationError(
                    f"{field}: the request's images hold more than {limit / 1e6:g} MP together "
                    "(setting api_max_request_megapixels)"
                )
            self.pixels += pixels


@dataclass(frozen=True)
class DecodeOptions:
    """What decoding may do, read from the options once per request; `tally` counts the images
    and pixels this request has decoded so far against `max_images` and `max_total_pixels`."""

    max_pixels: int
    allow_urls: bool
    user_agent: str = ""
    max_images: int = 64
    max_total_pixels: int = 400_000_000
    tally: RequestTally = dataclass_field(default_factory=RequestTally, compare=False, repr=False)

    @classmethod
    def from_options(cls, options: Options) -> DecodeOptions:
        def get(key: str, default: Any) -> Any:
            return options.get(key) if key in options else default

        megapixels = float(get("img_max_size_mp", 200.0) or 200.0)
        return cls(
            max_pixels=int(megapixels * 1_000_000),
            allow_urls=bool(get("api_enable_requests", False)),
            user_agent=str(get("api_useragent", "") or ""),
            max_images=int(get("api_max_images_per_request", 64)),
            max_total_pixels=int(float(get("api_max_request_megapixels", 400.0)) * 1_000_000),
        )


# -- addresses -------------------------------------------------------------------------------


def address_allowed(ip: IPAddress) -> bool:
    """Only global unicast addresses may be fetched (modules.core.addresses)."""
    return addresses.address_allowed(ip)


def _checked_address(field: str, host: str, port: int, resolver: Resolver) -> str:
    """The address to connect to; every address the name resolves to must be allowed."""
    return addresses.checked_address(host, port, resolver, prefix=f"{field}: ", allowed=address_allowed)


def fetch_url(
    url: str,
    field: str,
    *,
    user_agent: str = "",
    timeout: float = URL_TIMEOUT_S,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    resolver: Resolver | None = None,
) -> bytes:
    """GET an http(s) URL to a global address; redirects followed by hand (each hop checked)."""
    resolve = resolver or addresses.system_resolver
    headers = {"User-Agent": user_agent} if user_agent else {}
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                parsed = httpx.URL(url)
            except (httpx.InvalidURL, TypeError) as exc:
                raise ValidationError(f"{field}: invalid URL: {exc}") from None
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ValidationError(f"{field}: only http:// and https:// URLs are allowed")
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            address = _checked_address(field, parsed.host, port, resolve)
            pinned = parsed.copy_with(host=address)
            request_headers = {**headers, "Host": parsed.netloc.decode("ascii")}
            try:
                with client.stream(
                    "GET", pinned, headers=request_headers, extensions={"sni_hostname": parsed.host}
                ) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        url = str(parsed.join(location))
                        continue
                    if response.status_code != 200:
                        raise ValidationError(f"{field}: fetching the URL failed with HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                        raise ValidationError(f"{field}: the URL's content is larger than {max_bytes} bytes")
                    chunks: list[bytes] = []
                    total = 0
                    for chunk in response.iter_bytes():
                        total += len(chunk)
                        if total > max_bytes:
                            raise ValidationError(f"{field}: the URL's content is larger than {max_bytes} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.HTTPError as exc:
                raise ValidationError(f"{field}: fetching the URL failed: {exc}") from None
    raise ValidationError(f"{field}: too many redirects (more than {MAX_REDIRECTS})")


# -- decoding --------------------------------------------------------------------------------


def decode_base64(value: str, field: str) -> bytes:
    text = DATA_URI.sub("", value.strip(), count=1)
    text = "".join(text.split())
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:  # URL-safe alphabet
            return base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError):
            raise ValidationError(f"{field}: invalid base64 image data") from None


def open_image(
    data: bytes, field: str, max_pixels: int, *, convert: bool = True, budget: DecodeOptions | None = None
) -> Image.Image:
    """Open, size-check (from the header, before any pixel is decoded: against `max_pixels`, and
    against what is left of the request's `budget`), verify and load an image from bytes."""
    if not data:
        raise ValidationError(f"{field}: empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            width, height = probe.size
            if width * height > max_pixels:
                raise ValidationError(
                    f"{field}: image is {width}x{height} ({width * height / 1e6:.1f} MP), "
                    f"larger than the limit of {max_pixels / 1e6:g} MP"
                )
            if width < 1 or height < 1:
                raise ValidationError(f"{field}: image has no pixels")
            if budget is not None:
                budget.tally.add_pixels(field, width * height, budget.max_total_pixels)
            probe.verify()
            image: Image.Image = Image.open(io.BytesIO(data))
            image.load()
    except ValidationError:
        raise
    except Image.DecompressionBombError:
        raise ValidationError(f"{field}: image is too large") from None
    except Exception as exc:  # PIL raises many types for broken files
        raise ValidationError(f"{field}: not a readable image ({type(exc).__name__}: {exc})") from None
    if convert and image.mode not in KEEP_MODES:
        info = dict(image.info)
        has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        image.info.update(info)
    return image


def decode_image(value: Any, field: str, opts: DecodeOptions, *, convert: bool = True) -> Image.Image:
    """One image field of a request (base64, data URI, or URL when allowed) -> PIL image."""
    if not isinstance(value, str):
        raise ValidationError(f"{field}: expected a base64 string")
    text = value.strip()
    if not text:
        raise ValidationError(f"{field}: empty image")
    opts.tally.add_image(field, opts.max_images)
    lower = text[:16].lower()
    if lower.startswith(("http://", "https://")):
        if not opts.allow_urls:
            raise ValidationError(f"{field}: image URLs are not enabled (option api_enable_requests)")
        data = fetch_url(text, field, user_agent=opts.user_agent)
    elif re.match(r"^[a-z][a-z0-9+.-]*://", lower):
        raise ValidationError(f"{field}: only base64 data or http(s) URLs are accepted")
    else:
        data = decode_base64(text, field)
    return open_image(data, field, opts.max_pixels, convert=convert, budget=opts)


# -- encoding --------------------------------------------------------------------------------


def encode_b64(image: Image.Image, options: Options, *, infotext: str | None) -> str:
    """Raw base64 (no `data:` prefix) of `image` in `samples_format`, infotext embedded if enabled."""

    def get(key: str, default: Any) -> Any:
        return options.get(key) if key in options else default

    extension = str(get("samples_format", "png") or "png")
    if not get("enable_pnginfo", True):
        infotext = None
    try:
        data = encode_image(
            image,
            extension,
            infotext=infotext,
            jpeg_quality=int(get("jpeg_quality", 80)),
            webp_lossless=bool(get("webp_lossless", False)),
        )
    except ValueError:
        data = encode_image(image, "png", infotext=infotext)
    return base64.b64encode(data).decode("ascii")


def encode_png_b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")
