"""Overlapping tiles for the built-in scripts that img2img a big image piece by piece (SD upscale,
poor man's outpainting), and the saving of the images those scripts assemble themselves.

`split_grid` cuts an image into `tile_w` x `tile_h` tiles that overlap by at least `overlap`
pixels, A1111's way: as few columns (rows) as cover the width (height) with that overlap, spread
evenly from the left (top) edge to the right (bottom) one, so the last tile ends at the edge and
neighbours may overlap by more than asked. An image smaller than a tile gets one tile at 0 whose
outside part is black. `combine_grid` pastes the (processed) tiles back: inside the first
`overlap` pixels of each tile the new tile fades in linearly over what is already there (columns
within a row, then rows), beyond that the new tile wins.

No module-level `Script` here: the loader imports this file with the scripts and finds none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from modules.core.errors import ValidationError
from modules.core.filenames import FilenameContext
from modules.extensions import runtime


@dataclass
class Tile:
    """One tile: its left edge, its width and its image (replaced by the processed one)."""

    x: int
    width: int
    image: Image.Image


@dataclass
class TileRow:
    y: int
    height: int
    tiles: list[Tile] = field(default_factory=list)


@dataclass
class TileGrid:
    """An image cut into overlapping tiles (rows top to bottom, tiles left to right)."""

    rows: list[TileRow]
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int

    @property
    def tile_count(self) -> int:
        return sum(len(row.tiles) for row in self.rows)

    @property
    def columns(self) -> int:
        return len(self.rows[0].tiles) if self.rows else 0

    def tiles(self) -> list[Tile]:
        """Every tile in row-major order."""
        return [tile for row in self.rows for tile in row.tiles]

    def images(self) -> list[Image.Image]:
        return [tile.image for tile in self.tiles()]

    def replace_images(self, images: Sequence[Image.Image]) -> None:
        """Put processed tiles back in row-major order; missing ones become black (an interrupted
        job), as A1111 does."""
        for index, tile in enumerate(self.tiles()):
            tile.image = images[index] if index < len(images) else Image.new("RGB", (tile.width, self.tile_h))


def tile_positions(length: int, tile: int, overlap: int) -> list[int]:
    """Left (top) edges of the tiles along one side of `length` pixels."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1)
    return [min(int(i * step), length - tile) for i in range(count)]


def check_tiling(tile_w: int, tile_h: int, overlap: int, *, what: str = "overlap") -> None:
    """A tile must be larger than the overlap on both sides (else no tiling covers the image)."""
    if tile_w < 1 or tile_h < 1:
        raise ValidationError(f"tile size must be positive (got {tile_w}x{tile_h})")
    if overlap < 0:
        raise ValidationError(f"{what} must be >= 0 (got {overlap})")
    if overlap >= min(tile_w, tile_h):
        raise ValidationError(
            f"{what} ({overlap} px) must be smaller than the tile, which is the width x height "
            f"of the request ({tile_w}x{tile_h})"
        )


def split_grid(image: Image.Image, tile_w: int, tile_h: int, overlap: int) -> TileGrid:
    """`image` cut into overlapping `tile_w` x `tile_h` tiles (see the module docstring)."""
    check_tiling(tile_w, tile_h, overlap)
    grid = TileGrid([], tile_w, tile_h, image.width, image.height, overlap)
    xs = tile_positions(image.width, tile_w, overlap)
    for y in tile_positions(image.height, tile_h, overlap):
        row = TileRow(y, tile_h)
        for x in xs:
            row.tiles.append(Tile(x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))))
        grid.rows.append(row)
    return grid


def _pixels(image: Image.Image, width: int, height: int) -> np.ndarray:
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def _blend_in(dest: np.ndarray, src: np.ndarray, start: int, overlap: int, axis: int) -> None:
    """Paste `src` into `dest` at `start` along `axis`; its first `overlap` pixels fade in over
    what `dest` has there (weight i / overlap for the i-th), unless it starts at 0. `src` may
    run past the end of `dest` (a tile larger than the image): that part is dropped."""
    room = dest.shape[axis] - start
    if room <= 0:
        return
    src = src[:room] if axis == 0 else src[:, :room]
    length = src.shape[axis]
    fade = 0 if start == 0 else min(overlap, length)
    if fade:
        weight = np.arange(fade, dtype=np.float32) / fade
        weight = weight[:, None, None] if axis == 0 else weight[None, :, None]
        if axis == 0:
            old = dest[start : start + fade]
            dest[start : start + fade] = old + (src[:fade] - old) * weight
            dest[start + fade : start + length] = src[fade:]
        else:
            old = dest[:, start : start + fade]
            dest[:, start : start + fade] = old + (src[:, :fade] - old) * weight
            dest[:, start + fade : start + length] = src[:, fade:]
    elif axis == 0:
        dest[start : start + length] = src
    else:
        dest[:, start : start + length] = src


def combine_grid(grid: TileGrid) -> Image.Image:
    """The tiles pasted back into one `image_w` x `image_h` RGB image with blended overlaps (a
    processed tile of another size is resized to the tile first)."""
    canvas = np.zeros((grid.image_h, grid.image_w, 3), dtype=np.float32)
    for row in grid.rows:
        strip = np.zeros((row.height, grid.image_w, 3), dtype=np.float32)
        for tile in row.tiles:
            _blend_in(strip, _pixels(tile.image, tile.width, row.height), tile.x, grid.overlap, axis=1)
        _blend_in(canvas, strip, row.y, grid.overlap, axis=0)
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")


# -- saving what a script assembled ---------------------------------------------------------


def save_script_image(
    image: Image.Image,
    *,
    kind: str,
    seed: int | None,
    prompt: str,
    infotext: str | None,
    grid: bool = False,
    save: bool = True,
) -> Any:
    """Save an image a script made itself (a combined upscale, an outpainted image, a labelled
    grid) where the engine saves its own: samples under the tab's samples folder, grids with
    `grid_save` (and `grid_only_if_multiple` left to the caller). `save` is whether the request
    asked for saving at all (the API's `save_images`, always in the UI): read it from `p` before
    the script turns saving off for its own inner jobs. Returns the saved path or None."""
    env = runtime.maybe_environment()
    if not save or env is None or env.saver is None:
        return None
    saver = env.saver
    ctx = FilenameContext(seed=seed, prompt=prompt)
    if grid:
        if not bool(env.options.get("grid_save")):
            return None
        return saver.save_grid(image, kind, ctx, infotext=infotext).path
    return saver.save_sample(image, kind, ctx, infotext=infotext).path
