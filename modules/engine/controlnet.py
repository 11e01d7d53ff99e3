"""ControlNet applied through the UNet-call wrapper (`modules.engine.sampling.UNetCall`).

One `ControlNetApplier` per generation holds the active units: a loaded diffusers
`ControlNetModel`, the detected map (the preprocessor's output, HWC uint8) and the unit's
settings. At every UNet call it runs each unit whose guidance range covers the call on the same
rows (the whole CFG batch), scales the 12 down-block residuals and the middle one, sums the units
and hands the UNet the residuals. The rules are sd-webui-controlnet's (facts, see
shared/reference/features.md section 3):

- guidance: a unit is off at a call when ``step / steps`` is below `guidance_start` or above
  `guidance_end` (A1111's denoiser step counter);
- weights: "Balanced" scales every residual by `weight`; "My prompt is more important" and
  "ControlNet is more important" use the soft scales ``weight * 0.825 ** (12 - i)`` (i = 0..12
  over the down residuals then the middle one: SD 1.x/2.x's middle residual at full weight;
  SDXL's ten residuals take the first ten scales, as in the extension); "ControlNet is more
  important" (and shuffle models, `global_pool`) apply the control to the conditional rows
  only, which CFG then amplifies; shuffle models average each residual over the image;
- the hires-fix pass uses the soft scales for canny / mlsd maps, and `hr_option` says in which
  pass a unit works ("Both", "Low res only", "High res only");
- the map is fitted to the image size by the resize mode: "Just Resize" stretches, "Crop and
  Resize" covers and crops the centre, "Resize and Fill" fits inside and fills the rest with the
  median colour of the map's border; `pixel_perfect_resolution` is the preprocessor resolution
  that makes the map land 1:1 on the image;
- an inpaint map (4 channels: RGB + mask) is given to the model as ``rgb * (1 - m) - m``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from modules.engine.sampling import UNetCall, UNetFn

log = logging.getLogger(__name__)

BALANCED = "Balanced"
PROMPT_MORE_IMPORTANT = "My prompt is more important"
CONTROL_MORE_IMPORTANT = "ControlNet is more important"
JUST_RESIZE = "Just Resize"
CROP_AND_RESIZE = "Crop and Resize"
RESIZE_AND_FILL = "Resize and Fill"
HR_BOTH, HR_LOW_ONLY, HR_HIGH_ONLY = "Both", "Low res only", "High res only"
SOFT_SCALES = tuple(0.825 ** float(12 - i) for i in range(13))
_HIRES_SOFT_MAPS = ("canny", "mlsd")  # maps the extension softens in the hires pass


# ------------------------------------------------------------------------------ the map


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area when shrinking, cubic when enlarging; two-level maps (edges) stay two-level."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    shrinking = width * height < w * h
    values = np.unique(image[..., :3])
    binary = values.size <= 2
    interpolation = cv2.INTER_NEAREST if binary else cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    if out.ndim == 2 and image.ndim == 3:
        out = out[:, :, None]
    return np.asarray(out, dtype=image.dtype)


def fit_map(image: np.ndarray, width: int, height: int, resize_mode: str) -> np.ndarray:
    """The detected map (HWC uint8) at the image's size, by the unit's resize mode."""
    if image.ndim == 2:
        image = image[:, :, None]
    if resize_mode == JUST_RESIZE:
        return _resize(image, width, height)
    old_h, old_w = image.shape[:2]
    k_h, k_w = height / old_h, width / old_w
    if resize_mode == RESIZE_AND_FILL:
        k = min(k_h, k_w)
        borders = np.concatenate([image[0, :, :], image[-1, :, :], image[:, 0, :], image[:, -1, :]], axis=0)
        colour = np.median(borders, axis=0).astype(image.dtype)
        if colour.shape[0] == 4:
            colour[3] = 255  # inpaint maps: the fill is masked
        canvas = np.tile(colour[None, None], (height, width, 1))
        resized = _resize(image, max(1, round(old_w * k)), max(1, round(old_h * k)))
        new_h, new_w = resized.shape[:2]
        top, left = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
        canvas[top : top + new_h, left : left + new_w] = resized[:height, :width]
        return canvas
    k = max(k_h, k_w)  # Crop and Resize
    resized = _resize(image, max(width, round(old_w * k)), max(height, round(old_h * k)))
    new_h, new_w = resized.shape[:2]
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


def pixel_perfect_resolution(image_hw: tuple[int, int], target_h: int, target_w: int, resize_mode: str) -> int:
    """The preprocessor resolution that makes the map 1:1 with the image (the extension's rule)."""
    raw_h, raw_w = image_hw
    k_h, k_w = target_h / raw_h, target_w / raw_w
    k = min(k_h, k_w) if resize_mode == RESIZE_AND_FILL else max(k_h, k_w)
    return int(np.round(k * min(raw_h, raw_w)))


def map_tensor(image: np.ndarray) -> torch.Tensor:
    """(1, C, H, W) float in [0, 1]; a 4-channel inpaint map becomes ``rgb * (1 - m) - m``."""
    tensor = torch.from_numpy(np.array(image, copy=True)).float().div_(255.0).permute(2, 0, 1)[None]
    if tensor.shape[1] == 4:
        rgb, mask = tensor[:, :3], (tensor[:, 3:4] > 0.5).float()
        tensor = rgb * (1 - mask) - mask
    elif tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    return tensor


# ------------------------------------------------------------------------------ the unit rules


def in_guidance(step: int, steps: int, start: float, end: float) -> bool:
    """A unit is off at a call when ``step / steps`` is below `start` or above `end`."""
    fraction = step / max(steps, 1)
    return not (fraction < start or fraction > end)


def works_in_pass(hr_option: str, hires: bool) -> bool:
    """Whether a unit with this `hr_option` works in the first pass (hires False) or the hires pass."""
    if hr_option == HR_LOW_ONLY:
        return not hires
    if hr_option == HR_HIGH_ONLY:
        return hires
    return True


# ------------------------------------------------------------------------------ applying


@dataclass
class ActiveUnit:
    """One enabled unit, ready: its model (a diffusers `ControlNetModel` or anything called the
    same way), its detected map and its settings."""

    index: int
    model: Any
    detected_map: np.ndarray  # HWC uint8 (RGB, or RGBA for inpaint)
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = BALANCED
    resize_mode: str = CROP_AND_RESIZE
    hr_option: str = HR_BOTH
    global_pool: bool = False  # shuffle models
    module: str = "none"
    low_vram: bool = False  # the model rests on the CPU and visits the UNet's device for each call
    _maps: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def active_at(self, step: int, steps: int) -> bool:
        return in_guidance(step, steps, self.guidance_start, self.guidance_end)

    def hint(self, width: int, height: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        cached = self._maps.get((width, height))
        if cached is None:
            cached = map_tensor(fit_map(self.detected_map, width, height, self.resize_mode))
            self._maps = {(width, height): cached}
        return cached.to(device=device, dtype=dtype)

    def scales(self, hires: bool) -> tuple[float, ...]:
        soft = self.control_mode != BALANCED or (hires and any(m in self.module for m in _HIRES_SOFT_MAPS))
        return tuple(self.weight * s for s in SOFT_SCALES) if soft else (self.weight,) * 13

    def cond_only(self) -> bool:
        return self.control_mode == CONTROL_MORE_IMPORTANT or self.global_pool

    def works_in(self, hires: bool) -> bool:
        return works_in_pass(self.hr_option, hires)


@dataclass
class ControlNetApplier:
    """The UNet wrapper for one generation (`Hooks.add_unet_wrapper`). `begin_hires()` marks the
    hires-fix pass (from the `before_hires` hook). `calls` counts the unit runs (tests, notes)."""

    units: Sequence[ActiveUnit]
    hires: bool = False
    calls: int = 0

    def begin_hires(self, *_args: object) -> None:
        self.hires = True

    def __call__(self, call: UNetCall, call_next: UNetFn) -> torch.Tensor:
        active = [
            u for u in self.units if u.works_in(self.hires) and u.weight != 0 and u.active_at(call.step, call.steps)
        ]
        if not active:
            return call_next(call)
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        parts = call.parts_of_rows()
        for unit in active:
            unit_down, unit_mid = self._run(unit, call)
            scales = unit.scales(self.hires)
            outputs = [*unit_down, unit_mid]  # 12 + 1 for SD 1.x/2.x, 9 + 1 for SDXL
            # the scales are taken in order as far as they go (SDXL's middle residual gets the
            # tenth soft scale), as the extension does
            residuals = [r * s for r, s in zip(outputs, scales[: len(outputs)], strict=True)]
            if unit.cond_only():
                mark = torch.tensor([1.0 if p == "cond" else 0.0 for p in parts], device=call.x.device)
                residuals = [r * mark.to(r.dtype).view(-1, 1, 1, 1) for r in residuals]
            if unit.global_pool:
                residuals = [r.mean(dim=(2, 3), keepdim=True) for r in residuals]
            if down is None or mid is None:
                down, mid = residuals[:-1], residuals[-1]
            else:
                down = [a + b for a, b in zip(down, residuals[:-1], strict=True)]
                mid = mid + residuals[-1]
            self.calls += 1
        assert down is not None and mid is not None
        if call.down_block_additional_residuals is not None:
            down = [a + b for a, b in zip(call.down_block_additional_residuals, down, strict=True)]
        if call.mid_block_additional_residual is not None:
            mid = call.mid_block_additional_residual + mid
        return call_next(
            dataclasses.replace(call, down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid)
        )

    def _run(self, unit: ActiveUnit, call: UNetCall) -> tuple[list[torch.Tensor], torch.Tensor]:
        model = unit.model
        param = next(model.parameters())
        dtype, device = param.dtype, param.device
        x = call.x
        if unit.low_vram and device != x.device:
            model.to(x.device)
            try:
                return self._run_on(model, unit, call, x.device, dtype)
            finally:
                model.to(device)
        return self._run_on(model, unit, call, device, dtype)

    def _run_on(
        self, model: Any, unit: ActiveUnit, call: UNetCall, device: torch.device, dtype: torch.dtype
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = call.x
        height, width = int(x.shape[2]) * 8, int(x.shape[3]) * 8
        hint = unit.hint(width, height, device, dtype).expand(x.shape[0], -1, -1, -1)
        kwargs: dict[str, Any] = {}
        if call.text.pooled is not None and call.added_time_ids is not None:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": call.text.pooled.to(device=device, dtype=dtype),
                "time_ids": call.added_time_ids.to(device=device, dtype=dtype),
            }
        with torch.no_grad():
            down, mid = model(
                x.to(device=device, dtype=dtype),
                call.timestep.to(device),
                encoder_hidden_states=call.text.hidden.to(device=device, dtype=dtype),
                controlnet_cond=hint,
                conditioning_scale=1.0,
                return_dict=False,
                **kwargs,
            )
        out_device = x.device
        return [d.to(out_device) for d in down], mid.to(out_device)
