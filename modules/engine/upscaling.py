"""Upscaling an image by a factor: built-ins (None, Lanczos, Nearest) and model upscalers.

A model upscaler runs over overlapping tiles, so a big image needs only one tile's activations
on the device at a time. Tiles are blended with feathered weights: inside an overlap each tile's
weight ramps (cubically) down towards its own edge, and the sum is normalised, so seams disappear
and the border pixels (whose receptive field was cut by the tile edge) count least.

To reach the requested factor the model runs as many passes as needed (at most `MAX_PASSES`;
a 4x model asked for 8x runs twice), then the result is resized with Lanczos to the exact size;
asked for less than the model's factor, the model runs once and the result is scaled down.

On out-of-memory the tile is halved and the image retried, down to `MIN_TILE` pixels; below
that `UpscaleOutOfMemoryError` (an `OutOfMemoryError`: HTTP 507, the worker goes on) says what to
change, after what the failed tiles held was freed. A model that loaded but fails on the image
(any other RuntimeError) is a `ModelFileError` naming its file.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from modules.core.errors import ModelFileError, OutOfMemoryError, ValidationError
from modules.models.upscalers import LANCZOS, NEAREST, NONE, LoadedUpscaler, UpscalerInfo

BUILTIN_NAMES: tuple[str, ...] = (NONE, LANCZOS, NEAREST)
"""The upscalers done here without a model file."""

if TYPE_CHECKING:
    from modules.models.upscalers import UpscalerRegistry

log = logging.getLogger(__name__)

MAX_PASSES = 3
MIN_TILE = 16
DEFAULT_TILE = 192
DEFAULT_OVERLAP = 8
MAX_SCALE = 16.0

Progress = Callable[[int, int], None]


class UpscaleOutOfMemoryError(OutOfMemoryError):
    """The model ran out of memory even at the smallest tile size (HTTP 507, as any job that runs
    out of memory; what the tiles held was freed before it is raised)."""


@dataclass(frozen=True)
class TileSettings:
    tile: int = DEFAULT_TILE  # 0 = whole image at once
    overlap: int = DEFAULT_OVERLAP
    min_tile: int = MIN_TILE


def tile_settings(options: Mapping[str, object] | object | None, upscaler: UpscalerInfo | None = None) -> TileSettings:
    """`ESRGAN_tile` / `ESRGAN_tile_overlap` (or `DAT_tile*` for DAT models) from the options.

    `options` is anything with `.get(key)` (our `Options`, a dict) or None for the defaults."""
    if options is None:
        return TileSettings()
    prefix = "DAT" if upscaler is not None and (upscaler.kind == "DAT" or upscaler.architecture == "DAT") else "ESRGAN"
    get = getattr(options, "get")  # noqa: B009 - Options and dicts both have .get

    def read(key: str, default: int) -> int:
        try:
            value = get(key)
        except KeyError:
            return default
        return default if value is None else int(value)

    return TileSettings(
        tile=read(f"{prefix}_tile", DEFAULT_TILE), overlap=read(f"{prefix}_tile_overlap", DEFAULT_OVERLAP)
    )


def target_size(image: Image.Image, scale: float) -> tuple[int, int]:
    return max(1, round(image.width * scale)), max(1, round(image.height * scale))


def upscale(
    image: Image.Image,
    upscaler: UpscalerInfo | LoadedUpscaler | str,
    target_scale: float,
    *,
    registry: UpscalerRegistry | None = None,
    tiles: TileSettings | None = None,
    size: tuple[int, int] | None = None,
    progress: Progress | None = None,
) -> Image.Image:
    """Upscale `image` by `target_scale` (or to exactly `size` = (width, height) when given).

    `upscaler` is an entry of the registry (or its name, or an already loaded model); file
    upscalers are loaded through `registry`. "None" returns the image unchanged."""
    if not (0 < target_scale <= MAX_SCALE) or not math.isfinite(target_scale):
        raise ValidationError(f"upscale factor must be in (0, {MAX_SCALE:g}], got {target_scale}")
    if isinstance(upscaler, str):
        if upscaler in (NONE, LANCZOS, NEAREST):
            name = upscaler
            upscaler = UpscalerInfo(name, None, None, 4, "builtin")
        elif registry is None:
            raise ValueError("a registry is needed to look up upscalers by name")
        else:
            upscaler = registry.get(upscaler)
    dest = size or target_size(image, target_scale)
    if isinstance(upscaler, UpscalerInfo):
        if upscaler.name == NONE and upscaler.is_builtin:
            return image
        if upscaler.is_builtin:
            resample = Image.Resampling.NEAREST if upscaler.name == NEAREST else Image.Resampling.LANCZOS
            return image.resize(dest, resample=resample) if image.size != dest else image
        if registry is None:
            raise ValueError("a registry is needed to load model upscalers")
        model = registry.load(upscaler)
    else:
        model = upscaler
    return _upscale_with_model(image, model, dest, tiles or TileSettings(), progress)


def _upscale_with_model(
    image: Image.Image,
    model: LoadedUpscaler,
    dest: tuple[int, int],
    tiles: TileSettings,
    progress: Progress | None,
) -> Image.Image:
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA", "PA") else None
    current = image.convert("RGB")
    tile = tiles.tile if model.tiling_allowed else 0
    for _ in range(MAX_PASSES):
        if current.width >= dest[0] and current.height >= dest[1]:
            break
        tensor = pil_to_tensor(current, model.device, model.dtype)
        try:
            out, tile = run_tiled_with_retry(model, tensor, tile, tiles.overlap, tiles.min_tile, progress)
        except RuntimeError as exc:  # out of memory is an OutOfMemoryError (not a RuntimeError) by now
            # loaded fine but cannot run (tensors that fit no real network): the file's fault, a 4xx
            raise ModelFileError(
                f"{model.info.model_path or model.info.name}: the upscaler model failed on a "
                f"{current.width}x{current.height} image: {type(exc).__name__}: {str(exc)[:300]}"
            ) from exc
        current = tensor_to_pil(out)
        del tensor, out
    if current.size != dest:
        current = current.resize(dest, resample=Image.Resampling.LANCZOS)
    if alpha is not None:
        current.putalpha(alpha.resize(dest, resample=Image.Resampling.LANCZOS))
    return current


def pil_to_tensor(image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=dtype)


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    array = tensor[0].float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def is_out_of_memory(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if (oom_type is not None and isinstance(exc, oom_type)) or isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def run_tiled_with_retry(
    model: Callable[[torch.Tensor], torch.Tensor] | LoadedUpscaler,
    image: torch.Tensor,
    tile: int,
    overlap: int,
    min_tile: int = MIN_TILE,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, int]:
    """`run_tiled`, halving the tile on out-of-memory. Returns the output and the tile size that
    worked (so later passes start there)."""
    height, width = image.shape[-2:]
    while True:
        try:
            return run_tiled(model, image, tile, overlap, progress), tile
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
        # out of the handler, the failed attempt's frames and the tensors they held are gone
        current = tile if tile > 0 else max(height, width)
        smaller = current // 2
        _free_device_memory(image.device, collect=smaller < min_tile)
        if smaller < min_tile:
            raise UpscaleOutOfMemoryError(
                f"The upscaler ran out of memory even with {current}px tiles ({reason}). The memory was freed; "
                "use a smaller image, scale or model, free device memory, or run the upscaler on the CPU"
            )
        log.warning("upscaler out of memory with tile %s; retrying with tile %s", tile or "whole image", smaller)
        tile = smaller


def _free_device_memory(device: torch.device, *, collect: bool = False) -> None:
    """The device's cached blocks (the failed tile's tensors were freed with its exception); with
    `collect`, before giving up, also whatever only a garbage collection finds (it is slow)."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def axis_tiles(length: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """Tile size and origins along one axis.

    The fewest tiles of at most `tile` pixels that overlap by at least `overlap`, then shrunk to
    the smallest equal size that still covers `length` with that overlap, origins evenly spread.
    (A 256px side with tile 192 becomes two 132px tiles, not 192 + 192 = 1.5x the work.)"""
    if length <= tile:
        return length, [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    size = min(tile, math.ceil((length + (count - 1) * overlap) / count))
    span = length - size
    return size, [round(i * span / (count - 1)) for i in range(count)]


def _ramp(length: int, fade_start: int, fade_end: int) -> torch.Tensor:
    """Weights along one tile axis: 1 inside, cubic fades of the given widths at the two ends
    (values strictly above 0, so every output pixel has weight). The cube makes the outermost
    pixels of a tile, whose receptive field the tile edge cut, count far less than a linear fade
    would (max error vs. untiled on the test models: 0.8/255 instead of 2-4/255)."""
    weights = torch.ones(length, dtype=torch.float32)
    fade_start = min(fade_start, length // 2)
    fade_end = min(fade_end, length - fade_start)
    if fade_start > 0:
        weights[:fade_start] = torch.arange(1, fade_start + 1, dtype=torch.float32) / (fade_start + 1)
    if fade_end > 0:
        weights[length - fade_end :] = torch.arange(fade_end, 0, -1, dtype=torch.float32) / (fade_end + 1)
    return weights**3


def run_tiled(
    model: Callable[[torch.Tensor], torch.Tensor] | LoadedUpscaler,
    image: torch.Tensor,
    tile: int,
    overlap: int,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Run `model` on (1, C, H, W) `image` over tiles of at most `tile` pixels overlapping by at
    least `overlap` pixels (see `axis_tiles`), blended with feathered weights. `tile <= 0` or a
    tile covering the image runs once. The output is accumulated on the CPU in float32 and
    returned on the image's device/dtype."""
    _, _, height, width = image.shape
    if tile <= 0 or (tile >= height and tile >= width):
        if progress:
            progress(0, 1)
        out = model(image)
        if progress:
            progress(1, 1)
        return out
    overlap = max(0, min(overlap, tile // 2))
    tile_h, ys = axis_tiles(height, tile, overlap)
    tile_w, xs = axis_tiles(width, tile, overlap)
    total = len(ys) * len(xs)
    result: torch.Tensor | None = None
    weight_sum: torch.Tensor | None = None
    scale = 0
    done = 0
    for y0 in ys:
        for x0 in xs:
            y1, x1 = y0 + tile_h, x0 + tile_w
            out = model(image[:, :, y0:y1, x0:x1]).float().cpu()
            if result is None:
                scale = out.shape[-1] // (x1 - x0)
                result = torch.zeros((1, out.shape[1], height * scale, width * scale), dtype=torch.float32)
                weight_sum = torch.zeros((1, 1, height * scale, width * scale), dtype=torch.float32)
            assert weight_sum is not None
            fade = overlap * scale
            wy = _ramp(out.shape[-2], fade if y0 > 0 else 0, fade if y1 < height else 0)
            wx = _ramp(out.shape[-1], fade if x0 > 0 else 0, fade if x1 < width else 0)
            weight = wy[:, None] * wx[None, :]
            oy, ox = y0 * scale, x0 * scale
            result[:, :, oy : oy + out.shape[-2], ox : ox + out.shape[-1]] += out * weight
            weight_sum[:, :, oy : oy + out.shape[-2], ox : ox + out.shape[-1]] += weight
            del out
            done += 1
            if progress:
                progress(done, total)
    assert result is not None and weight_sum is not None
    result /= weight_sum
    return result.to(device=image.device, dtype=image.dtype)
