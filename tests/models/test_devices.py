"""Device, precision and memory mode from A1111's flags."""

from __future__ import annotations

import logging

import pytest
import torch

from modules.core.settings import parse_settings
from modules.models.devices import policy_from_settings
from modules.models.offload import offload_mode_for

CUDA = torch.device("cuda", 0)  # passed in explicitly: the policy is pure given a device


def _policy(*flags: str, device: torch.device = CUDA):  # type: ignore[no-untyped-def]
    return policy_from_settings(parse_settings(list(flags), {}), device)


def test_cpu_is_always_fp32_and_never_offloads(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        p = policy_from_settings(parse_settings(["--use-cpu", "all", "--medvram", "--upcast-sampling"], {}))
    assert p.placement.device.type == "cpu"
    assert p.placement.dtype == p.placement.vae_dtype == torch.float32
    assert offload_mode_for(p.memory_mode, True, p.placement.device) is None
    assert not p.upcast_sampling
    # the flags are taken but cannot act on a CPU: the log says so
    assert "--medvram: the model runs on the CPU" in caplog.text
    assert "--upcast-sampling: the UNet already runs in fp32" in caplog.text


def test_gpu_defaults_to_half_and_flags_keep_fp32() -> None:
    assert _policy().placement.dtype == torch.float16
    assert _policy().placement.vae_dtype == torch.float16
    for flags in (("--no-half",), ("--precision", "full")):
        p = _policy(*flags)
        assert p.placement.dtype == p.placement.vae_dtype == torch.float32
    p = _policy("--no-half-vae")
    assert p.placement.dtype == torch.float16 and p.placement.vae_dtype == torch.float32
    assert _policy("--upcast-sampling").upcast_sampling
    assert not _policy("--upcast-sampling", "--no-half").upcast_sampling


def _offload(*flags: str, sdxl: bool) -> str | None:
    return offload_mode_for(_policy(*flags).memory_mode, sdxl, CUDA)


def test_memory_modes() -> None:
    assert _offload(sdxl=True) is None
    assert _offload("--medvram", sdxl=False) == "medvram"
    assert _offload("--lowvram", sdxl=False) == "lowvram"
    assert _offload("--lowvram", "--medvram", sdxl=True) == "lowvram"  # the stronger one wins
    assert _offload("--medvram-sdxl", sdxl=True) == "medvram"
    assert _offload("--medvram-sdxl", sdxl=False) is None


def test_xformers_falls_back_to_sdp_when_missing() -> None:
    assert _policy("--xformers").attention in ("sdp", "xformers")
    assert _policy().attention == "sdp"
