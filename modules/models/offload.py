"""Memory modes: `--medvram`, `--medvram-sdxl` and `--lowvram` (A1111's low-VRAM setup).

A model under a memory mode lives on the CPU and borrows the GPU one part at a time. Its parts are
split into *groups*; a forward pre-hook on a group's trigger modules moves that group to the
execution device just before it runs, after moving the group that was there back to the CPU. So
at most one group is on the device at any moment, whatever order the engine calls the parts in:

- medvram: three groups, each component whole: the text encoders, the UNet, the VAE (encoder,
  decoder and their quant convs). A generation runs text -> UNet -> VAE, so each stage holds
  the device alone.
- lowvram: the text encoders and the VAE as in medvram, but the UNet is split at block
  granularity: every resnet, transformer and down/upsampler of its down, mid and up blocks is
  its own group, moved in as the forward reaches it. The UNet's small outer layers (conv_in,
  time and class embeddings, the output norm and conv) stay on the device for as long as the
  mode is installed.

`--medvram-sdxl` is medvram for SDXL models and the normal mode for others (`DevicePolicy`). On a
CPU there is nothing to offload: the modes do nothing there (the policy says so).

The device moves go through one function (`Move`), so tests on a CPU-only machine observe which
group is where at each stage (a recording `Move` with the model computing on the CPU:
`execution_device`). An installed offloader is the model's `offloader`; `Offloader.events` keeps the
latest moves and `Offloader.moves` counts them all.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from modules.models.loader import StableDiffusionModel

log = logging.getLogger(__name__)

OffloadMode = Literal["medvram", "lowvram"]
Move = Callable[[torch.nn.Module, torch.device], None]

TEXT, UNET, VAE = "text", "unet", "vae"
UNET_BLOCK_LISTS = ("down_blocks", "up_blocks")
"""The UNet's block lists; each block's sub-layer lists are split into groups under lowvram."""
BLOCK_PARTS = ("resnets", "attentions", "downsamplers", "upsamplers")
EVENTS_KEPT = 1024
"""Moves `Offloader.events` remembers (a lowvram step makes about two per UNet block): bounded, as a
model may stay placed for the life of the server."""


def move_module(module: torch.nn.Module, device: torch.device) -> None:
    """The real move: parameters and buffers to `device`, in place."""
    module.to(device=device)


@dataclass
class Group:
    """Modules that move together, and the modules whose forward brings them in."""

    name: str
    modules: list[torch.nn.Module]
    triggers: list[torch.nn.Module]


@dataclass(frozen=True)
class MoveEvent:
    group: str
    device: torch.device


@dataclass
class Offloader:
    """The hooks of one model under a memory mode. `install` puts every group on the CPU (and,
    under lowvram, the UNet's outer layers on `device`) and registers the hooks; `uninstall`
    removes them and puts everything back on the CPU."""

    model: StableDiffusionModel
    device: torch.device
    mode: OffloadMode
    move: Move = move_module
    execution_device: torch.device | None = None  # where inputs go; `device` unless a test says otherwise
    events: deque[MoveEvent] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))  # the latest group moves
    moves: int = 0  # group moves since install
    groups: list[Group] = field(default_factory=list)
    resident: Group | None = None
    _handles: list[Any] = field(default_factory=list)

    def install(self) -> None:
        self.groups = list(_groups(self.model, self.mode))
        cpu = torch.device("cpu")
        for group in self.groups:
            self._move(group, cpu)
        if self.mode == "lowvram":
            for module in _unet_outer_layers(self.model.unet):
                self.move(module, self.device)
        for group in self.groups:
            for trigger in group.triggers:
                self._handles.append(trigger.register_forward_pre_hook(self._bring_in(group)))
        self.resident = None
        self.model.offloader = self
        log.info(
            "%s: %d parts take turns on %s (%s)",
            self.mode,
            len(self.groups),
            self.device,
            ", ".join(sorted({g.name.split(".")[0] for g in self.groups})),
        )

    def uninstall(self) -> None:
        """Remove the hooks and put every part on the CPU (the resident group, and under lowvram
        the UNet's outer layers)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        cpu = torch.device("cpu")
        if self.resident is not None:
            self._move(self.resident, cpu)
        if self.mode == "lowvram":
            for module in _unet_outer_layers(self.model.unet):
                self.move(module, cpu)
        self.groups = []
        self.resident = None
        self.model.offloader = None

    def _bring_in(self, group: Group) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _args: Any) -> None:
            self._bring(group)

        return hook

    def _bring(self, group: Group) -> None:
        if self.resident is group:
            return
        if self.resident is not None:
            self._move(self.resident, torch.device("cpu"))
        self._move(group, self.device)
        self.resident = group

    def _move(self, group: Group, device: torch.device) -> None:
        for module in group.modules:
            self.move(module, device)
        self.events.append(MoveEvent(group.name, device))
        self.moves += 1


def _vae_group(model: StableDiffusionModel) -> Group:
    vae = model.vae
    parts: list[torch.nn.Module] = [
        m for m in (vae.encoder, vae.decoder, vae.quant_conv, vae.post_quant_conv) if m is not None
    ]
    return Group(VAE, [vae], parts)


def _text_group(model: StableDiffusionModel) -> Group:
    encoders = list(model.text_encoders)
    return Group(TEXT, list(encoders), list(encoders))


def _unet_block_parts(unet: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """The UNet's block-level parts, named `unet.<path>`: every element of the down/up blocks'
    resnets, attentions, down/upsamplers, and the mid block's resnets and attentions."""
    for list_name in UNET_BLOCK_LISTS:
        for b, block in enumerate(getattr(unet, list_name)):
            for part in BLOCK_PARTS:
                layers = getattr(block, part, None)
                for i, layer in enumerate(layers or ()):
                    yield f"unet.{list_name}.{b}.{part}.{i}", layer
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        for part in ("resnets", "attentions"):
            for i, layer in enumerate(getattr(mid, part, None) or ()):
                yield f"unet.mid_block.{part}.{i}", layer


def _unet_outer_layers(unet: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Every part of the UNet outside the block-level groups: its top-level layers other than
    the block lists (conv_in, the time/class/added embeddings, the output norm and conv), whole,
    and any parameter-holding leaf inside a block that no group covers. These stay on the
    device under lowvram."""
    blocks = {*UNET_BLOCK_LISTS, "mid_block"}
    for name, child in unet.named_children():
        if name not in blocks:
            yield child
    in_groups = {id(m) for _, part in _unet_block_parts(unet) for m in part.modules()}
    for name in blocks:
        container = getattr(unet, name, None)
        if container is None:
            continue
        for module in container.modules():
            if id(module) in in_groups or any(True for _ in module.children()):
                continue
            if any(True for _ in module.parameters(recurse=False)):
                yield module


def _groups(model: StableDiffusionModel, mode: OffloadMode) -> Iterator[Group]:
    yield _text_group(model)
    if mode == "medvram":
        yield Group(UNET, [model.unet], [model.unet])
    else:
        for name, layer in _unet_block_parts(model.unet):
            yield Group(name, [layer], [layer])
    yield _vae_group(model)


def offload_mode_for(memory_mode: str, is_sdxl: bool, device: torch.device) -> OffloadMode | None:
    """The offload a model gets: None on a CPU or in the normal mode; `--medvram-sdxl` only for
    SDXL models."""
    if device.type == "cpu":
        return None
    if memory_mode == "lowvram":
        return "lowvram"
    if memory_mode == "medvram" or (memory_mode == "medvram-sdxl" and is_sdxl):
        return "medvram"
    return None
