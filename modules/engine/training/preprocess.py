"""The Train tab's "Preprocess images": a folder of pictures made ready for training.

Each readable image of `src` is cut to `width` x `height` (scaled to cover, centre crop), or, with
`split`, an image much longer than the target shape (its short-to-long ratio against the target's
at most `split_threshold`) is cut into overlapping tiles along its long side instead of losing
most of it to the crop. With `flip` a mirrored copy of every output is written too. Captions come
from `caption(image)` (BLIP / DeepBooru, composed by the caller) and/or the `.txt` beside the
source (`existing_caption`: ignore, copy, prepend, append), written next to each output image as
`<name>.txt`. Outputs are named `<index>-<tile>-<source stem>.png` (the leading numbers are what
A1111's dataset strips when it takes the caption from the file name).

Images are read as the trainers read them (`dataset.open_training_image`); every file is written
atomically. Images that cannot be used (truncated, not an image, too many pixels) are reported by
name with the reason and skipped; the run goes on.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from modules.core.atomic import atomic_write_bytes
from modules.core.errors import UserError
from modules.engine.training.dataset import DEFAULT_MAX_PIXELS, ImageSkipped, open_training_image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
EXISTING_CAPTION_ACTIONS = ("ignore", "copy", "prepend", "append")

Caption = Callable[[Image.Image], str]


@dataclass(frozen=True)
class PreprocessReport:
    written: tuple[Path, ...]  # images written, flipped copies included
    captions: int  # caption files written
    skipped: tuple[tuple[str, str], ...]  # (source file name, reason)
    stopped: bool = False  # asked to stop before the end

    def summary(self) -> str:
        text = (
            f"Preprocessing {'stopped' if self.stopped else 'finished'}: {_count(len(self.written), 'image')} written"
        )
        if self.captions:
            text += f", {_count(self.captions, 'caption')}"
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: " + "; ".join(f"{name} ({why})" for name, why in self.skipped)
        return text + "."


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def source_images(src: Path) -> list[Path]:
    """The image files directly in `src`, by name."""
    return sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def open_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`path` decoded as the trainers decode it (`dataset.open_training_image`: upright, CMYK,
    palette and 16-bit converted), as RGB, or RGBA when it has transparency. Raises
    `ImageSkipped` with a short reason when it cannot be used."""
    loaded = open_training_image(path, max_pixels=max_pixels)
    if loaded.alpha is None:
        return loaded.rgb
    rgba = loaded.rgb.convert("RGBA")
    rgba.putalpha(loaded.alpha)
    return rgba


def _cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover `width` x `height`, then centre-crop to it."""
    scale = max(width / image.width, height / image.height)
    w, h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    resized = image.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - width) // 2, (h - height) // 2
    return resized.crop((left, top, left + width, top + height))


def split_tiles(
    image: Image.Image, width: int, height: int, *, threshold: float, overlap: float
) -> list[Image.Image] | None:
    """The overlapping tiles of an image much longer than the target shape, or None when it is
    not that long. The image is scaled so its short side fits the target's; tiles of the target
    size then step along the long side, neighbours overlapping by at least `overlap` of a tile."""
    aspect = (image.width / image.height) / (width / height)  # > 1: relatively wider
    if min(aspect, 1 / aspect) > threshold or math.isclose(aspect, 1.0):
        return None
    wide = aspect > 1
    if wide:
        scaled_w, scaled_h = max(width, round(image.width * height / image.height)), height
        long_side, tile = scaled_w, width
    else:
        scaled_w, scaled_h = width, max(height, round(image.height * width / image.width))
        long_side, tile = scaled_h, height
    resized = image.resize((scaled_w, scaled_h), Image.Resampling.LANCZOS)
    overlap = min(max(overlap, 0.0), 0.9)
    count = max(2, math.ceil((long_side - tile * overlap) / (tile * (1.0 - overlap))))
    step = (long_side - tile) / (count - 1)
    tiles = []
    for i in range(count):
        at = round(step * i)
        box = (at, 0, at + tile, height) if wide else (0, at, width, at + tile)
        tiles.append(resized.crop(box))
    return tiles


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _existing_caption(path: Path) -> str:
    txt = path.with_suffix(".txt")
    if not txt.is_file():
        return ""
    try:
        return txt.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def combine_caption(made: str, existing: str, action: str) -> str:
    """The caption to write from a generated one and the source's own `.txt` (A1111's "Existing
    caption txt action")."""
    made, existing = made.strip(), existing.strip()
    if not existing or action == "ignore":
        return made
    if action == "copy" or not made:
        return existing
    if action == "prepend":
        return f"{existing} {made}"
    return f"{made} {existing}"


def preprocess_images(
    src: str | Path,
    dst: str | Path,
    *,
    width: int = 512,
    height: int = 512,
    flip: bool = False,
    split: bool = False,
    split_threshold: float = 0.5,
    overlap_ratio: float = 0.2,
    caption: Caption | None = None,
    existing_caption: str = "ignore",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PreprocessReport:
    """Process every image of `src` into `dst` (see the module docstring). Bad arguments are
    `UserError`s; bad images are skipped and reported."""
    source, target = Path(src).expanduser(), Path(dst).expanduser()
    if not str(src).strip() or not source.is_dir():
        raise UserError(f"the source directory {str(src)!r} does not exist or is not a directory")
    if not str(dst).strip():
        raise UserError("the destination directory is empty")
    if target.resolve() == source.resolve():
        raise UserError("the destination directory must not be the source directory")
    if not (64 <= int(width) <= 8192 and 64 <= int(height) <= 8192):
        raise UserError(f"width and height must be between 64 and 8192 (got {width}x{height})")
    if existing_caption not in EXISTING_CAPTION_ACTIONS:
        raise UserError(f"existing caption action must be one of {', '.join(EXISTING_CAPTION_ACTIONS)}")
    if not 0.0 < split_threshold <= 1.0:
        raise UserError("the split threshold must be above 0 and at most 1")
    width, height = int(width), int(height)
    target.mkdir(parents=True, exist_ok=True)

    files = source_images(source)
    written: list[Path] = []
    skipped: list[tuple[str, str]] = []
    captions = 0
    stopped = False
    for index, path in enumerate(files):
        if should_stop is not None and should_stop():
            stopped = True
            break
        if on_progress is not None:
            on_progress(index, len(files))
        try:
            image = open_image(path, max_pixels=max_pixels)
        except ImageSkipped as exc:
            skipped.append((path.name, exc.reason))
            continue
        existing = _existing_caption(path) if existing_caption != "ignore" else ""
        sub = 0
        for piece in _pieces(image, width, height, split, split_threshold, overlap_ratio):
            text = combine_caption(caption(piece) if caption is not None else "", existing, existing_caption)
            for variant in (piece, piece.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) if flip else (piece,):
                out = target / f"{index:05}-{sub}-{path.stem}.png"
                atomic_write_bytes(out, _png_bytes(variant))
                written.append(out)
                if text:
                    atomic_write_bytes(out.with_suffix(".txt"), text.encode("utf-8"))
                    captions += 1
                sub += 1
    if on_progress is not None and not stopped:
        on_progress(len(files), len(files))
    return PreprocessReport(tuple(written), captions, tuple(skipped), stopped)


def _pieces(
    image: Image.Image, width: int, height: int, split: bool, threshold: float, overlap: float
) -> Iterator[Image.Image]:
    tiles = split_tiles(image, width, height, threshold=threshold, overlap=overlap) if split else None
    if tiles is None:
        yield _cover(image, width, height)
    else:
        yield from tiles
