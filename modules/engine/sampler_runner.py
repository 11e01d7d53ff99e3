"""One sampling pass the way A1111's `Sampler` runs it: sigmas or timesteps for the pass, the
starting latent (txt2img noise scaled by the first sigma; img2img init latent noised to the start
of the cut schedule), the sampler's parameters (eta, churn, noise, Brownian tree, solver type)
and what they add to the infotext, progress / preview / interrupt through the sampler callback.

The sampler functions are ours (`modules.engine.kdiffusion`, `modules.engine.timestep_samplers`);
the denoiser they call is `modules.engine.sampling.CFGDenoiser`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from modules.engine import samplers as smp
from modules.engine.noise import ImageRNG
from modules.engine.sampler_types import StepInfo as SamplerStep
from modules.engine.sampling import CFGDenoiser, DiscreteSchedule, LCMSchedule, SamplingJob, StepInfo
from modules.engine.schedules import ModelSigmas, ScheduleParams
from modules.engine.worker import JobContext, JobInterrupted

__all__ = ["PassResult", "SamplerOptions", "SamplerPass", "img2img_steps"]


@dataclass(frozen=True)
class SamplerOptions:
    """A1111's sampler settings (the `Sampler parameters` section of Settings)."""

    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0 = infinity
    s_noise: float = 1.0
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    always_discard_next_to_last_sigma: bool = False
    sgm_noise_multiplier: bool = False
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    skip_early_cond: float = 0.0
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    beta_dist_alpha: float = 0.6
    beta_dist_beta: float = 0.6
    img2img_extra_noise: float = 0.0
    use_old_karras_scheduler_sigmas: bool = False
    no_dpmpp_sde_batch_determinism: bool = False


def img2img_steps(steps: int, denoising: float, *, exact: bool) -> tuple[int, int]:
    """A1111's `setup_img2img_steps`: (schedule length, t_enc). Without `exact` the schedule has
    `steps` steps and int(denoising * steps) + 1 of them run; with `exact` (the hires pass, or the
    `img2img_fix_steps` option) the schedule is stretched to int(steps / denoising) so that exactly
    `steps` run."""
    strength = min(denoising, 0.999)
    if exact:
        total = int(steps / strength) if denoising > 0 else 0
        return total, steps - 1
    return steps, int(strength * steps)


@dataclass
class PassResult:
    latents: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)  # infotext entries this pass added


def _sampler_function(sampler: smp.SamplerInfo) -> Callable[..., torch.Tensor]:
    if sampler.kind == "timesteps":
        from modules.engine import timestep_samplers

        return getattr(timestep_samplers, sampler.function)
    from modules.engine import kdiffusion

    return getattr(kdiffusion, sampler.function)


class SamplerPass:
    """A1111's `Sampler` for one pass over one batch.

    `request_params` are the request's sampler fields (`eta`, `s_churn`, `s_tmin`, `s_tmax`,
    `s_noise`, `s_min_uncond`; None = use the option). `is_hr_pass` names the schedule in the
    infotext as the hires one.
    """

    def __init__(
        self,
        sampler: smp.SamplerInfo,
        schedule: smp.ScheduleInfo,
        alphas_cumprod: torch.Tensor,
        options: SamplerOptions,
        *,
        request_params: dict[str, float | None] | None = None,
        is_hr_pass: bool = False,
        is_sdxl: bool = False,
        rng_source: str = "GPU",
        device: torch.device | None = None,
    ) -> None:
        self.sampler = sampler
        self.schedule_info = schedule
        self.options = options
        self.request_params = request_params or {}
        self.is_hr_pass = is_hr_pass
        self.is_sdxl = is_sdxl
        self.rng_source = rng_source
        self.device = device or torch.device("cpu")
        base = LCMSchedule(alphas_cumprod) if sampler.kind == "lcm" else DiscreteSchedule(alphas_cumprod)
        self.schedule = base.to(self.device)
        self.params: dict[str, Any] = {}
        self.warnings: list[str] = []  # what the pass changed from what was asked, for the result
        self.denoiser: CFGDenoiser | None = None
        self.schedule_label: str | None = None  # the schedule a sigma function computed (None: the model's own)

    # -- schedule --------------------------------------------------------------------------------

    def sigmas(self, steps: int) -> torch.Tensor:
        """A1111's `get_sigmas` for this pass (k-diffusion / LCM samplers), float32 on the CPU."""
        o = self.options
        sampler = self.sampler
        discard = sampler.discard_next_to_last_sigma
        if o.always_discard_next_to_last_sigma and not discard:
            discard = True
            self.params["Discard penultimate sigma"] = True
        effective = smp.effective_schedule(sampler, self.schedule_info)
        cpu = self.schedule.to(torch.device("cpu"))
        m_min, m_max = float(cpu.sigmas[0]), float(cpu.sigmas[-1])
        if not (self.schedule_info is smp.AUTOMATIC and sampler.default_schedule is None):
            self.schedule_label = effective.label
        if effective.name == "uniform":
            # the model's own sigmas (k-diffusion `get_sigmas`; the LCM grid's for LCM)
            n = steps + 1 if discard else steps
            sigmas = cpu.get_sigmas(n)
            return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas
        lo, hi = (0.1, 10.0) if o.use_old_karras_scheduler_sigmas else (m_min, m_max)
        if o.sigma_min != 0 and o.sigma_min != m_min:
            lo = o.sigma_min
            self.params["Schedule min sigma"] = o.sigma_min
        if o.sigma_max != 0 and o.sigma_max != m_max:
            hi = o.sigma_max
            self.params["Schedule max sigma"] = o.sigma_max
        rho = None
        if effective.default_rho != -1 and o.rho != 0 and o.rho != effective.default_rho:
            rho = o.rho
            self.params["Schedule rho"] = o.rho
        if effective.name == "beta":
            self.params["Beta schedule alpha"] = o.beta_dist_alpha
            self.params["Beta schedule beta"] = o.beta_dist_beta
        params = _schedule_params(lo, hi, rho, self.is_sdxl, o)
        ms = ModelSigmas(cpu.sigmas.double().numpy())
        return smp.schedule_sigmas(sampler, effective, ms, steps, params, discard_penultimate=discard)

    def timesteps(self, steps: int) -> torch.Tensor:
        from modules.engine import timestep_samplers

        discard = self.sampler.discard_next_to_last_sigma
        if self.options.always_discard_next_to_last_sigma and not discard:
            discard = True
            self.params["Discard penultimate sigma"] = True
        return timestep_samplers.a1111_timesteps(steps, discard_next_to_last_sigma=discard, device=self.device)

    # -- parameters ------------------------------------------------------------------------------

    def _request_or_option(self, name: str, option: float, standard: float) -> float:
        value = self.request_params.get(name)
        if value is None or value == standard:
            return option
        return float(value)

    def _extra_kwargs(self, func: Callable[..., Any]) -> dict[str, Any]:
        """A1111's `Sampler.initialize`: eta (request, else the option) and the churn/noise
        parameters the function takes (the option, or the request when it sets a non-standard
        value), each written to the infotext when it differs from the standard value."""
        sampler, o = self.sampler, self.options
        accepted = inspect.signature(func).parameters
        kwargs: dict[str, Any] = {}
        if sampler.has_eta and "eta" in accepted:
            eta_req = self.request_params.get("eta")
            eta = (
                float(eta_req)
                if eta_req is not None
                else (o.eta_ddim if sampler.kind == "timesteps" else o.eta_ancestral)
            )
            if eta != sampler.eta_default:
                self.params[sampler.eta_infotext] = eta
            kwargs["eta"] = eta
        s_tmax_opt = o.s_tmax or math.inf
        values = {
            "s_churn": (self._request_or_option("s_churn", o.s_churn, 0.0), 0.0, "Sigma churn"),
            "s_tmin": (self._request_or_option("s_tmin", o.s_tmin, 0.0), 0.0, "Sigma tmin"),
            "s_tmax": (self._request_or_option("s_tmax", s_tmax_opt, 0.0) or math.inf, math.inf, "Sigma tmax"),
            "s_noise": (self._request_or_option("s_noise", o.s_noise, 1.0), 1.0, "Sigma noise"),
        }
        for name in sampler.extra_params:
            if name not in accepted:
                continue
            value, standard, label = values[name]
            if value != standard:
                kwargs[name] = value
                self.params[label] = value
        if sampler.solver_type == "heun" and "solver_type" in accepted:
            kwargs["solver_type"] = "heun"
        if sampler.kind == "timesteps" and sampler.function == "unipc":
            kwargs.update(
                variant=o.uni_pc_variant,
                skip_type=o.uni_pc_skip_type,
                order=o.uni_pc_order,
                lower_order_final=o.uni_pc_lower_order_final,
            )
        return kwargs

    def _fit_unipc_order(self, kwargs: dict[str, Any], steps: int) -> None:
        """UniPC cannot have a higher order than it has steps (A1111 fails the job with an
        assertion); here the order is lowered to the step count, and the result says so."""
        order = kwargs.get("order")
        if self.sampler.function != "unipc" or order is None or order <= steps:
            return
        kwargs["order"] = max(steps, 1)
        self.warnings.append(
            f"UniPC order {order} lowered to {kwargs['order']} for this pass: it has only {steps} sampling "
            "step(s) (the 'UniPC order' setting must not exceed the steps)"
        )

    def s_min_uncond(self) -> float:
        value = self.request_params.get("s_min_uncond")
        return float(value) if value is not None else self.options.s_min_uncond

    def _noise_sampler(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]) -> Any:
        """A1111's `create_noise_sampler`: a Brownian tree over the pass's sigma range, one tree per
        image seeded with its seed (image i of a batch equals the image made alone)."""
        if self.options.no_dpmpp_sde_batch_determinism:
            return None
        from modules.engine.kdiffusion import BrownianTreeNoiseSampler

        positive = sigmas[sigmas > 0]
        return BrownianTreeNoiseSampler(
            x, positive.min(), sigmas.max(), seed=list(seeds), cpu=self.rng_source == "CPU" and x.device.type != "cpu"
        )

    # -- running ---------------------------------------------------------------------------------

    def denoiser_for(self, job: SamplingJob) -> CFGDenoiser:
        job.schedule = self.schedule
        job.mode = "timesteps" if self.sampler.kind == "timesteps" else self.sampler.kind
        job.s_min_uncond = self.s_min_uncond()
        job.s_min_uncond_all = self.options.s_min_uncond_all
        job.skip_early_cond = self.options.skip_early_cond
        self.denoiser = CFGDenoiser(job)
        return self.denoiser

    def _callback(
        self, job: SamplingJob, steps: int, on_step: Callable[[StepInfo], None] | None, preview: bool
    ) -> Callable[[SamplerStep], None]:
        ctx: JobContext | None = job.context

        def callback(info: SamplerStep) -> None:
            if on_step is not None:
                sigma = info.sigma if isinstance(info.sigma, torch.Tensor) else torch.tensor(float(info.sigma))
                on_step(StepInfo(step=info.i, steps=steps, timestep=sigma, latents=info.x, denoised=info.denoised))
            if ctx is not None:
                ctx.step(min(info.i + 1, steps), info.denoised if preview else None)

        return callback

    def _run(
        self,
        job: SamplingJob,
        steps: int,
        call: Callable[[CFGDenoiser, Callable[[SamplerStep], None]], torch.Tensor],
        on_step: Callable[[StepInfo], None] | None,
        preview: bool,
    ) -> torch.Tensor:
        denoiser = self.denoiser_for(job)
        job.total_calls = self.sampler.total_calls(steps)
        if job.context is not None:
            job.context.begin_pass(steps)
        try:
            return call(denoiser, self._callback(job, steps, on_step, preview))
        except JobInterrupted:
            raise
        finally:
            self.params.update(job.notes)

    def randn_like(self, rng: ImageRNG) -> Callable[[torch.Tensor], torch.Tensor]:
        def draw(like: torch.Tensor) -> torch.Tensor:
            return rng.next().to(device=like.device, dtype=like.dtype)

        return draw

    def txt2img(
        self,
        job: SamplingJob,
        noise: torch.Tensor,
        steps: int,
        rng: ImageRNG,
        seeds: list[int],
        *,
        on_step: Callable[[StepInfo], None] | None = None,
        preview: bool = True,
    ) -> torch.Tensor:
        """A1111's `sample`: run `steps` steps from the unit noise `noise` (B, 4, h, w)."""
        func = _sampler_function(self.sampler)
        kwargs = self._extra_kwargs(func)
        randn_like = self.randn_like(rng)
        if self.sampler.kind == "timesteps":
            timesteps = self.timesteps(steps)
            ac = self.schedule.alphas_cumprod
            self._fit_unipc_order(kwargs, len(timesteps))
            return self._run(
                job,
                steps,
                lambda d, cb: func(
                    d, noise, timesteps, ac, **_only(func, {**kwargs, "randn_like": randn_like, "callback": cb})
                ),
                on_step,
                preview,
            )
        sigmas = self.sigmas(steps).to(noise.device)
        if self.options.sgm_noise_multiplier:
            self.params["SGM noise multiplier"] = True
            x = noise * torch.sqrt(1.0 + sigmas[0] ** 2.0)
        else:
            x = noise * sigmas[0]
        params = inspect.signature(func).parameters
        if self.sampler.brownian_noise and "noise_sampler" in params:
            kwargs["noise_sampler"] = self._noise_sampler(x, sigmas, seeds)
        if self.sampler.takes_range:
            cpu = self.schedule.to(torch.device("cpu"))
            range_args: tuple[Any, ...] = (float(cpu.sigmas[0]), float(cpu.sigmas[-1]))
            if "n" in params:
                range_args = (*range_args, steps)
            return self._run(
                job,
                steps,
                lambda d, cb: func(d, x, *range_args, randn_like=randn_like, callback=cb, **kwargs),
                on_step,
                preview,
            )
        return self._run(
            job, steps, lambda d, cb: func(d, x, sigmas, randn_like=randn_like, callback=cb, **kwargs), on_step, preview
        )

    def img2img(
        self,
        job: SamplingJob,
        init_latent: torch.Tensor,
        noise: torch.Tensor,
        steps: int,
        t_enc: int,
        rng: ImageRNG,
        seeds: list[int],
        *,
        on_step: Callable[[StepInfo], None] | None = None,
        preview: bool = True,
    ) -> torch.Tensor:
        """A1111's `sample_img2img`: the pass's schedule of `steps` steps, cut to its last t_enc + 1
        (k-diffusion) or first t_enc timesteps (timestep samplers); `init_latent` noised to the start."""
        func = _sampler_function(self.sampler)
        kwargs = self._extra_kwargs(func)
        randn_like = self.randn_like(rng)
        extra = self.options.img2img_extra_noise
        if self.sampler.kind == "timesteps":
            from modules.engine import timestep_samplers

            timesteps = self.timesteps(steps)
            ac = self.schedule.alphas_cumprod
            xi = timestep_samplers.noise_init_latent(init_latent, noise, ac, timesteps, t_enc)
            if extra > 0:
                self.params["Extra noise"] = extra
                xi = xi + noise * extra * torch.sqrt(ac[timesteps[t_enc]])
            sched = timesteps[:t_enc]
            if self.sampler.function == "unipc":
                kwargs["is_img2img"] = True
                self._fit_unipc_order(kwargs, len(sched))
            return self._run(
                job,
                t_enc + 1,
                lambda d, cb: func(
                    d, xi, sched, ac, **_only(func, {**kwargs, "randn_like": randn_like, "callback": cb})
                ),
                on_step,
                preview,
            )
        sigmas = self.sigmas(steps).to(init_latent.device)
        sigma_sched = sigmas[steps - t_enc - 1 :]
        xi = init_latent + noise * sigma_sched[0]
        if extra > 0:
            self.params["Extra noise"] = extra
            xi = xi + noise * extra
        params = inspect.signature(func).parameters
        if self.sampler.brownian_noise and "noise_sampler" in params:
            kwargs["noise_sampler"] = self._noise_sampler(init_latent, sigmas, seeds)
        if self.sampler.takes_range:
            range_args: tuple[Any, ...] = (float(sigma_sched[-2]), float(sigma_sched[0]))
            if "n" in params:
                range_args = (*range_args, len(sigma_sched) - 1)
            return self._run(
                job,
                t_enc + 1,
                lambda d, cb: func(d, xi, *range_args, randn_like=randn_like, callback=cb, **kwargs),
                on_step,
                preview,
            )
        return self._run(
            job,
            t_enc + 1,
            lambda d, cb: func(d, xi, sigma_sched, randn_like=randn_like, callback=cb, **kwargs),
            on_step,
            preview,
        )


def _only(func: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments `func` takes (timestep samplers take fewer)."""
    accepted = inspect.signature(func).parameters
    return {k: v for k, v in kwargs.items() if k in accepted}


def _schedule_params(lo: float, hi: float, rho: float | None, is_sdxl: bool, o: SamplerOptions) -> ScheduleParams:
    fields = {"sigma_min": lo, "sigma_max": hi, "rho": rho, "is_sdxl": is_sdxl}
    names = ScheduleParams.__dataclass_fields__
    if "beta_alpha" in names:
        fields["beta_alpha"] = o.beta_dist_alpha
        fields["beta_beta"] = o.beta_dist_beta
    return ScheduleParams(**fields)  # type: ignore[arg-type]
