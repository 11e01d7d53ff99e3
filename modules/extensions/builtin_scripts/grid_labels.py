"""Labelled image grids, as A1111's X/Y/Z plot and prompt matrix draw them.

`image_grid` pastes images row by row on a canvas of `grid_background_color` (smaller images
centred in their cell). `draw_grid_annotations` adds a band of column labels above and a band of
row labels to the left of a grid of equal cells, optionally spreading the cells apart by a
margin. The font size follows the cell size (`(w + h) // 25`); a label wider than its column is
wrapped at word boundaries, and a single line still too wide is drawn smaller. An inactive label
(`GridAnnotation(is_active=False)`) is drawn in `grid_text_inactive_color` and struck through.

Options read: `font` (a TrueType/OpenType file; the bundled Roboto when empty or unreadable),
`grid_text_active_color`, `grid_text_inactive_color`, `grid_background_color`, and for
`image_grid` without explicit rows `n_rows` / `grid_prevent_empty_spots`. Callers may pass a
`GridStyle` instead of relying on the installed script environment's options.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageColor, ImageDraw, ImageFont

from modules.engine.grids import grid_rows

__all__ = [
    "BUNDLED_FONT",
    "GridAnnotation",
    "GridStyle",
    "draw_grid_annotations",
    "draw_prompt_matrix",
    "get_font",
    "image_grid",
]

log = logging.getLogger(__name__)

BUNDLED_FONT = Path(__file__).resolve().parent / "fonts" / "Roboto-Regular.ttf"
"""Roboto Regular (Apache-2.0, see fonts/LICENSE-Roboto.txt), A1111's grid font."""

RGB = tuple[int, int, int]

_DEFAULT_ACTIVE = "#000000"
_DEFAULT_INACTIVE = "#999999"
_DEFAULT_BACKGROUND = "#ffffff"
_STRIKE_WIDTH = 4


def _color(value: object, default: str, key: str) -> RGB:
    text = str(value or "").strip() or default
    try:
        rgb = ImageColor.getcolor(text, "RGB")
    except ValueError:
        log.warning("option %s: %r is not a color; using %s", key, text, default)
        rgb = ImageColor.getcolor(default, "RGB")
    assert isinstance(rgb, tuple)
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


@dataclass(frozen=True)
class GridStyle:
    """Colors and font of labelled grids (the `grid_*` and `font` options)."""

    text_active: RGB = (0, 0, 0)
    text_inactive: RGB = (153, 153, 153)
    background: RGB = (255, 255, 255)
    font: str = ""  # a font file; "" = the bundled Roboto
    n_rows: int = -1  # image_grid without rows: >0 fixed, 0 = batch size, -1 = auto
    prevent_empty_spots: bool = False

    @classmethod
    def from_options(cls, options: Any) -> GridStyle:
        """From an options object with `get(key)` (and `key in options`); missing keys = defaults."""

        def get(key: str, default: Any) -> Any:
            return options.get(key) if key in options else default

        def color(key: str, default: str) -> RGB:
            return _color(get(key, default), default, key)

        n_rows = get("n_rows", -1)
        return cls(
            text_active=color("grid_text_active_color", _DEFAULT_ACTIVE),
            text_inactive=color("grid_text_inactive_color", _DEFAULT_INACTIVE),
            background=color("grid_background_color", _DEFAULT_BACKGROUND),
            font=str(get("font", "") or ""),
            n_rows=int(n_rows) if isinstance(n_rows, int | float) else -1,
            prevent_empty_spots=bool(get("grid_prevent_empty_spots", False)),
        )

    @classmethod
    def current(cls) -> GridStyle:
        """From the installed script environment's options (defaults when none is installed)."""
        from modules.extensions import runtime

        env = runtime.maybe_environment()
        return cls.from_options(env.options) if env is not None else cls()


@functools.lru_cache(maxsize=64)
def _load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def get_font(size: int, font: str = "") -> ImageFont.FreeTypeFont:
    """The grid font at `size` px: the `font` file, else (empty or unreadable) the bundled Roboto."""
    size = max(1, int(size))
    if font:
        try:
            return _load_font(font, size)
        except OSError as exc:
            log.warning("option font: cannot read %r (%s); using the bundled Roboto", font, exc)
    return _load_font(str(BUNDLED_FONT), size)


@dataclass
class GridAnnotation:
    """One label of a grid row or column (A1111's `images.GridAnnotation`)."""

    text: str = ""
    is_active: bool = True
    size: tuple[int, int] = (0, 0)  # measured while laying out
    allowed_width: int = 0


def image_grid(
    images: Sequence[Image.Image],
    rows: int | None = None,
    *,
    batch_size: int = 1,
    style: GridStyle | None = None,
) -> Image.Image:
    """`images` row by row on a `grid_background_color` canvas; the cell is the largest image
    and smaller images are centred in it. Without `rows`, the `n_rows` option decides (auto:
    about square; `grid_prevent_empty_spots`: a divisor of the count). Extensions' `image_grid`
    callbacks may change the images, columns and rows first (as in A1111)."""
    if not images:
        raise ValueError("a grid needs at least one image")
    style = style or GridStyle.current()
    if rows is None:
        rows = grid_rows(
            len(images), batch_size=batch_size, n_rows=style.n_rows, prevent_empty_spots=style.prevent_empty_spots
        )
    rows = max(1, min(int(rows), len(images)))
    cols = math.ceil(len(images) / rows)
    images, cols, rows = _grid_callbacks(list(images), cols, rows)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * cell_w, rows * cell_h), style.background)
    for index, im in enumerate(images):
        left = index % cols * cell_w + (cell_w - im.width) // 2
        top = index // cols * cell_h + (cell_h - im.height) // 2
        grid.paste(im if im.mode == "RGB" else im.convert("RGB"), (left, top))
    return grid


def _grid_callbacks(images: list[Image.Image], cols: int, rows: int) -> tuple[list[Image.Image], int, int]:
    from modules.extensions import runtime
    from modules.extensions.callbacks import ImageGridLoopParams

    env = runtime.maybe_environment()
    if env is None or env.callbacks is None or not images:
        return images, cols, rows
    params = ImageGridLoopParams(images, cols, rows)
    env.callbacks.fire("image_grid", params)
    new_images = list(params.imgs) or images
    return new_images, max(1, int(params.cols)), max(1, int(params.rows))


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Words of `text` greedily packed into lines no wider than `width` (a lone long word keeps
    its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _layout(
    draw: ImageDraw.ImageDraw, labels: list[GridAnnotation], font: ImageFont.FreeTypeFont, width: int
) -> list[GridAnnotation]:
    """`labels` wrapped to `width` and measured: one GridAnnotation per drawn line."""
    out: list[GridAnnotation] = []
    for label in labels:
        for line in _wrap(draw, label.text, font, width):
            left, top, right, bottom = draw.multiline_textbbox((0, 0), line, font=font)
            out.append(GridAnnotation(line, label.is_active, (int(right - left), int(bottom - top)), width))
    return out


def _block_height(lines: list[GridAnnotation], spacing: int) -> int:
    if not lines:
        return 0
    return sum(line.size[1] for line in lines) + spacing * (len(lines) - 1)


def draw_grid_annotations(
    im: Image.Image,
    width: int,
    height: int,
    hor_texts: Sequence[Sequence[GridAnnotation]],
    ver_texts: Sequence[Sequence[GridAnnotation]],
    margin: int = 0,
    *,
    style: GridStyle | None = None,
) -> Image.Image:
    """`im`, a grid of `width` x `height` cells, with `hor_texts[col]` above each column and
    `ver_texts[row]` left of each row, cells `margin` px apart. A band is only added when it has
    text: no row labels, no left band; no column labels, no top band."""
    style = style or GridStyle.current()
    cols = im.width // width
    rows = im.height // height
    if cols != len(hor_texts):
        raise ValueError(f"bad number of horizontal texts: {len(hor_texts)}; must be {cols}")
    if rows != len(ver_texts):
        raise ValueError(f"bad number of vertical texts: {len(ver_texts)}; must be {rows}")
    margin = max(0, int(margin))

    fontsize = (width + height) // 25
    spacing = fontsize // 2
    font = get_font(fontsize, style.font)

    has_row_labels = any(label.text for labels in ver_texts for label in labels)
    pad_left = width * 3 // 4 if has_row_labels else 0

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1), style.background))
    hor_lines = [_layout(measure, list(labels), font, width) for labels in hor_texts]
    ver_lines = [_layout(measure, list(labels), font, pad_left) for labels in ver_texts]
    hor_heights = [_block_height(lines, spacing) if any(x.text for x in lines) else 0 for lines in hor_lines]
    ver_heights = [_block_height(lines, spacing) for lines in ver_lines]
    pad_top = max(hor_heights) + spacing * 2 if any(hor_heights) else 0

    result = Image.new(
        "RGB",
        (im.width + pad_left + margin * (cols - 1), im.height + pad_top + margin * (rows - 1)),
        style.background,
    )
    for row in range(rows):
        for col in range(cols):
            cell = im.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))

    draw = ImageDraw.Draw(result)

    def draw_block(center_x: float, top: float, lines: list[GridAnnotation]) -> None:
        y = top
        for line in lines:
            line_font, size = font, fontsize
            while size > 1 and draw.textlength(line.text, font=line_font) > line.allowed_width:
                size -= 1
                line_font = get_font(size, style.font)
            color = style.text_active if line.is_active else style.text_inactive
            mid_y = y + line.size[1] / 2
            draw.text((center_x, mid_y), line.text, font=line_font, fill=color, anchor="mm", align="center")
            if not line.is_active:
                half = line.size[0] // 2
                draw.line(
                    (center_x - half, mid_y, center_x + half, mid_y), fill=style.text_inactive, width=_STRIKE_WIDTH
                )
            y += line.size[1] + spacing

    if pad_top:
        for col in range(cols):
            center_x = pad_left + (width + margin) * col + width / 2
            draw_block(center_x, pad_top / 2 - hor_heights[col] / 2, hor_lines[col])
    if pad_left:
        for row in range(rows):
            top = pad_top + (height + margin) * row + height / 2 - ver_heights[row] / 2
            draw_block(pad_left / 2, top, ver_lines[row])
    return result


def draw_prompt_matrix(
    im: Image.Image,
    width: int,
    height: int,
    all_prompts: Sequence[str],
    margin: int = 0,
    *,
    style: GridStyle | None = None,
) -> Image.Image:
    """A1111's prompt matrix labels: `all_prompts[1:]` are the optional parts; the first half
    label the columns, the rest the rows; a part is active (drawn) or inactive (struck through)
    according to the bit of the column / row index that stands for it."""
    parts = list(all_prompts[1:])
    boundary = math.ceil(len(parts) / 2)
    across, down = parts[:boundary], parts[boundary:]
    hor = [
        [GridAnnotation(text, is_active=bool(pos & (1 << i))) for i, text in enumerate(across)]
        for pos in range(1 << len(across))
    ]
    ver = [
        [GridAnnotation(text, is_active=bool(pos & (1 << i))) for i, text in enumerate(down)]
        for pos in range(1 << len(down))
    ]
    return draw_grid_annotations(im, width, height, hor, ver, margin, style=style)
