"""A1111's `modules.images` for extension code (a facade: internal packages never import it).

`save_image` saves through the app's `ImageSaver` (A1111's folder, numbering and file-name
rules, written atomically) with the `before_image_saved` / `image_saved` callbacks around it, as
A1111's does; `resize_image`, `read_info_from_image` and `image_grid` (with the `image_grid`
callback) work as A1111's do. The labelled grids (`GridAnnotation`, `draw_grid_annotations`,
`draw_prompt_matrix`, `get_font`) are the built-in scripts' (`builtin_scripts.grid_labels`), and
`split_grid` / `combine_grid` their tiles (`builtin_scripts.tiles`) in A1111's shapes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image, ImageOps

from modules.core.atomic import atomic_write_bytes
from modules.core.filenames import FilenameContext, next_sequence_number
from modules.core.filenames import sanitize_filename_part as _sanitize
from modules.engine import images as engine_images
from modules.engine import upscaling
from modules.engine.grids import grid_rows
from modules.engine.image_metadata import PNGINFO_SECTION, encode_image, read_image_info
from modules.extensions import runtime
from modules.extensions.builtin_scripts import grid_labels, tiles
from modules.extensions.builtin_scripts.grid_labels import (
    GridAnnotation,
    GridStyle,
    draw_grid_annotations,
    draw_prompt_matrix,
)
from modules.extensions.callbacks import ImageGridLoopParams, ImageSaveParams
from modules.extensions.model_views import ModelView
from modules.extensions.processing_api import StableDiffusionProcessingImg2Img

__all__ = [
    "Grid",
    "GridAnnotation",
    "combine_grid",
    "draw_grid_annotations",
    "draw_prompt_matrix",
    "flatten",
    "get_font",
    "get_next_sequence_number",
    "image_grid",
    "read_info_from_image",
    "resize_image",
    "sanitize_filename_part",
    "save_image",
    "save_image_with_geninfo",
    "split_grid",
]

LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST


def _option(key: str, default: Any) -> Any:
    env = runtime.maybe_environment()
    if env is None or key not in env.options:
        return default
    return env.options.get(key)


# -- saving ----------------------------------------------------------------------------------


def _filename_context(p: Any, seed: Any, prompt: Any) -> FilenameContext:
    """What the file-name pattern tokens read: `p`'s fields, or just the seed and prompt."""
    job = runtime.current_job()
    timestamp = job.ctx.job_timestamp if job is not None else None
    seed_value = int(seed) if isinstance(seed, int | float) and not isinstance(seed, bool) else None
    if p is None:
        return FilenameContext(seed=seed_value, prompt=prompt, job_timestamp=timestamp)
    env = runtime.maybe_environment()
    model = ModelView.current(env) if env is not None else None
    info = model.sd_checkpoint_info if model is not None else None

    def number(name: str) -> Any:
        value = getattr(p, name, None)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    return FilenameContext(
        seed=seed_value,
        steps=number("steps"),
        cfg=number("cfg_scale"),
        styles=list(getattr(p, "styles", None) or []),
        sampler=getattr(p, "sampler_name", None),
        scheduler=getattr(p, "scheduler", None),
        model_hash=info.shorthash if info is not None else None,
        model_name=info.model_name if info is not None else None,
        prompt=prompt if prompt is not None else getattr(p, "prompt", None),
        negative_prompt=str(getattr(p, "negative_prompt", "") or ""),
        batch_size=int(getattr(p, "batch_size", 1) or 1),
        n_iter=int(getattr(p, "n_iter", 1) or 1),
        denoising=number("denoising_strength") if isinstance(p, StableDiffusionProcessingImg2Img) else None,
        job_timestamp=timestamp,
    )


def save_image(
    image: Image.Image,
    path: str | os.PathLike[str] | None,
    basename: str,
    seed: Any = None,
    prompt: str | None = None,
    extension: str = "png",
    info: str | None = None,
    short_filename: bool = False,
    no_prompt: bool = False,
    grid: bool = False,
    pnginfo_section_name: str = PNGINFO_SECTION,
    p: Any = None,
    existing_info: dict[str, Any] | None = None,
    forced_filename: str | None = None,
    suffix: str = "",
    save_to_dirs: bool | None = None,
) -> tuple[str, str | None]:
    """Save `image` into folder `path` (the tab's output folder when empty) with A1111's naming;
    returns `(file, txt file or None)`."""
    env = runtime.environment()
    if env.saver is None:
        raise RuntimeError("save_image: no image saver in this app")
    saver = env.saver
    if not path:
        kind = "img2img" if isinstance(p, StableDiffusionProcessingImg2Img) else "txt2img"
        path = saver.grids_dir(kind) if grid else saver.samples_dir(kind)
    pnginfo: dict[str, Any] = dict(existing_info or {})
    if info is not None:
        pnginfo[pnginfo_section_name] = info
    params = ImageSaveParams(image, p, str(path), pnginfo)
    callbacks = env.callbacks
    if callbacks is not None:
        callbacks.fire("before_image_saved", params)
    image = params.image
    text = params.pnginfo.get(pnginfo_section_name)
    saved = saver.save_image(
        image,
        Path(path),
        _filename_context(p, seed, prompt),
        infotext=None if text is None else str(text),
        basename=basename,
        extension=extension,
        suffix=suffix,
        forced_filename=forced_filename,
        save_to_dirs=save_to_dirs,
        short_filename=short_filename,
        no_prompt=no_prompt,
        grid=grid,
        pnginfo_section=pnginfo_section_name,
        existing_info={k: v for k, v in params.pnginfo.items() if k != pnginfo_section_name},
    )
    params.filename = str(saved.path)
    if callbacks is not None:
        callbacks.fire("image_saved", params)
    return str(saved.path), str(saved.txt_path) if saved.txt_path is not None else None


def save_image_with_geninfo(
    image: Image.Image,
    geninfo: str | None,
    filename: str | os.PathLike[str],
    extension: str | None = None,
    existing_pnginfo: dict[str, Any] | None = None,
    pnginfo_section_name: str = PNGINFO_SECTION,
) -> None:
    """Write `image` to `filename` with `geninfo` embedded (atomically)."""
    ext = (extension or os.path.splitext(os.fspath(filename))[1]).lstrip(".") or "png"
    data = encode_image(
        image,
        ext,
        infotext=geninfo,
        pnginfo_section=pnginfo_section_name,
        existing_info=existing_pnginfo,
        jpeg_quality=int(_option("jpeg_quality", 80)),
        webp_lossless=bool(_option("webp_lossless", False)),
    )
    atomic_write_bytes(Path(filename), data)


def sanitize_filename_part(text: str, replace_spaces: bool = True) -> str:
    return _sanitize(text, replace_spaces=replace_spaces)


def get_next_sequence_number(path: str | os.PathLike[str], basename: str) -> int:
    return next_sequence_number(path, basename)


# -- reading and resizing --------------------------------------------------------------------


def read_info_from_image(image: Image.Image) -> tuple[str | None, dict[str, Any]]:
    """(infotext, the image's other metadata items)."""
    return read_image_info(image)


def flatten(img: Image.Image, bgcolor: str) -> Image.Image:
    return engine_images.flatten(img, bgcolor)


def fix_image(image: Image.Image | None) -> Image.Image | None:
    if image is None:
        return None
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def resize_image(
    resize_mode: int, im: Image.Image, width: int, height: int, upscaler_name: str | None = None
) -> Image.Image:
    """A1111's resize modes (0 just resize, 1 crop and resize, 2 resize and fill, 3 as 0); an image
    that has to grow is first upscaled with `upscaler_name` when one is given (else Lanczos)."""
    name = upscaler_name
    if resize_mode == 1:
        ratio = max(width / im.width, height / im.height)
    elif resize_mode == 2:
        ratio = min(width / im.width, height / im.height)
    else:
        ratio = max(width / im.width, height / im.height)
    env = runtime.maybe_environment()
    if name and name != "None" and ratio > 1.0 and env is not None and env.upscalers is not None:
        im = upscaling.upscale(im, name, ratio, registry=env.upscalers, tiles=upscaling.tile_settings(env.options))
    return engine_images.resize_image(0 if resize_mode == 3 else resize_mode, im, width, height)


# -- grids ----------------------------------------------------------------------------------


def image_grid(imgs: Sequence[Image.Image], batch_size: int = 1, rows: int | None = None) -> Image.Image:
    """The images in a grid on `grid_background_color` (rows from `n_rows` /
    `grid_prevent_empty_spots` unless given, smaller images centred in their cell); the
    `image_grid` callbacks may change the images, columns and rows first."""
    style = GridStyle.current()
    if rows is None:
        rows = grid_rows(
            len(imgs), batch_size=batch_size, n_rows=style.n_rows, prevent_empty_spots=style.prevent_empty_spots
        )
    rows = min(rows, len(imgs))
    params = ImageGridLoopParams(list(imgs), math.ceil(len(imgs) / rows), rows)
    env = runtime.maybe_environment()
    if env is not None and env.callbacks is not None:
        env.callbacks.fire("image_grid", params)
    images, cols = list(params.imgs), int(params.cols)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * w, int(params.rows) * h), style.background)
    for i, img in enumerate(images):
        grid.paste(img, box=(i % cols * w + (w - img.width) // 2, i // cols * h + (h - img.height) // 2))
    return grid


def get_font(fontsize: int) -> Any:
    """The `font` option's file at `fontsize` px (the bundled Roboto when it is empty or unreadable)."""
    return grid_labels.get_font(fontsize, GridStyle.current().font)


class Grid(NamedTuple):
    """A1111's tiles of an image: `tiles` is `[[y, h, [[x, w, tile_image], ...]], ...]`."""

    tiles: list[list[Any]]
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int

    @property
    def tile_count(self) -> int:
        return sum(len(row[2]) for row in self.tiles)


def split_grid(image: Image.Image, tile_w: int = 512, tile_h: int = 512, overlap: int = 64) -> Grid:
    """`image` cut into overlapping tiles (replace `tile[2]` of each, then `combine_grid`)."""
    cut = tiles.split_grid(image, tile_w, tile_h, overlap)
    rows = [[row.y, row.height, [[t.x, t.width, t.image] for t in row.tiles]] for row in cut.rows]
    return Grid(rows, cut.tile_w, cut.tile_h, cut.image_w, cut.image_h, cut.overlap)


def combine_grid(grid: Grid) -> Image.Image:
    """The tiles of `grid` pasted back, blended over their overlaps."""
    rows = [
        tiles.TileRow(int(y), int(h), [tiles.Tile(int(x), int(w), image) for x, w, image in row])
        for y, h, row in grid.tiles
    ]
    cut = tiles.TileGrid(rows, grid.tile_w, grid.tile_h, grid.image_w, grid.image_h, grid.overlap)
    return tiles.combine_grid(cut)
