"""Requests -> images on the worker thread: txt2img (+ hires fix), img2img, inpainting.

Runs inside a model lease; everything model-specific comes from the `StableDiffusionModel`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from modules.core.errors import ValidationError
from modules.core.requests import (
    FILL_FILL,
    FILL_LATENT_NOISE,
    FILL_LATENT_NOTHING,
    RESIZE_LATENT,
    GenerationRequest,
    Img2ImgRequest,
    Txt2ImgRequest,
)
from modules.core.results import Result
from modules.core.styles import extract_extra_networks
from modules.engine import images as imgops
from modules.engine import noise as noise_mod
from modules.engine import samplers as smp
from modules.engine.conditioning import ConditioningSettings, Encoder, PromptPlan, step_conds
from modules.engine.hooks import BatchEvent, Hooks
from modules.engine.sampling import MaskBlend, SamplingJob, sample
from modules.engine.worker import ImageSkipped, JobContext, JobInterrupted
from modules.models.loader import StableDiffusionModel

log = logging.getLogger(__name__)

LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}

# Cheap latent -> RGB previews (linear factors per latent channel, SD 1.x/2.x and SDXL).
_PREVIEW_SD = torch.tensor(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
)
_PREVIEW_XL = torch.tensor(
    [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]]
)


@dataclass
class EngineSettings:
    """Options the engine reads for one job (resolved from Options + override_settings)."""

    clip_skip: int = 1
    emphasis: str = "Original"
    comma_padding_backtrack: int = 20
    rng_source: str = "GPU"
    eta_noise_seed_delta: int = 0
    img2img_fix_steps: bool = False
    initial_noise_multiplier: float = 1.0
    inpainting_mask_weight: float = 1.0
    preview_every: int = 0
    use_old_scheduling: bool = False


def preview_decoder(
    model: StableDiffusionModel, taesd: torch.nn.Module | None = None
) -> Callable[[torch.Tensor], Image.Image]:
    """Latents -> a preview image of the first image of the batch: TAESD when its weights are
    present, else a cheap per-channel linear approximation."""
    factors = _PREVIEW_XL if model.family.is_sdxl else _PREVIEW_SD

    def cheap(latents: torch.Tensor) -> Image.Image:
        rgb = torch.einsum("chw,cr->rhw", latents[0].float().cpu(), factors)
        return imgops.to_images(rgb[None].clamp(-1, 1))[0]

    def tiny(latents: torch.Tensor) -> Image.Image:
        assert taesd is not None
        with torch.no_grad():
            pixels = taesd(latents[:1].float().cpu())
        return imgops.to_images(pixels)[0]

    return cheap if taesd is None else tiny


def _decode(model: StableDiffusionModel, latents: torch.Tensor) -> list[Image.Image]:
    vae = model.vae
    scale = float(vae.config["scaling_factor"])
    with torch.no_grad():
        pixels = vae.decode(latents.to(vae.dtype) / scale).sample
    return imgops.to_images(pixels)


def _encode(model: StableDiffusionModel, pixels: torch.Tensor) -> torch.Tensor:
    vae = model.vae
    with torch.no_grad():
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mean  # deterministic (mode)
    return latents.float() * float(vae.config["scaling_factor"])


def _time_ids(model: StableDiffusionModel, width: int, height: int, batch: int) -> torch.Tensor | None:
    if not model.family.is_sdxl:
        return None
    # base: original size, crop top-left, target size; the refiner: size, crop, aesthetic score
    refiner = model.family.base == "sdxl-refiner"
    ids = [height, width, 0, 0, 6.0] if refiner else [height, width, 0, 0, height, width]
    return torch.tensor([ids] * batch, dtype=torch.float32, device=model.device)


@dataclass
class _Pass:
    """One denoising pass over a batch."""

    sampler: smp.SamplerInfo
    schedule: smp.ScheduleInfo
    steps: int
    start_index: int = 0


def _scheduler_for(model: StableDiffusionModel, p: _Pass, seeds: list[int] | None = None) -> Any:
    """A fresh scheduler for one pass; `seeds` seed the Brownian tree of DPM++ SDE (per image)."""
    scheduler: Any = smp.build_scheduler(
        p.sampler, p.schedule, model.scheduler_config, is_sdxl=model.family.is_sdxl, seeds=seeds
    )
    scheduler.set_timesteps(p.steps, device=model.device)
    return scheduler


class Processor:
    """Runs one request on one model. Created per job by the engine service."""

    def __init__(
        self,
        model: StableDiffusionModel,
        request: GenerationRequest,
        settings: EngineSettings,
        ctx: JobContext | None,
        *,
        infotext_params: Callable[[Processor, int, int], dict[str, Any]] | None = None,
        preview_taesd: torch.nn.Module | None = None,
        model_upscale: Callable[[Image.Image, str, tuple[int, int]], Image.Image] | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.model_upscale = model_upscale
        self.hooks = hooks if hooks is not None else Hooks()
        self.model = model
        self.request = request
        self.settings = settings
        self.ctx = ctx
        self.sampler, self.schedule = smp.resolve_sampler(request.effective_sampler, request.scheduler)
        self.encoder = Encoder(
            model,
            ConditioningSettings(
                clip_skip=settings.clip_skip,
                emphasis=settings.emphasis,  # type: ignore[arg-type]
                comma_padding_backtrack=settings.comma_padding_backtrack,
                use_old_scheduling=settings.use_old_scheduling,
            ),
        )
        self.infotext_params = infotext_params
        self._seeds: tuple[list[int], list[int]] | None = None
        self.warnings: list[str] = []
        self.partial: torch.Tensor | None = None
        if ctx is not None:
            ctx.preview_every = settings.preview_every
            ctx.preview_decoder = preview_decoder(model, preview_taesd)

    # -- seeds and prompts -------------------------------------------------------------------

    def seeds(self) -> tuple[list[int], list[int]]:
        """Every image's seed and subseed: -1 resolved once per job, then seed + i (A1111)."""
        if self._seeds is None:
            r = self.request
            total = r.batch_size * r.n_iter
            seed = noise_mod.resolve_seed(r.seed)
            subseed = noise_mod.resolve_seed(r.subseed)
            self._seeds = ([seed + i for i in range(total)], [subseed + i for i in range(total)])
        return self._seeds

    def result_seed(self, index: int) -> int:
        return self.seeds()[0][index]

    def result_subseed(self, index: int) -> int:
        return self.seeds()[1][index]

    def _rng(self, seeds: list[int], subseeds: list[int], width: int, height: int) -> Any:
        r = self.request
        resize = None
        if r.seed_resize_from_w > 0 and r.seed_resize_from_h > 0:
            resize = (r.seed_resize_from_w, r.seed_resize_from_h)
        return noise_mod.ImageRNG(
            (4, height // 8, width // 8),
            seeds,
            subseeds=subseeds,
            subseed_strength=r.subseed_strength,
            seed_resize_from=resize,
            source=self.settings.rng_source,  # type: ignore[arg-type]
            device=self.model.device,
            ensd=self.settings.eta_noise_seed_delta if self.sampler.uses_ensd else 0,
        )

    def _plan(self, prompts: list[str], negatives: list[str], steps: int, hires_steps: int | None = None) -> PromptPlan:
        """Extra-network tags (`<lora:...>`) are taken out before encoding (A1111 keeps them in
        the infotext, which uses the prompts as given)."""
        prompts = [self._strip_networks(p_) for p_ in prompts]
        negatives = [self._strip_networks(n) for n in negatives]
        total = steps * 2 if self.sampler.second_order else steps
        return PromptPlan.build(
            prompts, negatives, total, hires_steps=hires_steps, use_old_scheduling=self.settings.use_old_scheduling
        )

    def _strip_networks(self, prompt: str) -> str:
        stripped, tags = extract_extra_networks(prompt)
        for tag in tags:
            note = f"extra network <{tag.kind}:{':'.join(tag.args)}> is not applied: networks are not supported yet"
            if not self.request.disable_extra_networks and note not in self.warnings:
                self.warnings.append(note)
        return stripped

    # -- the loop ----------------------------------------------------------------------------

    def _denoise(
        self,
        latents: torch.Tensor,
        p: _Pass,
        plan: PromptPlan,
        rng: Any,
        *,
        scheduler: Any,
        image_cond: torch.Tensor | None = None,
        mask_blend: MaskBlend | None = None,
        image_cfg_scale: float | None = None,
        width: int,
        height: int,
    ) -> torch.Tensor:
        stride = 2 if self.sampler.second_order else 1
        job = SamplingJob(
            unet=self.model.unet,
            scheduler=scheduler,
            conds_at=lambda i: step_conds(self.encoder, plan, i * stride),
            cfg_scale=self.request.cfg_scale,
            added_time_ids=_time_ids(self.model, width, height, latents.shape[0]),
            image_cond=image_cond,
            image_cfg_scale=image_cfg_scale,
            mask_blend=mask_blend,
            step_noise=lambda: smp.step_noise_kwargs(self.sampler if p is None else p.sampler, rng),
            start_index=p.start_index,
            unet_wrappers=self.hooks.unet_wrappers,
            on_step=self.hooks.step_callback(),
            context=self.ctx,
        )
        try:
            return sample(job, latents.float())
        except JobInterrupted:
            self.partial = job.last_latents if job.last_latents is not None else latents
            raise

    def _image_cond_txt2img(self, batch: int, width: int, height: int) -> torch.Tensor | None:
        family = self.model.family
        if family.variant == "inpaint":
            gray = torch.zeros(batch, 3, height, width, device=self.model.device)  # 0.5 grey in [-1, 1] is 0
            latents = _encode(self.model, gray)
            mask = torch.ones(batch, 1, height // 8, width // 8, device=self.model.device)
            return torch.cat([mask, latents], dim=1).to(self.model.unet.dtype)
        if family.variant == "ip2p":
            return torch.zeros(batch, 4, height // 8, width // 8, device=self.model.device, dtype=self.model.unet.dtype)
        return None

    def begin_batch(
        self, batch_number: int, batch: range, seeds: list[int], prompts: list[str], negatives: list[str]
    ) -> BatchEvent:
        """Fire `before_batch`; the returned event is handed to `end_batch` with the images."""
        event = BatchEvent(self.request, batch_number, list(batch), list(seeds), list(prompts), list(negatives))
        self.hooks.before_batch.fire(event)
        return event

    def end_batch(self, event: BatchEvent, images: list[Image.Image]) -> None:
        event.images = list(images)
        self.hooks.after_batch.fire(event)

    def _finish_batch(
        self,
        result: Result,
        latents: torch.Tensor,
        prompts: list[str],
        negatives: list[str],
        seeds: list[int],
        subseeds: list[int],
        index0: int,
        width: int,
        height: int,
    ) -> list[Image.Image]:
        images = _decode(self.model, latents)
        for i, image in enumerate(images):
            result.images.append(image)
            result.prompts.append(prompts[i])
            result.negative_prompts.append(negatives[i])
            result.seeds.append(seeds[i])
            result.subseeds.append(subseeds[i])
            params = self.infotext_params(self, index0 + i, i) if self.infotext_params else {}
            result.params.append(params)
        return images


@contextlib.contextmanager
def seamless_tiling(model: StableDiffusionModel, enabled: bool) -> Iterator[None]:
    """A1111's "Tiling": every convolution of the UNet and VAE pads circularly for this job, so
    the image wraps around at its edges; restored afterwards."""
    if not enabled:
        yield
        return
    convs = [m for module in (model.unet, model.vae) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    before = [c.padding_mode for c in convs]
    for conv in convs:
        conv.padding_mode = "circular"
    try:
        yield
    finally:
        for conv, mode in zip(convs, before, strict=True):
            conv.padding_mode = mode


def _batches(n_iter: int, batch_size: int) -> list[range]:
    return [range(n * batch_size, (n + 1) * batch_size) for n in range(n_iter)]


def run_txt2img(processor: Processor, request: Txt2ImgRequest, ctx: JobContext | None) -> Result:
    started = time.perf_counter()
    model = processor.model
    width, height = request.width, request.height
    result = Result(width=width, height=height)
    seeds, subseeds = processor.seeds()
    first_pass = _Pass(processor.sampler, processor.schedule, request.steps)
    hires = _hires_plan(processor, request) if request.enable_hr else None
    jobs_total = request.n_iter
    for n, batch in enumerate(_batches(request.n_iter, request.batch_size)):
        if ctx is not None:
            ctx.begin_image(n, jobs_total)
        b_seeds = [seeds[i] for i in batch]
        b_subseeds = [subseeds[i] for i in batch]
        prompts = [request.prompt] * len(batch)
        negatives = [request.negative_prompt] * len(batch)
        event = processor.begin_batch(n, batch, b_seeds, prompts, negatives)
        rng = processor._rng(b_seeds, b_subseeds, width, height)
        scheduler = _scheduler_for(model, first_pass, b_seeds)
        try:
            latents = rng.first() * scheduler.init_noise_sigma
            plan = processor._plan(prompts, negatives, request.steps)
            latents = processor._denoise(
                latents,
                first_pass,
                plan,
                rng,
                scheduler=scheduler,
                image_cond=processor._image_cond_txt2img(len(batch), width, height),
                width=width,
                height=height,
            )
            if hires is not None:
                latents = _hires_pass(processor, request, hires, latents, prompts, negatives, b_seeds, b_subseeds)
        except ImageSkipped:
            continue
        except JobInterrupted:
            assert processor.partial is not None  # set by _denoise before it re-raises
            images = processor._finish_batch(
                result, processor.partial, prompts, negatives, b_seeds, b_subseeds, batch.start, width, height
            )
            processor.end_batch(event, images)
            result.interrupted = True
            break
        out_w, out_h = (hires.width, hires.height) if hires else (width, height)
        result.width, result.height = out_w, out_h
        images = processor._finish_batch(
            result, latents, prompts, negatives, b_seeds, b_subseeds, batch.start, out_w, out_h
        )
        processor.end_batch(event, images)
        if ctx is not None and ctx.stopping_generation:
            break
    result.elapsed = time.perf_counter() - started
    return result


@dataclass
class HiresPlan:
    width: int
    height: int
    upscaler: str
    steps: int
    sampler: smp.SamplerInfo
    schedule: smp.ScheduleInfo
    denoising: float


def _hires_plan(processor: Processor, r: Txt2ImgRequest) -> HiresPlan:
    if r.hr_resize_x > 0 or r.hr_resize_y > 0:
        if r.hr_resize_x <= 0:
            w, h = r.hr_resize_y * r.width // r.height, r.hr_resize_y
        elif r.hr_resize_y <= 0:
            w, h = r.hr_resize_x, r.hr_resize_x * r.height // r.width
        else:
            w, h = r.hr_resize_x, r.hr_resize_y
    else:
        w, h = int(r.width * r.hr_scale), int(r.height * r.hr_scale)
    w, h = w // 8 * 8, h // 8 * 8
    upscaler = r.hr_upscaler or "Latent"
    builtin = upscaler in LATENT_UPSCALE_MODES or upscaler in ("None", "Lanczos", "Nearest")
    if not builtin and processor.model_upscale is None:
        raise ValidationError(f"hr_upscaler {upscaler!r} not found")
    if r.hr_sampler_name and r.hr_sampler_name != "Use same sampler":
        sampler, schedule = smp.resolve_sampler(r.hr_sampler_name, r.hr_scheduler)
    else:
        sampler, schedule = processor.sampler, processor.schedule
        if r.hr_scheduler and r.hr_scheduler != "Use same scheduler":
            sampler, schedule = smp.resolve_sampler(sampler.name, r.hr_scheduler)
    return HiresPlan(
        width=w,
        height=h,
        upscaler=upscaler,
        steps=r.hr_second_pass_steps or r.steps,
        sampler=sampler,
        schedule=schedule,
        denoising=r.denoising_strength if r.denoising_strength is not None else 0.75,
    )


def _img2img_steps(steps: int, denoising: float, fix_steps: bool) -> tuple[int, int]:
    """(total schedule steps, index to start at) with A1111's img2img step semantics: run
    int(denoising * steps) + 1 steps of a `steps` schedule, or with "exact steps" a longer
    schedule so that exactly `steps` run."""
    strength = min(denoising, 0.999)
    if fix_steps:
        total = int(steps / strength) if strength > 0 else 0
        t_enc = steps - 1
    else:
        total = steps
        t_enc = int(strength * steps)
    total = max(total, 1)
    return total, max(0, total - t_enc - 1)


def _hires_pass(
    processor: Processor,
    r: Txt2ImgRequest,
    hires: HiresPlan,
    latents: torch.Tensor,
    prompts: list[str],
    negatives: list[str],
    seeds: list[int],
    subseeds: list[int],
) -> torch.Tensor:
    model = processor.model
    if hires.upscaler in LATENT_UPSCALE_MODES:
        mode, antialias = LATENT_UPSCALE_MODES[hires.upscaler]
        kwargs: dict[str, Any] = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
        upscaled = torch.nn.functional.interpolate(
            latents.float(), size=(hires.height // 8, hires.width // 8), mode=mode, **kwargs
        )
    else:
        size = (hires.width, hires.height)
        if hires.upscaler in ("None", "Lanczos", "Nearest") or processor.model_upscale is None:
            resample = Image.Resampling.NEAREST if hires.upscaler == "Nearest" else Image.Resampling.LANCZOS
            images = [im.resize(size, resample) for im in _decode(model, latents)]
        else:  # a model upscaler (ESRGAN, Real-ESRGAN, SwinIR ...) in pixel space
            images = [processor.model_upscale(im, hires.upscaler, size) for im in _decode(model, latents)]
        upscaled = _encode(model, imgops.to_tensor(images, model.device, torch.float32))
    if hires.denoising <= 0:
        return upscaled
    total, start = _img2img_steps(hires.steps, hires.denoising, processor.settings.img2img_fix_steps)
    p = _Pass(hires.sampler, hires.schedule, total, start)
    scheduler = _scheduler_for(model, p, seeds)
    rng = processor._rng(seeds, subseeds, hires.width, hires.height)
    noise = rng.first()
    t0 = scheduler.timesteps[start : start + 1]
    x = scheduler.add_noise(upscaled.to(noise.dtype), noise, t0)
    hr_prompts = [r.hr_prompt or p_ for p_ in prompts]
    hr_negatives = [r.hr_negative_prompt or n for n in negatives]
    plan = processor._plan(hr_prompts, hr_negatives, total)
    if processor.ctx is not None:
        processor.ctx.textinfo = "hires fix"
    return processor._denoise(
        x,
        p,
        plan,
        rng,
        scheduler=scheduler,
        image_cond=processor._image_cond_txt2img(x.shape[0], hires.width, hires.height),
        width=hires.width,
        height=hires.height,
    )


# ------------------------------------------------------------------------------------ img2img


@dataclass
class _Inpaint:
    mask: Image.Image  # full-size prepared mask (L), white = repaint
    region: tuple[int, int, int, int] | None  # only-masked crop box in the original
    originals: list[Image.Image]  # original init images (for pasting back)


def _prepare_img2img(r: Img2ImgRequest) -> tuple[list[Image.Image], _Inpaint | None]:
    """Init images resized to the request size (and cropped to the mask region for
    only-masked inpainting); the inpaint bookkeeping to paste results back."""
    images = [im.convert("RGB") for im in r.init_images]
    if r.mask is None:
        mode = 0 if r.resize_mode == RESIZE_LATENT else r.resize_mode
        return [imgops.resize_image(mode, im, r.width, r.height) for im in images], None
    first = images[0]
    blur_x, blur_y = r.blur_xy
    mask = r.mask
    if mask.size != first.size:
        mask = mask.resize(first.size, Image.Resampling.LANCZOS)
    mask = imgops.prepare_mask(
        mask, invert=bool(r.inpainting_mask_invert), blur_x=blur_x, blur_y=blur_y, round_mask=r.mask_round
    )
    if r.inpaint_full_res:
        box = imgops.masked_region(mask, r.inpaint_full_res_padding)
        if box is None:
            raise ValidationError("mask: the mask is empty; nothing to inpaint")
        box = imgops.expand_to_ratio(box, r.width, r.height, first.size)
        crops = [im.crop(box).resize((r.width, r.height), Image.Resampling.LANCZOS) for im in images]
        return crops, _Inpaint(mask=mask, region=box, originals=images)
    mode = 0 if r.resize_mode == RESIZE_LATENT else r.resize_mode
    resized = [imgops.resize_image(mode, im, r.width, r.height) for im in images]
    return resized, _Inpaint(mask=imgops.resize_image(mode, mask, r.width, r.height), region=None, originals=resized)


def _paste_back(generated: Image.Image, inpaint: _Inpaint, index: int) -> Image.Image:
    original = inpaint.originals[index % len(inpaint.originals)]
    if inpaint.region is not None:
        x1, y1, x2, y2 = inpaint.region
        patch = generated.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS)
        canvas = original.copy()
        canvas.paste(patch, (x1, y1), mask=inpaint.mask.crop(inpaint.region))
        return canvas
    canvas = original.copy()
    canvas.paste(generated, (0, 0), mask=inpaint.mask)
    return canvas


def run_img2img(processor: Processor, request: Img2ImgRequest, ctx: JobContext | None) -> Result:
    started = time.perf_counter()
    model = processor.model
    width, height = request.width, request.height
    result = Result(width=width, height=height)
    inits, inpaint = _prepare_img2img(request)
    seeds, subseeds = processor.seeds()
    denoising = request.denoising_strength if request.denoising_strength is not None else 0.75
    total, start = _img2img_steps(request.steps, denoising, processor.settings.img2img_fix_steps)
    p = _Pass(processor.sampler, processor.schedule, total, start)
    family = model.family
    if inpaint is not None:
        crop_mask = inpaint.mask.crop(inpaint.region).resize((width, height)) if inpaint.region else inpaint.mask
        lmask = imgops.latent_mask(crop_mask, width, height, round_mask=request.mask_round).to(model.device)
    for n, batch in enumerate(_batches(request.n_iter, request.batch_size)):
        if ctx is not None:
            ctx.begin_image(n, request.n_iter)
        b_seeds = [seeds[i] for i in batch]
        b_subseeds = [subseeds[i] for i in batch]
        prompts = [request.prompt] * len(batch)
        negatives = [request.negative_prompt] * len(batch)
        event = processor.begin_batch(n, batch, b_seeds, prompts, negatives)
        batch_images = [inits[i % len(inits)] for i in batch]
        if inpaint is not None and request.inpainting_fill == FILL_FILL:
            batch_images = [imgops.fill_masked(im, crop_mask) for im in batch_images]
        pixels = imgops.to_tensor(batch_images, model.device, torch.float32)
        init_latents = _encode(model, pixels)
        if request.resize_mode == RESIZE_LATENT and inpaint is None:
            init_latents = torch.nn.functional.interpolate(
                init_latents, size=(height // 8, width // 8), mode="bilinear"
            )
        rng = processor._rng(b_seeds, b_subseeds, width, height)
        scheduler = _scheduler_for(model, p, b_seeds)
        noise = rng.first()
        mask_blend = None
        image_cond = None
        if inpaint is not None:
            if request.inpainting_fill == FILL_LATENT_NOISE:
                init_latents = init_latents * (1 - lmask) + noise * lmask
            elif request.inpainting_fill == FILL_LATENT_NOTHING:
                init_latents = init_latents * (1 - lmask)
            if family.variant == "inpaint":
                weight = processor.settings.inpainting_mask_weight
                cmask = torch.round(imgops.latent_mask(crop_mask, width * 8, height * 8, round_mask=False)).to(
                    model.device
                )
                cmask = torch.nn.functional.interpolate(cmask, size=(height, width))
                masked = torch.lerp(pixels, pixels * (1 - cmask), weight)
                image_cond = torch.cat([lmask.expand(len(batch), -1, -1, -1), _encode(model, masked)], dim=1)
            else:
                mask_blend = MaskBlend(mask=lmask, init_latents=init_latents, noise=noise)
        elif family.variant == "inpaint":
            image_cond = processor._image_cond_txt2img(len(batch), width, height)
        if family.variant == "ip2p":
            image_cond = (init_latents / float(model.vae.config["scaling_factor"])).to(model.unet.dtype)
        t0 = scheduler.timesteps[start : start + 1]
        multiplier = request.initial_noise_multiplier or processor.settings.initial_noise_multiplier
        latents = scheduler.add_noise(init_latents, noise * multiplier, t0)
        plan = processor._plan(prompts, negatives, total)
        image_cfg = (
            (request.image_cfg_scale if request.image_cfg_scale is not None else 1.5)
            if family.variant == "ip2p"
            else None
        )
        try:
            latents = processor._denoise(
                latents,
                p,
                plan,
                rng,
                scheduler=scheduler,
                image_cond=None if image_cond is None else image_cond.to(model.unet.dtype),
                mask_blend=mask_blend,
                image_cfg_scale=image_cfg,
                width=width,
                height=height,
            )
        except ImageSkipped:
            continue
        except JobInterrupted:
            latents = processor.partial
            result.interrupted = True
        images = processor._finish_batch(
            result, latents, prompts, negatives, b_seeds, b_subseeds, batch.start, width, height
        )
        if inpaint is not None:
            first = len(result.images) - len(images)
            for i, image in enumerate(images):
                result.images[first + i] = images[i] = _paste_back(image, inpaint, batch.start + i)
        processor.end_batch(event, images)
        if result.interrupted or (ctx is not None and ctx.stopping_generation):
            break
    if inpaint is not None and inpaint.region is not None:
        result.width, result.height = inpaint.originals[0].size
    result.elapsed = time.perf_counter() - started
    return result


def options_to_settings(get: Callable[[str], Any], overrides: Mapping[str, Any]) -> EngineSettings:
    """Engine settings from option values, with `override_settings` taking precedence."""

    def value(key: str, default: Any) -> Any:
        if key in overrides:
            return overrides[key]
        try:
            return get(key)
        except Exception:  # an option this build does not define
            return default

    return EngineSettings(
        clip_skip=int(value("CLIP_stop_at_last_layers", 1)),
        emphasis=str(value("emphasis", "Original")),
        comma_padding_backtrack=int(value("comma_padding_backtrack", 20)),
        rng_source=str(value("randn_source", "GPU")),
        eta_noise_seed_delta=int(value("eta_noise_seed_delta", 0)),
        img2img_fix_steps=bool(value("img2img_fix_steps", False)),
        initial_noise_multiplier=float(value("initial_noise_multiplier", 1.0)),
        inpainting_mask_weight=float(value("inpainting_mask_weight", 1.0)),
        preview_every=int(value("show_progress_every_n_steps", 10)),
        use_old_scheduling=bool(value("use_old_scheduling", False)),
    )
