"""Image grids the way A1111 lays them out: how many rows, and the pasted canvas."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

__all__ = ["grid_rows", "make_grid"]


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
