"""Device, precision and memory mode from A1111's flags."""

from __future__ import annotations

import torch

from modules.core.settings import parse_settings
from modules.models.devices import policy_from_settings

CUDA = torch.device("cuda", 0)  # passed in explicitly: the policy is pure given a device


def _policy(*flags: str, device: torch.device = CUDA):  # type: ignore[no-untyped-def]
    return policy_from_settings(parse_settings(list(flags), {}), device)


def test_cpu_is_always_fp32_and_never_offloads() -> None:
    p = policy_from_settings(parse_settings(["--use-cpu", "all", "--medvram"], {}))
    assert p.placement.device.type == "cpu"
    assert p.placement.dtype == p.placement.vae_dtype == torch.float32
    assert not p.offload_for(is_sdxl=True)


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


def test_memory_modes() -> None:
    assert not _policy().offload_for(is_sdxl=True)
    assert _policy("--medvram").offload_for(is_sdxl=False)
    assert _policy("--lowvram").memory_mode == "lowvram"
    sdxl_only = _policy("--medvram-sdxl")
    assert sdxl_only.offload_for(is_sdxl=True) and not sdxl_only.offload_for(is_sdxl=False)


def test_xformers_falls_back_to_sdp_when_missing() -> None:
    assert _policy("--xformers").attention in ("sdp", "xformers")
    assert _policy().attention == "sdp"
