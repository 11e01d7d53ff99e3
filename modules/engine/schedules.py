"""A1111's sigma schedules: a model's discrete noise levels and the schedule functions over them.

Each function takes the model's sigmas, a step count and A1111's schedule settings and returns the
non-zero sigmas, highest first (Uniform, SGM Uniform, Karras, Exponential, Polyexponential, KL
Optimal, Align Your Steps, Simple, Normal, DDIM). They are written from A1111's documented
definitions (its `sd_schedulers`), because diffusers' own Karras / exponential flags give different
sigmas (SDXL's "leading" spacing shrinks their range, its uniform spacing interpolates sigma
linearly where k-diffusion interpolates log sigma, ...). `modules.engine.samplers` names them;
`modules.engine.scheduler_classes` hands them to diffusers schedulers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ModelSigmas",
    "ScheduleParams",
    "SigmaFn",
    "align_your_steps_sigmas",
    "beta_sigmas",
    "ddim_uniform_sigmas",
    "discarding_next_to_last",
    "exponential_sigmas",
    "karras_sigmas",
    "kl_optimal_sigmas",
    "normal_sigmas",
    "polyexponential_sigmas",
    "simple_sigmas",
    "uniform_sigmas",
]


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
    """A1111's schedule settings: `sigma_min`, `sigma_max`, `rho` (None = the schedule's default), the
    model kind Align Your Steps picks its table by and the Beta schedule's distribution parameters
    (settings `beta_dist_alpha` / `beta_dist_beta`)."""

    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None
    is_sdxl: bool = False
    beta_alpha: float = 0.6
    beta_beta: float = 0.6


SigmaFn = Callable[[ModelSigmas, int, ScheduleParams], np.ndarray]

# NVIDIA's Align Your Steps 10-step sigma tables (11 points, the last being the model's sigma_min).
_AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
_AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def _range(ms: ModelSigmas, p: ScheduleParams) -> tuple[float, float]:
    lo = p.sigma_min if p.sigma_min else ms.sigma_min
    hi = p.sigma_max if p.sigma_max else ms.sigma_max
    return float(lo), float(hi)


def uniform_sigmas(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    # The model's own sigmas (k-diffusion `get_sigmas`): n timesteps evenly from t_max down to 0.
    return ms.t_to_sigma(np.linspace(ms.t_max, 0.0, n))


def normal_sigmas(ms: ModelSigmas, n: int, p: ScheduleParams, *, sgm: bool = False) -> np.ndarray:
    lo, hi = _range(ms, p)
    start, end = float(ms.sigma_to_t([hi])[0]), float(ms.sigma_to_t([lo])[0])
    t = np.linspace(start, end, n + 1)[:-1] if sgm else np.linspace(start, end, n)
    return ms.t_to_sigma(t)


def karras_sigmas(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    # Karras et al. 2022, eq. 5, computed as k-diffusion does: a float32 ramp, Python-float ends.
    lo, hi = _range(ms, p)
    rho = p.rho if p.rho else 7.0
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = lo ** (1 / rho), hi ** (1 / rho)
    return ((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho).double().numpy()


def exponential_sigmas(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    lo, hi = _range(ms, p)
    return torch.linspace(math.log(hi), math.log(lo), n).exp().double().numpy()


def polyexponential_sigmas(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    lo, hi = _range(ms, p)
    rho = p.rho if p.rho else 1.0
    ramp = torch.linspace(1, 0, n) ** rho
    return torch.exp(ramp * (math.log(hi) - math.log(lo)) + math.log(lo)).double().numpy()


def kl_optimal_sigmas(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    lo, hi = _range(ms, p)
    if n == 1:
        return np.array([hi])
    w = np.arange(n, dtype=np.float64) / (n - 1)
    return np.tan(w * math.atan(lo) + (1.0 - w) * math.atan(hi))


def align_your_steps_sigmas(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    # NVIDIA's recipe for other step counts: interpolate log sigma linearly over [0, 1].
    table = np.asarray(_AYS_SDXL if p.is_sdxl else _AYS_SD15, dtype=np.float64)
    xs = np.linspace(0.0, 1.0, len(table))
    ys = np.log(table[::-1])
    return np.exp(np.interp(np.linspace(0.0, 1.0, n), xs, ys))[::-1].copy()


def beta_sigmas(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    """A1111's Beta schedule ("Beta Sampling is All You Need", Lee et al. 2024): sigmas spaced by the
    quantiles of a Beta(alpha, beta) distribution, taken from 1 down to 0 and mapped linearly onto
    [sigma_min, sigma_max], so alpha = beta < 1 puts more steps at both ends of the range."""
    from scipy import stats  # type: ignore[import-untyped]  # only this schedule needs scipy

    lo, hi = _range(ms, p)
    timesteps = 1 - np.linspace(0, 1, n)
    # One ppf call per point and the same float64 arithmetic as A1111's list comprehension.
    quantiles = [float(stats.beta.ppf(q, p.beta_alpha, p.beta_beta)) for q in timesteps]
    return np.array([lo + (q * (hi - lo)) for q in quantiles], dtype=np.float64)


def simple_sigmas(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    # Every (len/n)-th model sigma from the top.
    stride = len(ms.sigmas) / n
    return np.array([ms.sigmas[-(1 + int(x * stride))] for x in range(n)])


def ddim_uniform_sigmas(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
    # Model sigmas at 1, 1+s, 1+2s, ... (s = len // n), highest first; like A1111 this can give a
    # few more than n sigmas when n does not divide the number of training timesteps.
    stride = max(len(ms.sigmas) // n, 1)
    return ms.sigmas[np.arange(1, len(ms.sigmas), stride)][::-1].copy()


def discarding_next_to_last(fn: SigmaFn) -> SigmaFn:
    """A1111's `discard_next_to_last_sigma`: compute n+1 sigmas and drop the last non-zero one."""

    def wrapped(ms: ModelSigmas, n: int, p: ScheduleParams) -> np.ndarray:
        return fn(ms, n + 1, p)[:-1]

    return wrapped
