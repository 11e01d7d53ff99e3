"""Precision flags and A1111's NaN handling: --upcast-sampling runs the half-precision UNet under
autocast; NaN latents are an error naming the UNet; an fp16 VAE decode that gives NaNs is retried
with the VAE in fp32 (`auto_vae_precision`) or bfloat16 (`auto_vae_precision_bfloat16`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from modules.core.errors import NansException
from modules.engine.processing import EngineSettings, _decode
from modules.engine.sampling import SamplingJob, StepConds, TextCond, UNetCall, _call_unet


class HalfUNet(torch.nn.Module):
    """Reports whether autocast was on when it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1, dtype=torch.float16))
        self.autocast_seen: list[bool] = []

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> Any:
        self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return SimpleNamespace(sample=x)


def _call(unet: torch.nn.Module, upcast: bool) -> torch.Tensor:
    text = TextCond(torch.zeros(1, 77, 8), None)
    job = SamplingJob(
        unet=unet,
        schedule=None,  # type: ignore[arg-type]
        conds_at=lambda i: StepConds(text, [[(0, 1.0)]], text),
        cfg_scale=7.0,
        upcast=upcast,
    )
    call = UNetCall(
        x=torch.zeros(1, 4, 8, 8),
        timestep=torch.tensor([1.0]),
        text=text,
        image_cond=None,
        added_time_ids=None,
        step=0,
        steps=1,
        sigma=None,
        part="cond",  # type: ignore[arg-type]
        owners=(0,),
    )
    return _call_unet(job, call)


def test_upcast_sampling_runs_the_half_unet_under_autocast() -> None:
    unet = HalfUNet()
    _call(unet, upcast=False)
    _call(unet, upcast=True)
    assert unet.autocast_seen == [False, True]


@dataclass
class FakeVAE:
    """Decodes to NaN while in float16, to grey otherwise (an fp16 overflow)."""

    dtype: torch.dtype = torch.float16
    config: dict[str, float] | None = None
    decodes: int = 0

    def __post_init__(self) -> None:
        self.config = {"scaling_factor": 0.18215}

    def to(self, *, dtype: torch.dtype) -> FakeVAE:
        self.dtype = dtype
        return self

    def decode(self, z: torch.Tensor) -> Any:
        self.decodes += 1
        value = float("nan") if self.dtype == torch.float16 else 0.0
        return SimpleNamespace(sample=torch.full((z.shape[0], 3, 8, 8), value))


def _model(vae: FakeVAE) -> Any:
    return SimpleNamespace(vae=vae)


def test_vae_nans_in_half_precision_retry_in_fp32_for_the_session(caplog: pytest.LogCaptureFixture) -> None:
    vae = FakeVAE()
    with caplog.at_level(logging.WARNING):
        images = _decode(_model(vae), torch.zeros(2, 4, 1, 1), EngineSettings())
    assert vae.dtype == torch.float32 and len(images) == 2
    assert images[0].getpixel((0, 0)) == (127, 127, 127)
    assert vae.decodes == 3  # the first image twice (fp16 NaN, then fp32), the second once in fp32
    assert "A tensor with NaNs was produced in VAE" in caplog.text and "32-bit float" in caplog.text


def test_vae_nans_become_bfloat16_with_that_option() -> None:
    vae = FakeVAE()
    _decode(_model(vae), torch.zeros(1, 4, 1, 1), EngineSettings(auto_vae_precision_bfloat16=True))
    assert vae.dtype == torch.bfloat16


def test_vae_nans_without_the_option_are_an_error_naming_no_half_vae() -> None:
    with pytest.raises(NansException, match="--no-half-vae"):
        _decode(_model(FakeVAE()), torch.zeros(1, 4, 1, 1), EngineSettings(auto_vae_precision=False))


def test_vae_nans_in_fp32_already_are_an_error() -> None:
    vae = FakeVAE(dtype=torch.float32)
    vae.decode = lambda z: SimpleNamespace(sample=torch.full((1, 3, 8, 8), float("nan")))  # type: ignore[method-assign]
    with pytest.raises(NansException, match="VAE"):
        _decode(_model(vae), torch.zeros(1, 4, 1, 1), EngineSettings())


def test_nan_latents_are_an_error_naming_the_unet_unless_the_check_is_off() -> None:
    latents = torch.full((1, 4, 1, 1), float("nan"))
    vae = FakeVAE(dtype=torch.float32)
    with pytest.raises(NansException, match=r"produced in Unet.*--disable-nan-check"):
        _decode(_model(vae), latents, EngineSettings())
    # --disable-nan-check: nothing is checked, NaN decodes are not retried either
    half = FakeVAE()
    assert len(_decode(_model(half), latents, EngineSettings(nan_check=False))) == 1
    assert half.dtype == torch.float16
