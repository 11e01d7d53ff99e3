"""Extras postprocessing (A1111's `run_extras`): upscale, GFPGAN, CodeFormer, as a pure function.

The work is done by callables handed in, so this module owns no weights:
- `upscale(image, upscaler_name, scale) -> image` for named upscalers (ESRGAN & co.; the
  `modules.engine.upscaling.upscale` function); the built-ins "None", "Lanczos" and "Nearest"
  are done here when no callable is given or for those names.
- `restore_faces(image, name, visibility, codeformer_weight) -> image` for "GFPGAN" and
  "CodeFormer" (see `modules.models.face_restoration.FaceRestorers`).

Order: A1111's postprocessing script order - Upscale (1000), GFPGAN (2000), CodeFormer (3000) -
or the option `postprocessing_operation_order` when set (passed as `operation_order`).
`upscale_first` is accepted and ignored, as in A1111 1.10.

Scale by (`resize_mode` 0): `upscaling_resize`. Scale to (1): by max(w/W, h/H), then, with
`upscaling_crop`, a centred crop to exactly w x h. `upscaler_1` "None" means no upscaling;
`upscaler_2` is blended over it by `extras_upscaler_2_visibility`. Built-in resizes land on a
multiple of 8, as A1111's upscalers do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from modules.core.errors import NotFoundError, ValidationError
from modules.core.results import ExtrasResult

Upscale = Callable[[Image.Image, str, float], Image.Image]
RestoreFaces = Callable[[Image.Image, str, float, float], Image.Image]

UPSCALE, GFPGAN, CODEFORMER = "Upscale", "GFPGAN", "CodeFormer"
DEFAULT_ORDER = (UPSCALE, GFPGAN, CODEFORMER)
BUILTIN_UPSCALERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
NONE = "None"


def dest_side(side: int, scale: float) -> int:
    """A1111's upscaler target: `side * scale` rounded down to a multiple of 8 (kept if < 8)."""
    target = int(side * scale)
    return target // 8 * 8 if target >= 8 else max(1, target)


def check_extras_size(
    size: tuple[int, int],
    *,
    resize_mode: int,
    upscaling_resize: float,
    upscaling_resize_w: int,
    upscaling_resize_h: int,
    upscaler_1: str | None,
    max_side: int,
    max_pixels: int,
    field: str = "image",
) -> None:
    """Refuse (422, before queueing) an upscale whose result would be larger than `max_side` per
    side or `max_pixels` in all (the `max_image_side` / `max_pixels_times_batch` settings)."""
    if _canonical_upscaler(upscaler_1) is None:
        return
    width, height = size
    if resize_mode == 1:
        scale = max(upscaling_resize_w / max(width, 1), upscaling_resize_h / max(height, 1))
    else:
        scale = float(upscaling_resize)
    if not math.isfinite(scale):
        raise ValidationError(f"{field}: the upscale factor must be a finite number")
    if scale <= 0:
        return  # run_extras names the bad value
    target = (dest_side(width, scale), dest_side(height, scale))
    if max(target) > max_side or target[0] * target[1] > max_pixels:
        raise ValidationError(
            f"{field}: upscaling {width}x{height} to {target[0]}x{target[1]} exceeds the limits of {max_side} px "
            f"per side and {max_pixels} pixels (settings max_image_side, max_pixels_times_batch)"
        )


def builtin_upscale(image: Image.Image, name: str, scale: float) -> Image.Image:
    """Lanczos / Nearest to `scale` (size rounded down to a multiple of 8, at least 1)."""
    resample = BUILTIN_UPSCALERS[name]
    width, height = dest_side(image.width, scale), dest_side(image.height, scale)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), resample=resample)


def _upscale_with(upscale: Upscale | None, image: Image.Image, name: str, scale: float) -> Image.Image:
    if name in BUILTIN_UPSCALERS:
        return builtin_upscale(image, name, scale)
    if upscale is None:
        raise NotFoundError(f"upscaler {name!r} not found")
    return upscale(image, name, scale)


def _canonical_upscaler(name: str | None) -> str | None:
    if name is None or name.strip() == "" or name.strip().lower() == "none":
        return None
    for builtin in BUILTIN_UPSCALERS:
        if builtin.lower() == name.strip().lower():
            return builtin
    return name


def _center_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    canvas = Image.new(image.mode, (width, height))
    canvas.paste(image, (width // 2 - image.width // 2, height // 2 - image.height // 2))
    return canvas


def _do_upscale(
    image: Image.Image,
    info: dict[str, Any],
    *,
    upscale: Upscale | None,
    resize_mode: int,
    upscaling_resize: float,
    upscaling_resize_w: int,
    upscaling_resize_h: int,
    upscaling_crop: bool,
    upscaler_1: str | None,
    upscaler_2: str | None,
    extras_upscaler_2_visibility: float,
) -> Image.Image:
    first = _canonical_upscaler(upscaler_1)
    if first is None:
        return image
    if resize_mode == 1:
        if upscaling_resize_w < 1 or upscaling_resize_h < 1:
            raise ValidationError("upscaling_resize_w and upscaling_resize_h must be at least 1")
        scale = max(upscaling_resize_w / image.width, upscaling_resize_h / image.height)
        info["Postprocess upscale to"] = f"{upscaling_resize_w}x{upscaling_resize_h}"
        if upscaling_crop:
            info["Postprocess crop to"] = f"{upscaling_resize_w}x{upscaling_resize_h}"
    else:
        if upscaling_resize <= 0:
            raise ValidationError("upscaling_resize must be greater than 0")
        scale = float(upscaling_resize)
        info["Postprocess upscale by"] = scale
    upscaled = _upscale_with(upscale, image, first, scale)
    info["Postprocess upscaler"] = first
    second = _canonical_upscaler(upscaler_2)
    visibility = float(min(max(extras_upscaler_2_visibility, 0.0), 1.0))
    if second is not None and visibility > 0:
        other = _upscale_with(upscale, image, second, scale)
        if other.size != upscaled.size:
            other = other.resize(upscaled.size, resample=Image.Resampling.LANCZOS)
        if other.mode != upscaled.mode:
            other = other.convert(upscaled.mode)
        upscaled = Image.blend(upscaled, other, visibility)
        info["Postprocess upscaler 2"] = second
    if resize_mode == 1 and upscaling_crop:
        upscaled = _center_crop(upscaled, upscaling_resize_w, upscaling_resize_h)
    return upscaled


def run_extras(
    image: Image.Image,
    *,
    resize_mode: int = 0,
    upscaling_resize: float = 2.0,
    upscaling_resize_w: int = 512,
    upscaling_resize_h: int = 512,
    upscaling_crop: bool = True,
    upscaler_1: str | None = NONE,
    upscaler_2: str | None = NONE,
    extras_upscaler_2_visibility: float = 0.0,
    gfpgan_visibility: float = 0.0,
    codeformer_visibility: float = 0.0,
    codeformer_weight: float = 0.0,
    upscale_first: bool = False,
    upscale: Upscale | None = None,
    restore_faces: RestoreFaces | None = None,
    operation_order: Sequence[str] = (),
) -> ExtrasResult:
    """One image through the Extras operations; the result's `info` is A1111's postprocessing
    infotext as a dict (`infotext` / `html_info` render it). `upscale_first` is ignored (A1111 1.10
    ignores it too; the order is `operation_order` or Upscale, GFPGAN, CodeFormer)."""
    del upscale_first
    if resize_mode not in (0, 1):
        raise ValidationError(f"resize_mode must be 0 (scale by) or 1 (scale to), got {resize_mode}")
    order = [op for op in operation_order if op in DEFAULT_ORDER]
    order += [op for op in DEFAULT_ORDER if op not in order]
    current = image.convert("RGB") if image.mode != "RGB" else image
    info: dict[str, Any] = {}
    for op in order:
        if op == UPSCALE:
            current = _do_upscale(
                current,
                info,
                upscale=upscale,
                resize_mode=resize_mode,
                upscaling_resize=upscaling_resize,
                upscaling_resize_w=upscaling_resize_w,
                upscaling_resize_h=upscaling_resize_h,
                upscaling_crop=upscaling_crop,
                upscaler_1=upscaler_1,
                upscaler_2=upscaler_2,
                extras_upscaler_2_visibility=extras_upscaler_2_visibility,
            )
        elif op == GFPGAN and gfpgan_visibility > 0:
            visibility = min(float(gfpgan_visibility), 1.0)
            if restore_faces is None:
                raise NotFoundError("GFPGAN: face restoration is not available")
            current = restore_faces(current, GFPGAN, visibility, 0.0)
            info["GFPGAN visibility"] = round(visibility, 3)
        elif op == CODEFORMER and codeformer_visibility > 0:
            visibility = min(float(codeformer_visibility), 1.0)
            weight = float(min(max(codeformer_weight, 0.0), 1.0))
            if restore_faces is None:
                raise NotFoundError("CodeFormer: face restoration is not available")
            current = restore_faces(current, CODEFORMER, visibility, weight)
            info["CodeFormer visibility"] = round(visibility, 3)
            info["CodeFormer weight"] = round(weight, 3)
    return ExtrasResult(image=current, info=info)
