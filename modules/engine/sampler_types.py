"""Types shared by the sampler functions (`modules.engine.kdiffusion`, `modules.engine.timestep_samplers`)
and the loop that drives them (`modules.engine.sampling`).

A k-diffusion style sampler integrates from `sigmas[0]` to `sigmas[-1] == 0` by calling a *denoiser*
`model(x, sigma) -> denoised` (the x0 prediction, classifier-free guidance already applied); a
timestep sampler (DDIM, PLMS, UniPC) calls a model `model(x, t) -> eps` over integer training
timesteps. Both report every step through a callback with a `StepInfo`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["Callback", "Denoiser", "NoiseSampler", "RandnLike", "StepInfo", "TimestepModel"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`model(x, sigma) -> denoised`: x (B, C, H, W), sigma a (B,) tensor; returns the x0 prediction."""

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`(sigma, sigma_next) -> unit-variance noise shaped like the sampler's x`."""

RandnLike = Callable[[torch.Tensor], torch.Tensor]
"""Unit normal noise shaped like the argument (the engine draws it from each image's generator)."""


@dataclass(frozen=True)
class StepInfo:
    """What a sampler reports at step `i` (k-diffusion's callback dict): the x it holds, the sigma
    (0 for timestep samplers), the churned sigma and the current x0 prediction."""

    i: int
    x: torch.Tensor
    sigma: torch.Tensor | float
    sigma_hat: torch.Tensor | float
    denoised: torch.Tensor


Callback = Callable[[StepInfo], None]


class TimestepModel(Protocol):
    """The model a timestep sampler calls: `model(x, t) -> eps` (guided noise prediction) for a
    (B,) tensor of training timesteps. DDIM CFG++ sets `cond_scale_multiplier` (1 / 12.5) and
    `need_last_noise_uncond`, then reads `last_noise_uncond` (the unguided eps of the last call)."""

    cond_scale_multiplier: float
    need_last_noise_uncond: bool
    last_noise_uncond: torch.Tensor | None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...
