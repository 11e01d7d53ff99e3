"""Small diffusers scheduler subclasses that run A1111's samplers on A1111's sigma schedules.

How a schedule reaches a scheduler: our subclasses override `_convert_to_karras` (the one method
every k-style diffusers scheduler calls to turn "n steps" into sigmas, in its `use_karras_sigmas`
branch) to return the selected schedule (`a1111_sigmas`, a function of `modules.engine.schedules`).
The scheduler keeps its own layout logic (Heun/DPM2 interleaving, final zero sigma, timestep
lookup), and `scheduler.sigmas` ends up holding A1111's sigmas. `use_karras_sigmas=True` in such
a scheduler's config therefore means "use the hooked A1111 schedule", whatever its name: build
schedulers with `modules.engine.samplers.build_scheduler` (a `from_config` copy loses the hook and
refuses to run).

k-diffusion feeds the UNet a fractional timestep (log-sigma interpolation, no quantisation by
default); where a diffusers scheduler rounds it (DPM-Solver multistep, DPM2) the subclasses put
the fractional value back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import torch
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
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from modules.engine.schedules import ModelSigmas

__all__ = [
    "A1111DPMSolverMultistepScheduler",
    "A1111EulerAncestralDiscreteScheduler",
    "A1111EulerDiscreteScheduler",
    "A1111HeunDiscreteScheduler",
    "A1111KDPM2AncestralDiscreteScheduler",
    "A1111KDPM2DiscreteScheduler",
    "A1111LCMScheduler",
    "A1111LMSDiscreteScheduler",
    "HookedSigmas",
    "dpmsolver_sde_class",
]

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


# The A1111 subclasses below carry `# type: ignore[misc]` on their class line: diffusers' own
# SchedulerMixin and ConfigMixin disagree on `config_name`, and each base scheduler types
# `_convert_to_karras` / `num_inference_steps` its own way, which the shared hook cannot match.


class A1111EulerDiscreteScheduler(_HookedSchedule, EulerDiscreteScheduler):  # type: ignore[misc]
    """k-diffusion `sample_euler` (s_churn = 0). Exact: same update, same sigmas, fractional t."""


class A1111HeunDiscreteScheduler(_HookedSchedule, HeunDiscreteScheduler):  # type: ignore[misc]
    """k-diffusion `sample_heun` (s_churn = 0): same update and sigmas; last step is Euler."""


class A1111LMSDiscreteScheduler(_HookedSchedule, LMSDiscreteScheduler):  # type: ignore[misc]
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


class A1111KDPM2DiscreteScheduler(_FractionalMainTimesteps, _HookedSchedule, KDPM2DiscreteScheduler):  # type: ignore[misc]
    """k-diffusion `sample_dpm_2`: midpoint in log sigma, last step Euler."""


class A1111KDPM2AncestralDiscreteScheduler(_FractionalMainTimesteps, _HookedSchedule, KDPM2AncestralDiscreteScheduler):  # type: ignore[misc]
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


class A1111DPMSolverMultistepScheduler(_KDiffusionStart, _HookedSchedule, DPMSolverMultistepScheduler):  # type: ignore[misc]
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
        if self.config["algorithm_type"] != "sde-dpmsolver++" or args or kwargs:
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
        self.num_inference_steps = len(sig)  # type: ignore[assignment]  # diffusers declares it None
        self.sigmas = torch.from_numpy(np.append(sig, 0.0).astype(np.float32))
        self.timesteps = torch.from_numpy(ms.sigma_to_t(sig).astype(np.float32)).to(device=device)
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        variance_noise: torch.Tensor | None = None,
    ) -> EulerAncestralDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        if variance_noise is None:
            return super().step(
                model_output,
                timestep,
                sample,
                generator=generator,  # type: ignore[arg-type]  # randn_tensor takes a list of generators too
                return_dict=return_dict,
            )
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        sigma, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        sample = sample.to(torch.float32)
        if self.config["prediction_type"] == "epsilon":
            denoised = sample - sigma * model_output
        elif self.config["prediction_type"] == "v_prediction":
            denoised = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        else:
            raise ValueError(f"prediction_type {self.config['prediction_type']!r} is not supported")
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        prev = sample + (sample - denoised) / sigma * (sigma_down - sigma)
        prev = prev + variance_noise.to(device=prev.device, dtype=prev.dtype) * sigma_up
        prev = prev.to(model_output.dtype)
        self._step_index += 1  # type: ignore[assignment,operator]  # diffusers declares it None
        if not return_dict:
            return prev, denoised
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)


class A1111LCMScheduler(_KDiffusionStart, LCMScheduler):  # type: ignore[misc]
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
        k = self.config["num_train_timesteps"] // self.config["original_inference_steps"]
        return np.arange(1, self.config["original_inference_steps"] + 1) * k - 1

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
def dpmsolver_sde_class() -> type[SchedulerMixin]:
    from diffusers.schedulers.scheduling_dpmsolver_sde import DPMSolverSDEScheduler

    class A1111DPMSolverSDEScheduler(_HookedSchedule, DPMSolverSDEScheduler):  # type: ignore[misc]
        """k-diffusion `sample_dpmpp_sde` (diffusers' port, Brownian-tree noise seeded per image)."""

    return A1111DPMSolverSDEScheduler
