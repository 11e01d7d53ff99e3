"""The one writer of outputs: saving images and grids the way A1111 does (a1111.md 8, 3.3).

* Folder: the per-tab `outdir_*` option (`outdir_samples` / `outdir_grids` override all), plus a
  subfolder from `directories_filename_pattern` (default `[date]`) when `save_to_dirs`.
* Name: the next free sequence number (`00012`, grids `grid-0003`) + `-` + the pattern
  (`samples_filename_pattern`, default `[seed]`, or `[seed]-[prompt_spaces]` without subfolders).
* Files are encoded with their infotext by `modules.engine.image_metadata` and published by
  `modules.engine.publishing` (numbering unique across threads and processes, atomic); grids are
  laid out by `modules.engine.grids`.

No gradio/fastapi here; PIL is the only heavy import.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from PIL import Image

from modules.core.atomic import atomic_write_bytes, atomic_write_text
from modules.core.filenames import DEFAULT_MAX_LENGTH, FilenameContext, apply_pattern, safe_path_component
from modules.core.paths import Paths
from modules.core.settings import Settings
from modules.engine.grids import grid_rows, make_grid
from modules.engine.image_metadata import PNGINFO_SECTION, encode_image, pil_format_for
from modules.engine.publishing import name_max, publish_bytes

__all__ = ["ImageSaver", "OptionsReader", "SavedImage"]

logger = logging.getLogger(__name__)


class OptionsReader(Protocol):
    """What the saver needs from `modules.core.options.Options`."""

    def get(self, key: str) -> object: ...


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
        stem_budget = name_max(folder) - 1 - max(len(extension), 4)
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
        path = publish_bytes(
            folder,
            data,
            basename=basename,
            decoration=decoration,
            extension=extension,
            add_number=add_number,
            stem_budget=stem_budget,
            replace_existing=self._str("save_images_replace_action") == "Replace",
        )

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


def _check_inside(base: Path, folder: Path) -> None:
    """Belt and braces: the computed folder must be `base` or below it (lexically)."""
    base_norm = os.path.normpath(os.path.abspath(base))
    folder_norm = os.path.normpath(os.path.abspath(folder))
    if os.path.commonpath([base_norm, folder_norm]) != base_norm:
        raise ValueError(f"output folder {folder} escapes {base}")
