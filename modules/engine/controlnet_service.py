"""ControlNet built into generation: the units of a request checked before anything is queued,
then, inside the job, their maps made by the preprocessors and their models loaded (through the
memory budget), and one `ControlNetApplier` wrapping the job's UNet calls.

`ControlNetService` is also what the `/controlnet/*` routes and the UI read (model list,
preprocessors, the preview of a preprocessor's output).

What a unit may be (checked by `check`, a 4xx before queueing): enabled units need a known
preprocessor ("module") and, unless the preprocessor needs none (the reference modes), a known
model (the extension's matching rules); an image, or on img2img the img2img image; a weighted
preprocessor needs its annotator files. `advanced_weighting` and `effective_region_mask` are not
applied: a warning says so.

Inside the job the slot runs, outermost first: `InpaintOnlyApplier` (an inpainting UNet's image
channels from an inpaint unit's control; inpaint_only's restore of the unmasked area in every x0
prediction), `ColorFixApplier` (tile_colorfix: the control latent's low frequencies in every x0
prediction), the residual `ControlNetApplier`, then the reference modes' attention / AdaIN
injection (modules.engine.controlnet_latent, modules.engine.controlnet_reference). `inpaint_only`
on an img2img request with its own inpaint mask falls back to `inpaint` with a warning, as the
extension does. The latent inputs come from `UnitLatents` (the map VAE-encoded per size).

Outside the UNet (`modules.engine.controlnet_post`): "Only masked" img2img inpainting crops the
control image to the inpaint area (`inpaint_crop_input_image`, default on); after decoding, the
recolor preprocessors put their map back into the image and inpaint_only pastes the unmasked
control image back through its dilated, blurred mask (the job's `after_batch` listener).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules.core.controlnet import ControlNetUnit, PreprocessorInfo, apply_preprocessor_defaults, unit_infotext
from modules.core.errors import NotFoundError, ValidationError
from modules.core.requests import GenerationRequest, Img2ImgRequest
from modules.engine.controlnet import (
    ActiveUnit,
    ControlNetApplier,
    fit_map,
    pixel_perfect_resolution,
)
from modules.engine.controlnet_latent import (
    ColorFixApplier,
    InpaintOnlyApplier,
    LatentUnit,
    is_colorfix,
    is_inpaint_only,
    paste_unmasked,
)
from modules.engine.controlnet_post import RECOLOR_CHANNELS, crop_to_inpaint_region, recolor_restore
from modules.engine.controlnet_reference import ReferenceApplier, ReferenceUnit, is_reference
from modules.engine.hooks import BatchEvent, HiresEvent, Hooks
from modules.engine.sampling import UNetCall, UNetFn, a1111_alphas_cumprod, run_unet_chain
from modules.models import controlnet_preprocessors as pre
from modules.models.controlnet import ControlNetCache, ControlNetInfo, ControlNetRegistry
from modules.models.loader import StableDiffusionModel

log = logging.getLogger(__name__)

DEFAULT_UNIT_COUNT = 3


@dataclass
class ControlNetJob:
    """What one generation needs: the wrapper slot (set once the maps are made), the infotext
    entries and the warnings."""

    slot: _Slot
    params: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    detected_maps: list[Image.Image] = field(default_factory=list)

    @property
    def applier(self) -> ControlNetApplier | None:
        return self.slot.applier


PostProcessor = Callable[[Image.Image, tuple[int, int]], Image.Image]
"""Changes one decoded image; gets the size the job's last pass generated at (width, height)."""


class _Slot:
    """The job's UNet wrappers (outermost first), set after the hooks were combined (the maps need
    the seeds), and the after-decode steps (recolor, inpaint_only's paste-back)."""

    def __init__(self, request: GenerationRequest) -> None:
        self.applier: ControlNetApplier | None = None
        self.wrappers: list[Any] = []
        self.post: list[PostProcessor] = []
        self.size = (request.width, request.height)

    def __call__(self, call: UNetCall, call_next: UNetFn) -> torch.Tensor:
        if not self.wrappers:
            return call_next(call)
        return run_unet_chain(self.wrappers, call_next, call)

    def begin_hires(self, event: HiresEvent) -> None:
        self.size = (event.width, event.height)
        for wrapper in self.wrappers:
            begin = getattr(wrapper, "begin_hires", None)
            if begin is not None:
                begin()

    def after_batch(self, event: BatchEvent) -> None:
        if not self.post or not event.images:
            return
        images = list(event.images)
        for post in self.post:
            images = [post(image, self.size) for image in images]
        event.images = images


class ControlNetService:
    """The ControlNet models, the preprocessors and the per-job applier (see the module doc)."""

    def __init__(
        self,
        registry: ControlNetRegistry,
        cache: ControlNetCache,
        *,
        annotator_dir: Path | None = None,
        unit_count: int = DEFAULT_UNIT_COUNT,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.annotator_dir = annotator_dir
        self._unit_count = unit_count

    # -- the provider the routes and the UI read -----------------------------------------------

    def list_models(self) -> list[str]:
        return self.registry.names()

    def refresh_models(self) -> None:
        self.registry.refresh()

    def preprocessors(self) -> Sequence[PreprocessorInfo]:
        return [_info_of(pre.get_preprocessor(name)) for name in pre.module_list()]

    def run_preprocessor(
        self,
        module: str,
        image: Image.Image,
        *,
        mask: Image.Image | None = None,
        resolution: int = -1,
        threshold_a: float = -1,
        threshold_b: float = -1,
        low_vram: bool = False,
        seed: int | None = None,
        pixel_perfect: bool = False,
    ) -> Image.Image:
        result = pre.run_preprocessor(
            module,
            image.convert("RGB"),
            resolution=resolution,
            threshold_a=threshold_a,
            threshold_b=threshold_b,
            annotator_dir=self.annotator_dir,
            mask=mask,
            seed=seed,
            pixel_perfect=pixel_perfect,
        )
        return result.image

    def unit_count(self) -> int:
        return self._unit_count

    # -- a request's units ---------------------------------------------------------------------

    def check(self, request: GenerationRequest) -> list[str]:
        """Refuse what cannot run (before queueing); the warnings for what runs differently."""
        warnings: list[str] = []
        img2img_image = isinstance(request, Img2ImgRequest) and bool(request.init_images)
        for index, unit in enumerate(request.controlnet_units):
            if not unit.enabled:
                continue
            where = unit.source or f"controlnet unit {index}"
            spec = pre.find_preprocessor(unit.module)
            if spec is None:
                raise ValidationError(f"{where}: module {unit.module!r} is not available")
            missing = pre.missing_weights(spec.name, self.annotator_dir)
            if missing:
                files = ", ".join(str(m) for m in missing)
                raise NotFoundError(f"{where}: preprocessor {spec.name} needs {files}; nothing is downloaded")
            try:
                pre.check_runnable(spec.name)
            except pre.PreprocessorNotBuiltInError as exc:
                raise pre.PreprocessorNotBuiltInError(f"{where}: {exc}") from exc
            if not spec.model_free:
                if not unit.has_model:
                    raise ValidationError(f"{where}: choose a ControlNet model (model is {unit.model!r})")
                self._find_model(unit, where)
            elif unit.has_model:
                warnings.append(f"{where}: {spec.name} needs no ControlNet model; {unit.model!r} is not used")
            if not unit.image_inputs() and not img2img_image:
                raise ValidationError(f"{where}: no image (give `image`, or use img2img to control with its image)")
            fallback = inpaint_only_fallback(spec.name, request)
            if fallback:
                warnings.append(f"{where}: {fallback}")
            if unit.advanced_weighting is not None:
                warnings.append(f"{where}: advanced_weighting is not applied; the unit's weight is")
            if unit.effective_region_mask is not None:
                warnings.append(f"{where}: effective_region_mask is not applied; the unit works on the whole image")
        return warnings

    def _find_model(self, unit: ControlNetUnit, where: str) -> ControlNetInfo:
        try:
            info = self.registry.find(unit.model)
        except NotFoundError as exc:
            raise NotFoundError(f"{where}: ControlNet model {unit.model!r} not found") from exc
        if info is None:
            raise ValidationError(f"{where}: choose a ControlNet model")
        return info

    def begin(self, hooks: Hooks, request: GenerationRequest) -> ControlNetJob:
        """A job's slot on `hooks` (its UNet wrapper and hires marker), empty until `prepare`."""
        slot = _Slot(request)
        hooks.add_unet_wrapper(slot)
        hooks.before_hires.add(slot.begin_hires)
        hooks.after_batch.add(slot.after_batch)
        return ControlNetJob(slot)

    def prepare(
        self, job: ControlNetJob, request: GenerationRequest, model: StableDiffusionModel, seed: int, subseed: int
    ) -> None:
        """Inside the job, with the model leased: make the maps, load the models, fill the slot."""
        started = time.perf_counter()
        unet_param = next(model.unet.parameters())
        device, dtype = unet_param.device, unet_param.dtype
        units: list[ActiveUnit] = []
        latent_units: list[LatentUnit] = []
        reference_units: list[ReferenceUnit] = []
        enabled = [u for u in request.controlnet_units if u.enabled]
        for index, unit in enumerate(enabled):
            where = unit.source or f"controlnet unit {index}"
            spec = pre.get_preprocessor(unit.module)
            if inpaint_only_fallback(spec.name, request):
                spec = pre.get_preprocessor("inpaint")  # A1111 inpaints already: the extension's fallback
            info = None if spec.model_free else self._find_model(unit, where)
            image, mask = self._input(unit, request)
            image, mask, cropped = crop_to_inpaint_region(
                image,
                mask,
                request,
                unit.resize_mode,
                module=spec.name,
                crop_input_image=unit.inpaint_crop_input_image,
            )
            if cropped:
                log.info("ControlNet %s: control image cropped to the inpaint area (Only masked)", where)
            unit = apply_preprocessor_defaults(unit, _info_of(spec))
            resolution = unit.processor_res
            if unit.pixel_perfect:
                resolution = pixel_perfect_resolution(
                    (image.height, image.width), request.height, request.width, unit.resize_mode
                )
            result = pre.run_preprocessor(
                spec.name,
                image,
                resolution=resolution,
                threshold_a=unit.threshold_a,
                threshold_b=unit.threshold_b,
                annotator_dir=self.annotator_dir,
                mask=mask,
                seed=pre.preprocessor_seed(seed, subseed),
                pixel_perfect=unit.pixel_perfect,
            )
            detected = np.asarray(result.image.convert("RGB"))
            if result.mask is not None and spec.name in ("inpaint", "inpaint_only"):
                alpha = np.asarray(result.mask.convert("L").resize(result.image.size))[:, :, None]
                detected = np.concatenate([detected, alpha], axis=2)
            detected = np.ascontiguousarray(detected)
            if unit.save_detected_map:
                job.detected_maps.append(result.display)
            if spec.name in RECOLOR_CHANNELS:
                job.slot.post.append(_recolor_post(detected, unit.resize_mode, spec.name))
            latents = UnitLatents(model, detected, unit.resize_mode)
            settings: dict[str, Any] = {  # what the latent-side wrappers take from the unit
                "weight": unit.weight,
                "guidance_start": unit.guidance_start,
                "guidance_end": unit.guidance_end,
                "control_mode": unit.control_mode,
                "hr_option": unit.hr_option,
                "threshold_a": float(unit.threshold_a),
                "threshold_b": float(unit.threshold_b),
            }
            has_mask = detected.shape[2] == 4
            if is_colorfix(spec.name) or (has_mask and spec.name in ("inpaint", "inpaint_only")):
                latent_units.append(
                    LatentUnit(
                        index=index,
                        module=spec.name,
                        latent_of=latents.latent_of,
                        mask_of=latents.mask_of if has_mask else None,
                        masked_latent_of=latents.masked_latent_of if has_mask else None,
                        **settings,
                    )
                )
            if is_reference(spec.name):
                reference_units.append(
                    ReferenceUnit(
                        index=index,
                        module=spec.name,
                        latent_of=latents.latent_of,
                        **settings,
                    )
                )
            if is_inpaint_only(spec.name) and has_mask:
                job.slot.post.append(_paste_post(latents))
            if info is not None:
                loaded = self.cache.get(info, "cpu" if unit.low_vram else device, dtype, base_family=model.family)
                units.append(
                    ActiveUnit(
                        index=index,
                        model=loaded.model,
                        detected_map=detected,
                        weight=unit.weight,
                        guidance_start=unit.guidance_start,
                        guidance_end=unit.guidance_end,
                        control_mode=unit.control_mode,
                        resize_mode=unit.resize_mode,
                        hr_option=unit.hr_option,
                        global_pool=loaded.global_pool,
                        module=spec.name,
                        low_vram=unit.low_vram,
                    )
                )
            entry = unit_infotext(index, dataclasses.replace(unit, module=spec.name), info.name if info else "None")
            if entry is not None:
                job.params[entry[0]] = entry[1]
        alphas = _alphas_cumprod(model)
        applier = ControlNetApplier(units)
        job.slot.applier = applier
        # outermost first: inpaint (image conditioning, inpaint_only's restore), colour fix, the
        # ControlNet residuals (the extension's order: colour fix, then restore, on the UNet output)
        if any(u.module in ("inpaint", "inpaint_only") for u in latent_units):
            job.slot.wrappers.append(InpaintOnlyApplier(latent_units, alphas, model.prediction_type))
        if any(is_colorfix(u.module) for u in latent_units):
            job.slot.wrappers.append(ColorFixApplier(latent_units, alphas, model.prediction_type))
        job.slot.wrappers.append(applier)
        if reference_units:  # innermost: its write pass runs the bare UNet, without the residuals
            job.slot.wrappers.append(ReferenceApplier(model.unet, reference_units, alphas, seed))
        log.info("ControlNet: %d unit(s) ready in %.2f s", len(enabled), time.perf_counter() - started)

    @staticmethod
    def _input(unit: ControlNetUnit, request: GenerationRequest) -> tuple[Image.Image, Image.Image | None]:
        inputs = unit.image_inputs()
        if inputs:
            first = inputs[0]
            image, mask = first.image, first.mask
        elif isinstance(request, Img2ImgRequest) and request.init_images:
            image, mask = request.init_images[0], request.mask
        else:  # pragma: no cover - refused by check()
            raise ValidationError(f"{unit.source or 'controlnet unit'}: no image")
        if not isinstance(image, Image.Image):
            raise ValidationError(f"{unit.source or 'controlnet unit'}: the image was not decoded")
        rgb = image.convert("RGB")
        mask_image = mask.convert("L") if isinstance(mask, Image.Image) else None
        return rgb, mask_image


class UnitLatents:
    """A unit's control image in latent space at any generation size, for the units that work on
    latents (reference, tile_colorfix, inpaint_only): `latent_of(width, height)` is the VAE encoding
    (distribution mean, times the scaling factor, float32) of the map's RGB fitted by the unit's
    resize mode; `mask_of(width, height)` its inpaint mask (1 = repaint) at the latent size. Both are
    made once per size (the first pass, then the hires pass)."""

    def __init__(self, model: StableDiffusionModel, detected: np.ndarray, resize_mode: str) -> None:
        self.model = model
        self.detected = detected
        self.resize_mode = resize_mode
        self._latents: dict[tuple[int, int], torch.Tensor] = {}
        self._masks: dict[tuple[int, int], torch.Tensor] = {}

    def latent_of(self, width: int, height: int) -> torch.Tensor:
        key = (width, height)
        if key not in self._latents:
            self._latents[key] = self._encode(self._pixels(width, height))
        return self._latents[key]

    def masked_latent_of(self, width: int, height: int) -> torch.Tensor:
        """The encoding of the image with its masked part (mask > 0.5) set to 0 in [-1, 1] (what an
        inpainting UNet's extra channels hold)."""
        key = (-width, -height)
        if key not in self._latents:
            keep = 1.0 - (self.mask_of(width, height) > 0.5).float()
            self._latents[key] = self._encode(self._pixels(width, height) * keep)
        return self._latents[key]

    def mask_of(self, width: int, height: int) -> torch.Tensor:
        """(1, 1, height, width) float, 1 = repaint (pixel size)."""
        key = (width, height)
        if key not in self._masks:
            if self.detected.shape[2] < 4:
                raise ValueError("this unit's map has no mask")
            alpha = fit_map(np.ascontiguousarray(self.detected[:, :, 3:4]), width, height, self.resize_mode)
            self._masks[key] = torch.from_numpy(alpha[:, :, 0].astype(np.float32) / 255.0)[None, None]
        return self._masks[key]

    def _pixels(self, width: int, height: int) -> torch.Tensor:
        """The map's RGB fitted to the size, (1, 3, H, W) in [-1, 1]."""
        rgb = np.asarray(self.rgb_image(width, height))
        return torch.from_numpy(np.array(rgb, copy=True)).float().div(127.5).sub(1.0).permute(2, 0, 1)[None]

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.model.vae
        param = next(vae.parameters())
        with torch.no_grad():
            latent = vae.encode(pixels.to(device=param.device, dtype=param.dtype)).latent_dist.mean
        return latent.float() * float(vae.config["scaling_factor"])

    def rgb_image(self, width: int, height: int) -> Image.Image:
        return Image.fromarray(fit_map(np.ascontiguousarray(self.detected[:, :, :3]), width, height, self.resize_mode))

    def mask_image(self, width: int, height: int) -> Image.Image:
        return Image.fromarray((self.mask_of(width, height)[0, 0].numpy() * 255).round().astype(np.uint8))


def inpaint_only_fallback(module: str, request: GenerationRequest) -> str | None:
    """inpaint_only on an img2img request that inpaints with its own mask: the extension falls back to
    inpaint_global_harmonious (the A1111 inpainting already keeps the unmasked area)."""
    if module == "inpaint_only" and isinstance(request, Img2ImgRequest) and request.mask is not None:
        return "A1111 inpaint and ControlNet inpaint_only both inpaint; the unit runs as inpaint_global_harmonious"
    return None


def _alphas_cumprod(model: StableDiffusionModel) -> torch.Tensor:
    cfg = model.scheduler_config
    return a1111_alphas_cumprod(
        float(cfg.get("beta_start", 0.00085)),
        float(cfg.get("beta_end", 0.012)),
        int(cfg.get("num_train_timesteps", 1000)),
    )


def _paste_post(latents: UnitLatents) -> PostProcessor:
    def post(image: Image.Image, size: tuple[int, int]) -> Image.Image:
        return paste_unmasked(image, latents.rgb_image(*size), latents.mask_image(*size))

    return post


def _recolor_post(detected: np.ndarray, resize_mode: str, module: str) -> PostProcessor:
    def post(image: Image.Image, size: tuple[int, int]) -> Image.Image:
        feed = fit_map(detected, size[0], size[1], resize_mode)[:, :, 0]
        return recolor_restore(image, np.ascontiguousarray(feed), module)

    return post


def _info_of(spec: pre.PreprocessorSpec) -> PreprocessorInfo:
    detail = pre.preprocessor_details()[spec.name]
    return PreprocessorInfo.from_detail(
        spec.name,
        detail,
        label=spec.label,
        tags=spec.tags,
        accepts_mask=spec.accepts_mask,
        requires_mask=spec.requires_mask,
    )


__all__ = ["ControlNetJob", "ControlNetService"]
