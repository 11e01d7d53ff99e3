"""GPU fast paths that the command-line flags switch on, applied to a loaded model and around the
model calls of a job.

- `--opt-sdp-no-mem-attention`: PyTorch SDPA with its memory-efficient kernel disabled (flash and
  math kernels only, as A1111 does), through `torch.nn.attention.sdpa_kernel` around a job's UNet
  and VAE calls on CUDA. On other devices SDPA picks its CPU kernel anyway: the start-up log says
  that the flag changes nothing there.
- `--xformers` / `--force-enable-xformers`: diffusers' xformers attention processors on the UNet
  and VAE when the `xformers` package imports; else the start-up log says "xformers is not
  installed: using SDPA".
- `--opt-channelslast`: the UNet's and VAE's 4-D weights in `torch.channels_last` (convolutions
  then run NHWC, faster on tensor cores; the numbers are the same).

`prepare_model` is idempotent (a model from the RAM cache is already prepared) and `.to(device)`
keeps the memory format, so a model prepared once stays so. The model cache parks a CUDA model's
weights in pinned (page-locked) RAM (`park_model`) and moves them back with non-blocking copies and
one synchronisation (`move_model`); on other devices both are plain moves.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from modules.core.settings import Settings

log = logging.getLogger(__name__)

XFORMERS_MISSING = "xformers is not installed: using SDPA"
_PREPARED = "_sdwebui_fast_paths"  # attribute set on a prepared module: the FastPaths it was prepared for


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


@dataclass(frozen=True)
class FastPaths:
    """What the flags ask of the model and of its calls on `device`."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sdp_no_mem: bool = False  # --opt-sdp-no-mem-attention (acts on CUDA only)
    xformers: bool = False  # --xformers and the package is importable
    channels_last: bool = False  # --opt-channelslast
    torch_compile: bool = False  # --torch-compile: the torch_compile and torch_compile_vae options forced on

    @property
    def attention(self) -> str:
        return "xformers" if self.xformers else "sdp"

    def start_up_notes(self) -> list[str]:
        """What the log says at start-up about flags that cannot act here."""
        notes = []
        if self.sdp_no_mem and self.device.type != "cuda":
            notes.append(
                f"--opt-sdp-no-mem-attention: SDPA kernels are only chosen on CUDA; on {self.device.type} "
                "the flag changes nothing"
            )
        return notes


def fast_paths_from_settings(settings: Settings, device: torch.device) -> FastPaths:
    """The fast paths the flags ask for on `device`; logs what cannot act."""
    xformers = False
    if settings.xformers or settings.force_enable_xformers:
        if xformers_available():
            xformers = True
            log.info("attention: xformers")
        else:
            log.warning(XFORMERS_MISSING)
    paths = FastPaths(
        device=device,
        sdp_no_mem=bool(settings.opt_sdp_no_mem_attention) and not xformers,
        xformers=xformers,
        channels_last=bool(settings.opt_channelslast),
        torch_compile=settings.torch_compile,
    )
    for note in paths.start_up_notes():
        log.warning(note)
    return paths


def sdpa_backends(paths: FastPaths) -> list[Any] | None:
    """The SDPA kernels a job may use, or None for PyTorch's own choice."""
    if not paths.sdp_no_mem or paths.device.type != "cuda":
        return None
    from torch.nn.attention import SDPBackend

    return [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]


@contextlib.contextmanager
def attention_context(paths: FastPaths | None) -> Iterator[None]:
    """Around a job's model calls: restricts SDPA's kernels as the flags ask (CUDA only)."""
    backends = sdpa_backends(paths) if paths is not None else None
    if backends is None:
        yield
        return
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backends):
        yield


def _to_channels_last(module: torch.nn.Module) -> None:
    module.to(memory_format=torch.channels_last)  # only 4-D parameters and buffers change


def _use_xformers(module: Any) -> None:
    from diffusers.models.attention_processor import XFormersAttnProcessor

    if hasattr(module, "set_attn_processor") and getattr(module, "attn_processors", None):
        module.set_attn_processor(XFormersAttnProcessor())


def prepare_model(model: Any, paths: FastPaths | None) -> bool:
    """Apply the model-side fast paths to `model`'s UNet and VAE (a `StableDiffusionModel`); True
    when something changed. Nothing is done twice for the same `paths`."""
    if paths is None or not (paths.channels_last or paths.xformers):
        return False
    changed = False
    for module in (model.unet, model.vae):
        if getattr(module, _PREPARED, None) == paths:
            continue
        if paths.channels_last:
            _to_channels_last(module)
        if paths.xformers:
            _use_xformers(module)
        object.__setattr__(module, _PREPARED, paths)  # a plain attribute, not a submodule or buffer
        changed = True
    return changed


def is_channels_last(module: torch.nn.Module) -> bool:
    """Every 4-D weight of `module` is channels_last (and there is at least one)."""
    weights = [p for p in module.parameters() if p.ndim == 4]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def transfer_kwargs(device: torch.device) -> dict[str, Any]:
    """How a host -> device move copies: non-blocking on CUDA (truly asynchronous from pinned
    memory), plain elsewhere."""
    return {"non_blocking": True} if device.type == "cuda" else {}


def pins_when_parked(device: torch.device) -> bool:
    """Whether weights parked in RAM for a model that runs on `device` are kept page-locked."""
    return device.type == "cuda" and torch.cuda.is_available()


def pin_for(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` in pinned host memory when it is to move to a CUDA device, else as it is."""
    if not pins_when_parked(device) or tensor.device.type != "cpu" or tensor.is_pinned():
        return tensor
    return tensor.pin_memory()


def pin_module(module: torch.nn.Module, device: torch.device) -> int:
    """Put `module`'s CPU tensors in pinned memory when it will move back to `device` (CUDA);
    the number of tensors pinned (0 elsewhere)."""
    if not pins_when_parked(device):
        return 0
    count = 0
    for owner in module.modules():
        for param in owner.parameters(recurse=False):
            pinned = pin_for(param.data, device)
            if pinned is not param.data:
                param.data = pinned
                count += 1
        for name, buf in list(owner.named_buffers(recurse=False)):
            if buf is not None and (pinned := pin_for(buf, device)) is not buf:
                owner._buffers[name] = pinned
                count += 1
    return count


def move_module(module: torch.nn.Module, device: torch.device) -> None:
    """`module.to(device)`, non-blocking for CUDA (the caller synchronises once for all modules)."""
    module.to(device=device, **transfer_kwargs(device))


def move_model(model: Any, device: torch.device) -> None:
    """Move a `StableDiffusionModel` to `device`: to CUDA with non-blocking copies from its pinned
    RAM-cache weights and one synchronisation at the end (so the weights are in place when this
    returns); elsewhere `model.to_device`."""
    if device.type != "cuda":
        model.to_device(device)
        return
    for module in (model.unet, model.vae, *model.text_encoders):
        move_module(module, device)
    if model.baked_vae is not None:
        model.baked_vae.to(device="cpu")
    torch.cuda.synchronize(device)


def park_model(model: Any, device: torch.device) -> int:
    """After `model` moved to the RAM cache: pin its weights if it runs on CUDA (fast moves back)."""
    return sum(pin_module(module, device) for module in model.modules())
