"""The model side of our denoising loop: A1111's CFG denoiser over a diffusers UNet.

A sampler (`modules.engine.kdiffusion`, `modules.engine.timestep_samplers`) integrates by calling
a denoiser; `CFGDenoiser` is that denoiser, the way A1111 v1.10.1 builds it:

- k-diffusion samplers call `denoiser(x, sigma) -> denoised` (the x0 prediction). The UNet sees
  `x * c_in` (c_in = 1 / sqrt(sigma^2 + 1)) at the fractional timestep `sigma_to_t(sigma)`
  (log-sigma interpolation over the model's discrete schedule, `DiscreteSchedule`), and its output
  becomes `x + eps * c_out` (c_out = -sigma; v-prediction models use their own scalings).
- timestep samplers (DDIM, PLMS, UniPC) call `denoiser(x, t) -> eps` at integer timesteps, with no
  input scaling (v-prediction output converted to eps).
- classifier-free guidance combines the per-row outputs as A1111 does:
  out = uncond + sum_i (cond_i - uncond) * (w_i * cfg_scale) over each image's `AND` sub-prompts,
  on the denoised predictions for k-diffusion and on eps for timestep samplers; instruct-pix2pix
  uses text+image / image-only / neither rows and the image CFG scale.
- the conditioning can change at every model call (prompt editing, alternation): A1111 counts
  model calls, so a second-order sampler's schedule is twice as long (`PromptPlan` is built with
  the doubled count).
- masks (inpainting with a normal model): k-diffusion blends the *denoised* prediction with the
  original latent after each call, timestep samplers blend the input x before it; the caller
  blends once more after sampling.
- NGMS (`s_min_uncond`) and `skip_early_cond` skip the unconditional rows as A1111 does.

Seams (see `modules.engine.hooks`): every UNet call goes through a chain of wrappers
(`SamplingJob.unet_wrappers`); each sees the whole call as a `UNetCall` (latent input, timestep,
conditioning rows, extra input channels, SDXL added conditioning) and may change it, add residuals
or change the output before returning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch

from modules.engine.worker import JobContext

__all__ = [
    "CFGDenoiser",
    "DiscreteSchedule",
    "LCMSchedule",
    "LatentMask",
    "SamplingJob",
    "StepConds",
    "StepInfo",
    "TextCond",
    "UNetCall",
    "UNetFn",
    "UNetWrapper",
    "a1111_alphas_cumprod",
    "run_unet_chain",
]


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
    """Conditioning in force at one model call for a batch of B images.

    `cond` holds every distinct positive cond row; `weights[b]` lists the (row, weight) pairs of
    image b (several with `AND`). `uncond` has one row per image.
    """

    cond: TextCond
    weights: list[list[tuple[int, float]]]
    uncond: TextCond


@dataclass
class LatentMask:
    """Inpainting with a normal model: `mask` is 1 where the original is kept, `nmask = 1 - mask`
    where it is repainted (A1111's `p.mask` / `p.nmask`), both broadcastable to the latents;
    `init_latent` is the encoded original."""

    mask: torch.Tensor
    nmask: torch.Tensor
    init_latent: torch.Tensor

    def blend(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.nmask + self.init_latent * self.mask


CondPart = Literal["cond", "uncond", "cond+uncond", "image", "none"]


@dataclass(frozen=True)
class UNetCall:
    """One call of the UNet as the loop is about to make it. Wrappers get it and may pass on a
    changed copy (`dataclasses.replace`): residuals for ControlNet-like adapters go into
    `down_block_additional_residuals` / `mid_block_additional_residual`; anything else the UNet
    accepts goes into `extra` (e.g. `cross_attention_kwargs`)."""

    x: torch.Tensor  # (N, 4, h, w) scaled latent model input, without the extra image channels
    timestep: torch.Tensor  # (N,) the model's (fractional) training timestep per row
    text: TextCond  # N rows of conditioning (N = rows of x)
    image_cond: torch.Tensor | None  # extra input channels (inpainting / instruct-pix2pix), concatenated to x
    added_time_ids: torch.Tensor | None  # SDXL micro-conditioning (N, k)
    step: int  # index of this model call in the pass (A1111's denoiser step counter, 0-based)
    steps: int  # expected model calls of the pass
    sigma: float | None  # the noise level of this call (None for timestep samplers)
    part: CondPart  # which part of the CFG batch these rows are
    owners: tuple[int, ...]  # for every row, the index of the image of the batch it belongs to
    down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None
    mid_block_additional_residual: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    row_parts: tuple[CondPart, ...] = ()  # the part of every row ("cond", "uncond", "none"); () = all `part`

    def parts_of_rows(self) -> tuple[CondPart, ...]:
        """The CFG part of every row (a "cond+uncond" call holds both, cond rows first)."""
        return self.row_parts or (self.part,) * int(self.x.shape[0])


UNetFn = Callable[[UNetCall], torch.Tensor]
UNetWrapper = Callable[[UNetCall, UNetFn], torch.Tensor]


@dataclass(frozen=True)
class StepInfo:
    """What the per-step hook (`Hooks.on_step`) sees once per sampler step."""

    step: int  # index of the sampler step in the pass (0-based)
    steps: int  # sampler steps of the pass
    timestep: torch.Tensor  # the sigma (k-diffusion) or training timestep of the step
    latents: torch.Tensor  # the sampler's x at this step (do not modify in place)
    denoised: torch.Tensor | None = None  # the x0 prediction of the step


# ------------------------------------------------------------------------------------ schedules


def a1111_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000
) -> torch.Tensor:
    """The training noise schedule as A1111's models hold it: betas = linspace(sqrt(b0), sqrt(b1))^2
    in float64, their cumulative product of (1 - beta) in float64, stored as float32 (LDM's
    `register_schedule`, SDXL's legacy discretisation). diffusers computes the same in float32,
    which differs in the last bits."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas.numpy()
    import numpy as np

    return torch.from_numpy(np.cumprod(alphas, axis=0)).to(torch.float32)


class DiscreteSchedule:
    """A model's discrete noise levels (k-diffusion's `DiscreteSchedule`), float32 like A1111's:
    sigma_i = sqrt((1 - a_i) / a_i) for training timestep i, and the continuous maps between sigma
    and (fractional) timestep by linear interpolation in log sigma."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        self.alphas_cumprod = alphas_cumprod.to(torch.float32)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def to(self, device: torch.device) -> DiscreteSchedule:
        moved = DiscreteSchedule.__new__(type(self))
        moved.__dict__.update(
            {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        )
        return moved

    def get_sigmas(self, n: int | None = None) -> torch.Tensor:
        """n sigmas evenly spaced in timestep from the top, plus a final 0 (k-diffusion `get_sigmas`)."""
        if n is None:
            return torch.cat([self.sigmas.flip(0), self.sigmas.new_zeros([1])])
        t_max = len(self.sigmas) - 1
        t = torch.linspace(t_max, 0, n, device=self.sigmas.device)
        return torch.cat([self.t_to_sigma(t), t.new_zeros([1])])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = (low - log_sigma) / (low - high)
        w = w.clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()


class LCMSchedule(DiscreteSchedule):
    """A1111's LCM denoiser schedule: the 50 timesteps of the LCM grid (19, 39, ..., 999); a sigma
    maps to the nearest grid timestep (no interpolation), and the grid's own schedule is linear in
    grid index."""

    ORIGINAL_STEPS = 50

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        total = len(alphas_cumprod)
        self.skip_steps = total // self.ORIGINAL_STEPS
        valid = torch.zeros(self.ORIGINAL_STEPS, dtype=torch.float32, device=alphas_cumprod.device)
        for i in range(self.ORIGINAL_STEPS):
            valid[self.ORIGINAL_STEPS - 1 - i] = alphas_cumprod[total - 1 - i * self.skip_steps]
        super().__init__(valid)

    def get_sigmas(self, n: int | None = None) -> torch.Tensor:
        if n is None:
            return torch.cat([self.sigmas.flip(0), self.sigmas.new_zeros([1])])
        start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
        t = torch.linspace(float(start), float(end), n, device=self.sigmas.device)
        return torch.cat([self.t_to_sigma(t), t.new_zeros([1])])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip_steps + (self.skip_steps - 1)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        grid = torch.clamp(((t - (self.skip_steps - 1)) / self.skip_steps).float(), min=0, max=len(self.sigmas) - 1)
        return super().t_to_sigma(grid)


# -------------------------------------------------------------------------------------- the job


DenoiserMode = Literal["kdiffusion", "timesteps", "lcm"]


@dataclass
class SamplingJob:
    """Everything the denoiser needs for one pass over one batch."""

    unet: torch.nn.Module
    schedule: DiscreteSchedule
    conds_at: Callable[[int], StepConds]  # model call index (0-based) -> conditioning
    cfg_scale: float
    mode: DenoiserMode = "kdiffusion"
    prediction_type: str = "epsilon"
    added_time_ids: torch.Tensor | None = None  # SDXL (B, n), for the prompt rows
    added_time_ids_uncond: torch.Tensor | None = None  # for the negative rows (the refiner's low aesthetic score)
    image_cond: torch.Tensor | None = None  # extra UNet input channels (B, c, h, w)
    image_cfg_scale: float | None = None  # instruct-pix2pix
    mask: LatentMask | None = None
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    skip_early_cond: float = 0.0
    total_calls: int = 1  # expected model calls of the pass (A1111's total_steps)
    unet_wrappers: Sequence[UNetWrapper] = ()  # outermost first
    context: JobContext | None = None
    before_call: Callable[[CFGDenoiser, torch.Tensor], None] | None = None  # e.g. the SDXL refiner handover
    notes: dict[str, Any] = field(default_factory=dict)  # infotext entries the denoiser adds (NGMS, ...)
    upcast: bool = False  # --upcast-sampling: the half-precision UNet runs under autocast
    batch_cond_uncond: bool = True  # A1111's option: cond and uncond rows in one UNet call (else one call each)
    _dtype_of: tuple[torch.nn.Module, torch.dtype] | None = field(default=None, init=False, repr=False, compare=False)

    def unet_dtype(self) -> torch.dtype:
        """`unet.dtype`, read once per UNet object (a handover that swaps `unet` reads it again):
        diffusers' `ModelMixin.dtype` walks every submodule on each access (about 2 ms for SD 1.5's
        UNet and 8 ms for SDXL's on a slow CPU), which the loop paid on every model call."""
        cached = self._dtype_of
        if cached is None or cached[0] is not self.unet:
            cached = self._dtype_of = (self.unet, cast(torch.dtype, self.unet.dtype))
        return cached[1]


def _call_unet(job: SamplingJob, call: UNetCall) -> torch.Tensor:
    """The innermost function of the wrapper chain: the UNet itself, in its dtype."""
    dtype = job.unet_dtype()
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
    # --upcast-sampling: autocast keeps the weights and matmuls in half precision but computes the
    # ops autocast lists as fp32-only (normalisations, softmax, exp) in fp32
    upcast = torch.autocast(x.device.type, dtype=dtype) if job.upcast else contextlib.nullcontext()
    with upcast:
        return job.unet(x.to(dtype), call.timestep, encoder_hidden_states=call.text.hidden.to(dtype), **extra).sample


def run_unet_chain(wrappers: Sequence[UNetWrapper], base: UNetFn, call: UNetCall) -> torch.Tensor:
    """`wrappers[0](call, next)` where `next` runs the rest of the chain and finally `base`."""

    def at(i: int) -> UNetFn:
        if i == len(wrappers):
            return base
        wrapper, rest = wrappers[i], at(i + 1)
        return lambda c: wrapper(c, rest)

    return at(0)(call)


def _same_length(a: TextCond, b: TextCond) -> bool:
    return a.hidden.shape[1:] == b.hidden.shape[1:]


def _cat(*conds: TextCond) -> TextCond:
    pooled = None if any(c.pooled is None for c in conds) else torch.cat([c.pooled for c in conds])  # type: ignore[misc]
    return TextCond(torch.cat([c.hidden for c in conds]), pooled)


def _append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v[(...,) + (None,) * (ndim - v.ndim)]


class CFGDenoiser:
    """A1111's `CFGDenoiser` for one pass: `self(x, sigma)` -> denoised (k-diffusion, LCM) or
    `self(x, t)` -> eps (timestep samplers). Counts its calls in `step`; keeps the last x0
    prediction of the images' first cond rows in `last_latent` (what an interrupted job returns)."""

    def __init__(self, job: SamplingJob) -> None:
        self.job = job
        self.step = 0
        self.last_latent: torch.Tensor | None = None
        self.cond_scale_multiplier = 1.0
        self.need_last_noise_uncond = False
        self.last_noise_uncond: torch.Tensor | None = None

    # -- model wrappers (k-diffusion's CompVisDenoiser / CompVisVDenoiser, A1111's timestep ones)

    def _rows_to_output(
        self, x_in: torch.Tensor, sigma_in: torch.Tensor, run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Model output per row: denoised for k-diffusion / LCM, eps for timestep samplers."""
        job = self.job
        if job.mode == "timesteps":
            out = run(x_in, sigma_in)
            if job.prediction_type == "v_prediction":
                ac = job.schedule.alphas_cumprod.to(x_in.device)
                idx = sigma_in.to(torch.int)
                out = torch.sqrt(ac)[idx, None, None, None] * out + torch.sqrt(1 - ac)[idx, None, None, None] * x_in
            return out
        sigma = _append_dims(sigma_in, x_in.ndim)
        if job.prediction_type == "v_prediction":
            c_skip = 1.0 / (sigma**2 + 1.0)
            c_out = -sigma * 1.0 / (sigma**2 + 1.0) ** 0.5
            c_in = 1 / (sigma**2 + 1.0) ** 0.5
            return run(x_in * c_in, job.schedule.sigma_to_t(sigma_in)) * c_out + x_in * c_skip
        c_out, c_in = -sigma, 1 / (sigma**2 + 1.0) ** 0.5
        eps = run(x_in * c_in, job.schedule.sigma_to_t(sigma_in))
        denoised = x_in + eps * c_out
        if job.mode == "lcm":
            scaled = _append_dims(job.schedule.sigma_to_t(sigma_in), x_in.ndim) * 10.0
            sigma_data = 0.5
            c_skip_lcm = sigma_data**2 / (scaled**2 + sigma_data**2)
            c_out_lcm = scaled / (scaled**2 + sigma_data**2) ** 0.5
            return c_out_lcm * denoised + c_skip_lcm * x_in
        return denoised

    def _time_ids(self, part: CondPart, owners: Sequence[int]) -> torch.Tensor | None:
        job = self.job
        ids = (
            job.added_time_ids
            if part == "cond"
            else (job.added_time_ids_uncond if job.added_time_ids_uncond is not None else job.added_time_ids)
        )
        if ids is None:
            return None
        if ids.shape[0] == 1:
            return ids.expand(len(owners), -1)
        return ids[list(owners)]

    def _unet_rows(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        sigma: float | None,
        text: TextCond,
        image: torch.Tensor | None,
        part: CondPart,
        owners: Sequence[int],
        time_ids: torch.Tensor | None,
        row_parts: Sequence[CondPart] = (),
    ) -> torch.Tensor:
        job = self.job
        call = UNetCall(
            x=x,
            timestep=t,
            text=text,
            image_cond=image,
            added_time_ids=time_ids if text.pooled is not None else None,
            step=self.step,
            steps=job.total_calls,
            sigma=sigma,
            part=part,
            owners=tuple(owners),
            row_parts=tuple(row_parts),
        )
        if not job.unet_wrappers:
            return _call_unet(job, call).float()
        return run_unet_chain(job.unet_wrappers, lambda c: _call_unet(job, c), call).float()

    # -- the call ------------------------------------------------------------------------------

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        job = self.job
        if job.context is not None:
            job.context.check()
        if job.before_call is not None:
            job.before_call(self, sigma)
        conds = job.conds_at(self.step)
        batch = x.shape[0]
        if job.mode == "timesteps" and job.mask is not None:
            x = job.mask.blend(x)

        weights = [p for per_image in conds.weights for p in per_image]
        rows = [r for r, _ in weights]
        owners = [b for b, per_image in enumerate(conds.weights) for _ in per_image]
        everyone = list(range(batch))
        image = job.image_cond
        edit = image is not None and job.image_cfg_scale is not None and job.image_cfg_scale != 1.0
        if edit and any(len(per) != 1 for per in conds.weights):
            from modules.core.errors import ValidationError

            raise ValidationError("AND is not supported for instruct-pix2pix models (unless Image CFG scale is 1.0)")

        def img(index: Sequence[int]) -> torch.Tensor | None:
            if image is None:
                return None
            return image[list(index)] if image.shape[0] == batch else image[:1].expand(len(index), -1, -1, -1)

        skip_uncond = False
        if job.skip_early_cond and self.step / max(job.total_calls, 1) <= job.skip_early_cond:
            skip_uncond = True
            job.notes["Skip Early CFG"] = job.skip_early_cond
        elif (
            (self.step % 2 or job.s_min_uncond_all)
            and job.s_min_uncond > 0
            and job.mode != "timesteps"
            and float(sigma[0]) < job.s_min_uncond
            and not edit
        ):
            skip_uncond = True
            job.notes["NGMS"] = job.s_min_uncond
            if job.s_min_uncond_all:
                job.notes["NGMS all steps"] = True

        sigma_value = None if job.mode == "timesteps" else float(sigma[0])
        cond = conds.cond.rows(rows)
        x_rows = [x[owners]]
        sigma_rows = [sigma[owners]]
        parts: list[tuple[TextCond, torch.Tensor | None, CondPart, list[int]]] = [(cond, img(owners), "cond", owners)]
        if not skip_uncond:
            x_rows.append(x)
            sigma_rows.append(sigma)
            parts.append((conds.uncond, img(everyone), "uncond", everyone))
        if edit:
            x_rows.append(x)
            sigma_rows.append(sigma)
            zeros = torch.zeros_like(img(everyone))  # type: ignore[arg-type]
            parts.append((conds.uncond, zeros, "none", everyone))
        x_in = torch.cat(x_rows)
        sigma_in = torch.cat(sigma_rows)

        def run(model_x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            texts = [p[0] for p in parts]
            if job.batch_cond_uncond and all(_same_length(texts[0], other) for other in texts[1:]):
                images = [p[1] for p in parts]
                both_image = None if images[0] is None else torch.cat(images)  # type: ignore[arg-type]
                owners_all = [o for p in parts for o in p[3]]
                part: CondPart = "cond" if len(parts) == 1 else "cond+uncond"
                ids = [self._time_ids(p[2], p[3]) for p in parts]
                time_ids = None if ids[0] is None else torch.cat(ids)  # type: ignore[arg-type]
                row_parts = [p[2] for p in parts for _ in p[3]]
                return self._unet_rows(
                    model_x, t, sigma_value, _cat(*texts), both_image, part, owners_all, time_ids, row_parts
                )
            outs, start = [], 0
            for text, image_rows, part_name, who in parts:
                n = len(who)
                outs.append(
                    self._unet_rows(
                        model_x[start : start + n],
                        t[start : start + n],
                        sigma_value,
                        text,
                        image_rows,
                        part_name,
                        who,
                        self._time_ids(part_name, who),
                    )
                )
                start += n
            return torch.cat(outs)

        x_out = self._rows_to_output(x_in, sigma_in, run)

        n_cond = len(rows)
        first_rows = [next(i for i, o in enumerate(owners) if o == b) for b in range(batch)]
        if skip_uncond:
            x_out = torch.cat([x_out, x_out[first_rows]])
        if self.need_last_noise_uncond:
            self.last_noise_uncond = torch.clone(x_out[n_cond : n_cond + batch])

        scale = job.cfg_scale * self.cond_scale_multiplier
        if edit:
            out_cond, out_img, out_uncond = x_out[:batch], x_out[batch : 2 * batch], x_out[2 * batch :]
            denoised = out_uncond + scale * (out_cond - out_img) + job.image_cfg_scale * (out_img - out_uncond)  # type: ignore[operator]
        else:
            if skip_uncond:
                scale = 1.0
            denoised_uncond = x_out[n_cond : n_cond + batch]
            denoised = torch.clone(denoised_uncond)
            for i, (b, (_, weight)) in enumerate(zip(owners, weights, strict=True)):
                denoised[b] += (x_out[i] - denoised_uncond[b]) * (weight * scale)

        if job.mode != "timesteps" and job.mask is not None:
            denoised = job.mask.blend(denoised)

        cond_first = x_out[first_rows]
        if job.mode == "timesteps":
            ac = job.schedule.alphas_cumprod.to(x.device)[sigma.to(torch.int)][:, None, None, None]
            self.last_latent = (x - (1 - ac).sqrt() * cond_first) / ac.sqrt()
        else:
            self.last_latent = cond_first
        self.step += 1
        return denoised
