"""Our denoising loop over a diffusers UNet and scheduler.

What a stock pipeline cannot express lives here, per step: the conditioning can change every
step (prompt editing, alternation); each image may have several weighted conds (`AND`), combined
as A1111 does: out = uncond + sum_i (cond_i - uncond) * w_i * cfg_scale; instruct-pix2pix image
CFG; the 9-channel inpainting input; masked blending for normal models (the unmasked area is
reset to the noised original after every step); SDXL's added conditioning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
    context: JobContext | None = None
    preview: bool = True
    last_latents: torch.Tensor | None = None  # after the last finished step (kept for interrupt)


def _unet(
    job: SamplingJob, x: torch.Tensor, t: torch.Tensor, text: TextCond, image: torch.Tensor | None
) -> torch.Tensor:
    """One UNet call in the UNet's dtype; the result comes back in float32 for the scheduler."""
    dtype = job.unet.dtype  # type: ignore[attr-defined]
    if image is not None:
        x = torch.cat([x, image.to(x.dtype)], dim=1)
    extra = {}
    if text.pooled is not None and job.added_time_ids is not None:
        time_ids = job.added_time_ids
        if time_ids.shape[0] != x.shape[0]:
            time_ids = time_ids[:1].expand(x.shape[0], -1)
        extra["added_cond_kwargs"] = {"text_embeds": text.pooled.to(dtype), "time_ids": time_ids.to(dtype)}
    out = job.unet(x.to(dtype), t, encoder_hidden_states=text.hidden.to(dtype), **extra).sample
    return out.float()


def _same_length(a: TextCond, b: TextCond) -> bool:
    return a.hidden.shape[1:] == b.hidden.shape[1:]


def _cat(a: TextCond, b: TextCond) -> TextCond:
    pooled = None if a.pooled is None or b.pooled is None else torch.cat([a.pooled, b.pooled])
    return TextCond(torch.cat([a.hidden, b.hidden]), pooled)


def model_output(job: SamplingJob, x: torch.Tensor, t: torch.Tensor, conds: StepConds) -> torch.Tensor:
    """CFG-combined UNet output for the batch `x` (B, 4, h, w)."""
    batch = x.shape[0]
    rows = [r for per_image in conds.weights for r, _ in per_image]
    owners = [b for b, per_image in enumerate(conds.weights) for _ in per_image]
    cond = conds.cond.rows(rows)
    x_cond = x[owners]
    image = job.image_cond
    image_cond = (
        None if image is None else image[owners] if image.shape[0] == batch else image[:1].expand(len(rows), -1, -1, -1)
    )
    image_uncond = None if image is None else image if image.shape[0] == batch else image[:1].expand(batch, -1, -1, -1)

    if job.image_cfg_scale is not None and image is not None:
        # instruct-pix2pix: text+image, image only, neither
        e_cond = _unet(job, x_cond, t, cond, image_cond)
        e_img = _unet(job, x, t, conds.uncond, image_uncond)
        e_none = _unet(job, x, t, conds.uncond, torch.zeros_like(image_uncond))  # type: ignore[arg-type]
        out = e_none + job.image_cfg_scale * (e_img - e_none)
        for i, (b, (_, w)) in enumerate(zip(owners, (p for per in conds.weights for p in per), strict=True)):
            out[b] = out[b] + job.cfg_scale * w * (e_cond[i] - e_img[b])
        return out

    if _same_length(cond, conds.uncond):
        both = _unet(
            job,
            torch.cat([x_cond, x]),
            t,
            _cat(cond, conds.uncond),
            None if image is None else torch.cat([image_cond, image_uncond]),  # type: ignore[list-item]
        )
        e_cond, e_uncond = both[: len(rows)], both[len(rows) :]
    else:  # different chunk counts: A1111 evaluates them separately
        e_cond = _unet(job, x_cond, t, cond, image_cond)
        e_uncond = _unet(job, x, t, conds.uncond, image_uncond)
    out = e_uncond.clone()
    weights = [w for per_image in conds.weights for _, w in per_image]
    for i, b in enumerate(owners):
        out[b] = out[b] + (e_cond[i] - e_uncond[b]) * weights[i] * job.cfg_scale
    return out


def sample(job: SamplingJob, latents: torch.Tensor) -> torch.Tensor:
    """Run the scheduler from `start_index` to the end; returns the final latents.

    Raises the worker's `JobInterrupted` / `ImageSkipped` from `context.step`; `job.last_latents`
    then holds the latents of the last finished step (A1111 returns that partial image).
    """
    scheduler = job.scheduler
    timesteps = scheduler.timesteps[job.start_index :]  # type: ignore[attr-defined]
    ctx = job.context
    if ctx is not None:
        ctx.begin_pass(len(timesteps))
    blend = job.mask_blend
    for i, t in enumerate(timesteps):
        conds = job.conds_at(job.start_index + i)
        x_in = scheduler.scale_model_input(latents, t)  # type: ignore[attr-defined]
        with torch.no_grad():
            eps = model_output(job, x_in, t, conds)
        step_kwargs = job.step_noise() if job.step_noise is not None else {}
        latents = scheduler.step(eps.float(), t, latents.float(), **step_kwargs).prev_sample  # type: ignore[attr-defined]
        if blend is not None:
            latents = _blend(scheduler, blend, latents, timesteps, i)
        job.last_latents = latents
        if ctx is not None:
            ctx.step(i + 1, latents if job.preview else None)
    return latents


def _blend(scheduler: object, blend: MaskBlend, latents: torch.Tensor, timesteps: torch.Tensor, i: int) -> torch.Tensor:
    """Reset the kept area to the original, noised to the level of the next step (A1111 blends
    the original latent in after every step)."""
    if i + 1 < len(timesteps):
        next_t = timesteps[i + 1 : i + 2]
        original = scheduler.add_noise(blend.init_latents, blend.noise, next_t)  # type: ignore[attr-defined]
    else:
        original = blend.init_latents
    return original * (1 - blend.mask) + latents * blend.mask
