"""Requests -> images on the worker thread: txt2img (+ hires fix), img2img, inpainting.

Runs inside a model lease; everything model-specific comes from the `StableDiffusionModel`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from modules.core.errors import NansException, ValidationError
from modules.core.extra_networks import EXTRA_NETWORK_TAG, strip_tags
from modules.core.requests import (
    FILL_FILL,
    FILL_LATENT_NOISE,
    FILL_LATENT_NOTHING,
    RESIZE_FILL,
    RESIZE_LATENT,
    GenerationRequest,
    Img2ImgRequest,
    Txt2ImgRequest,
)
from modules.core.results import Result
from modules.engine import images as imgops
from modules.engine import noise as noise_mod
from modules.engine import samplers as smp
from modules.engine.conditioning import ConditioningSettings, Encoder, PromptPlan, encode_plan, step_conds
from modules.engine.extra_networks import JobNetworks
from modules.engine.hooks import BatchEvent, HiresEvent, Hooks
from modules.engine.sampler_runner import SamplerOptions, SamplerPass, img2img_steps
from modules.engine.sampling import CFGDenoiser, LatentMask, SamplingJob, a1111_alphas_cumprod
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
    sampler: SamplerOptions = field(default_factory=SamplerOptions)
    img2img_background_color: str = "#ffffff"
    overlay_inpaint: bool = True
    hires_fix_use_firstpass_conds: bool = False
    refiner_switch_by_sample_steps: bool = False
    hires_fix_refiner_pass: str = "second pass"
    sdxl_refiner_low_aesthetic_score: float = 2.5
    sdxl_refiner_high_aesthetic_score: float = 6.0
    sdxl_crop_top: int = 0
    sdxl_crop_left: int = 0
    sdxl_clip_l_skip: bool = False
    upcast_sampling: bool = False  # --upcast-sampling (the device policy's, not an option)
    nan_check: bool = True  # off with --disable-nan-check
    auto_vae_precision: bool = True
    auto_vae_precision_bfloat16: bool = False
    batch_cond_uncond: bool = True


def preview_decoder(
    model: StableDiffusionModel, taesd: torch.nn.Module | None = None, *, full: bool = False
) -> Callable[[torch.Tensor], Image.Image]:
    """Latents -> a preview image of the first image of the batch: the model's VAE when `full`
    (A1111's "Full"), TAESD when its weights are given, else a cheap per-channel linear
    approximation."""
    factors = _PREVIEW_XL if model.family.is_sdxl else _PREVIEW_SD

    def whole(latents: torch.Tensor) -> Image.Image:
        pixels = _decode_one(model.vae, latents[:1].to(model.device))
        return imgops.to_images(pixels.float().cpu())[0]

    if full:
        return whole

    def cheap(latents: torch.Tensor) -> Image.Image:
        rgb = torch.einsum("chw,cr->rhw", latents[0].float().cpu(), factors)
        return imgops.to_images(rgb[None].clamp(-1, 1))[0]

    def tiny(latents: torch.Tensor) -> Image.Image:
        assert taesd is not None
        with torch.no_grad():
            pixels = taesd(latents[:1].float().cpu())
        return imgops.to_images(pixels)[0]

    return cheap if taesd is None else tiny


_NAN_HINT = " Use --disable-nan-check commandline argument to disable this check."


def _first_is_nan(x: torch.Tensor) -> bool:
    """A1111's test looks at the first element only (an fp16 overflow fills the whole tensor); this
    one looks at every element and counts infinities too: a broken checkpoint (random weights
    under a valid header) overflows in places and otherwise decodes to black images."""
    return not bool(torch.isfinite(x).all())


def _decode_one(vae: Any, latent: torch.Tensor) -> torch.Tensor:
    scale = float(vae.config["scaling_factor"])
    with torch.no_grad():
        return vae.decode(latent.to(vae.dtype) / scale).sample


def _decode(
    model: StableDiffusionModel, latents: torch.Tensor, settings: EngineSettings | None = None
) -> list[Image.Image]:
    """Latents to images, one image at a time (as A1111 decodes). With the NaN check on
    (`settings.nan_check`), NaN latents raise `NansException` (the UNet's), and a decode that gives
    NaNs in half precision converts the VAE to fp32 (`auto_vae_precision`) or bfloat16
    (`auto_vae_precision_bfloat16`) for the rest of the session and decodes again, as A1111 does;
    with neither option, or already in that precision, it raises `NansException`."""
    check = settings is not None and settings.nan_check
    if check and _first_is_nan(latents):
        raise NansException(
            "A tensor with NaNs was produced in Unet. This could be either because there's not enough precision "
            "to represent the picture, or because your video card does not support half type. Try the "
            "--upcast-sampling or --no-half commandline argument to fix this." + _NAN_HINT
        )
    images: list[Image.Image] = []
    for i in range(latents.shape[0]):
        pixels = _decode_one(model.vae, latents[i : i + 1])
        if check and _first_is_nan(pixels):
            assert settings is not None
            pixels = _decode_again_upcast(model, latents[i : i + 1], settings)
        images.extend(imgops.to_images(pixels))
    return images


def _decode_again_upcast(model: StableDiffusionModel, latent: torch.Tensor, settings: EngineSettings) -> torch.Tensor:
    vae = model.vae
    message = "A tensor with NaNs was produced in VAE."
    if settings.auto_vae_precision_bfloat16:
        target, name, setting = torch.bfloat16, "bfloat16", "Automatically convert VAE to bfloat16"
    elif settings.auto_vae_precision:
        target, name, setting = torch.float32, "32-bit float", "Automatically revert VAE to 32-bit floats on NaNs"
    else:
        if vae.dtype == torch.float16:
            message += " This could be because there's not enough precision to represent the picture. Try adding "
            message += "--no-half-vae commandline argument to fix this."
        raise NansException(message + _NAN_HINT)
    if vae.dtype == target:
        raise NansException(message + _NAN_HINT)
    log.warning(
        "%s Converting the VAE to %s for the rest of the session and decoding again. To disable this, turn off "
        "the '%s' setting; to always start with a 32-bit VAE, use --no-half-vae.",
        message,
        name,
        setting,
    )
    module: torch.nn.Module = vae
    module.to(dtype=target)
    pixels = _decode_one(vae, latent)
    if _first_is_nan(pixels):
        raise NansException(message + _NAN_HINT)
    return pixels


def _encode(model: StableDiffusionModel, pixels: torch.Tensor) -> torch.Tensor:
    vae = model.vae
    with torch.no_grad():
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mean  # deterministic (mode)
    return latents.float() * float(vae.config["scaling_factor"])


def _time_ids(
    model: StableDiffusionModel,
    width: int,
    height: int,
    batch: int,
    settings: EngineSettings,
    *,
    negative: bool = False,
) -> torch.Tensor | None:
    """SDXL micro-conditioning as A1111 sets it: the base model gets original size, crop
    (`sdxl_crop_top/left`) and target size; the refiner gets size, crop and an aesthetic score,
    6.0 for the prompt and 2.5 for the negative prompt (`sdxl_refiner_high/low_aesthetic_score`)."""
    if not model.family.is_sdxl:
        return None
    top, left = settings.sdxl_crop_top, settings.sdxl_crop_left
    if model.family.base == "sdxl-refiner":
        score = settings.sdxl_refiner_low_aesthetic_score if negative else settings.sdxl_refiner_high_aesthetic_score
        ids = [height, width, top, left, score]
    else:
        ids = [height, width, top, left, height, width]
    return torch.tensor([ids] * batch, dtype=torch.float32, device=model.device)


@dataclass(frozen=True)
class ModelAccess:
    """How a job reaches a second checkpoint (hires checkpoint, SDXL refiner) or another set of
    weight patches (a hires prompt naming other LoRAs): `lease(name, patches)` makes that the
    model in force for a block (None: the job's checkpoint; the job's own model stays pinned in
    the RAM cache and comes back afterwards, its patches with it); `title()` is the active
    checkpoint's short title ("name [hash]")."""

    lease: Callable[[str | None, tuple[Any, ...]], contextlib.AbstractContextManager[StableDiffusionModel]]
    title: Callable[[], str]


@dataclass
class _Pass:
    """One denoising pass over a batch."""

    sampler: smp.SamplerInfo
    schedule: smp.ScheduleInfo
    steps: int


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
        preview_full: bool = False,
        model_upscale: Callable[[Image.Image, str, tuple[int, int]], Image.Image] | None = None,
        hooks: Hooks | None = None,
        models: ModelAccess | None = None,
        networks: JobNetworks | None = None,
        unet_for: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    ) -> None:
        self.unet_for = unet_for  # what the sampler calls for a model's UNet (a compiled one), None = the UNet
        self.in_hires_pass = False  # set when the hires pass begins (token merging's ratio follows it)
        self.other_unets: list[str] = []  # titles of the checkpoints a pass ran on besides the job's own
        self.model_upscale = model_upscale
        self.hooks = hooks if hooks is not None else Hooks()
        self.model = model
        self.request = request
        self.settings = settings
        self.ctx = ctx
        self.models = models
        self.networks = networks if networks is not None else JobNetworks()
        self.sampler, self.schedule = smp.resolve_sampler(request.effective_sampler, request.scheduler)
        self.warnings: list[str] = []
        self.networks.enter(model, self.networks.first, self.warnings)
        self.encoder = self._encoder_for(model)
        self.infotext_params = infotext_params
        self._seeds: tuple[list[int], list[int]] | None = None
        self.partial: torch.Tensor | None = None
        self.extra_params: dict[str, Any] = {}  # infotext entries the passes added (A1111's extra_generation_params)
        self.preview_taesd = preview_taesd
        self.current_model = model  # the model the batch decodes with (a refiner / hires checkpoint once leased)
        if ctx is not None:
            ctx.preview_every = settings.preview_every
            ctx.preview_decoder = preview_decoder(model, preview_taesd, full=preview_full)

    def _encoder_for(self, model: StableDiffusionModel) -> Encoder:
        s = self.settings
        return Encoder(
            model,
            ConditioningSettings(
                clip_skip=s.clip_skip,
                sdxl_clip_l_skip=s.sdxl_clip_l_skip,
                emphasis=s.emphasis,  # type: ignore[arg-type]
                comma_padding_backtrack=s.comma_padding_backtrack,
                use_old_scheduling=s.use_old_scheduling,
            ),
            embeddings=self.networks.embeddings_for(model),
        )

    # -- seeds and prompts -------------------------------------------------------------------

    def seeds(self) -> tuple[list[int], list[int]]:
        """Every image's seed and subseed: -1 resolved once per job, then seed + i (A1111; the same
        seed for all with a variation strength), subseed + i."""
        if self._seeds is None:
            r = self.request
            total = r.batch_size * r.n_iter
            seed = noise_mod.resolve_seed(r.seed)
            subseed = noise_mod.resolve_seed(r.subseed)
            # A1111: seed + i, but every image gets the same seed when a variation strength is set
            # (the variation subseeds differ)
            step = 0 if r.subseed_strength else 1
            seeds = [int(s) for s in r.all_seeds[:total]] if r.all_seeds else [seed + i * step for i in range(total)]
            subseeds = (
                [int(s) for s in r.all_subseeds[:total]] if r.all_subseeds else [subseed + i for i in range(total)]
            )
            self._seeds = (seeds, subseeds)
        return self._seeds

    def result_seed(self, index: int) -> int:
        return self.seeds()[0][index]

    def result_subseed(self, index: int) -> int:
        return self.seeds()[1][index]

    def _rng(self, seeds: list[int], subseeds: list[int], width: int, height: int) -> noise_mod.ImageRNG:
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
            ensd=self.settings.eta_noise_seed_delta,  # A1111 re-seeds after the first draw whatever the sampler
        )

    def _plan(
        self,
        prompts: list[str],
        negatives: list[str],
        steps: int,
        sampler: smp.SamplerInfo | None = None,
        *,
        hires_steps: int | None = None,
    ) -> PromptPlan:
        """The prompt schedule over A1111's model-call count (`total_steps`: twice the steps for a
        second-order sampler); `hires_steps` (already a call count) gives the hires pass's offsets.
        Extra-network tags (`<lora:...>`) are taken out of the prompts before encoding (A1111 keeps
        them in the infotext, which uses the prompts as given); in a negative prompt they are text,
        as in A1111."""
        prompts = [self._strip_networks(p_) for p_ in prompts]
        self._note_negative_tags(negatives)
        total = (sampler or self.sampler).total_calls(steps)
        return PromptPlan.build(
            prompts, negatives, total, hires_steps=hires_steps, use_old_scheduling=self.settings.use_old_scheduling
        )

    @staticmethod
    def _strip_networks(prompt: str) -> str:
        return strip_tags(prompt)

    def _note_negative_tags(self, negatives: Sequence[str]) -> None:
        for negative in negatives:
            for match in EXTRA_NETWORK_TAG.finditer(negative):
                note = f"{match.group(0)} in the negative prompt is encoded as text (A1111 activates prompt tags only)"
                if note not in self.warnings:
                    self.warnings.append(note)

    # -- the loop ----------------------------------------------------------------------------

    def sampler_pass(
        self, p: _Pass, *, is_hr_pass: bool = False, model: StableDiffusionModel | None = None
    ) -> SamplerPass:
        model = model or self.model
        cfg = model.scheduler_config
        alphas = a1111_alphas_cumprod(
            float(cfg.get("beta_start", 0.00085)),
            float(cfg.get("beta_end", 0.012)),
            int(cfg.get("num_train_timesteps", 1000)),
        )
        r = self.request
        return SamplerPass(
            p.sampler,
            p.schedule,
            alphas,
            self.settings.sampler,
            request_params={
                "eta": r.eta,
                "s_churn": r.s_churn,
                "s_tmin": r.s_tmin,
                "s_tmax": r.s_tmax,
                "s_noise": r.s_noise,
                "s_min_uncond": r.s_min_uncond,
            },
            is_hr_pass=is_hr_pass,
            is_sdxl=model.family.is_sdxl,
            rng_source=self.settings.rng_source,
            device=model.device,
        )

    def sampling_job(
        self,
        sp: SamplerPass,
        plan: PromptPlan,
        batch: int,
        width: int,
        height: int,
        *,
        image_cond: torch.Tensor | None = None,
        image_cfg_scale: float | None = None,
        mask: LatentMask | None = None,
        model: StableDiffusionModel | None = None,
        encoder: Encoder | None = None,
    ) -> SamplingJob:
        model = model or self.model
        enc = encoder or self.encoder
        encode_plan(enc, plan)
        self._note_embeddings(enc)
        return SamplingJob(
            unet=self.job_unet(model),
            schedule=sp.schedule,
            conds_at=lambda i: step_conds(enc, plan, i),
            cfg_scale=self.request.cfg_scale,
            prediction_type=model.prediction_type,
            added_time_ids=_time_ids(model, width, height, batch, self.settings),
            added_time_ids_uncond=_time_ids(model, width, height, batch, self.settings, negative=True),
            image_cond=image_cond,
            image_cfg_scale=image_cfg_scale,
            mask=mask,
            unet_wrappers=self.hooks.unet_wrappers,
            context=self.ctx,
            upcast=self.settings.upcast_sampling,
            batch_cond_uncond=self.settings.batch_cond_uncond,
        )

    def job_unet(self, model: StableDiffusionModel) -> torch.nn.Module:
        return model.unet if self.unet_for is None else self.unet_for(model.unet)

    def _note_embeddings(self, encoder: Encoder) -> None:
        """The embeddings the prompts used and the networks' hashes, for the infotext."""
        self.networks.note_embeddings(encoder.used_embeddings)
        self.extra_params.update(self.networks.infotext())

    def refiner_for(
        self,
        job: SamplingJob,
        plan: PromptPlan,
        batch: int,
        width: int,
        height: int,
        stack: contextlib.ExitStack,
        *,
        hires_pass: bool = False,
        enable_hr: bool = False,
    ) -> _Refiner | None:
        """Install the refiner handover on `job` when the request asks for one (A1111: a refiner
        checkpoint other than "None", `refiner_switch_at` set; with hires fix the
        `hires_fix_refiner_pass` option picks the pass)."""
        r = self.request
        name = r.refiner_checkpoint
        if not name or name in ("None", "") or r.refiner_switch_at is None:
            return None
        if self.models is None:
            raise ValidationError("refiner_checkpoint: this engine cannot load a second checkpoint within a job")
        if hires_pass or enable_hr:
            mode = self.settings.hires_fix_refiner_pass
            if (mode == "first pass" and hires_pass) or (mode == "second pass" and not hires_pass):
                return None
            if mode != "second pass":
                self.extra_params["Hires refiner"] = mode
        refiner = _Refiner(self, name, float(r.refiner_switch_at), plan, batch, width, height, stack)
        job.before_call = refiner
        return refiner

    def run_pass(self, sp: SamplerPass, fallback: torch.Tensor, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run a pass; on interrupt keep A1111's partial result (the last x0 prediction) in
        `partial` and re-raise. The pass's infotext entries go to `extra_params`."""
        try:
            return run()
        except JobInterrupted:
            last = sp.denoiser.last_latent if sp.denoiser is not None else None
            self.partial = last if last is not None else fallback
            raise
        finally:
            self.extra_params.update(sp.params)
            self.warnings.extend(w for w in sp.warnings if w not in self.warnings)

    def _image_cond_txt2img(
        self, batch: int, width: int, height: int, model: StableDiffusionModel | None = None
    ) -> torch.Tensor | None:
        model = model or self.model
        family = model.family
        if family.variant == "inpaint":
            gray = torch.zeros(batch, 3, height, width, device=model.device)  # 0.5 grey in [-1, 1] is 0
            latents = _encode(model, gray)
            mask = torch.ones(batch, 1, height // 8, width // 8, device=model.device)
            return torch.cat([mask, latents], dim=1).to(model.unet.dtype)
        if family.variant == "ip2p":
            return torch.zeros(batch, 4, height // 8, width // 8, device=model.device, dtype=model.unet.dtype)
        return None

    def begin_batch(
        self, batch_number: int, batch: range, seeds: list[int], prompts: list[str], negatives: list[str]
    ) -> BatchEvent:
        """Fire `before_batch`; the returned event is handed to `end_batch` with the images."""
        event = BatchEvent(self.request, batch_number, list(batch), list(seeds), list(prompts), list(negatives))
        self.hooks.before_batch.fire(event)
        return event

    def end_batch(self, event: BatchEvent, images: list[Image.Image], result: Result | None = None) -> None:
        """Fire `after_batch`. A listener may replace `event.images` (same count: the batch's images
        in `result` are replaced; another count: the batch's entries are rebuilt from the event's
        prompts / seeds, the last one repeated where the lists are shorter)."""
        event.images = list(images)
        self.hooks.after_batch.fire(event)
        if result is None or event.images == list(images):
            return
        n = len(images)
        start = len(result.images) - n
        if len(event.images) == n:
            result.images[start:] = event.images
            return

        def pick(values: list[Any], i: int) -> Any:
            return values[min(i, len(values) - 1)] if values else None

        params = result.params[start:] or [{}]
        subseeds = result.subseeds[start:] or [0]
        new_count = len(event.images)
        for name in ("images", "prompts", "negative_prompts", "seeds", "subseeds", "params"):
            del getattr(result, name)[start:]
        for i, image in enumerate(event.images):
            result.images.append(image)
            result.prompts.append(pick(event.prompts, i))
            result.negative_prompts.append(pick(event.negative_prompts, i))
            result.seeds.append(pick(event.seeds, i))
            result.subseeds.append(pick(subseeds, i))
            result.params.append(dict(pick(params, i)))
        assert len(result.images) == start + new_count

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
        *,
        model: StableDiffusionModel | None = None,
        finish: Callable[[Image.Image, int], Image.Image] | None = None,
    ) -> list[Image.Image]:
        images = _decode(model or self.model, latents, self.settings)
        if finish is not None:
            images = [finish(image, i) for i, image in enumerate(images)]
        for i, image in enumerate(images):
            result.images.append(image)
            result.prompts.append(prompts[i])
            result.negative_prompts.append(negatives[i])
            result.seeds.append(seeds[i])
            result.subseeds.append(subseeds[i])
            params = self.infotext_params(self, index0 + i, i) if self.infotext_params else {}
            result.params.append(params)
        return images


class _Refiner:
    """A1111's SDXL refiner handover (`apply_refiner`): before a model call, once the completed
    ratio of the pass reaches `switch_at` (by sigma: (999 - nearest training timestep) / 1000; by
    model calls with `refiner_switch_by_sample_steps`), the refiner checkpoint is leased for the
    rest of the batch, the prompts are encoded again with its text encoder and sampling goes on
    with its UNet and its conditioning (aesthetic scores)."""

    def __init__(
        self,
        processor: Processor,
        checkpoint: str,
        switch_at: float,
        plan: PromptPlan,
        batch: int,
        width: int,
        height: int,
        stack: contextlib.ExitStack,
    ) -> None:
        self.processor = processor
        self.checkpoint = checkpoint
        self.switch_at = switch_at
        self.plan, self.batch = plan, batch
        self.width, self.height = width, height
        self.stack = stack
        self.model: StableDiffusionModel | None = None
        self.switched_at_call: int | None = None

    def completed(self, denoiser: CFGDenoiser, sigma: torch.Tensor) -> float:
        job = denoiser.job
        if self.processor.settings.refiner_switch_by_sample_steps or job.mode == "timesteps":
            if self.processor.settings.refiner_switch_by_sample_steps:
                self.processor.extra_params["Refiner switch by sampling steps"] = True
                return denoiser.step / max(job.total_calls, 1)
            timestep = int(torch.max(sigma).to(dtype=torch.int))
        else:
            sigmas = job.schedule.sigmas.to(sigma.device)
            timestep = int(torch.argmin(torch.abs(sigmas - torch.max(sigma))))
        return (999 - timestep) / 1000

    def __call__(self, denoiser: CFGDenoiser, sigma: torch.Tensor) -> None:
        if self.model is not None or self.completed(denoiser, sigma) < self.switch_at:
            return
        p = self.processor
        assert p.models is not None
        p.networks.leave_for_refiner(p.warnings)
        model = self.stack.enter_context(p.models.lease(self.checkpoint, ()))
        p.extra_params["Refiner"] = p.models.title()
        if model.unet is not p.model.unet:
            p.other_unets.append(p.models.title())
        p.extra_params["Refiner switch at"] = self.switch_at
        encoder = p._encoder_for(model)
        plan = self.plan
        encode_plan(encoder, plan)
        p._note_embeddings(encoder)
        job = denoiser.job
        batch = self.batch
        job.unet = p.job_unet(model)
        job.prediction_type = model.prediction_type
        job.conds_at = lambda i: step_conds(encoder, plan, i)
        job.added_time_ids = _time_ids(model, self.width, self.height, batch, p.settings)
        job.added_time_ids_uncond = _time_ids(model, self.width, self.height, batch, p.settings, negative=True)
        self.model = model
        p.current_model = model
        self.switched_at_call = denoiser.step


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
    width, height = request.width, request.height
    result = Result(width=width, height=height)
    seeds, subseeds = processor.seeds()
    first_pass = _Pass(processor.sampler, processor.schedule, request.steps)
    hires = _hires_plan(processor, request) if request.enable_hr else None
    firstpass_image = _firstpass_image(request) if hires is not None else None
    for n, batch in enumerate(_batches(request.n_iter, request.batch_size)):
        if ctx is not None:
            ctx.begin_image(n, request.n_iter)
        b_seeds = [seeds[i] for i in batch]
        b_subseeds = [subseeds[i] for i in batch]
        prompts = [request.prompt_at(i) for i in batch]
        negatives = [request.negative_prompt_at(i) for i in batch]
        event = processor.begin_batch(n, batch, b_seeds, prompts, negatives)
        # the batch's second checkpoints (hires checkpoint, refiner) stay leased until it is decoded
        with contextlib.ExitStack() as stack:
            processor.current_model = processor.model
            try:
                latents: torch.Tensor | None = None
                if firstpass_image is None:
                    rng = processor._rng(b_seeds, b_subseeds, width, height)
                    noise = rng.first()
                    sp = processor.sampler_pass(first_pass)
                    plan = processor._plan(prompts, negatives, request.steps)
                    job = processor.sampling_job(
                        sp,
                        plan,
                        len(batch),
                        width,
                        height,
                        image_cond=processor._image_cond_txt2img(len(batch), width, height),
                    )
                    processor.refiner_for(job, plan, len(batch), width, height, stack, enable_hr=request.enable_hr)
                    latents = processor.run_pass(
                        sp,
                        noise,
                        partial(
                            sp.txt2img, job, noise, request.steps, rng, b_seeds, on_step=processor.hooks.step_callback()
                        ),
                    )
                if hires is not None:
                    latents = _hires_pass(
                        processor,
                        request,
                        hires,
                        latents,
                        firstpass_image,
                        prompts,
                        negatives,
                        b_seeds,
                        b_subseeds,
                        stack,
                    )
            except ImageSkipped:
                continue
            except JobInterrupted:
                assert processor.partial is not None  # set by run_pass before it re-raises
                images = processor._finish_batch(
                    result,
                    processor.partial,
                    prompts,
                    negatives,
                    b_seeds,
                    b_subseeds,
                    batch.start,
                    width,
                    height,
                    model=processor.current_model,
                )
                processor.end_batch(event, images, result)
                result.interrupted = True
                break
            assert latents is not None
            out_w, out_h = (hires.width, hires.height) if hires else (width, height)
            result.width, result.height = out_w, out_h
            images = processor._finish_batch(
                result,
                latents,
                prompts,
                negatives,
                b_seeds,
                b_subseeds,
                batch.start,
                out_w,
                out_h,
                model=processor.current_model,
            )
        processor.end_batch(event, images, result)
        if ctx is not None and ctx.stopping_generation:
            break
    result.elapsed = time.perf_counter() - started
    return result


@dataclass
class HiresPlan:
    width: int  # the output size (after truncation)
    height: int
    upscale_width: int  # the size the first pass is upscaled to before the crop
    upscale_height: int
    truncate_x: int  # latent columns / rows cropped (A1111's truncate_x/y)
    truncate_y: int
    upscaler: str
    steps: int
    sampler: smp.SamplerInfo
    schedule: smp.ScheduleInfo
    denoising: float
    checkpoint: str | None = None


def _hires_plan(processor: Processor, r: Txt2ImgRequest) -> HiresPlan:
    """A1111's `calculate_target_resolution` and hires settings. With both target sizes set the
    first pass is upscaled to cover the target keeping its aspect ratio, then cropped centred."""
    truncate_x = truncate_y = 0
    if r.hr_resize_x == 0 and r.hr_resize_y == 0:
        up_w, up_h = int(r.width * r.hr_scale), int(r.height * r.hr_scale)
        target_w, target_h = up_w, up_h
    elif r.hr_resize_y == 0:
        up_w, up_h = r.hr_resize_x, r.hr_resize_x * r.height // r.width
        target_w, target_h = up_w, up_h
    elif r.hr_resize_x == 0:
        up_w, up_h = r.hr_resize_y * r.width // r.height, r.hr_resize_y
        target_w, target_h = up_w, up_h
    else:
        target_w, target_h = r.hr_resize_x, r.hr_resize_y
        if r.width / r.height < r.hr_resize_x / r.hr_resize_y:
            up_w, up_h = r.hr_resize_x, r.hr_resize_x * r.height // r.width
        else:
            up_w, up_h = r.hr_resize_y * r.width // r.height, r.hr_resize_y
        truncate_x = (up_w - target_w) // 8
        truncate_y = (up_h - target_h) // 8
    upscaler = r.hr_upscaler or "Latent"
    builtin = upscaler in LATENT_UPSCALE_MODES or upscaler in ("None", "Lanczos", "Nearest")
    if not builtin and processor.model_upscale is None:
        raise ValidationError(f"hr_upscaler {upscaler!r} not found")
    if r.hr_sampler_name and r.hr_sampler_name != "Use same sampler":
        sampler, schedule = smp.resolve_sampler(r.hr_sampler_name, _hires_scheduler(r))
    else:
        sampler, schedule = smp.resolve_sampler(processor.sampler.name, _hires_scheduler(r))
    checkpoint = r.hr_checkpoint_name if r.hr_checkpoint_name not in (None, "", "Use same checkpoint") else None
    if checkpoint is not None and processor.models is None:
        raise ValidationError("hr_checkpoint_name: this engine cannot load a second checkpoint within a job")
    # the latent grid the hires pass runs on
    lat_w = up_w // 8 - truncate_x
    lat_h = up_h // 8 - truncate_y
    return HiresPlan(
        width=lat_w * 8,
        height=lat_h * 8,
        upscale_width=up_w,
        upscale_height=up_h,
        truncate_x=truncate_x,
        truncate_y=truncate_y,
        upscaler=upscaler,
        steps=r.hr_second_pass_steps or r.steps,
        sampler=sampler,
        schedule=schedule,
        denoising=r.denoising_strength if r.denoising_strength is not None else 0.75,
        checkpoint=checkpoint,
    )


def _hires_scheduler(r: Txt2ImgRequest) -> str | None:
    """A1111: no hires schedule (or "Use same scheduler") means the first pass's."""
    if r.hr_scheduler and r.hr_scheduler != "Use same scheduler":
        return r.hr_scheduler
    return r.scheduler


def _firstpass_image(r: Txt2ImgRequest) -> Image.Image | None:
    image = r.firstpass_image
    if image is None or image == "":
        return None
    if not isinstance(image, Image.Image):
        raise ValidationError("firstpass_image: not an image")
    if image.size != (r.width, r.height):
        raise ValidationError(
            f"firstpass_image: the image is {image.width}x{image.height}, the request's first pass {r.width}x{r.height}"
        )
    return image.convert("RGB")


def _hires_pass(
    processor: Processor,
    r: Txt2ImgRequest,
    hires: HiresPlan,
    latents: torch.Tensor | None,
    firstpass_image: Image.Image | None,
    prompts: list[str],
    negatives: list[str],
    seeds: list[int],
    subseeds: list[int],
    stack: contextlib.ExitStack,
) -> torch.Tensor:
    """A1111's `sample_hr_pass`: upscale (in latent space, or decode - upscale - encode), crop to
    the target, then an img2img pass of exactly the hires step count over a schedule stretched by
    the denoising strength, with the hires prompts and the prompt-schedule offsets. With a hires
    checkpoint the pass (and the decode, by the caller, inside `stack`) runs on that model."""
    if processor.ctx is not None:
        processor.ctx.textinfo = "hires fix"
    processor.hooks.before_hires.fire(HiresEvent(r, list(seeds), list(prompts), hires.width, hires.height))
    low: list[Image.Image] | None = None
    if hires.upscaler not in LATENT_UPSCALE_MODES:
        # decoded by the model that made them, before another checkpoint takes its place
        if latents is None:
            low = [firstpass_image] * len(seeds)  # type: ignore[list-item]
        else:
            low = _decode(processor.current_model, latents, processor.settings)
    other = None
    networks = processor.networks
    if hires.checkpoint is not None or networks.hires_differs:
        # another checkpoint, or the hires prompt names other networks: the pass runs in a nested
        # lease with the hires set's patches (the job's own set comes back after it)
        assert processor.models is not None
        other = stack.enter_context(processor.models.lease(hires.checkpoint, networks.hires.patches))
        processor.current_model = other
        if hires.checkpoint is not None:
            processor.extra_params["Hires checkpoint"] = processor.models.title()
        if other.unet is not processor.model.unet:
            processor.other_unets.append(processor.models.title())
        networks.enter(other, networks.hires, processor.warnings)
    return _hires_sample(
        processor, r, hires, latents, low, firstpass_image, prompts, negatives, seeds, subseeds, other, stack
    )


def _hires_sample(
    processor: Processor,
    r: Txt2ImgRequest,
    hires: HiresPlan,
    latents: torch.Tensor | None,
    low: list[Image.Image] | None,
    firstpass_image: Image.Image | None,
    prompts: list[str],
    negatives: list[str],
    seeds: list[int],
    subseeds: list[int],
    other: StableDiffusionModel | None,
    stack: contextlib.ExitStack,
) -> torch.Tensor:
    model = other or processor.current_model
    batch = len(seeds)
    up_size = (hires.upscale_width, hires.upscale_height)
    if hires.upscaler in LATENT_UPSCALE_MODES:
        if latents is None:  # firstpass_image with a latent upscaler: encode it
            assert firstpass_image is not None
            latents = _encode(model, imgops.to_tensor([firstpass_image] * batch, model.device, torch.float32))
        mode, antialias = LATENT_UPSCALE_MODES[hires.upscaler]
        upscaled = torch.nn.functional.interpolate(
            latents.float(), size=(hires.upscale_height // 8, hires.upscale_width // 8), mode=mode, antialias=antialias
        )
        image_cond = processor._image_cond_txt2img(batch, hires.upscale_width, hires.upscale_height, model)
    else:
        assert low is not None
        if hires.upscaler in ("None", "Lanczos", "Nearest") or processor.model_upscale is None:
            resample = Image.Resampling.NEAREST if hires.upscaler == "Nearest" else Image.Resampling.LANCZOS
            images = [im.resize(up_size, resample) for im in low]
            if hires.upscaler == "Nearest":
                images = [im.resize(up_size, Image.Resampling.LANCZOS) if im.size != up_size else im for im in images]
        else:  # a model upscaler (ESRGAN, Real-ESRGAN, SwinIR ...) in pixel space
            images = [processor.model_upscale(im, hires.upscaler, up_size) for im in low]
        pixels = imgops.to_tensor(images, model.device, torch.float32)
        upscaled = _encode(model, pixels)
        image_cond = _inpaint_cond_full(model, pixels, upscaled, processor.settings)
    ty, tx = hires.truncate_y, hires.truncate_x
    upscaled = upscaled[:, :, ty // 2 : upscaled.shape[2] - (ty + 1) // 2, tx // 2 : upscaled.shape[3] - (tx + 1) // 2]
    if image_cond is not None and image_cond.shape[-1] == upscaled.shape[-1] + tx:
        image_cond = image_cond[
            :, :, ty // 2 : image_cond.shape[2] - (ty + 1) // 2, tx // 2 : image_cond.shape[3] - (tx + 1) // 2
        ]
    if hires.denoising <= 0:
        return upscaled
    steps, t_enc = img2img_steps(hires.steps, hires.denoising, exact=True)
    p = _Pass(hires.sampler, hires.schedule, steps)
    processor.in_hires_pass = True
    sp = processor.sampler_pass(p, is_hr_pass=True, model=model)
    rng = processor._rng(seeds, subseeds, hires.width, hires.height)
    noise = rng.first()
    hr_prompts = [r.hr_prompt or p_ for p_ in prompts]
    hr_negatives = [r.hr_negative_prompt or n for n in negatives]
    first_total = processor.sampler.total_calls(r.steps)
    hr_total = hires.sampler.total_calls(hires.steps)
    if processor.settings.hires_fix_use_firstpass_conds:
        plan = processor._plan(prompts, negatives, r.steps)
    else:
        plan = PromptPlan.build(
            [processor._strip_networks(x) for x in hr_prompts],
            [processor._strip_networks(x) for x in hr_negatives],
            first_total,
            hires_steps=hr_total,
            use_old_scheduling=processor.settings.use_old_scheduling,
        )
    encoder = processor.encoder if other is None else processor._encoder_for(model)
    job = processor.sampling_job(
        sp, plan, batch, hires.width, hires.height, image_cond=image_cond, model=model, encoder=encoder
    )
    processor.refiner_for(job, plan, batch, hires.width, hires.height, stack, hires_pass=True)
    out = processor.run_pass(
        sp,
        upscaled,
        partial(sp.img2img, job, upscaled, noise, steps, t_enc, rng, seeds, on_step=processor.hooks.step_callback()),
    )
    if sp.schedule_label is not None and sp.schedule_label != processor.extra_params.get(
        "Schedule type", processor.schedule.label
    ):
        processor.extra_params["Hires schedule type"] = sp.schedule_label
    return out


def _inpaint_cond_full(
    model: StableDiffusionModel, pixels: torch.Tensor, latents: torch.Tensor, settings: EngineSettings
) -> torch.Tensor | None:
    """A1111's `img2img_image_conditioning` without a mask: inpainting models get an all-ones mask
    and the image lerped towards black by the conditioning mask weight; ip2p the image latents."""
    family = model.family
    if family.variant == "inpaint":
        weight = settings.inpainting_mask_weight
        masked = torch.lerp(pixels, pixels * 0.0, weight)
        cmask = torch.ones(pixels.shape[0], 1, latents.shape[2], latents.shape[3], device=pixels.device)
        return torch.cat([cmask, _encode(model, masked)], dim=1).to(model.unet.dtype)
    if family.variant == "ip2p":
        return (latents / float(model.vae.config["scaling_factor"])).to(model.unet.dtype)
    return None


# ------------------------------------------------------------------------------------ img2img


@dataclass
class _Inpaint:
    """A1111's img2img mask state: the mask at processing size (`image_mask`, white = repaint),
    the overlay images pasted over the results, and where a "only masked" crop goes back."""

    image_mask: Image.Image
    latent_mask: Image.Image  # what the latent blend uses (`latent_mask` if the request gave one)
    overlays: list[Image.Image]
    paste_to: tuple[int, int, int, int] | None


def _prepare_img2img(r: Img2ImgRequest, settings: EngineSettings) -> tuple[list[Image.Image], _Inpaint | None]:
    """A1111's img2img `init`: init images flattened onto the background colour and resized; the
    mask read as A1111 reads it (alpha if transparent somewhere, else luminance), inverted, blurred,
    cropped to the masked region for "only masked"; overlays of the originals for pasting back."""
    images = [imgops.flatten(im, settings.img2img_background_color) for im in r.init_images]
    if r.mask is None:
        mode = 0 if r.resize_mode == RESIZE_LATENT else r.resize_mode
        out = (
            images
            if r.resize_mode == RESIZE_LATENT
            else [imgops.resize_image(mode, im, r.width, r.height) for im in images]
        )
        return out, None
    blur_x, blur_y = r.blur_xy
    mask = imgops.binary_mask(r.mask, round_mask=r.mask_round)
    if r.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    mask = imgops.gaussian_kernel_blur(mask, blur_x, blur_y)
    crop_region = None
    paste_to = None
    if r.inpaint_full_res:
        mask_for_overlay = mask
        box = imgops.masked_region(mask, r.inpaint_full_res_padding)
        if box is None:
            raise ValidationError("mask: the mask is empty; nothing to inpaint")
        crop_region = imgops.expand_to_ratio(box, r.width, r.height, mask.size)
        x1, y1, x2, y2 = crop_region
        image_mask = imgops.resize_image(RESIZE_FILL, mask.crop(crop_region), r.width, r.height)
        paste_to = (x1, y1, x2 - x1, y2 - y1)
    else:
        image_mask = imgops.resize_image(
            r.resize_mode if r.resize_mode != RESIZE_LATENT else 0, mask, r.width, r.height
        )
        arr = np.clip(np.asarray(image_mask).astype(np.float32) * 2, 0, 255).astype(np.uint8)
        mask_for_overlay = Image.fromarray(arr)
    latent = image_mask
    if r.latent_mask is not None:
        latent = r.latent_mask.convert("L") if isinstance(r.latent_mask, Image.Image) else latent
    prepared: list[Image.Image] = []
    overlays: list[Image.Image] = []
    for image in images:
        if crop_region is None and r.resize_mode != RESIZE_LATENT:
            image = imgops.resize_image(r.resize_mode, image, r.width, r.height)
        overlay_mask = mask_for_overlay
        if overlay_mask.size != image.size:
            overlay_mask = imgops.resize_image(
                r.resize_mode if r.resize_mode != RESIZE_LATENT else 0, overlay_mask, image.width, image.height
            )
        overlays.append(imgops.overlay_image(image, overlay_mask))
        if crop_region is not None:
            image = imgops.resize_image(RESIZE_FILL, image.crop(crop_region), r.width, r.height)
        if r.inpainting_fill == FILL_FILL:
            image = imgops.fill_masked(image, latent)
        prepared.append(image)
    return prepared, _Inpaint(image_mask=image_mask, latent_mask=latent, overlays=overlays, paste_to=paste_to)


def _latent_masks(
    inpaint: _Inpaint, shape: tuple[int, ...], round_mask: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, nmask) at latent size: A1111 resizes the mask to the latent grid (PIL's default
    bicubic via convert('RGB').resize), scales to [0, 1], rounds when asked; mask = 1 - that."""
    small = inpaint.latent_mask.convert("RGB").resize((shape[3], shape[2]))
    arr = np.moveaxis(np.array(small, dtype=np.float32), 2, 0) / 255
    lat = arr[0]
    if round_mask:
        lat = np.around(lat)
    lat = np.tile(lat[None], (shape[1], 1, 1))
    nmask = torch.asarray(lat).to(device)
    return torch.asarray(1.0 - lat).to(device), nmask


def run_img2img(processor: Processor, request: Img2ImgRequest, ctx: JobContext | None) -> Result:
    started = time.perf_counter()
    model = processor.model
    width, height = request.width, request.height
    result = Result(width=width, height=height)
    settings = processor.settings
    inits, inpaint = _prepare_img2img(request, settings)
    seeds, subseeds = processor.seeds()
    denoising = request.denoising_strength if request.denoising_strength is not None else 0.75
    steps, t_enc = img2img_steps(request.steps, denoising, exact=settings.img2img_fix_steps)
    p = _Pass(processor.sampler, processor.schedule, steps)
    family = model.family
    if len(inits) > 1 and len(inits) > request.batch_size:
        raise ValidationError(f"init_images: {len(inits)} images for a batch of {request.batch_size}")
    for n, batch in enumerate(_batches(request.n_iter, request.batch_size)):
        if ctx is not None:
            ctx.begin_image(n, request.n_iter)
        b_seeds = [seeds[i] for i in batch]
        b_subseeds = [subseeds[i] for i in batch]
        prompts = [request.prompt_at(i) for i in batch]
        negatives = [request.negative_prompt_at(i) for i in batch]
        event = processor.begin_batch(n, batch, b_seeds, prompts, negatives)
        batch_images = [inits[i % len(inits)] for i in range(len(batch))]
        pixels = imgops.to_tensor(batch_images, model.device, torch.float32)
        init_latent = _encode(model, pixels)
        if request.resize_mode == RESIZE_LATENT:
            init_latent = torch.nn.functional.interpolate(init_latent, size=(height // 8, width // 8), mode="bilinear")
        rng = processor._rng(b_seeds, b_subseeds, width, height)
        mask_state = None
        image_cond = None
        if inpaint is not None:
            mask, nmask = _latent_masks(inpaint, tuple(init_latent.shape), request.mask_round, model.device)
            if request.inpainting_fill == FILL_LATENT_NOISE:
                fill = noise_mod.ImageRNG(
                    tuple(init_latent.shape[1:]),
                    b_seeds,
                    source=settings.rng_source,  # type: ignore[arg-type]
                    device=model.device,
                ).first()
                init_latent = init_latent * mask + fill * nmask
            elif request.inpainting_fill == FILL_LATENT_NOTHING:
                init_latent = init_latent * mask
            if family.variant == "inpaint":
                image_cond = _inpaint_cond_masked(
                    model, pixels, init_latent, inpaint.image_mask, request.mask_round, settings
                )
            else:
                mask_state = LatentMask(mask=mask, nmask=nmask, init_latent=init_latent)
        elif family.variant == "inpaint":
            image_cond = _inpaint_cond_full(model, pixels, init_latent, settings)
        if family.variant == "ip2p":
            image_cond = (init_latent / float(model.vae.config["scaling_factor"])).to(model.unet.dtype)
        noise = rng.first()
        multiplier = request.initial_noise_multiplier or settings.initial_noise_multiplier
        if multiplier != 1.0:
            noise = noise * multiplier
            processor.extra_params["Noise multiplier"] = multiplier
        plan = processor._plan(prompts, negatives, request.steps)
        image_cfg = None
        if family.variant == "ip2p":
            image_cfg = request.image_cfg_scale if request.image_cfg_scale is not None else 1.5
        sp = processor.sampler_pass(p)
        job = processor.sampling_job(
            sp,
            plan,
            len(batch),
            width,
            height,
            image_cond=None if image_cond is None else image_cond.to(model.unet.dtype),
            image_cfg_scale=image_cfg,
            mask=mask_state,
        )
        with contextlib.ExitStack() as stack:
            processor.current_model = model
            processor.refiner_for(job, plan, len(batch), width, height, stack)
            try:
                run = partial(
                    sp.img2img,
                    job,
                    init_latent,
                    noise,
                    steps,
                    t_enc,
                    rng,
                    b_seeds,
                    on_step=processor.hooks.step_callback(),
                )
                # denoising 0 with "exact steps" leaves no schedule: the init image comes back as encoded
                latents = init_latent if steps < 1 else processor.run_pass(sp, init_latent, run)
            except ImageSkipped:
                continue
            except JobInterrupted:
                assert processor.partial is not None
                latents = processor.partial
                result.interrupted = True
            if mask_state is not None:
                latents = mask_state.blend(latents)

            def composite(image: Image.Image, i: int, inpaint: _Inpaint | None = inpaint) -> Image.Image:
                if inpaint is None or not settings.overlay_inpaint:
                    return image
                overlay = inpaint.overlays[i % len(inpaint.overlays)] if inpaint.overlays else None
                return imgops.apply_overlay(image, inpaint.paste_to, overlay)

            images = processor._finish_batch(
                result,
                latents,
                prompts,
                negatives,
                b_seeds,
                b_subseeds,
                batch.start,
                width,
                height,
                model=processor.current_model,
                finish=composite,
            )
        processor.end_batch(event, images, result)
        if result.interrupted or (ctx is not None and ctx.stopping_generation):
            break
    if inpaint is not None and inpaint.paste_to is not None and settings.overlay_inpaint and result.images:
        result.width, result.height = result.images[0].size
    result.elapsed = time.perf_counter() - started
    return result


def _inpaint_cond_masked(
    model: StableDiffusionModel,
    pixels: torch.Tensor,
    latents: torch.Tensor,
    image_mask: Image.Image,
    round_mask: bool,
    settings: EngineSettings,
) -> torch.Tensor:
    """A1111's `inpainting_image_conditioning` with a mask: the mask (rounded when asked), the
    image with the masked part lerped towards black by `inpainting_mask_weight`, encoded, and the
    mask resized (nearest) to the latent grid."""
    cmask = np.asarray(image_mask.convert("L")).astype(np.float32) / 255.0
    cond_mask = torch.from_numpy(cmask[None, None]).to(pixels.device)
    if round_mask:
        cond_mask = torch.round(cond_mask)
    masked = torch.lerp(pixels, pixels * (1.0 - cond_mask), settings.inpainting_mask_weight)
    encoded = _encode(model, masked)
    small = torch.nn.functional.interpolate(cond_mask, size=latents.shape[-2:]).expand(encoded.shape[0], -1, -1, -1)
    return torch.cat([small, encoded], dim=1).to(model.unet.dtype)


def options_to_settings(get: Callable[[str], Any], overrides: Mapping[str, Any]) -> EngineSettings:
    """Engine settings from option values, with `override_settings` taking precedence."""

    def value(key: str, default: Any) -> Any:
        if key in overrides:
            return overrides[key]
        try:
            got = get(key)
        except Exception:  # an option this build does not define
            return default
        return default if got is None else got

    sampler = SamplerOptions(
        eta_ancestral=float(value("eta_ancestral", 1.0)),
        eta_ddim=float(value("eta_ddim", 0.0)),
        s_churn=float(value("s_churn", 0.0)),
        s_tmin=float(value("s_tmin", 0.0)),
        s_tmax=float(value("s_tmax", 0.0)),
        s_noise=float(value("s_noise", 1.0)),
        sigma_min=float(value("sigma_min", 0.0)),
        sigma_max=float(value("sigma_max", 0.0)),
        rho=float(value("rho", 0.0)),
        always_discard_next_to_last_sigma=bool(value("always_discard_next_to_last_sigma", False)),
        sgm_noise_multiplier=bool(value("sgm_noise_multiplier", False)),
        uni_pc_variant=str(value("uni_pc_variant", "bh1")),
        uni_pc_skip_type=str(value("uni_pc_skip_type", "time_uniform")),
        uni_pc_order=int(value("uni_pc_order", 3)),
        uni_pc_lower_order_final=bool(value("uni_pc_lower_order_final", True)),
        skip_early_cond=float(value("skip_early_cond", 0.0)),
        s_min_uncond=float(value("s_min_uncond", 0.0)),
        s_min_uncond_all=bool(value("s_min_uncond_all", False)),
        beta_dist_alpha=float(value("beta_dist_alpha", 0.6)),
        beta_dist_beta=float(value("beta_dist_beta", 0.6)),
        img2img_extra_noise=float(value("img2img_extra_noise", 0.0)),
        use_old_karras_scheduler_sigmas=bool(value("use_old_karras_scheduler_sigmas", False)),
        no_dpmpp_sde_batch_determinism=bool(value("no_dpmpp_sde_batch_determinism", False)),
    )
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
        sampler=sampler,
        img2img_background_color=str(value("img2img_background_color", "#ffffff")),
        overlay_inpaint=bool(value("overlay_inpaint", True)),
        hires_fix_use_firstpass_conds=bool(value("hires_fix_use_firstpass_conds", False)),
        refiner_switch_by_sample_steps=bool(value("refiner_switch_by_sample_steps", False)),
        hires_fix_refiner_pass=str(value("hires_fix_refiner_pass", "second pass")),
        sdxl_refiner_low_aesthetic_score=float(value("sdxl_refiner_low_aesthetic_score", 2.5)),
        sdxl_refiner_high_aesthetic_score=float(value("sdxl_refiner_high_aesthetic_score", 6.0)),
        sdxl_crop_top=int(value("sdxl_crop_top", 0)),
        sdxl_crop_left=int(value("sdxl_crop_left", 0)),
        sdxl_clip_l_skip=bool(value("sdxl_clip_l_skip", False)),
        auto_vae_precision=bool(value("auto_vae_precision", True)),
        auto_vae_precision_bfloat16=bool(value("auto_vae_precision_bfloat16", False)),
        batch_cond_uncond=bool(value("batch_cond_uncond", True)),
    )
