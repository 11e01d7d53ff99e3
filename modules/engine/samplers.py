"""A1111's sampler and schedule tables, and the sigmas a pass samples.

The tables follow A1111's `/samplers` and `/schedulers` order (reference/a1111.md section 5). Every
sampler A1111 v1.10.1 has is here and runs through a function of ours with the same arithmetic:
k-diffusion's samplers in `modules.engine.kdiffusion`, A1111's timestep samplers (DDIM, DDIM CFG++,
PLMS, UniPC) in `modules.engine.timestep_samplers`. The sigma schedules are computed in
`modules.engine.schedules`; `schedule_sigmas` here applies A1111's `get_sigmas` rules (sampler's
default schedule for Automatic, discard-penultimate, the sigma/rho overrides).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np
import torch

from modules.core.errors import NotFoundError
from modules.engine.schedules import (
    ModelSigmas,
    ScheduleParams,
    SigmaFn,
    align_your_steps_sigmas,
    beta_sigmas,
    ddim_uniform_sigmas,
    exponential_sigmas,
    karras_sigmas,
    kl_optimal_sigmas,
    normal_sigmas,
    polyexponential_sigmas,
    simple_sigmas,
    uniform_sigmas,
)

__all__ = [
    "OMITTED_SAMPLERS",
    "OMITTED_SCHEDULES",
    "SamplerInfo",
    "ScheduleInfo",
    "list_samplers",
    "list_schedulers",
    "resolve_sampler",
    "sampler_and_schedule_labels",
    "schedule_sigmas",
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
    ScheduleInfo("beta", "Beta", need_inner_model=True, sigmas=beta_sigmas),
)

OMITTED_SCHEDULES: Mapping[str, str] = {}


# --------------------------------------------------------------------------------------------
# Sampler table
# --------------------------------------------------------------------------------------------

SamplerKind = Literal["kdiffusion", "timesteps", "lcm"]

_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
_NOISE = ("s_noise",)


@dataclass(frozen=True)
class SamplerInfo:
    """One A1111 sampler: its name, aliases and options (A1111's `SamplerData`) and the function of
    ours that runs it (`modules.engine.kdiffusion` / `modules.engine.timestep_samplers`).

    kind: "kdiffusion" (sigma schedules apply, initial noise scaled by the first sigma),
    "timesteps" (DDIM / DDIM CFG++ / PLMS / UniPC: the schedule choice is ignored, noise unscaled)
    or "lcm" (k-diffusion style over the LCM timestep grid).
    extra_params: which of A1111's `s_churn, s_tmin, s_tmax, s_noise` the function takes.
    has_eta: whether the function takes `eta` (from the request or the `eta_ancestral` /
    `eta_ddim` option).
    """

    name: str
    aliases: tuple[str, ...]
    kind: SamplerKind
    function: str
    default_schedule: str | None = None  # A1111's `scheduler=` option: used when the user picks Automatic
    second_order: bool = False
    brownian_noise: bool = False
    uses_ensd: bool = False
    discard_next_to_last_sigma: bool = False
    solver_type: str | None = None
    extra_params: tuple[str, ...] = ()
    has_eta: bool = False
    takes_range: bool = False  # DPM fast / adaptive: (sigma_min, sigma_max, n) instead of sigmas

    @property
    def is_ancestral(self) -> bool:
        return self.has_eta

    @property
    def scales_initial_noise(self) -> bool:
        """k-diffusion samplers start from noise * first sigma; DDIM / PLMS / UniPC from the noise."""
        return self.kind != "timesteps"

    @property
    def eta_option(self) -> str:
        return "eta_ddim" if self.kind == "timesteps" else "eta_ancestral"

    @property
    def eta_default(self) -> float:
        return 0.0 if self.kind == "timesteps" else 1.0

    @property
    def eta_infotext(self) -> str:
        return "Eta DDIM" if self.kind == "timesteps" else "Eta"

    @property
    def options(self) -> dict[str, str]:
        """A1111's `options` dict (values as strings, as its API sends them)."""
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

    def total_calls(self, steps: int) -> int:
        """A1111's `total_steps`: model calls a prompt schedule counts (twice the steps for
        second-order samplers)."""
        return steps * 2 if self.second_order else steps


_SAMPLERS: tuple[SamplerInfo, ...] = (
    SamplerInfo("DPM++ 2M", ("k_dpmpp_2m",), "kdiffusion", "sample_dpmpp_2m", "karras"),
    SamplerInfo(
        "DPM++ SDE",
        ("k_dpmpp_sde",),
        "kdiffusion",
        "sample_dpmpp_sde",
        "karras",
        second_order=True,
        brownian_noise=True,
        extra_params=_NOISE,
        has_eta=True,
    ),
    SamplerInfo(
        "DPM++ 2M SDE",
        ("k_dpmpp_2m_sde",),
        "kdiffusion",
        "sample_dpmpp_2m_sde",
        "exponential",
        brownian_noise=True,
        extra_params=_NOISE,
        has_eta=True,
    ),
    SamplerInfo(
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        "kdiffusion",
        "sample_dpmpp_2m_sde",
        "exponential",
        brownian_noise=True,
        solver_type="heun",
        extra_params=_NOISE,
        has_eta=True,
    ),
    SamplerInfo(
        "DPM++ 2S a",
        ("k_dpmpp_2s_a",),
        "kdiffusion",
        "sample_dpmpp_2s_ancestral",
        "karras",
        uses_ensd=True,
        second_order=True,
        extra_params=_NOISE,
        has_eta=True,
    ),
    SamplerInfo(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        "kdiffusion",
        "sample_dpmpp_3m_sde",
        "exponential",
        discard_next_to_last_sigma=True,
        brownian_noise=True,
        extra_params=_NOISE,
        has_eta=True,
    ),
    SamplerInfo(
        "Euler a",
        ("k_euler_a", "k_euler_ancestral"),
        "kdiffusion",
        "sample_euler_ancestral",
        uses_ensd=True,
        has_eta=True,
    ),
    SamplerInfo("Euler", ("k_euler",), "kdiffusion", "sample_euler", extra_params=_CHURN),
    SamplerInfo("LMS", ("k_lms",), "kdiffusion", "sample_lms"),
    SamplerInfo("Heun", ("k_heun",), "kdiffusion", "sample_heun", second_order=True, extra_params=_CHURN),
    SamplerInfo(
        "DPM2",
        ("k_dpm_2",),
        "kdiffusion",
        "sample_dpm_2",
        "karras",
        discard_next_to_last_sigma=True,
        second_order=True,
        extra_params=_CHURN,
    ),
    SamplerInfo(
        "DPM2 a",
        ("k_dpm_2_a",),
        "kdiffusion",
        "sample_dpm_2_ancestral",
        "karras",
        discard_next_to_last_sigma=True,
        uses_ensd=True,
        second_order=True,
        extra_params=_NOISE,
        has_eta=True,
    ),
    SamplerInfo(
        "DPM fast",
        ("k_dpm_fast",),
        "kdiffusion",
        "sample_dpm_fast",
        uses_ensd=True,
        extra_params=_NOISE,
        has_eta=True,
        takes_range=True,
    ),
    SamplerInfo(
        "DPM adaptive",
        ("k_dpm_ad",),
        "kdiffusion",
        "sample_dpm_adaptive",
        uses_ensd=True,
        has_eta=True,
        takes_range=True,
    ),
    SamplerInfo("Restart", ("restart",), "kdiffusion", "sample_restart", "karras", second_order=True),
    SamplerInfo("DDIM", ("ddim",), "timesteps", "ddim", has_eta=True),
    SamplerInfo("DDIM CFG++", ("ddim_cfgpp",), "timesteps", "ddim_cfgpp", has_eta=True),
    SamplerInfo("PLMS", ("plms",), "timesteps", "plms"),
    SamplerInfo("UniPC", ("unipc",), "timesteps", "unipc"),
    SamplerInfo("LCM", ("k_lcm",), "lcm", "sample_lcm"),
)

OMITTED_SAMPLERS: Mapping[str, str] = {}

# --------------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------------


def list_samplers() -> list[SamplerInfo]:
    """The samplers, in A1111's order (the first is the UI default)."""
    return list(_SAMPLERS)


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
# Sigmas of a pass
# --------------------------------------------------------------------------------------------


def effective_schedule(sampler: SamplerInfo, schedule: ScheduleInfo) -> ScheduleInfo:
    """The schedule A1111 computes: Automatic means the sampler's default, else the model's own
    sigmas (Uniform)."""
    if schedule is AUTOMATIC or schedule.sigmas is None:
        if sampler.default_schedule:
            return _find_schedule(sampler.default_schedule)
        return _find_schedule("uniform")
    return schedule


def schedule_sigmas(
    sampler: SamplerInfo,
    schedule: ScheduleInfo,
    model_sigmas: ModelSigmas,
    steps: int,
    params: ScheduleParams | None = None,
    *,
    discard_penultimate: bool = False,
) -> torch.Tensor:
    """A1111's `get_sigmas`: `steps` sigmas of the effective schedule plus a final 0, float32.
    With discard-penultimate (the sampler's option or A1111's `always_discard_next_to_last_sigma`)
    one more is computed and the last non-zero one dropped."""
    discard = discard_penultimate or sampler.discard_next_to_last_sigma
    n = steps + 1 if discard else steps
    fn = effective_schedule(sampler, schedule).sigmas
    assert fn is not None
    raw = torch.as_tensor(np.asarray(fn(model_sigmas, n, params or ScheduleParams())), dtype=torch.float32)
    sigmas = torch.cat([raw, raw.new_zeros([1])])
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas
