"""A1111 sampler and schedule names -> diffusers schedulers that reproduce them.

The table follows A1111's `/samplers` and `/schedulers` order (reference/a1111.md section 5). A sampler
is published only if a diffusers scheduler runs its update rule; the ones diffusers cannot run
are left out and listed in `OMITTED_SAMPLERS` / `OMITTED_SCHEDULES` with the reason.

How a schedule reaches a scheduler. A1111 computes every k-diffusion sigma schedule itself (its
`sd_schedulers`); diffusers only offers Karras / exponential / beta flags whose details differ
(SDXL's "leading" spacing shrinks their sigma range, its uniform spacing interpolates sigma
linearly where k-diffusion interpolates log sigma, ...). So the schedule functions here are written
from A1111's documented definitions, and they are handed to the diffusers scheduler through its
`use_karras_sigmas` branch: our subclasses override `_convert_to_karras` (the one method every
k-style diffusers scheduler calls to turn "n steps" into sigmas) to return the selected schedule.
The scheduler keeps its own layout logic (Heun/DPM2 interleaving, final zero sigma, timestep
lookup), and `scheduler.sigmas` ends up holding A1111's sigmas. `use_karras_sigmas=True` in such
a scheduler's config therefore means "use the hooked A1111 schedule", whatever its name: build
schedulers with `build_scheduler` (a `from_config` copy loses the hook and refuses to run).

k-diffusion feeds the UNet a fractional timestep (log-sigma interpolation, no quantisation by
default); where a diffusers scheduler rounds it (DPM-Solver multistep, DPM2) the subclasses put
the fractional value back.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
    EulerAncestralDiscreteScheduler,
    EulerAncestralDiscreteSchedulerOutput,
)
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_heun_discrete import HeunDiscreteScheduler
from diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete import KDPM2AncestralDiscreteScheduler
from diffusers.schedulers.scheduling_k_dpm_2_discrete import KDPM2DiscreteScheduler
from diffusers.schedulers.scheduling_lcm import LCMScheduler

# Imported from its module: the package-level name is a dummy when scipy is missing, and the only
# scipy use in it (the LMS coefficient integral) is replaced below.
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from modules.core.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from modules.engine.noise import ImageRNG

__all__ = [
    "OMITTED_SAMPLERS",
    "OMITTED_SCHEDULES",
    "ModelSigmas",
    "SamplerInfo",
    "ScheduleInfo",
    "ScheduleParams",
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
# Model sigmas and A1111's schedules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ModelSigmas:
    """A model's discrete noise levels, ascending; index i is training timestep i.

    `t_to_sigma` / `sigma_to_t` interpolate linearly in log sigma between neighbouring indices, as
    k-diffusion's discrete denoisers do (fractional timesteps, no quantisation).
    """

    sigmas: np.ndarray  # float64, ascending, one per training timestep

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor | np.ndarray) -> ModelSigmas:
        ac = np.asarray(torch.as_tensor(alphas_cumprod).detach().cpu().numpy(), dtype=np.float64)
        return cls(np.sqrt((1.0 - ac) / ac))

    @property
    def log_sigmas(self) -> np.ndarray:
        return np.log(self.sigmas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def t_max(self) -> float:
        return float(len(self.sigmas) - 1)

    def t_to_sigma(self, t: np.ndarray | Sequence[float]) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        return np.exp(np.interp(t, np.arange(len(self.sigmas), dtype=np.float64), self.log_sigmas))

    def sigma_to_t(self, sigma: np.ndarray | Sequence[float] | torch.Tensor) -> np.ndarray:
        s = np.asarray(torch.as_tensor(sigma).detach().cpu().numpy() if isinstance(sigma, torch.Tensor) else sigma)
        log_s = np.log(np.maximum(s.astype(np.float64), 1e-10))
        return np.interp(log_s, self.log_sigmas, np.arange(len(self.sigmas), dtype=np.float64))


@dataclass(frozen=True)
class ScheduleParams:
    """A1111's schedule settings: `sigma_min`, `sigma_max`, `rho` (None = the schedule's default) and
    the model kind Align Your Steps picks its table by."""

    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None
    is_sdxl: bool = False


SigmaFn = Callable[[ModelSigmas, int, ScheduleParams], np.ndarray]

# NVIDIA's Align Your Steps 10-step sigma tables (11 points, the last being the model's sigma_min).
_AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
_AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def _range(ms: ModelSigmas, p: ScheduleParams) -> tuple[float, float]:
    lo = p.sigma_min if p.sigma_min else ms.sigma_min
    hi = p.sigma_max if p.sigma_max else ms.sigma_max
    return float(lo), float(hi)


def _uniform(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    # The model's own sigmas (k-diffusion `get_sigmas`): n timesteps evenly from t_max down to 0.
    return ms.t_to_sigma(np.linspace(ms.t_max, 0.0, n))


def _normal(ms: ModelSigmas, n: int, p: ScheduleParams, *, sgm: bool = False) -> np.ndarray:
    lo, hi = _range(ms, p)
    start, end = float(ms.sigma_to_t([hi])[0]), float(ms.sigma_to_t([lo])[0])
    t = np.linspace(start, end, n + 1)[:-1] if sgm else np.linspace(start, end, n)
    return ms.t_to_sigma(t)


def _karras(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    # Karras et al. 2022, eq. 5.
    lo, hi = _range(ms, p)
    rho = p.rho if p.rho else 7.0
    ramp = np.linspace(0.0, 1.0, n)
    inv_hi, inv_lo = hi ** (1.0 / rho), lo ** (1.0 / rho)
    return (inv_hi + ramp * (inv_lo - inv_hi)) ** rho


def _exponential(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    lo, hi = _range(ms, p)
    return np.exp(np.linspace(math.log(hi), math.log(lo), n))


def _polyexponential(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    lo, hi = _range(ms, p)
    rho = p.rho if p.rho else 1.0
    ramp = np.linspace(1.0, 0.0, n) ** rho
    return np.exp(ramp * (math.log(hi) - math.log(lo)) + math.log(lo))


def _kl_optimal(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    lo, hi = _range(ms, p)
    if n == 1:
        return np.array([hi])
    w = np.arange(n, dtype=np.float64) / (n - 1)
    return np.tan(w * math.atan(lo) + (1.0 - w) * math.atan(hi))


def _align_your_steps(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    # NVIDIA's recipe for other step counts: interpolate log sigma linearly over [0, 1].
    table = np.asarray(_AYS_SDXL if p.is_sdxl else _AYS_SD15, dtype=np.float64)
    xs = np.linspace(0.0, 1.0, len(table))
    ys = np.log(table[::-1])
    return np.exp(np.interp(np.linspace(0.0, 1.0, n), xs, ys))[::-1].copy()


def _simple(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    # Every (len/n)-th model sigma from the top.
    stride = len(ms.sigmas) / n
    return np.array([ms.sigmas[-(1 + int(x * stride))] for x in range(n)])


def _ddim_uniform(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    # Model sigmas at 1, 1+s, 1+2s, ... (s = len // n), highest first; like A1111 this can give a
    # few more than n sigmas when n does not divide the number of training timesteps.
    stride = max(len(ms.sigmas) // n, 1)
    return ms.sigmas[np.arange(1, len(ms.sigmas), stride)][::-1].copy()


def _discarding_next_to_last(fn: SigmaFn) -> SigmaFn:
    """A1111's `discard_next_to_last_sigma`: compute n+1 sigmas and drop the last non-zero one."""

    def wrapped(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
        return fn(ms, n + 1, p)[:-1]

    return wrapped


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
    ScheduleInfo("uniform", "Uniform", need_inner_model=True, sigmas=_uniform),
    ScheduleInfo("karras", "Karras", default_rho=7.0, sigmas=_karras),
    ScheduleInfo("exponential", "Exponential", sigmas=_exponential),
    ScheduleInfo("polyexponential", "Polyexponential", default_rho=1.0, sigmas=_polyexponential),
    ScheduleInfo(
        "sgm_uniform", "SGM Uniform", aliases=("SGMUniform",), need_inner_model=True, sigmas=partial(_normal, sgm=True)
    ),
    ScheduleInfo("kl_optimal", "KL Optimal", sigmas=_kl_optimal),
    ScheduleInfo("align_your_steps", "Align Your Steps", sigmas=_align_your_steps),
    ScheduleInfo("simple", "Simple", need_inner_model=True, sigmas=_simple),
    ScheduleInfo("normal", "Normal", need_inner_model=True, sigmas=_normal),
    ScheduleInfo("ddim", "DDIM", need_inner_model=True, sigmas=_ddim_uniform),
)

OMITTED_SCHEDULES: Mapping[str, str] = {
    "Beta": (
        "A1111's beta schedule needs scipy's beta-distribution ppf (scipy is not a dependency), and "
        "diffusers' use_beta_sigmas interpolates in sigma rather than reproducing A1111's timestep "
        "selection; it is not offered rather than approximated"
    ),
}


# --------------------------------------------------------------------------------------------
# diffusers subclasses
# --------------------------------------------------------------------------------------------

HookedSigmas = Callable[[ModelSigmas, int], np.ndarray]


class _HookedSchedule:
    """Mixin: the scheduler's `use_karras_sigmas` branch returns `a1111_sigmas(model_sigmas, n)`."""

    a1111_sigmas: HookedSigmas | None = None
    alphas_cumprod: torch.Tensor
    num_inference_steps: int | None

    def _convert_to_karras(self, in_sigmas: Any, num_inference_steps: int | None = None) -> np.ndarray:
        if self.a1111_sigmas is None:
            raise RuntimeError(
                f"{type(self).__name__} runs A1111 schedules and must be built with "
                "modules.engine.samplers.build_scheduler (a config copy loses the schedule)"
            )
        n = num_inference_steps if num_inference_steps is not None else self.num_inference_steps
        if n is None:
            raise ValueError("number of inference steps unknown")
        return np.asarray(self.a1111_sigmas(self.model_sigmas(), int(n)), dtype=np.float64)

    def model_sigmas(self) -> ModelSigmas:
        return ModelSigmas.from_alphas_cumprod(self.alphas_cumprod)

    def _sigma_to_t(self, sigma: Any, log_sigmas: Any) -> Any:
        # The same log-sigma interpolation as diffusers' (and k-diffusion's), vectorised: diffusers
        # calls it once per sigma with a full-table comparison, which made building DPM2 take 0.15 s.
        log_s = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
        table = np.asarray(log_sigmas, dtype=np.float64)
        return np.interp(log_s, table, np.arange(len(table), dtype=np.float64))


def _fractional(model_sigmas: ModelSigmas, sigmas: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(model_sigmas.sigma_to_t(sigmas).astype(np.float32)).to(device)


class A1111EulerDiscreteScheduler(_HookedSchedule, EulerDiscreteScheduler):
    """k-diffusion `sample_euler` (s_churn = 0). Exact: same update, same sigmas, fractional t."""


class A1111HeunDiscreteScheduler(_HookedSchedule, HeunDiscreteScheduler):
    """k-diffusion `sample_heun` (s_churn = 0): same update and sigmas; last step is Euler."""


class A1111LMSDiscreteScheduler(_HookedSchedule, LMSDiscreteScheduler):
    """k-diffusion `sample_lms` (order 4). The coefficient is the integral of a Lagrange basis
    polynomial (degree <= 3), integrated exactly by 4-point Gauss-Legendre instead of scipy's quad."""

    _GAUSS = np.polynomial.legendre.leggauss(4)

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        s = [float(x) for x in self.sigmas]
        a, b = s[t], s[t + 1]
        nodes, weights = self._GAUSS
        taus = 0.5 * (b - a) * nodes + 0.5 * (a + b)
        values = np.ones_like(taus)
        for k in range(order):
            if k != current_order:
                values *= (taus - s[t - k]) / (s[t - current_order] - s[t - k])
        return float(0.5 * (b - a) * np.sum(weights * values))


class _FractionalMainTimesteps:
    """Mixin for DPM2 / DPM2 a: their main timesteps (even positions) are rounded by diffusers;
    k-diffusion feeds the UNet the fractional value."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)  # type: ignore[misc]
        ms = self.model_sigmas()  # type: ignore[attr-defined]
        main = self.sigmas[0::2][: (len(self.timesteps) + 1) // 2]
        ts = self.timesteps.to(torch.float32).clone()
        ts[0::2] = _fractional(ms, main, ts.device)
        self.timesteps = ts


class A1111KDPM2DiscreteScheduler(_FractionalMainTimesteps, _HookedSchedule, KDPM2DiscreteScheduler):
    """k-diffusion `sample_dpm_2`: midpoint in log sigma, last step Euler."""


class A1111KDPM2AncestralDiscreteScheduler(_FractionalMainTimesteps, _HookedSchedule, KDPM2AncestralDiscreteScheduler):
    """k-diffusion `sample_dpm_2_ancestral` (eta 1): one noise draw per step, after the second
    evaluation."""


class _KDiffusionStart:
    """`init_noise_sigma` for schedulers whose sample is variance-preserving (x / sqrt(1 + sigma^2)):
    k-diffusion starts from x = noise * sigma_0, i.e. noise * sigma_0 / sqrt(1 + sigma_0^2) here.
    diffusers says 1.0, which for SD starts 0.2 % further out. Before `set_timesteps` it is 1.0."""

    _unset_init_noise_sigma: float = 1.0

    def _first_sigma(self) -> float:
        return float(self.sigmas[0])  # type: ignore[attr-defined]

    @property
    def init_noise_sigma(self) -> float:
        if getattr(self, "num_inference_steps", None) is None:
            return self._unset_init_noise_sigma
        sigma = self._first_sigma()
        return sigma / math.sqrt(1.0 + sigma * sigma)

    @init_noise_sigma.setter
    def init_noise_sigma(self, value: float) -> None:  # diffusers assigns 1.0 in __init__
        self._unset_init_noise_sigma = float(value)


class A1111DPMSolverMultistepScheduler(_KDiffusionStart, _HookedSchedule, DPMSolverMultistepScheduler):
    """k-diffusion DPM++ 2M / 2M SDE / 3M SDE.

    diffusers works on the variance-preserving sample x / sqrt(1 + sigma^2) where k-diffusion works
    on x; the updates are the same algebra (lambda = -log sigma). Two corrections: fractional
    timesteps for the UNet, and the third-order SDE coefficient of D2 (diffusers 0.42 has
    `- 0.5` where the exponential-integrator expansion, and k-diffusion's `sample_dpmpp_3m_sde`,
    give `+ 0.5`; with `- 0.5` the term does not vanish as h -> 0).
    """

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        self.timesteps = _fractional(self.model_sigmas(), self.sigmas[:-1], self.timesteps.device)

    def multistep_dpm_solver_third_order_update(
        self,
        model_output_list: list[torch.Tensor],
        *args: Any,
        sample: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.config.algorithm_type != "sde-dpmsolver++" or args or kwargs:
            return super().multistep_dpm_solver_third_order_update(
                model_output_list, *args, sample=sample, noise=noise, **kwargs
            )
        if sample is None or noise is None:
            raise ValueError("sample and noise are required")
        i = self.step_index
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[i + 1])
        alpha_s0, sigma_s0 = self._sigma_to_alpha_sigma_t(self.sigmas[i])
        alpha_s1, sigma_s1 = self._sigma_to_alpha_sigma_t(self.sigmas[i - 1])
        alpha_s2, sigma_s2 = self._sigma_to_alpha_sigma_t(self.sigmas[i - 2])
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        lambda_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
        lambda_s2 = torch.log(alpha_s2) - torch.log(sigma_s2)
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        h2 = 2.0 * h
        phi_1 = -torch.expm1(-h2)  # 1 - e^{-2h}
        phi_2 = 1.0 - phi_1 / h2
        phi_3 = phi_2 / h2 - 0.5
        return (
            (sigma_t / sigma_s0 * torch.exp(-h)) * sample
            + alpha_t * phi_1 * m0
            + alpha_t * phi_2 * d1
            - alpha_t * phi_3 * d2
            + sigma_t * torch.sqrt(phi_1) * noise
        )


class A1111EulerAncestralDiscreteScheduler(EulerAncestralDiscreteScheduler):
    """k-diffusion `sample_euler_ancestral` (eta 1). diffusers' class has no schedule flags, so
    `set_timesteps` installs the A1111 schedule directly; `step` also takes `variance_noise` (the
    noise for this step, e.g. `ImageRNG.next()`), so any noise source can drive it."""

    a1111_sigmas: HookedSigmas | None = None

    def model_sigmas(self) -> ModelSigmas:
        return ModelSigmas.from_alphas_cumprod(self.alphas_cumprod)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        if self.a1111_sigmas is None:
            raise RuntimeError(
                f"{type(self).__name__} runs A1111 schedules and must be built with "
                "modules.engine.samplers.build_scheduler"
            )
        ms = self.model_sigmas()
        sig = np.asarray(self.a1111_sigmas(ms, int(num_inference_steps)), dtype=np.float64)
        self.num_inference_steps = len(sig)
        self.sigmas = torch.from_numpy(np.append(sig, 0.0).astype(np.float32))
        self.timesteps = torch.from_numpy(ms.sigma_to_t(sig).astype(np.float32)).to(device=device)
        self._step_index = None
        self._begin_index = None

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        variance_noise: torch.Tensor | None = None,
    ) -> EulerAncestralDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        if variance_noise is None:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        sigma, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        sample = sample.to(torch.float32)
        if self.config.prediction_type == "epsilon":
            denoised = sample - sigma * model_output
        elif self.config.prediction_type == "v_prediction":
            denoised = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        else:
            raise ValueError(f"prediction_type {self.config.prediction_type!r} is not supported")
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        prev = sample + (sample - denoised) / sigma * (sigma_down - sigma)
        prev = prev + variance_noise.to(device=prev.device, dtype=prev.dtype) * sigma_up
        prev = prev.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return prev, denoised
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)


class A1111LCMScheduler(_KDiffusionStart, LCMScheduler):
    """A1111's LCM sampler: k-diffusion style over the 50-point LCM timestep grid (19, 39, ..., 999).

    The selected schedule is computed on the grid's sigmas and every sigma is snapped to the
    nearest grid timestep (what A1111's LCM denoiser does when it calls the UNet); consecutive
    duplicates are merged because diffusers' LCM needs strictly descending timesteps. The step
    (boundary-condition scalings with timestep_scaling 10, denoise, re-noise to the next level)
    is diffusers' LCM step.
    """

    a1111_sigmas: HookedSigmas | None = None

    def _first_sigma(self) -> float:
        ac = float(self.alphas_cumprod[int(self.timesteps[0])])
        return math.sqrt((1.0 - ac) / ac)

    def grid_timesteps(self) -> np.ndarray:
        k = self.config.num_train_timesteps // self.config.original_inference_steps
        return np.arange(1, self.config.original_inference_steps + 1) * k - 1

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        original_inference_steps: int | None = None,
        timesteps: list[int] | None = None,
        strength: float = 1.0,
    ) -> None:
        if timesteps is not None or num_inference_steps is None or original_inference_steps is not None:
            return super().set_timesteps(num_inference_steps, device, original_inference_steps, timesteps, strength)
        if self.a1111_sigmas is None:
            raise RuntimeError(f"{type(self).__name__} must be built with modules.engine.samplers.build_scheduler")
        grid = self.grid_timesteps()
        full = ModelSigmas.from_alphas_cumprod(self.alphas_cumprod)
        grid_sigmas = ModelSigmas(full.sigmas[grid])
        sig = self.a1111_sigmas(grid_sigmas, int(num_inference_steps))
        idx = np.clip(np.rint(grid_sigmas.sigma_to_t(sig)).astype(np.int64), 0, len(grid) - 1)
        chosen: list[int] = []
        for t in grid[idx]:
            if not chosen or int(t) < chosen[-1]:
                chosen.append(int(t))
        return super().set_timesteps(device=device, timesteps=chosen, strength=strength)


@cache
def _dpmsolver_sde_class() -> type[SchedulerMixin]:
    from diffusers.schedulers.scheduling_dpmsolver_sde import DPMSolverSDEScheduler

    class A1111DPMSolverSDEScheduler(_HookedSchedule, DPMSolverSDEScheduler):
        """k-diffusion `sample_dpmpp_sde` (diffusers' port, Brownian-tree noise seeded per image)."""

    return A1111DPMSolverSDEScheduler


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
        loader=_dpmsolver_sde_class,
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
    return _discarding_next_to_last(fn) if sampler.discard_next_to_last_sigma else fn


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
