"""A1111's `modules.devices` for extension code (a facade: internal packages never import it): the
device and precisions the running app uses (from its flags), and A1111's small helpers.

`device`, `dtype`, `dtype_vae`, `dtype_unet` follow the running app's `--use-cpu`, `--device-id`,
`--no-half`, `--no-half-vae`, `--precision`; before an app is set up they are the defaults.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import torch

from modules.core.settings import Settings
from modules.extensions import runtime
from modules.models.devices import DevicePolicy, policy_from_settings

cpu = torch.device("cpu")
fp8 = False
unet_needs_upcast = False
_cache: list[tuple[Settings, DevicePolicy]] = []


def _policy() -> DevicePolicy:
    env = runtime.maybe_environment()
    settings = env.settings if env is not None else Settings()
    if _cache and _cache[0][0] is settings:
        return _cache[0][1]
    policy = policy_from_settings(settings)
    _cache[:] = [(settings, policy)]
    return policy


def get_optimal_device() -> torch.device:
    return _policy().placement.device


def get_optimal_device_name() -> str:
    return str(get_optimal_device())


def get_device_for(task: str) -> torch.device:
    env = runtime.maybe_environment()
    if env is not None and env.settings.cpu_for(task):
        return cpu
    return get_optimal_device()


def has_mps() -> bool:
    return get_optimal_device().type == "mps"


def torch_gc() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()


def torch_npu_set_device() -> None:
    """No NPU support here."""


def enable_tf32() -> None:
    """TF32 matmuls are the engine's choice here."""


def cond_cast_unet(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(_policy().placement.dtype)


def cond_cast_float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float()


def autocast(disable: bool = False) -> Any:
    """A1111 runs fp16 models under autocast; a no-op when disabled or in fp32."""
    policy = _policy()
    if disable or policy.placement.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(policy.placement.device.type, dtype=policy.placement.dtype)


@contextlib.contextmanager
def without_autocast(disable: bool = False) -> Iterator[None]:
    if disable or not torch.is_autocast_enabled():
        yield
        return
    with torch.autocast(get_optimal_device().type, enabled=False):
        yield


def first_time_calculation() -> None:
    """A1111 warms up cuDNN here; nothing to do."""


def test_for_nans(x: torch.Tensor, where: str) -> None:
    if torch.isnan(x).all():
        raise NansException(f"A tensor with all NaNs was produced in {where}.")


class NansException(Exception):
    pass


def __getattr__(name: str) -> Any:
    """The values that follow the running app's flags."""
    if name in ("device", "device_interrogate", "device_gfpgan", "device_esrgan", "device_codeformer"):
        return get_optimal_device()
    if name in ("dtype", "dtype_unet", "dtype_inference"):
        return _policy().placement.dtype
    if name == "dtype_vae":
        return _policy().placement.vae_dtype
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
