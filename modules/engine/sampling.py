"""Our denoising loop over a diffusers UNet and scheduler.

What a stock pipeline cannot express lives here, per step: the conditioning can change every
step (prompt editing, alternation); each image may have several weighted conds (`AND`), combined
as A1111 does: out = uncond + sum_i (cond_i - uncond) * w_i * cfg_scale; instruct-pix2pix image
CFG; the 9-channel inpainting input; masked blending for normal models (the unmasked area is
reset to the noised original after every step); SDXL's added conditioning.

Seams (see `modules.engine.hooks`): every UNet call goes through a chain of wrappers
(`SamplingJob.unet_wrappers`); each sees the whole call as a `UNetCall` (latent input, timestep,
conditioning rows, extra input channels, SDXL added conditioning) and may change it, add residuals
or change the output before returning. `on_step` is called after every finished step. The loop
runs the schedule from `start_index` to `end_index` (the SDXL refiner switch hands the rest to
another model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch

from modules.engine.worker import JobContext


@dataclass
class TextCond:
    """Encoded text for a batch of rows: hidden states (N, T, C) and, for SDXL, pooled (N, P)."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def rows(self, index: Sequence[int]) -> TextCond:
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.hidden.device)
        return TextCond(self.hidden[idx], None if self.pooled is None else self.pooled[idx])


@dataclass
class StepConds:
    """Conditioning in force at one step for a batch of B images.

    `cond` holds every distinct positive cond row of the step; `weights[b]` lists the
    (row, weight) pairs of image b (several with `AND`). `uncond` has one row per image.
    """

    cond: TextCond
    weights: list[list[tuple[int, float]]]
    uncond: TextCond


@dataclass
class MaskBlend:
    """For inpainting with a normal model: keep `init_latents` where `mask` is 0."""

    mask: torch.Tensor  # (B or 1, 1, h, w), 1 = repaint
    init_latents: torch.Tensor  # (B, 4, h, w)
    noise: torch.Tensor  # (B, 4, h, w) the initial noise, to re-noise the original per step


CondPart = Literal["cond", "uncond", "cond+uncond", "image", "none"]


@dataclass(frozen=True)
class UNetCall:
    """One call of the UNet as the loop is about to make it. Wrappers get it and may pass on a
    changed copy (`dataclasses.replace`): residuals for ControlNet-like adapters go into
    `down_block_additional_residuals` / `mid_block_additional_residual`; anything else the UNet
    accepts goes into `extra` (e.g. `cross_attention_kwargs`)."""

    x: torch.Tensor  # (N, 4, h, w) scaled latent model input, without the extra image channels
    timestep: torch.Tensor
    text: TextCond  # N rows of conditioning (N = rows of x)
    image_cond: torch.Tensor | None  # extra input channels (inpainting / instruct-pix2pix), concatenated to x
    added_time_ids: torch.Tensor | None  # SDXL micro-conditioning (N, k)
    step: int  # index of this step in the full schedule (0-based)
    steps: int  # length of the full schedule
    sigma: float | None  # the scheduler's sigma at this step, when it has sigmas
    part: CondPart  # which part of the CFG batch these rows are
    owners: tuple[int, ...]  # for every row, the index of the image of the batch it belongs to
    down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None
    mid_block_additional_residual: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


UNetFn = Callable[[UNetCall], torch.Tensor]
UNetWrapper = Callable[[UNetCall, UNetFn], torch.Tensor]


@dataclass(frozen=True)
class StepInfo:
    """What the per-step callback sees after a finished step."""

    step: int  # index of the finished step in the full schedule (0-based)
    steps: int  # length of the full schedule
    timestep: torch.Tensor
    latents: torch.Tensor  # the latents after this step (do not modify in place)


@dataclass
class SamplingJob:
    unet: torch.nn.Module
    scheduler: object  # a diffusers SchedulerMixin, already `set_timesteps`-ed
    conds_at: Callable[[int], StepConds]  # step index (0-based) -> conditioning
    cfg_scale: float
    added_time_ids: torch.Tensor | None = None  # SDXL (B, n)
    image_cond: torch.Tensor | None = None  # extra UNet input channels (B, c, h, w)
    image_cfg_scale: float | None = None  # instruct-pix2pix
    mask_blend: MaskBlend | None = None
    step_noise: Callable[[], dict[str, Any]] | None = None  # per-step noise kwargs for scheduler.step
    start_index: int = 0  # img2img: skip the first timesteps
    end_index: int | None = None  # stop before this index (None: run to the end)
    unet_wrappers: Sequence[UNetWrapper] = ()  # outermost first
    on_step: Callable[[StepInfo], None] | None = None
    context: JobContext | None = None
    preview: bool = True
    last_latents: torch.Tensor | None = None  # after the last finished step (kept for interrupt)


def _call_unet(job: SamplingJob, call: UNetCall) -> torch.Tensor:
    """The innermost function of the wrapper chain: the UNet itself, in its dtype."""
    dtype = cast(torch.dtype, job.unet.dtype)
    x = call.x
    if call.image_cond is not None:
        x = torch.cat([x, call.image_cond.to(x.dtype)], dim=1)
    extra: dict[str, Any] = dict(call.extra)
    if call.text.pooled is not None and call.added_time_ids is not None:
        extra["added_cond_kwargs"] = {
            "text_embeds": call.text.pooled.to(dtype),
            "time_ids": call.added_time_ids.to(dtype),
        }
    if call.down_block_additional_residuals is not None:
        extra["down_block_additional_residuals"] = tuple(r.to(dtype) for r in call.down_block_additional_residuals)
    if call.mid_block_additional_residual is not None:
        extra["mid_block_additional_residual"] = call.mid_block_additional_residual.to(dtype)
    return job.unet(x.to(dtype), call.timestep, encoder_hidden_states=call.text.hidden.to(dtype), **extra).sample


def run_unet_chain(wrappers: Sequence[UNetWrapper], base: UNetFn, call: UNetCall) -> torch.Tensor:
    """`wrappers[0](call, next)` where `next` runs the rest of the chain and finally `base`."""

    def at(i: int) -> UNetFn:
        if i == len(wrappers):
            return base
        wrapper, rest = wrappers[i], at(i + 1)
        return lambda c: wrapper(c, rest)

    return at(0)(call)


@dataclass(frozen=True)
class _StepState:
    timestep: torch.Tensor
    step: int
    steps: int
    sigma: float | None


def _unet(
    job: SamplingJob,
    state: _StepState,
    x: torch.Tensor,
    text: TextCond,
    image: torch.Tensor | None,
    part: CondPart,
    owners: Sequence[int],
) -> torch.Tensor:
    """One UNet call through the wrapper chain; the result comes back in float32 for the scheduler."""
    time_ids = job.added_time_ids
    if time_ids is not None and time_ids.shape[0] != x.shape[0]:
        time_ids = time_ids[:1].expand(x.shape[0], -1)
    call = UNetCall(
        x=x,
        timestep=state.timestep,
        text=text,
        image_cond=image,
        added_time_ids=time_ids if text.pooled is not None else None,
        step=state.step,
        steps=state.steps,
        sigma=state.sigma,
        part=part,
        owners=tuple(owners),
    )
    if not job.unet_wrappers:
        return _call_unet(job, call).float()
    return run_unet_chain(job.unet_wrappers, lambda c: _call_unet(job, c), call).float()


def _same_length(a: TextCond, b: TextCond) -> bool:
    return a.hidden.shape[1:] == b.hidden.shape[1:]


def _cat(a: TextCond, b: TextCond) -> TextCond:
    pooled = None if a.pooled is None or b.pooled is None else torch.cat([a.pooled, b.pooled])
    return TextCond(torch.cat([a.hidden, b.hidden]), pooled)


def model_output(
    job: SamplingJob, x: torch.Tensor, t: torch.Tensor, conds: StepConds, *, step: int = 0, sigma: float | None = None
) -> torch.Tensor:
    """CFG-combined UNet output for the batch `x` (B, 4, h, w) at schedule index `step`."""
    batch = x.shape[0]
    rows = [r for per_image in conds.weights for r, _ in per_image]
    owners = [b for b, per_image in enumerate(conds.weights) for _ in per_image]
    everyone = list(range(batch))
    state = _StepState(timestep=t, step=step, steps=len(job.scheduler.timesteps), sigma=sigma)  # type: ignore[attr-defined]
    cond = conds.cond.rows(rows)
    x_cond = x[owners]
    image = job.image_cond
    image_cond = (
        None if image is None else image[owners] if image.shape[0] == batch else image[:1].expand(len(rows), -1, -1, -1)
    )
    image_uncond = None if image is None else image if image.shape[0] == batch else image[:1].expand(batch, -1, -1, -1)

    if job.image_cfg_scale is not None and image is not None and image_uncond is not None:
        # instruct-pix2pix: text+image, image only, neither
        e_cond = _unet(job, state, x_cond, cond, image_cond, "cond", owners)
        e_img = _unet(job, state, x, conds.uncond, image_uncond, "image", everyone)
        e_none = _unet(job, state, x, conds.uncond, torch.zeros_like(image_uncond), "none", everyone)
        out = e_none + job.image_cfg_scale * (e_img - e_none)
        for i, (b, (_, w)) in enumerate(zip(owners, (p for per in conds.weights for p in per), strict=True)):
            out[b] = out[b] + job.cfg_scale * w * (e_cond[i] - e_img[b])
        return out

    if _same_length(cond, conds.uncond):
        both_image = None if image_cond is None or image_uncond is None else torch.cat([image_cond, image_uncond])
        both = _unet(
            job, state, torch.cat([x_cond, x]), _cat(cond, conds.uncond), both_image, "cond+uncond", owners + everyone
        )
        e_cond, e_uncond = both[: len(rows)], both[len(rows) :]
    else:  # different chunk counts: A1111 evaluates them separately
        e_cond = _unet(job, state, x_cond, cond, image_cond, "cond", owners)
        e_uncond = _unet(job, state, x, conds.uncond, image_uncond, "uncond", everyone)
    out = e_uncond.clone()
    weights = [w for per_image in conds.weights for _, w in per_image]
    for i, b in enumerate(owners):
        out[b] = out[b] + (e_cond[i] - e_uncond[b]) * weights[i] * job.cfg_scale
    return out


def _sigma_at(scheduler: object, index: int) -> float | None:
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or index >= len(sigmas):
        return None
    return float(sigmas[index])


def sample(job: SamplingJob, latents: torch.Tensor) -> torch.Tensor:
    """Run the scheduler from `start_index` to `end_index` (default: the end); returns the latents.

    Raises the worker's `JobInterrupted` / `ImageSkipped` from `context.step`; `job.last_latents`
    then holds the latents of the last finished step (A1111 returns that partial image).
    """
    scheduler = job.scheduler
    schedule = scheduler.timesteps  # type: ignore[attr-defined]
    timesteps = schedule[job.start_index : job.end_index]
    ctx = job.context
    if ctx is not None:
        ctx.begin_pass(len(timesteps))
    blend = job.mask_blend
    for i, t in enumerate(timesteps):
        index = job.start_index + i
        conds = job.conds_at(index)
        x_in = scheduler.scale_model_input(latents, t)  # type: ignore[attr-defined]
        with torch.no_grad():
            eps = model_output(job, x_in, t, conds, step=index, sigma=_sigma_at(scheduler, index))
        step_kwargs = job.step_noise() if job.step_noise is not None else {}
        latents = scheduler.step(eps.float(), t, latents.float(), **step_kwargs).prev_sample  # type: ignore[attr-defined]
        if blend is not None:
            latents = _blend(scheduler, blend, latents, schedule, index)
        job.last_latents = latents
        if job.on_step is not None:
            job.on_step(StepInfo(step=index, steps=len(schedule), timestep=t, latents=latents))
        if ctx is not None:
            ctx.step(i + 1, latents if job.preview else None)
    return latents


def _blend(
    scheduler: object, blend: MaskBlend, latents: torch.Tensor, schedule: torch.Tensor, index: int
) -> torch.Tensor:
    """Reset the kept area to the original, noised to the level of the next step of the schedule
    (A1111 blends the original latent in after every step)."""
    if index + 1 < len(schedule):
        next_t = schedule[index + 1 : index + 2]
        original = scheduler.add_noise(blend.init_latents, blend.noise, next_t)  # type: ignore[attr-defined]
    else:
        original = blend.init_latents
    return original * (1 - blend.mask) + latents * blend.mask
