"""A1111 sampler and schedule names -> diffusers schedulers that reproduce them.

The table follows A1111's `/samplers` and `/schedulers` order (reference/a1111.md section 5). A sampler
is published only if a diffusers scheduler runs its update rule; the ones diffusers cannot run
are left out and listed in `OMITTED_SAMPLERS` / `OMITTED_SCHEDULES` with the reason.

The sigma schedules themselves are computed in `modules.engine.schedules` and reach the diffusers
steppers through the subclasses in `modules.engine.scheduler_classes`; `build_scheduler` here is
the one way to build them (it installs the selected schedule before the scheduler initialises).
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from modules.core.errors import NotFoundError, ValidationError
from modules.engine.scheduler_classes import (
    A1111DPMSolverMultistepScheduler,
    A1111EulerAncestralDiscreteScheduler,
    A1111EulerDiscreteScheduler,
    A1111HeunDiscreteScheduler,
    A1111KDPM2AncestralDiscreteScheduler,
    A1111KDPM2DiscreteScheduler,
    A1111LCMScheduler,
    A1111LMSDiscreteScheduler,
    dpmsolver_sde_class,
)
from modules.engine.schedules import (
    ModelSigmas,
    ScheduleParams,
    SigmaFn,
    align_your_steps_sigmas,
    ddim_uniform_sigmas,
    discarding_next_to_last,
    exponential_sigmas,
    karras_sigmas,
    kl_optimal_sigmas,
    normal_sigmas,
    polyexponential_sigmas,
    simple_sigmas,
    uniform_sigmas,
)

if TYPE_CHECKING:
    from modules.engine.noise import ImageRNG

__all__ = [
    "OMITTED_SAMPLERS",
    "OMITTED_SCHEDULES",
    "SamplerInfo",
    "ScheduleInfo",
    "build_scheduler",
    "initial_noise_scale",
    "list_samplers",
    "list_schedulers",
    "resolve_sampler",
    "sampler_and_schedule_labels",
    "schedule_sigmas",
    "step_noise_kwargs",
]

# --------------------------------------------------------------------------------------------
# Schedule table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleInfo:
    """One entry of A1111's `/schedulers` list."""

    name: str
    label: str
    aliases: tuple[str, ...] = ()
    default_rho: float = -1
    need_inner_model: bool = False
    sigmas: SigmaFn | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, object]:
        """`/sdapi/v1/schedulers` item (A1111 sends `aliases: null` when there are none)."""
        return {
            "name": self.name,
            "label": self.label,
            "aliases": list(self.aliases) if self.aliases else None,
            "default_rho": self.default_rho,
            "need_inner_model": self.need_inner_model,
        }


AUTOMATIC = ScheduleInfo("automatic", "Automatic")

_SCHEDULES: tuple[ScheduleInfo, ...] = (
    AUTOMATIC,
    ScheduleInfo("uniform", "Uniform", need_inner_model=True, sigmas=uniform_sigmas),
    ScheduleInfo("karras", "Karras", default_rho=7.0, sigmas=karras_sigmas),
    ScheduleInfo("exponential", "Exponential", sigmas=exponential_sigmas),
    ScheduleInfo("polyexponential", "Polyexponential", default_rho=1.0, sigmas=polyexponential_sigmas),
    ScheduleInfo(
        "sgm_uniform",
        "SGM Uniform",
        aliases=("SGMUniform",),
        need_inner_model=True,
        sigmas=partial(normal_sigmas, sgm=True),
    ),
    ScheduleInfo("kl_optimal", "KL Optimal", sigmas=kl_optimal_sigmas),
    ScheduleInfo("align_your_steps", "Align Your Steps", sigmas=align_your_steps_sigmas),
    ScheduleInfo("simple", "Simple", need_inner_model=True, sigmas=simple_sigmas),
    ScheduleInfo("normal", "Normal", need_inner_model=True, sigmas=normal_sigmas),
    ScheduleInfo("ddim", "DDIM", need_inner_model=True, sigmas=ddim_uniform_sigmas),
)

OMITTED_SCHEDULES: Mapping[str, str] = {
    "Beta": (
        "A1111's beta schedule needs scipy's beta-distribution ppf (scipy is not a dependency), and "
        "diffusers' use_beta_sigmas interpolates in sigma rather than reproducing A1111's timestep "
        "selection; it is not offered rather than approximated"
    ),
}


# --------------------------------------------------------------------------------------------
# Sampler table
# --------------------------------------------------------------------------------------------


def _no_scheduler() -> type[SchedulerMixin]:
    raise NotImplementedError("this sampler has no scheduler class")


NoiseInput = Literal["none", "variance_noise", "generator", "brownian"]
SampleSpace = Literal["ve", "vp"]


@dataclass(frozen=True)
class SamplerInfo:
    """One A1111 sampler and the diffusers scheduler that runs it.

    kind: "kdiffusion" (sigma schedules apply, initial noise scaled by the first sigma), "timesteps"
    (DDIM / PLMS / UniPC: the schedule choice is ignored, noise unscaled) or "lcm".
    noise_input: how the scheduler takes the extra noise of ancestral / SDE steps: "variance_noise"
    (pass `variance_noise=rng.next()` to `step`), "generator" (pass the per-image torch generators),
    "brownian" (its own Brownian tree seeded from the image seeds), "none" (deterministic).
    sample_space: "ve" when the scheduler's sample is k-diffusion's x, "vp" when it is
    x / sqrt(1 + sigma^2) (diffusers' DPM-Solver and LCM), which matters for the initial noise.
    """

    name: str
    aliases: tuple[str, ...]
    kind: Literal["kdiffusion", "timesteps", "lcm"]
    default_schedule: str | None  # A1111's `scheduler=` option: used when the user picks Automatic
    second_order: bool = False
    stochastic: bool = False
    noise_input: NoiseInput = "none"
    uses_ensd: bool = False
    discard_next_to_last_sigma: bool = False
    solver_type: str | None = None
    sample_space: SampleSpace = "ve"
    scheduler_kwargs: Mapping[str, object] = field(default_factory=dict, repr=False)
    loader: Callable[[], type[SchedulerMixin]] = field(default=lambda: _no_scheduler(), repr=False)
    requires: tuple[str, ...] = ()
    faithfulness: str = field(default="", repr=False, compare=False)

    @property
    def is_ancestral(self) -> bool:
        return self.stochastic

    @property
    def scales_initial_noise(self) -> bool:
        """k-diffusion samplers start from noise * first sigma; DDIM / PLMS / UniPC from the noise."""
        return self.kind != "timesteps"

    @property
    def brownian_noise(self) -> bool:
        return self.noise_input == "brownian"

    @property
    def options(self) -> dict[str, str]:
        """A1111's `options` dict (values as strings, as its API sends them), for our implementation."""
        out: dict[str, str] = {}
        if self.default_schedule:
            out["scheduler"] = self.default_schedule
        if self.second_order:
            out["second_order"] = "True"
        if self.brownian_noise:
            out["brownian_noise"] = "True"
        if self.uses_ensd:
            out["uses_ensd"] = "True"
        if self.discard_next_to_last_sigma:
            out["discard_next_to_last_sigma"] = "True"
        if self.solver_type:
            out["solver_type"] = self.solver_type
        return out

    def to_dict(self) -> dict[str, object]:
        """`/sdapi/v1/samplers` item."""
        return {"name": self.name, "aliases": list(self.aliases), "options": self.options}

    @property
    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.requires)


def _dpm_multistep(**kwargs: object) -> dict[str, object]:
    base: dict[str, object] = {
        "solver_order": 2,
        "solver_type": "midpoint",
        "lower_order_final": False,  # k-diffusion lowers only the final (to sigma 0) step
        "euler_at_final": False,
        "final_sigmas_type": "zero",
        "use_karras_sigmas": True,  # = the A1111 schedule hook
        "use_lu_lambdas": False,
        "thresholding": False,
        "timestep_spacing": "linspace",
    }
    base.update(kwargs)
    return base


_K = {"use_karras_sigmas": True, "timestep_spacing": "linspace"}  # hooked A1111 schedule

_SAMPLERS: tuple[SamplerInfo, ...] = (
    SamplerInfo(
        "DPM++ 2M",
        ("k_dpmpp_2m",),
        "kdiffusion",
        "karras",
        sample_space="vp",
        scheduler_kwargs=_dpm_multistep(algorithm_type="dpmsolver++"),
        loader=lambda: A1111DPMSolverMultistepScheduler,
        faithfulness="exact: DPM-Solver++(2M) algebra, A1111 sigmas, fractional timesteps",
    ),
    SamplerInfo(
        "DPM++ SDE",
        ("k_dpmpp_sde",),
        "kdiffusion",
        "karras",
        second_order=True,
        stochastic=True,
        noise_input="brownian",
        scheduler_kwargs=dict(_K),
        loader=dpmsolver_sde_class,
        requires=("torchsde",),
        faithfulness="diffusers' port of sample_dpmpp_sde; published only when torchsde is installed",
    ),
    SamplerInfo(
        "DPM++ 2M SDE",
        ("k_dpmpp_2m_sde",),
        "kdiffusion",
        "exponential",
        stochastic=True,
        noise_input="variance_noise",
        uses_ensd=True,
        sample_space="vp",
        scheduler_kwargs=_dpm_multistep(algorithm_type="sde-dpmsolver++"),
        loader=lambda: A1111DPMSolverMultistepScheduler,
        faithfulness="same update (eta 1, midpoint); per-step Gaussian noise from the image RNGs "
        "instead of A1111's seeded Brownian tree (torchsde), so same distribution, different draws",
    ),
    SamplerInfo(
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        "kdiffusion",
        "exponential",
        stochastic=True,
        noise_input="variance_noise",
        uses_ensd=True,
        solver_type="heun",
        sample_space="vp",
        scheduler_kwargs=_dpm_multistep(algorithm_type="sde-dpmsolver++", solver_type="heun"),
        loader=lambda: A1111DPMSolverMultistepScheduler,
        faithfulness="as DPM++ 2M SDE, heun correction",
    ),
    SamplerInfo(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        "kdiffusion",
        "exponential",
        stochastic=True,
        noise_input="variance_noise",
        uses_ensd=True,
        discard_next_to_last_sigma=True,
        sample_space="vp",
        # k-diffusion's 3M SDE warm-up (second) step is the "heun" form of the 2M SDE update
        scheduler_kwargs=_dpm_multistep(algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun"),
        loader=lambda: A1111DPMSolverMultistepScheduler,
        faithfulness="same update once diffusers' third-order SDE coefficient is corrected; Gaussian "
        "noise instead of the Brownian tree",
    ),
    SamplerInfo(
        "Euler a",
        ("k_euler_a", "k_euler_ancestral"),
        "kdiffusion",
        None,
        stochastic=True,
        noise_input="variance_noise",
        uses_ensd=True,
        scheduler_kwargs={"timestep_spacing": "linspace"},
        loader=lambda: A1111EulerAncestralDiscreteScheduler,
        faithfulness="exact (eta 1, s_noise 1)",
    ),
    SamplerInfo(
        "Euler",
        ("k_euler",),
        "kdiffusion",
        None,
        scheduler_kwargs={**_K, "interpolation_type": "linear", "final_sigmas_type": "zero"},
        loader=lambda: A1111EulerDiscreteScheduler,
        faithfulness="exact (s_churn 0)",
    ),
    SamplerInfo(
        "LMS",
        ("k_lms",),
        "kdiffusion",
        None,
        scheduler_kwargs=dict(_K),
        loader=lambda: A1111LMSDiscreteScheduler,
        faithfulness="exact (order 4; coefficients integrated exactly rather than by quad)",
    ),
    SamplerInfo(
        "Heun",
        ("k_heun",),
        "kdiffusion",
        None,
        second_order=True,
        scheduler_kwargs=dict(_K),
        loader=lambda: A1111HeunDiscreteScheduler,
        faithfulness="exact (s_churn 0)",
    ),
    SamplerInfo(
        "DPM2",
        ("k_dpm_2",),
        "kdiffusion",
        "karras",
        second_order=True,
        discard_next_to_last_sigma=True,
        scheduler_kwargs=dict(_K),
        loader=lambda: A1111KDPM2DiscreteScheduler,
        faithfulness="exact (s_churn 0)",
    ),
    SamplerInfo(
        "DPM2 a",
        ("k_dpm_2_a",),
        "kdiffusion",
        "karras",
        second_order=True,
        stochastic=True,
        noise_input="generator",
        uses_ensd=True,
        discard_next_to_last_sigma=True,
        scheduler_kwargs=dict(_K),
        loader=lambda: A1111KDPM2AncestralDiscreteScheduler,
        faithfulness="exact given CPU/GPU generators (eta 1); cannot take NV noise",
    ),
    SamplerInfo(
        "DDIM",
        ("ddim",),
        "timesteps",
        None,
        sample_space="vp",
        scheduler_kwargs={
            "timestep_spacing": "leading",
            "steps_offset": 1,
            "clip_sample": False,
            "set_alpha_to_one": False,
            "thresholding": False,
        },
        loader=lambda: DDIMScheduler,
        faithfulness="CompVis DDIM, eta 0, uniform discretisation t = 1, 1+1000//n, ...; for step "
        "counts not dividing 1000 A1111 may run one more step",
    ),
    SamplerInfo(
        "PLMS",
        ("plms",),
        "timesteps",
        None,
        sample_space="vp",
        scheduler_kwargs={
            "skip_prk_steps": True,
            "timestep_spacing": "leading",
            "steps_offset": 1,
            "set_alpha_to_one": False,
        },
        loader=lambda: PNDMScheduler,
        faithfulness="CompVis PLMS (improved-Euler first step = n+1 UNet calls, then 2nd-4th order)",
    ),
    SamplerInfo(
        "UniPC",
        ("unipc",),
        "timesteps",
        None,
        sample_space="vp",
        scheduler_kwargs={
            "solver_type": "bh1",
            "solver_order": 3,
            "lower_order_final": True,
            "predict_x0": True,
            "thresholding": False,
            "timestep_spacing": "linspace",
            "final_sigmas_type": "sigma_min",
        },
        loader=lambda: UniPCMultistepScheduler,
        faithfulness="A1111 defaults (bh1, order 3, time_uniform, ends at sigma_min, lower order at "
        "the end); timesteps rounded to integers where A1111's continuous-time grid is fractional",
    ),
    SamplerInfo(
        "LCM",
        ("k_lcm",),
        "lcm",
        None,
        stochastic=True,
        noise_input="generator",
        uses_ensd=True,
        sample_space="vp",
        scheduler_kwargs={
            "original_inference_steps": 50,
            "timestep_scaling": 10.0,
            "clip_sample": False,
            "set_alpha_to_one": True,
            "thresholding": False,
        },
        loader=lambda: A1111LCMScheduler,
        faithfulness="same denoise/re-noise step on A1111's grid timesteps; sigmas between grid "
        "points are snapped to the grid for the re-noise level too (A1111 re-noises to the exact "
        "sigma), and repeated grid points are merged",
    ),
)

OMITTED_SAMPLERS: Mapping[str, str] = {
    "DPM++ 2S a": "no diffusers scheduler runs the singlestep 2S ancestral update (midpoint to "
    "sigma_down plus ancestral noise); DPMSolverSinglestep's SDE variant is a different SDE",
    "DPM fast": "DPM-Solver 'fast' with its own order schedule and ancestral eta has no diffusers equivalent",
    "DPM adaptive": "adaptive step-size DPM-Solver (error-controlled, variable UNet calls) has no diffusers equivalent",
    "Restart": "A1111's Restart sampler (restart intervals with re-noising) has no diffusers equivalent",
    "DDIM CFG++": "the CFG++ update needs the unconditional prediction separately; a diffusers step "
    "only sees the guided output",
}

# --------------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------------


def list_samplers() -> list[SamplerInfo]:
    """The published samplers, in A1111's order (the first is the UI default)."""
    return [s for s in _SAMPLERS if s.available]


def list_schedulers() -> list[ScheduleInfo]:
    """The published schedules, in A1111's order."""
    return list(_SCHEDULES)


def _sampler_map() -> dict[str, SamplerInfo]:
    out: dict[str, SamplerInfo] = {}
    for s in list_samplers():
        for key in (s.name, *s.aliases):
            out.setdefault(key.lower(), s)
    return out


def _schedule_map() -> dict[str, ScheduleInfo]:
    out: dict[str, ScheduleInfo] = {}
    for s in _SCHEDULES:
        for key in (s.name, s.label, *s.aliases):
            out.setdefault(key.lower(), s)
    return out


def _find_schedule(name: str | None) -> ScheduleInfo:
    if name is None or not name.strip():
        return AUTOMATIC
    found = _schedule_map().get(name.strip().lower())
    if found is None:
        raise NotFoundError("Scheduler not found")
    return found


def _split(sampler_name: str | None, scheduler: str | None) -> tuple[SamplerInfo, ScheduleInfo]:
    samplers = _sampler_map()
    name = (sampler_name or "").strip()
    if not name:
        return list_samplers()[0], _find_schedule(scheduler)
    direct = samplers.get(name.lower())
    if direct is not None:
        return direct, _find_schedule(scheduler)
    # Legacy combined names, "DPM++ 2M Karras": the suffix names the schedule.
    lowered = name.lower()
    for key, sched in sorted(_schedule_map().items(), key=lambda kv: -len(kv[0])):
        if lowered.endswith(" " + key):
            base = samplers.get(lowered[: -len(key) - 1].strip())
            if base is not None:
                return base, sched
    raise NotFoundError("Sampler not found")


def resolve_sampler(sampler_name: str | None, scheduler: str | None) -> tuple[SamplerInfo, ScheduleInfo]:
    """Sampler and schedule for a request.

    Names, labels and aliases match case-insensitively; an empty sampler name is A1111's default
    (the first published, DPM++ 2M); "DPM++ 2M Karras"-style names are split. Automatic (or no
    schedule) becomes the sampler's own default schedule where it has one; otherwise it stays
    Automatic (= the model's own sigmas, A1111's Uniform). DDIM / PLMS / UniPC ignore the schedule
    as in A1111 and return it unchanged. Unknown names raise `NotFoundError`.
    """
    sampler, schedule = _split(sampler_name, scheduler)
    if schedule is AUTOMATIC and sampler.kind != "timesteps" and sampler.default_schedule:
        schedule = _find_schedule(sampler.default_schedule)
    return sampler, schedule


def sampler_and_schedule_labels(sampler_name: str | None, scheduler: str | None) -> tuple[str, str]:
    """A1111's `get_sampler_and_scheduler` for UI fields and pasted infotext: canonical sampler name
    and schedule label, the schedule reported as "Automatic" when it is the sampler's default."""
    sampler, schedule = _split(sampler_name, scheduler)
    if sampler.default_schedule and schedule.name == sampler.default_schedule:
        schedule = AUTOMATIC
    return sampler.name, schedule.label


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

# What a model's scheduler config says about the model itself. Sampler behaviour (spacing, offsets,
# clipping, orders) comes from the sampler table: A1111 ignores a checkpoint's diffusers settings.
MODEL_CONFIG_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
)


def _effective_sigma_fn(sampler: SamplerInfo, schedule: ScheduleInfo) -> SigmaFn:
    chosen = schedule
    if chosen is AUTOMATIC or chosen.sigmas is None:
        chosen = _find_schedule(sampler.default_schedule) if sampler.default_schedule else _find_schedule("uniform")
    fn = chosen.sigmas
    if fn is None:  # pragma: no cover - every non-automatic schedule has a function
        raise ValidationError(f"Schedule type {schedule.label} cannot be computed")
    return discarding_next_to_last(fn) if sampler.discard_next_to_last_sigma else fn


def schedule_sigmas(
    sampler: SamplerInfo,
    schedule: ScheduleInfo,
    model_sigmas: ModelSigmas,
    steps: int,
    params: ScheduleParams | None = None,
) -> np.ndarray:
    """The non-zero sigmas A1111 would use (without the final 0), for inspection and tests."""
    return np.asarray(_effective_sigma_fn(sampler, schedule)(model_sigmas, steps, params or ScheduleParams()))


def build_scheduler(
    sampler: SamplerInfo,
    schedule: ScheduleInfo,
    base_config: Mapping[str, object],
    *,
    is_sdxl: bool = False,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    seeds: Sequence[int] | None = None,
) -> SchedulerMixin:
    """A fresh diffusers scheduler for one job.

    `base_config` is the model's scheduler config (betas, prediction type; see
    `modules.models.architecture.scheduler_config`); only its model keys are used. `sigma_min`,
    `sigma_max`, `rho` are A1111's schedule overrides (None or 0 = default); `is_sdxl` picks the
    Align Your Steps table; `seeds` seed the Brownian tree of samplers that have one.
    """
    if not sampler.available:
        raise NotFoundError("Sampler not found")
    cls = sampler.loader()
    accepted = set(inspect.signature(cls.__init__).parameters)
    kwargs: dict[str, Any] = {k: base_config[k] for k in MODEL_CONFIG_KEYS if k in base_config}
    kwargs.update(sampler.scheduler_kwargs)
    if sampler.noise_input == "brownian" and seeds is not None:
        kwargs["noise_sampler_seed"] = [int(s) for s in seeds]
    scheduler = cls.__new__(cls)
    if sampler.kind != "timesteps":
        # Set before __init__: some schedulers (LMS) already call set_timesteps while initialising.
        params = ScheduleParams(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, is_sdxl=is_sdxl)
        fn = _effective_sigma_fn(sampler, schedule)
        scheduler.a1111_sigmas = partial(_call_sigma_fn, fn, params)  # type: ignore[attr-defined]
    scheduler.__init__(**{k: v for k, v in kwargs.items() if k in accepted})  # type: ignore[misc]
    return scheduler


def _call_sigma_fn(fn: SigmaFn, params: ScheduleParams, ms: ModelSigmas, n: int) -> np.ndarray:
    return fn(ms, n, params)


def initial_noise_scale(sampler: SamplerInfo, scheduler: SchedulerMixin) -> float:
    """What to multiply unit noise (`ImageRNG.first()`) by for txt2img, after `set_timesteps`.

    A1111: k-diffusion samplers start from noise * first sigma; DDIM / PLMS / UniPC from the noise.
    This equals the built scheduler's `init_noise_sigma` (our variance-preserving subclasses report
    sigma_0 / sqrt(1 + sigma_0^2) there, the same start point in their coordinates).
    """
    if not sampler.scales_initial_noise:
        return 1.0
    return float(scheduler.init_noise_sigma)  # type: ignore[attr-defined]


def step_noise_kwargs(sampler: SamplerInfo, rng: ImageRNG) -> dict[str, Any]:
    """Keyword arguments for one `scheduler.step` call that feed it this step's noise from `rng`
    (each image from its own generator, in step order, as A1111)."""
    if sampler.noise_input == "variance_noise":
        return {"variance_noise": rng.next()}
    if sampler.noise_input == "generator":
        generators = rng.torch_generators
        if generators is None:
            raise ValidationError(f"RNG source {rng.source} is not supported with sampler {sampler.name}")
        return {"generator": generators}
    return {}
