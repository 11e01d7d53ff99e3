"""Image files and their metadata: encoding with the infotext embedded, and reading it back.

* PNG: the infotext in the `parameters` text chunk (iTXt when not Latin-1); other text keys of
  the source image can be carried over.
* JPEG, WebP and AVIF (when Pillow has it): the infotext in EXIF UserComment, written the way
  piexif's `UserComment.dump(text, encoding="unicode")` does (`UNICODE\\0` + UTF-16-BE).
* `read_image_info` / `read_infotext_from_image` read either back (PNG Info, `/png-info`), plus a
  GIF `comment` and NovelAI's PNG fields (a1111.md 8).

No gradio/fastapi here; PIL is the only heavy import.
"""

from __future__ import annotations

import io
import json
import logging
import struct
from collections.abc import Mapping
from typing import cast

from PIL import Image, PngImagePlugin, features

from modules.core.infotext import build_infotext

__all__ = [
    "IGNORED_INFO_KEYS",
    "PNGINFO_SECTION",
    "decode_user_comment",
    "encode_image",
    "exif_with_user_comment",
    "pil_format_for",
    "read_image_info",
    "read_infotext_from_image",
]

logger = logging.getLogger(__name__)

PNGINFO_SECTION = "parameters"
_EXIF_HEADER = b"Exif\x00\x00"
_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
_JIS_PREFIX = b"JIS\x00\x00\x00\x00\x00"
_UNDEFINED_PREFIX = b"\x00" * 8
_TAG_EXIF_IFD = 0x8769
_TAG_USER_COMMENT = 0x9286
_JPEG_MAX_EXIF = 65533  # one APP1 segment
_EXIF_FORMATS = frozenset({"JPEG", "WEBP", "AVIF"})
_EXTENSION_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}

IGNORED_INFO_KEYS = frozenset(
    {
        "jfif",
        "jfif_version",
        "jfif_unit",
        "jfif_density",
        "dpi",
        "exif",
        "loop",
        "background",
        "timestamp",
        "duration",
        "progressive",
        "progression",
        "icc_profile",
        "chromaticity",
        "photoshop",
    }
)
"""`image.info` keys that are file-format details, not user metadata (left out of PNG Info items)."""


# --- encoding -----------------------------------------------------------------------------------


def pil_format_for(extension: str) -> str | None:
    """Pillow's format name for a file extension ("jpg" -> "JPEG"); None if Pillow cannot write it
    (AVIF only where this Pillow build has it)."""
    ext = extension.lower().lstrip(".")
    if ext == "avif" and not features.check("avif"):
        return None
    registered = Image.registered_extensions()  # also loads the plugins, filling Image.SAVE
    fmt = _EXTENSION_FORMATS.get(ext) or registered.get(f".{ext}")
    if fmt is None or fmt not in Image.SAVE:
        return None
    return fmt


def exif_with_user_comment(text: str) -> bytes:
    """An EXIF block (`Exif\\0\\0` + big-endian TIFF) holding only UserComment = `text`.

    Same layout as `piexif.dump({"Exif": {UserComment: UserComment.dump(text, "unicode")}})`:
    IFD0 with the Exif-IFD pointer, the Exif IFD with tag 0x9286 (UNDEFINED), then the comment
    `UNICODE\\0` + UTF-16-BE.
    """
    comment = _UNICODE_PREFIX + text.encode("utf-16-be")
    ifd0 = 8
    exif_ifd = ifd0 + 2 + 12 + 4
    data = exif_ifd + 2 + 12 + 4
    tiff = b"MM\x00\x2a" + struct.pack(">I", ifd0)
    tiff += struct.pack(">HHHII", 1, _TAG_EXIF_IFD, 4, 1, exif_ifd) + struct.pack(">I", 0)
    tiff += struct.pack(">HHHII", 1, _TAG_USER_COMMENT, 7, len(comment), data) + struct.pack(">I", 0)
    return _EXIF_HEADER + tiff + comment


def _utf16_byte_order(body: bytes) -> str:
    """Guess UTF-16 byte order of text without a BOM: ASCII-heavy text has its zero bytes first
    in big-endian, second in little-endian (piexif always writes big-endian)."""
    zeros_even = body[0::2].count(0)
    zeros_odd = body[1::2].count(0)
    return "utf-16-le" if zeros_odd > zeros_even else "utf-16-be"


def decode_user_comment(raw: bytes) -> str:
    """Text of an EXIF UserComment value (8-byte character-code prefix + data)."""
    prefix, body = raw[:8], raw[8:]
    if prefix == _UNICODE_PREFIX:
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            text = body.decode("utf-16", errors="replace")
        else:
            text = body.decode(_utf16_byte_order(body), errors="replace")
    elif prefix == _ASCII_PREFIX:
        text = body.decode("latin-1")
    elif prefix == _JIS_PREFIX:
        text = body.decode("shift_jis", errors="replace")
    elif prefix == _UNDEFINED_PREFIX:
        text = body.decode("utf-8", errors="ignore")
    else:
        text = raw.decode("utf-8", errors="ignore")
    return text.rstrip("\x00")


def _flatten_for(fmt: str, image: Image.Image) -> Image.Image:
    if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        return image.convert("RGB")
    if fmt in ("WEBP", "AVIF") and image.mode not in ("RGB", "RGBA"):
        has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    return image


def encode_image(
    image: Image.Image,
    extension: str,
    *,
    infotext: str | None = None,
    pnginfo_section: str = PNGINFO_SECTION,
    existing_info: Mapping[str, object] | None = None,
    jpeg_quality: int = 80,
    webp_lossless: bool = False,
) -> bytes:
    """The file bytes of `image` in the format of `extension`, with `infotext` embedded.

    PNG: text keys of `existing_info` (string values) are kept, then `pnginfo_section` =
    infotext. JPEG/WebP/AVIF: EXIF UserComment (left out of a JPEG if it would not fit one APP1
    segment, ~32k characters). JPEG drops alpha. Other Pillow formats are written without
    metadata. ValueError for an extension Pillow cannot write.
    """
    fmt = pil_format_for(extension)
    if fmt is None:
        raise ValueError(f"cannot write images as {extension!r}")
    image = _flatten_for(fmt, image)
    out = io.BytesIO()
    if fmt == "PNG":
        pnginfo = PngImagePlugin.PngInfo()
        for key, value in (existing_info or {}).items():
            if isinstance(value, str) and key != pnginfo_section and key not in IGNORED_INFO_KEYS:
                pnginfo.add_text(key, value)
        if infotext is not None:
            pnginfo.add_text(pnginfo_section, infotext)  # iTXt when not Latin-1
        image.save(out, "PNG", pnginfo=pnginfo)
    elif fmt in _EXIF_FORMATS:
        kwargs: dict[str, object] = {"quality": int(jpeg_quality)}
        if fmt == "WEBP":
            kwargs["lossless"] = bool(webp_lossless)
        if infotext is not None:
            exif = exif_with_user_comment(infotext)
            if fmt == "JPEG" and len(exif) > _JPEG_MAX_EXIF:
                logger.warning("infotext too long for JPEG EXIF (%d bytes); saved without it", len(exif))
            else:
                kwargs["exif"] = exif
        image.save(out, fmt, **kwargs)
    else:
        image.save(out, fmt)
    return out.getvalue()


# --- reading ------------------------------------------------------------------------------------


def _exif_user_comment(raw: bytes) -> str | None:
    exif = Image.Exif()
    try:
        exif.load(raw)
        value = exif.get_ifd(_TAG_EXIF_IFD).get(_TAG_USER_COMMENT)
    except Exception:  # corrupt EXIF from some other program: no infotext, not an error
        return None
    if isinstance(value, bytes):
        return decode_user_comment(value)
    if isinstance(value, str):
        return value
    return None


# NovelAI sampler ids -> A1111 sampler names (a1111.md 5 aliases).
_SAMPLER_ALIASES = {
    "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_sde": "DPM++ SDE",
    "k_dpmpp_2m_sde": "DPM++ 2M SDE",
    "k_dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun",
    "k_dpmpp_2s_a": "DPM++ 2S a",
    "k_dpmpp_2s_ancestral": "DPM++ 2S a",
    "k_dpmpp_3m_sde": "DPM++ 3M SDE",
    "k_euler_a": "Euler a",
    "k_euler_ancestral": "Euler a",
    "k_euler": "Euler",
    "k_lms": "LMS",
    "k_heun": "Heun",
    "k_dpm_2": "DPM2",
    "k_dpm_2_a": "DPM2 a",
    "k_dpm_2_ancestral": "DPM2 a",
    "k_dpm_fast": "DPM fast",
    "k_dpm_ad": "DPM adaptive",
    "k_dpm_adaptive": "DPM adaptive",
    "ddim": "DDIM",
    "plms": "PLMS",
    "unipc": "UniPC",
    "k_lcm": "LCM",
}


def _novelai_infotext(image: Image.Image, items: Mapping[str, object]) -> str | None:
    """A1111-style infotext for a NovelAI PNG (`Description` + `Comment` JSON)."""
    try:
        comment = json.loads(str(items.get("Comment", "")))
    except ValueError:
        return None
    if not isinstance(comment, dict):
        return None
    sampler = _SAMPLER_ALIASES.get(str(comment.get("sampler", "")).lower(), "Euler a")
    params = {
        "Steps": comment.get("steps"),
        "Sampler": sampler,
        "CFG scale": comment.get("scale"),
        "Seed": comment.get("seed"),
        "Size": f"{image.width}x{image.height}",
        "Clip skip": 2,
        "ENSD": 31337,
    }
    return build_infotext(str(items.get("Description", "")), str(comment.get("uc", "")), params)


def read_image_info(image: Image.Image) -> tuple[str | None, dict[str, object]]:
    """(infotext, other metadata items) of an opened image, like A1111's `read_info_from_image`.

    The infotext is the PNG `parameters` text, replaced by a non-empty EXIF UserComment when
    the image has EXIF; a GIF `comment` otherwise; NovelAI PNGs get a synthesized infotext.
    Items are `image.info` without the infotext and without format details (IGNORED_INFO_KEYS).
    """
    # PIL types info keys as str | tuple[int, int]; the keys read here are strings
    items: dict[str, object] = dict(cast("Mapping[str, object]", image.info or {}))
    geninfo_raw = items.pop(PNGINFO_SECTION, None)
    geninfo = geninfo_raw if isinstance(geninfo_raw, str) else None
    if "exif" in items:
        raw = items.pop("exif")
        comment = _exif_user_comment(raw) if isinstance(raw, bytes) else None
        if comment:
            geninfo = comment
    elif "comment" in items:
        comment_value = items["comment"]
        geninfo = (
            comment_value.decode("utf-8", errors="ignore") if isinstance(comment_value, bytes) else str(comment_value)
        )
    for key in IGNORED_INFO_KEYS:
        items.pop(key, None)
    if items.get("Software") == "NovelAI":
        geninfo = _novelai_infotext(image, items) or geninfo
    return geninfo, items


def read_infotext_from_image(image: Image.Image) -> str | None:
    """The infotext stored in an image (PNG chunk or EXIF UserComment), or None."""
    return read_image_info(image)[0]
