"""The denoiser reads the UNet's dtype once per UNet, not on every model call (diffusers'
`ModelMixin.dtype` walks every submodule: milliseconds per step on a full-size UNet)."""

from __future__ import annotations

from typing import Any

import torch

from modules.engine.sampling import (
    CFGDenoiser,
    DiscreteSchedule,
    SamplingJob,
    StepConds,
    TextCond,
    a1111_alphas_cumprod,
)


class _Out:
    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample


class CountingUNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dtype_reads = 0

    @property
    def dtype(self) -> torch.dtype:
        self.dtype_reads += 1
        return torch.float32

    def forward(self, x: torch.Tensor, t: Any, encoder_hidden_states: torch.Tensor, **kwargs: Any) -> _Out:
        return _Out(2 * x + encoder_hidden_states.sum(dim=(1, 2)).reshape(-1, 1, 1, 1))


def _conds(i: int) -> StepConds:
    return StepConds(TextCond(torch.ones(1, 3, 2)), [[(0, 1.0)]], TextCond(torch.zeros(1, 3, 2)))


def test_the_unet_dtype_is_read_once_per_unet_not_per_call() -> None:
    first, second = CountingUNet(), CountingUNet()
    job = SamplingJob(
        unet=first, schedule=DiscreteSchedule(a1111_alphas_cumprod()), conds_at=_conds, cfg_scale=7.0, mode="timesteps"
    )
    denoiser = CFGDenoiser(job)
    x = torch.ones(1, 4, 2, 2)
    outs = [denoiser(x, torch.full((1,), 500.0)) for _ in range(4)]
    assert first.dtype_reads == 1
    job.unet = second  # a handover (the SDXL refiner) swaps the UNet: its dtype is read anew
    outs.append(denoiser(x, torch.full((1,), 500.0)))
    assert second.dtype_reads == 1
    # cond row: 2x + 6, uncond row: 2x; CFG 7 -> 2x + 42 for every call
    for out in outs:
        assert torch.equal(out, 2 * x + 42)
