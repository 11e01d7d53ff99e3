"""Device, precision and memory mode from the command-line flags.

A1111's meanings: `--use-cpu all|sd` runs Stable Diffusion on the CPU; `--device-id N` picks the
CUDA device; `--precision full` or `--no-half` keeps fp32 weights; `--no-half-vae` keeps the VAE in
fp32; `--upcast-sampling` keeps fp16 weights but computes sampling in fp32. On a CPU everything is
fp32 (half precision there is slow and partly unsupported). `--medvram`, `--medvram-sdxl` and
`--lowvram` keep components off the GPU between stages (`modules.models.offload`); on a CPU they
have nothing to do, and say so. `--upcast-sampling` runs the fp16 UNet under autocast, so that its
normalisations and softmaxes compute in fp32 (the sampler's own arithmetic is fp32 always).
`--xformers`, `--opt-sdp-no-mem-attention`, `--opt-channelslast` and `--torch-compile` become the
policy's `fast_paths` (`modules.models.fast_paths`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch

from modules.core.settings import Settings
from modules.models.fast_paths import FastPaths, fast_paths_from_settings
from modules.models.loader import Placement

log = logging.getLogger(__name__)

MemoryMode = Literal["normal", "medvram", "medvram-sdxl", "lowvram"]


@dataclass(frozen=True)
class DevicePolicy:
    placement: Placement
    memory_mode: MemoryMode
    upcast_sampling: bool
    fast_paths: FastPaths = field(default_factory=FastPaths)

    @property
    def attention(self) -> str:
        """ "sdp" (PyTorch scaled_dot_product_attention) or "xformers" (--xformers, installed)."""
        return self.fast_paths.attention


def select_device(settings: Settings) -> torch.device:
    if settings.cpu_for("sd"):
        return torch.device("cpu")
    if torch.cuda.is_available():
        index = settings.device_id if settings.device_id is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            from modules.core.errors import SettingsError

            raise SettingsError(f"--device-id {index}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def policy_from_settings(settings: Settings, device: torch.device | None = None) -> DevicePolicy:
    device = device or select_device(settings)
    full = settings.no_half or settings.precision == "full" or device.type == "cpu"
    dtype = torch.float32 if full else torch.float16
    vae_dtype = torch.float32 if (full or settings.no_half_vae) else torch.float16
    if settings.lowvram:
        mode: MemoryMode = "lowvram"
    elif settings.medvram:
        mode = "medvram"
    elif settings.medvram_sdxl:
        mode = "medvram-sdxl"
    else:
        mode = "normal"
    if mode != "normal" and device.type == "cpu":
        log.warning("--%s: the model runs on the CPU, so there is nothing to offload; the flag has no effect", mode)
    if settings.upcast_sampling and dtype != torch.float16:
        log.warning("--upcast-sampling: the UNet already runs in fp32 here (%s); the flag has no effect", device)
    return DevicePolicy(
        placement=Placement(device=device, dtype=dtype, vae_dtype=vae_dtype, text_encoder_dtype=dtype),
        memory_mode=mode,
        upcast_sampling=settings.upcast_sampling and dtype == torch.float16,
        fast_paths=fast_paths_from_settings(settings, device),
    )
