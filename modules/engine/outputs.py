"""The one writer of outputs: saving images and grids the way A1111 does (a1111.md 8, 3.3).

* Folder: the per-tab `outdir_*` option (`outdir_samples` / `outdir_grids` override all), plus a
  subfolder from `directories_filename_pattern` (default `[date]`) when `save_to_dirs`.
* Name: the next free sequence number (`00012`, grids `grid-0003`) + `-` + the pattern
  (`samples_filename_pattern`, default `[seed]`, or `[seed]-[prompt_spaces]` without subfolders).
* Numbering is unique under concurrency: the encoded image is first written completely to a
  hidden temp file, then published under the chosen name with `os.link` (which refuses to
  replace an existing file) while a per-folder lock is held (a thread lock plus `flock` on the
  folder, so other processes using this module take turns too). Readers never see a partial
  file, and a failure leaves nothing behind.
* Formats: PNG with the infotext in the `parameters` text chunk (iTXt when not Latin-1); JPEG,
  WebP and AVIF (when Pillow has it) with the infotext in EXIF UserComment, written the way
  piexif's `UserComment.dump(text, encoding="unicode")` does (`UNICODE\\0` + UTF-16-BE).
* `read_image_info` / `read_infotext_from_image` read either back (PNG Info, `/png-info`).

No gradio/fastapi here; PIL is the only heavy import.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from PIL import Image, PngImagePlugin, features

from modules.core.atomic import atomic_write_bytes, atomic_write_text, write_temp_file
from modules.core.filenames import (
    DEFAULT_MAX_LENGTH,
    FilenameContext,
    apply_pattern,
    next_sequence_number,
    safe_path_component,
    sequence_prefix,
    truncate_utf8,
)
from modules.core.infotext import build_infotext
from modules.core.paths import Paths
from modules.core.settings import Settings

__all__ = [
    "IGNORED_INFO_KEYS",
    "ImageSaver",
    "OptionsReader",
    "SavedImage",
    "decode_user_comment",
    "encode_image",
    "exif_with_user_comment",
    "grid_rows",
    "make_grid",
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
_MAX_NUMBER_TRIES = 500
_NAME_MAX_BYTES = 255
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


class OptionsReader(Protocol):
    """What the saver needs from `modules.core.options.Options`."""

    def get(self, key: str) -> object: ...


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
    items: dict[str, object] = dict(image.info or {})
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


# --- grids --------------------------------------------------------------------------------------


def grid_rows(count: int, *, batch_size: int = 1, n_rows: int = -1, prevent_empty_spots: bool = False) -> int:
    """Rows of a grid of `count` images (setting `n_rows`: >0 fixed, 0 = batch size, -1 = auto).

    Auto is round(sqrt(count)); with `grid_prevent_empty_spots` the largest divisor of count
    not above sqrt(count). Never more rows than images, never fewer than one.
    """
    if count <= 0:
        return 1
    if n_rows > 0:
        rows = n_rows
    elif n_rows == 0:
        rows = batch_size
    elif prevent_empty_spots:
        rows = math.floor(math.sqrt(count))
        while rows > 1 and count % rows != 0:
            rows -= 1
    else:
        rows = round(math.sqrt(count))
    return max(1, min(rows, count))


def make_grid(images: Sequence[Image.Image], rows: int | None = None) -> Image.Image:
    """Images pasted row by row on a black RGB canvas; cell size = the first image's size."""
    if not images:
        raise ValueError("a grid needs at least one image")
    rows = grid_rows(len(images)) if rows is None else max(1, min(rows, len(images)))
    cols = math.ceil(len(images) / rows)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), color="black")
    for index, img in enumerate(images):
        grid.paste(img, box=(index % cols * width, index // cols * height))
    return grid


# --- saving -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedImage:
    """Where one save put its files."""

    path: Path
    txt_path: Path | None = None
    """`<name>.txt` with the infotext (setting `save_txt`)."""
    jpeg_copy_path: Path | None = None
    """Downscaled JPEG copy of a large image (setting `export_for_4chan`)."""

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.path, self.txt_path, self.jpeg_copy_path) if p is not None)


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def _directory_lock(folder: Path) -> Iterator[None]:
    """Exclusive right to pick a number in `folder`: a thread lock, plus `flock` on the folder
    itself on POSIX so that other processes saving there wait too (no lock file is left)."""
    key = os.path.normcase(os.path.abspath(folder))
    with _thread_locks_guard:
        lock = _thread_locks.setdefault(key, threading.Lock())
    with lock:
        fd: int | None = None
        if os.name == "posix":
            import fcntl

            try:
                fd = os.open(folder, os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:  # e.g. a filesystem without flock: threads are still serialised
                logger.debug("no flock on %s: %s", folder, exc)
                if fd is not None:
                    os.close(fd)
                    fd = None
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # closing the descriptor releases the flock


def _publish_new(tmp: Path, target: Path) -> bool:
    """Make the complete file `tmp` appear as `target` unless `target` exists; True if done.

    `os.link` is atomic and never replaces. Where hard links are not supported, the name is
    claimed with an exclusive create and then atomically replaced by the temp file.
    """
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    os.close(fd)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise
    return True


_SAMPLE_KINDS = ("txt2img", "img2img", "extras")
_GRID_KINDS = ("txt2img", "img2img")


class ImageSaver:
    """Saves generated images and grids per the options; thread- and process-safe numbering."""

    def __init__(
        self,
        options: OptionsReader,
        paths: Paths,
        *,
        filenames_max_length: int = DEFAULT_MAX_LENGTH,
        unix_filenames_sanitization: bool = False,
        save_params_txt: bool = True,
    ) -> None:
        self.options = options
        self.paths = paths
        self.filenames_max_length = filenames_max_length
        self.unix_filenames_sanitization = unix_filenames_sanitization
        self.save_params_txt = save_params_txt

    @classmethod
    def from_settings(cls, options: OptionsReader, paths: Paths, settings: Settings) -> ImageSaver:
        """With `--filenames-max-length`, `--unix-filenames-sanitization`, `--no-prompt-history`."""
        return cls(
            options,
            paths,
            filenames_max_length=settings.filenames_max_length,
            unix_filenames_sanitization=settings.unix_filenames_sanitization,
            save_params_txt=not settings.no_prompt_history,
        )

    # --- option helpers ---

    def _str(self, key: str) -> str:
        value = self.options.get(key)
        return "" if value is None else str(value)

    def _bool(self, key: str) -> bool:
        return bool(self.options.get(key))

    def _number(self, key: str) -> float:
        value = self.options.get(key)
        return float(value) if isinstance(value, (int, float)) else 0.0

    # --- folders ---

    def outdir(self, key: str) -> Path:
        """An `outdir_*` option as a path (relative values are under the data dir)."""
        return self.paths.output_path(self._str(key))

    def samples_dir(self, kind: str) -> Path:
        """Where `kind` ("txt2img", "img2img", "extras") saves images; `outdir_samples` wins."""
        if kind not in _SAMPLE_KINDS:
            raise ValueError(f"unknown output kind {kind!r}")
        return self.paths.output_path(self._str("outdir_samples") or self._str(f"outdir_{kind}_samples"))

    def grids_dir(self, kind: str) -> Path:
        """Where `kind` ("txt2img", "img2img") saves grids; `outdir_grids` wins."""
        if kind not in _GRID_KINDS:
            raise ValueError(f"unknown grid kind {kind!r}")
        return self.paths.output_path(self._str("outdir_grids") or self._str(f"outdir_{kind}_grids"))

    def _pattern(self, pattern: str, ctx: FilenameContext) -> str:
        return apply_pattern(
            pattern, ctx, max_length=self.filenames_max_length, unix_sanitization=self.unix_filenames_sanitization
        )

    def subdirectory(self, ctx: FilenameContext) -> Path | None:
        """The `directories_filename_pattern` subfolder (default `[date]`), as a relative path.

        A `/` written in the pattern makes nested folders; token values never can. Components
        are made safe (`..` and the like become `_`), so the result stays inside the outdir.
        """
        text = self._pattern(self._str("directories_filename_pattern") or "[prompt_words]", ctx)
        separators = "/" if self.unix_filenames_sanitization else "/\\"
        for sep in separators[1:]:
            text = text.replace(sep, separators[0])
        parts = [p.strip(" ") for p in text.split("/")]
        safe = [safe_path_component(p, unix_sanitization=self.unix_filenames_sanitization) for p in parts if p]
        return Path(*safe) if safe else None

    def _safe_name_part(self, text: str) -> str:
        bad = "/\0" if self.unix_filenames_sanitization else "/\\\0"
        return text.translate({ord(c): "_" for c in bad})

    # --- saving ---

    def save_image(
        self,
        image: Image.Image,
        directory: str | os.PathLike[str],
        ctx: FilenameContext,
        *,
        infotext: str | None = None,
        basename: str = "",
        extension: str | None = None,
        suffix: str = "",
        forced_filename: str | None = None,
        save_to_dirs: bool | None = None,
        short_filename: bool = False,
        no_prompt: bool = False,
        grid: bool = False,
        pnginfo_section: str = PNGINFO_SECTION,
        existing_info: Mapping[str, object] | None = None,
    ) -> SavedImage:
        """Save one image under `directory` (an outdir) following A1111's `save_image` rules.

        `extension` defaults to `samples_format`; an unwritable one falls back to png (logged).
        `save_to_dirs=None` means the `grid_save_to_dirs` / `save_to_dirs` option (and never for
        `no_prompt`). Without `forced_filename` the name is `<number>-<pattern><suffix>.<ext>`,
        the pattern being empty for `short_filename` or an unknown seed. The infotext is embedded
        when `enable_pnginfo`, and written to `<name>.txt` with `save_txt`.
        """
        extension = (extension or self._str("samples_format") or "png").lower().lstrip(".")
        if pil_format_for(extension) is None:
            logger.warning("cannot save images as %r; saving png instead", extension)
            extension = "png"
        fmt = pil_format_for(extension)

        ctx = replace(ctx, width=image.width, height=image.height)
        if ctx.image_hash is None:
            ctx = replace(ctx, image_hash=lambda: hashlib.sha256(image.tobytes()).hexdigest())

        if save_to_dirs is None:
            save_to_dirs = self._bool("grid_save_to_dirs") if grid else (self._bool("save_to_dirs") and not no_prompt)
        base = Path(directory)
        folder = base
        if save_to_dirs:
            sub = self.subdirectory(ctx)
            if sub is not None:
                folder = base / sub
        _check_inside(base, folder)

        add_number = False
        if forced_filename is None:
            if short_filename or ctx.seed is None:
                decoration = ""
            else:
                pattern = self._str("samples_filename_pattern")
                if not pattern:
                    pattern = "[seed]" if self._bool("save_to_dirs") else "[seed]-[prompt_spaces]"
                decoration = self._pattern(pattern, ctx)
            decoration = self._safe_name_part(decoration + suffix)
            add_number = self._bool("save_images_add_number") or decoration == ""
            if decoration and add_number:
                decoration = f"-{decoration}"
        else:
            decoration = safe_path_component(
                self._safe_name_part(forced_filename), unix_sanitization=self.unix_filenames_sanitization
            )

        folder.mkdir(parents=True, exist_ok=True)
        stem_budget = _name_max(folder) - 1 - max(len(extension), 4)
        enable_pnginfo = self._bool("enable_pnginfo")
        data = encode_image(
            image,
            extension,
            infotext=infotext if enable_pnginfo else None,
            pnginfo_section=pnginfo_section,
            existing_info=existing_info,
            jpeg_quality=int(self._number("jpeg_quality") or 80),
            webp_lossless=self._bool("webp_lossless"),
        )
        path = self._store(folder, data, basename, decoration, extension, add_number, stem_budget)

        txt_path: Path | None = None
        if infotext is not None and self._bool("save_txt"):
            txt_path = path.with_suffix(".txt")
            atomic_write_text(txt_path, infotext)

        jpeg_copy = self._export_jpeg_copy(image, path, fmt, infotext if enable_pnginfo else None)
        return SavedImage(path=path, txt_path=txt_path, jpeg_copy_path=jpeg_copy)

    def save_sample(
        self, image: Image.Image, kind: str, ctx: FilenameContext, *, infotext: str | None = None, suffix: str = ""
    ) -> SavedImage:
        """Save a generated image of tab `kind` with the default rules."""
        return self.save_image(image, self.samples_dir(kind), ctx, infotext=infotext, suffix=suffix)

    def should_save_grid(self, count: int) -> bool:
        """`grid_save` is on and, with `grid_only_if_multiple`, there are at least two images."""
        if not self._bool("grid_save"):
            return False
        return not (count < 2 and self._bool("grid_only_if_multiple"))

    def grid(self, images: Sequence[Image.Image], batch_size: int = 1) -> Image.Image:
        """A grid of `images` with the rows the options ask for (`n_rows`, prevent empty spots)."""
        n_rows_value = self.options.get("n_rows")
        rows = grid_rows(
            len(images),
            batch_size=batch_size,
            n_rows=int(n_rows_value) if isinstance(n_rows_value, (int, float)) else -1,
            prevent_empty_spots=self._bool("grid_prevent_empty_spots"),
        )
        return make_grid(images, rows)

    def save_grid(
        self, grid_image: Image.Image, kind: str, ctx: FilenameContext, *, infotext: str | None = None
    ) -> SavedImage:
        """Save a grid as `grid-0003.png` (4 digits, `grid_format`); with `grid_extended_filename`
        the file pattern follows the number."""
        return self.save_image(
            grid_image,
            self.grids_dir(kind),
            ctx,
            infotext=infotext,
            basename="grid",
            extension=self._str("grid_format") or "png",
            short_filename=not self._bool("grid_extended_filename"),
            grid=True,
        )

    def write_params(self, infotext: str) -> Path | None:
        """`params.txt` in the data dir = the last generation's infotext (unless --no-prompt-history)."""
        if not self.save_params_txt:
            return None
        atomic_write_text(self.paths.params_file, infotext)
        return self.paths.params_file

    # --- internals ---

    def _store(
        self,
        folder: Path,
        data: bytes,
        basename: str,
        decoration: str,
        extension: str,
        add_number: bool,
        stem_budget: int,
    ) -> Path:
        tmp = write_temp_file(folder, data, "sdwebui")
        try:
            with _directory_lock(folder):
                if add_number:
                    start = next_sequence_number(folder, basename)
                    for offset in range(_MAX_NUMBER_TRIES):
                        prefix = sequence_prefix(start + offset, basename)
                        stem = prefix + truncate_utf8(decoration, stem_budget - len(prefix.encode("utf-8")))
                        target = folder / f"{stem}.{extension}"
                        if _publish_new(tmp, target):
                            return target
                    raise FileExistsError(f"no free file number in {folder}")
                stem = truncate_utf8(decoration, stem_budget)
                target = folder / f"{stem}.{extension}"
                if self._str("save_images_replace_action") == "Replace":
                    os.replace(tmp, target)
                    return target
                n = 0
                while not _publish_new(tmp, target):
                    n += 1
                    tail = f"-{n}"
                    target = folder / f"{truncate_utf8(decoration, stem_budget - len(tail))}{tail}.{extension}"
                return target
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _export_jpeg_copy(self, image: Image.Image, path: Path, fmt: str | None, infotext: str | None) -> Path | None:
        """Setting `export_for_4chan`: a JPEG copy next to a file over `img_downscale_threshold`
        MB or an image over `target_side_length` px (then downscaled to it)."""
        if not self._bool("export_for_4chan") or fmt == "JPEG":
            return None
        side = int(self._number("target_side_length"))
        oversize = side > 0 and (image.width > side or image.height > side)
        too_big = path.stat().st_size / (1024 * 1024) > self._number("img_downscale_threshold")
        if not (oversize or too_big):
            return None
        copy = image
        if oversize:
            if image.width >= image.height:
                size = (side, max(1, round(image.height * side / image.width)))
            else:
                size = (max(1, round(image.width * side / image.height)), side)
            copy = image.resize(size, Image.Resampling.LANCZOS)
        target = path.with_suffix(".jpg")
        try:
            data = encode_image(copy, "jpg", infotext=infotext, jpeg_quality=int(self._number("jpeg_quality") or 80))
            atomic_write_bytes(target, data)
        except (OSError, ValueError) as exc:
            logger.warning("could not save a downscaled JPEG copy of %s: %s", path, exc)
            return None
        return target


def _name_max(folder: Path) -> int:
    """Longest file name (bytes) the folder's filesystem allows, at most 255."""
    try:
        return min(_NAME_MAX_BYTES, os.statvfs(folder).f_namemax)
    except (AttributeError, OSError):
        return _NAME_MAX_BYTES


def _check_inside(base: Path, folder: Path) -> None:
    """Belt and braces: the computed folder must be `base` or below it (lexically)."""
    base_norm = os.path.normpath(os.path.abspath(base))
    folder_norm = os.path.normpath(os.path.abspath(folder))
    if os.path.commonpath([base_norm, folder_norm]) != base_norm:
        raise ValueError(f"output folder {folder} escapes {base}")
