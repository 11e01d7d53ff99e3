"""ControlNet's latent-space post-processing of the UNet output, as sd-webui-controlnet does it
(facts read from the extension's `scripts/hook.py` and `scripts/controlnet.py`; no code taken):

tile_colorfix / tile_colorfix+sharp (`ColorFixApplier`), hook.py's "Post-processing for color
fix" after the UNet's output layer, for every colorfix unit in turn:

- the unit's image is VAE-encoded at the size of the call (`latent_of`, the reference x0);
- ``k = int(threshold_a)`` (the "Variation" slider, 3..32, default 8), doubled in the hires-fix
  pass when the unit works there (`hr_option`); a unit off in the pass by `hr_option` still
  gets the fix, with the undoubled k (the extension only tests hr_option for the doubling);
- ``blur(x, k)`` is a (2k+1) x (2k+1) box average over the latent with replicated borders;
- the output is turned into the x0 prediction at the rounded timestep, its low frequencies are
  swapped for the reference's: ``x0 = x0_prd - blur(x0_prd, k) + blur(ref, k)``;
- +sharp: ``d = threshold_b * 0.01`` (the "Sharpness" slider, 0..2, default 1 -> d = 0.01);
  the unconditional rows take ``d * blur(x0, k) + (1 - d) * x0``, the conditional rows keep x0
  (rows without a CFG part count as conditional, as the extension's unmarked batches do);
- x0 goes back to the model's output type and is mixed: ``out = new * w + out * (1 - w)`` with
  ``w = clamp(weight, 0, 1)``;
- the guidance range is not consulted: the fix runs at every call (the extension's colorfix
  loop does not look at `guidance_stopped`); the tile ControlNet's residuals, which do follow
  the guidance range, are `ControlNetApplier`'s business.

inpaint_only / inpaint_only+lama (`InpaintOnlyApplier`), hook.py's "Post-processing for
restore" (after the colour fix) and its "Replace x_t to support inpaint models":

- restore: the unit's pixel mask (the alpha of its 4-channel control at the call's size, 1 =
  inpaint) goes to the latent grid with a max-pool of kernel 10, stride 8, padding 1 (every
  latent cell looks one pixel beyond its 8x8 block, so the masked area grows by up to a cell);
  ``x0 = x0_prd * m + ref * (1 - m)`` with ref the unit's image encoded (`latent_of`), back to
  the output type, mixed by the clamped weight; at every call, both passes (no guidance or
  hr_option test in the extension either);
- inpainting UNets (9 input channels; here `image_cond` with 5 channels): every inpaint unit's
  control replaces the image conditioning by ``[max_pool8(mask > 0.5), VAE((rgb*2-1) * (1 -
  (mask > 0.5)))]`` (`masked_latent_of` gives the second part; the last such unit wins);
- after decoding (`paste_unmasked`, controlnet.py's `inpaint_only_post_processing`): the mask
  at the final size is dilated with a sigma x sigma square and box-blurred sigma x sigma
  (sigma = the "control_net_inpaint_blur_sigma" option, default 7), then ``y = m * generated
  + (1 - m) * control image``;
- inpaint_only+lama: the first noise of a batch becomes ``q_sample(lama latent, t=999, noise)``
  (`lama_initial_noise`, the extension's `HackedImageRNG`);
- `inpaint_only_fallback`: inpaint_only (exactly that module) on an img2img request with an
  A1111 mask runs as "inpaint" (inpaint_global_harmonious), with the extension's warning.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules.engine.controlnet import BALANCED, HR_BOTH, works_in_pass
from modules.engine.sampling import UNetCall, UNetFn

log = logging.getLogger(__name__)

COLORFIX = "tile_colorfix"
COLORFIX_SHARP = "tile_colorfix+sharp"
INPAINT_ONLY = "inpaint_only"
INPAINT_ONLY_LAMA = "inpaint_only+lama"
DEFAULT_VARIATION = 8.0  # tile_colorfix's "Variation" slider (threshold_a)
DEFAULT_SHARPNESS = 1.0  # tile_colorfix+sharp's "Sharpness" slider (threshold_b)
INPAINT_BLUR_SIGMA = 7  # the extension's "control_net_inpaint_blur_sigma" option default
FALLBACK_WARNING = "A1111 inpaint and ControlNet inpaint duplicated. Falls back to inpaint_global_harmonious."
EPSILON, V_PREDICTION = "epsilon", "v_prediction"

LatentOf = Callable[[int, int], torch.Tensor]  # (width_px, height_px) -> (1, 4, h, w) scaled latent
MaskOf = Callable[[int, int], torch.Tensor]  # (width_px, height_px) -> (1, 1, H, W) pixel mask in [0, 1]


def is_colorfix(module: str) -> bool:
    return "colorfix" in module


def is_inpaint_only(module: str) -> bool:
    return "inpaint_only" in module


@dataclass
class LatentUnit:
    """One enabled unit whose module works on latents. `latent_of` is the unit's image fitted
    to the size asked (the unit's resize mode), VAE-encoded and scaled; `mask_of` (inpaint
    units) its mask at that size, 1 = inpaint; `masked_latent_of` (inpaint units, inpainting
    UNets only) the encoding of the image with the masked part (mask > 0.5) set to 0 in [-1, 1].
    `control_mode` and the guidance range are kept for the lead's bookkeeping: the extension's
    latent post-processing does not use them."""

    index: int
    module: str
    latent_of: LatentOf
    mask_of: MaskOf | None = None
    masked_latent_of: LatentOf | None = None
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = BALANCED
    hr_option: str = HR_BOTH
    threshold_a: float = DEFAULT_VARIATION
    threshold_b: float = DEFAULT_SHARPNESS

    def works_in(self, hires: bool) -> bool:
        return works_in_pass(self.hr_option, hires)

    def mix_weight(self) -> float:
        return max(0.0, min(1.0, float(self.weight)))

    def blur_size(self, hires: bool) -> int:
        """k of the (2k+1)-wide box blur: the Variation slider, doubled in the hires pass when
        the unit works there."""
        k = int(self.threshold_a)
        return k * 2 if hires and self.works_in(hires) else k


# ------------------------------------------------------------------------------ helpers


def box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over the (2k+1) x (2k+1) window around every cell, borders replicated (same size)."""
    if k <= 0:
        return x
    padded = F.pad(x, (k, k, k, k), mode="replicate")
    return F.avg_pool2d(padded, kernel_size=2 * k + 1, stride=1)


def latent_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The pixel mask (1, 1, H, W) on the latent grid (h, w) as the extension's restore takes
    it: max-pool kernel 10, stride 8, padding 1. A mask given at the latent size is used as is;
    another size is first resized (nearest) to 8x the grid."""
    mask = mask.float()
    if mask.ndim == 2:
        mask = mask[None, None]
    if tuple(mask.shape[-2:]) == (height, width):
        return mask
    if tuple(mask.shape[-2:]) != (height * 8, width * 8):
        mask = F.interpolate(mask, size=(height * 8, width * 8), mode="nearest")
    pooled = F.max_pool2d(mask, kernel_size=10, stride=8, padding=1)
    if tuple(pooled.shape[-2:]) != (height, width):
        pooled = F.interpolate(pooled, size=(height, width), mode="nearest")
    return pooled


def _cond_mark(call: UNetCall, like: torch.Tensor) -> torch.Tensor:
    """1 for rows the extension treats as conditional (all but "uncond"), (N, 1, 1, 1)."""
    marks = [0.0 if part == "uncond" else 1.0 for part in call.parts_of_rows()]
    return torch.tensor(marks, dtype=like.dtype, device=like.device).view(-1, 1, 1, 1)


def _rows(latent: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    latent = latent.to(device=like.device, dtype=like.dtype)
    if tuple(latent.shape[-2:]) != tuple(like.shape[-2:]):
        log.warning(
            "ControlNet: the reference latent is %s, the call %s; resized",
            tuple(latent.shape[-2:]),
            tuple(like.shape[-2:]),
        )
        latent = F.interpolate(latent, size=tuple(like.shape[-2:]), mode="bilinear")
    if latent.shape[0] != like.shape[0]:
        latent = latent[:1].expand(like.shape[0], -1, -1, -1)
    return latent


class Schedule:
    """Conversions between the model's output (eps or v), x0 and x_t at the rounded training
    timestep (the extension rounds the timestep and reads the model's schedule there)."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = EPSILON) -> None:
        if prediction_type not in (EPSILON, V_PREDICTION):
            raise ValueError(f"unsupported prediction type: {prediction_type}")
        self.alphas_cumprod = alphas_cumprod.detach().to(torch.float64).cpu()
        self.prediction_type = prediction_type

    def coefficients(self, timestep: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(abar_t), sqrt(1 - abar_t), shaped (N, 1, 1, 1) like `like`."""
        last = int(self.alphas_cumprod.shape[0]) - 1
        t = torch.round(timestep.detach().float().cpu()).long().clamp(0, last)
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        abar = self.alphas_cumprod[t]
        a = abar.sqrt().to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)
        s = (1.0 - abar).sqrt().to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)
        return a, s

    def x0_of(self, out: torch.Tensor, xt: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        a, s = self.coefficients(timestep, xt)
        if self.prediction_type == V_PREDICTION:
            return a * xt - s * out
        return (xt - s * out) / a

    def output_of(self, x0: torch.Tensor, xt: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        a, s = self.coefficients(timestep, xt)
        if self.prediction_type == V_PREDICTION:
            return (a * xt - x0) / s
        return (xt - a * x0) / s


# ------------------------------------------------------------------------------ tile_colorfix


@dataclass
class ColorFixApplier:
    """The UNet wrapper for the colorfix units of one generation (`Hooks.add_unet_wrapper`);
    `begin_hires()` marks the hires pass. `calls` counts the unit applications."""

    units: Sequence[LatentUnit]
    alphas_cumprod: torch.Tensor
    prediction_type: str = EPSILON
    hires: bool = False
    calls: int = 0

    def __post_init__(self) -> None:
        self._schedule = Schedule(self.alphas_cumprod, self.prediction_type)

    def begin_hires(self, *_args: object) -> None:
        self.hires = True

    def __call__(self, call: UNetCall, call_next: UNetFn) -> torch.Tensor:
        out = call_next(call)
        units = [u for u in self.units if is_colorfix(u.module) and u.mix_weight() > 0]
        if not units:
            return out
        xt = call.x.float()
        h = out.float()
        height, width = int(xt.shape[2]), int(xt.shape[3])
        for unit in units:
            k = unit.blur_size(self.hires)
            reference = _rows(unit.latent_of(width * 8, height * 8), xt)
            x0_prd = self._schedule.x0_of(h, xt, call.timestep)
            x0 = x0_prd - box_blur(x0_prd, k) + box_blur(reference, k)
            if "+sharp" in unit.module:
                detail = float(unit.threshold_b) * 0.01
                soft = detail * box_blur(x0, k) + (1.0 - detail) * x0
                mark = _cond_mark(call, x0)
                x0 = mark * x0 + (1.0 - mark) * soft
            w = unit.mix_weight()
            h = self._schedule.output_of(x0, xt, call.timestep) * w + h * (1.0 - w)
            self.calls += 1
        return h.to(out.dtype)


# ------------------------------------------------------------------------------ inpaint_only


@dataclass
class InpaintOnlyApplier:
    """The UNet wrapper for the inpaint units of one generation: the image conditioning of an
    inpainting UNet from the unit's control (any inpaint unit with `masked_latent_of`), and
    inpaint_only's restore of the unmasked area in the output. `begin_hires()` is accepted for
    the common calling convention; neither step depends on the pass (the callables give the
    pass's size). Put it outside `ColorFixApplier` in the chain (outermost first) to keep the
    extension's order: colour fix, then restore."""

    units: Sequence[LatentUnit]
    alphas_cumprod: torch.Tensor
    prediction_type: str = EPSILON
    hires: bool = False
    calls: int = 0

    def __post_init__(self) -> None:
        self._schedule = Schedule(self.alphas_cumprod, self.prediction_type)

    def begin_hires(self, *_args: object) -> None:
        self.hires = True

    def _image_cond(self, call: UNetCall) -> UNetCall:
        cond = call.image_cond
        if cond is None or cond.shape[1] != 5:
            return call
        height, width = int(call.x.shape[2]), int(call.x.shape[3])
        for unit in self.units:
            if "inpaint" not in unit.module or unit.mask_of is None or unit.masked_latent_of is None:
                continue
            mask = (unit.mask_of(width * 8, height * 8).float() > 0.5).float()
            if mask.ndim == 2:
                mask = mask[None, None]
            if tuple(mask.shape[-2:]) != (height * 8, width * 8):
                mask = F.interpolate(mask, size=(height * 8, width * 8), mode="nearest")
            small = F.max_pool2d(mask, kernel_size=8)
            masked = _rows(unit.masked_latent_of(width * 8, height * 8), cond[:, 1:].float())
            small = small.to(device=cond.device).expand(cond.shape[0], -1, -1, -1)
            cond = torch.cat([small.to(masked.dtype), masked], dim=1).to(cond.dtype)
        if cond is call.image_cond:
            return call
        return dataclasses.replace(call, image_cond=cond)

    def __call__(self, call: UNetCall, call_next: UNetFn) -> torch.Tensor:
        out = call_next(self._image_cond(call))
        units = [u for u in self.units if is_inpaint_only(u.module) and u.mask_of is not None and u.mix_weight() > 0]
        if not units:
            return out
        xt = call.x.float()
        h = out.float()
        height, width = int(xt.shape[2]), int(xt.shape[3])
        for unit in units:
            assert unit.mask_of is not None
            mask = latent_mask(unit.mask_of(width * 8, height * 8), height, width).to(device=xt.device)
            reference = _rows(unit.latent_of(width * 8, height * 8), xt)
            x0_prd = self._schedule.x0_of(h, xt, call.timestep)
            x0 = x0_prd * mask + reference * (1.0 - mask)
            w = unit.mix_weight()
            h = self._schedule.output_of(x0, xt, call.timestep) * w + h * (1.0 - w)
            self.calls += 1
        return h.to(out.dtype)


# ------------------------------------------------------------------------------ outside the UNet


def paste_mask(mask: Image.Image | np.ndarray, sigma: int = INPAINT_BLUR_SIGMA) -> np.ndarray:
    """The blend mask of inpaint_only's paste-back (H, W float32 in [0, 1], 1 = generated): the
    unit's mask dilated with a sigma x sigma square, then box-blurred sigma x sigma. sigma <= 0
    keeps the mask as it is (the extension fails there: OpenCV refuses a 0-wide blur)."""
    m: np.ndarray
    if isinstance(mask, Image.Image):
        m = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    else:
        m = np.asarray(mask, dtype=np.float32) / (255.0 if mask.dtype == np.uint8 else 1.0)
        if m.ndim == 3:
            m = m[..., 0]
    if sigma > 0:
        m = np.asarray(cv2.dilate(m, np.ones((sigma, sigma), dtype=np.uint8)), dtype=np.float32)
        m = np.asarray(cv2.blur(m, (sigma, sigma)), dtype=np.float32)
    return np.clip(m, 0.0, 1.0).astype(np.float32)


def paste_unmasked(
    generated: Image.Image,
    original: Image.Image,
    mask: Image.Image | np.ndarray,
    sigma: int = INPAINT_BLUR_SIGMA,
) -> Image.Image:
    """inpaint_only's after-decode step: ``m * generated + (1 - m) * original`` with `paste_mask`'s
    m. `original` is the unit's control image (RGB) and `mask` its mask, both at the final
    image size (the hires size after hires fix). A size mismatch leaves `generated` as it is,
    logged, as the extension does."""
    gen = np.asarray(generated.convert("RGB"), dtype=np.float32)
    m = paste_mask(mask, sigma)
    if original.size != generated.size or m.shape != gen.shape[:2]:
        log.error(
            "ControlNet inpaint_only: the image is %dx%d but the control %dx%d (mask %dx%d); nothing pasted",
            generated.width,
            generated.height,
            original.width,
            original.height,
            m.shape[1],
            m.shape[0],
        )
        return generated
    raw = np.asarray(original.convert("RGB"), dtype=np.float32)
    blended = m[..., None] * gen + (1.0 - m[..., None]) * raw
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def lama_initial_noise(noise: torch.Tensor, latent: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """inpaint_only+lama's first noise of a batch: the LaMa-filled image's latent diffused to the
    last training step with this noise, ``sqrt(abar_999) * latent + sqrt(1 - abar_999) * noise``.
    Noise of another size (hires, refiner) is returned as it is."""
    if tuple(noise.shape[-2:]) != tuple(latent.shape[-2:]):
        return noise
    abar = float(alphas_cumprod.detach().to(torch.float64).cpu()[-1])
    x0 = latent.to(device=noise.device, dtype=noise.dtype)
    if x0.shape[0] != noise.shape[0]:
        x0 = x0[:1].expand(noise.shape[0], -1, -1, -1)
    return abar**0.5 * x0 + (1.0 - abar) ** 0.5 * noise


def inpaint_only_fallback(module: str, is_img2img_inpaint: bool) -> str | None:
    """The extension's warning when inpaint_only (exactly; not +lama) is used on an img2img
    request with an A1111 mask: the unit then runs as "inpaint" (inpaint_global_harmonious)."""
    if module == INPAINT_ONLY and is_img2img_inpaint:
        return FALLBACK_WARNING
    return None


__all__ = [
    "COLORFIX",
    "COLORFIX_SHARP",
    "FALLBACK_WARNING",
    "INPAINT_BLUR_SIGMA",
    "INPAINT_ONLY",
    "INPAINT_ONLY_LAMA",
    "ColorFixApplier",
    "InpaintOnlyApplier",
    "LatentUnit",
    "Schedule",
    "box_blur",
    "inpaint_only_fallback",
    "is_colorfix",
    "is_inpaint_only",
    "lama_initial_noise",
    "latent_mask",
    "paste_mask",
    "paste_unmasked",
]
