"""FP8 weight storage for the UNet (A1111's `fp8_storage`: "Disable", "Enable for SDXL", "Enable").

The weights of every `Linear` and `Conv2d` of the UNet are stored as `torch.float8_e4m3fn` (half
the bytes of fp16) and upcast one layer at a time when it runs: a forward pre-hook puts an upcast
copy in place of the stored weight, and a forward hook (always called, also when the layer
raises) puts the stored fp8 tensor back. Whatever sits in `weight.data` at rest is what is
upcast, so LoRA patches written between jobs are used (they are written in fp8 too). Biases and
norms keep the compute dtype.

Only devices with fp8 support use it (CUDA compute capability 8.9 or newer, as A1111 checks);
elsewhere `sync` says why it is not used, and the caller logs it and adds it to the result's
warnings. Turning the setting off upcasts the stored weights back: their precision is what fp8
kept (reload the checkpoint for the original weights, as A1111 does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
CHOICES = ("Disable", "Enable for SDXL", "Enable")
_STATE = "_sdwebui_fp8"  # on the UNet: its Fp8State while stored in fp8
_STASH = "_sdwebui_fp8_stash"  # on a layer, while it runs: the stored fp8 weight


@dataclass
class Fp8State:
    compute_dtype: torch.dtype
    handles: list[Any]
    layers: int


def wanted(setting: str, is_sdxl: bool) -> bool:
    return setting == "Enable" or (setting == "Enable for SDXL" and is_sdxl)


def device_supports_fp8(device: torch.device) -> bool:
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def is_fp8(unet: torch.nn.Module) -> bool:
    return getattr(unet, _STATE, None) is not None


def _layers(root: torch.nn.Module) -> list[torch.nn.Linear | torch.nn.Conv2d]:
    return [m for m in root.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]


def _upcast(module: torch.nn.Module, _args: Any) -> None:
    weight = module.weight
    if weight.dtype != FP8:
        return
    object.__setattr__(module, _STASH, weight.data)
    weight.data = weight.data.to(getattr(module, "_sdwebui_fp8_dtype"))  # noqa: B009


def _stow(module: torch.nn.Module, _args: Any, _output: Any) -> None:
    stash = vars(module).pop(_STASH, None)
    if stash is not None:
        module.weight.data = stash


def store_fp8(unet: torch.nn.Module, compute_dtype: torch.dtype) -> int:
    """Store the UNet's Linear/Conv2d weights in fp8; the number of weights converted. Called
    again it converts only what went back to another dtype (a LoRA restore puts the original
    weights back)."""
    state: Fp8State | None = getattr(unet, _STATE, None)
    converted = 0
    handles: list[Any] = []
    layers = _layers(unet)
    for layer in layers:
        if layer.weight.dtype != FP8:
            layer.weight.data = layer.weight.data.to(FP8)
            converted += 1
        if state is None:
            object.__setattr__(layer, "_sdwebui_fp8_dtype", compute_dtype)
            handles.append(layer.register_forward_pre_hook(_upcast))
            handles.append(layer.register_forward_hook(_stow, always_call=True))
    if state is None:
        object.__setattr__(unet, _STATE, Fp8State(compute_dtype, handles, len(layers)))
    return converted


def restore(unet: torch.nn.Module) -> int:
    """Back to the compute dtype (with fp8's precision); the number of layers converted back."""
    state: Fp8State | None = vars(unet).pop(_STATE, None)
    if state is None:
        return 0
    for handle in state.handles:
        handle.remove()
    for layer in _layers(unet):
        if layer.weight.dtype == FP8:
            layer.weight.data = layer.weight.data.to(state.compute_dtype)
        vars(layer).pop("_sdwebui_fp8_dtype", None)
    return state.layers


def _compute_dtype(unet: torch.nn.Module) -> torch.dtype:
    dtypes = [m.weight.dtype for m in _layers(unet) if m.weight.dtype != FP8]
    return dtypes[0] if dtypes else torch.float16


def sync(unet: torch.nn.Module, setting: str, *, is_sdxl: bool, device: torch.device) -> str | None:
    """Make the UNet's storage follow the setting. Returns why fp8 is not used when it is asked
    for and the device cannot (None otherwise)."""
    want = wanted(setting, is_sdxl)
    if want and not device_supports_fp8(device):
        restore(unet)
        return (
            f"fp8_storage {setting!r}: {device.type} has no fp8 support (CUDA compute capability 8.9 or newer "
            "is needed); the UNet weights stay as they are"
        )
    if want:
        state: Fp8State | None = getattr(unet, _STATE, None)
        dtype = state.compute_dtype if state is not None else _compute_dtype(unet)
        count = store_fp8(unet, dtype)
        if count:
            log.info("fp8_storage: %d UNet weights stored in fp8 (computed in %s)", count, dtype)
    elif not want and is_fp8(unet):
        count = restore(unet)
        log.warning(
            "fp8_storage off: %d UNet layers upcast back from fp8; reload the checkpoint for its original weights",
            count,
        )
    return None
