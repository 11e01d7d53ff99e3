"""A trainable LoRA network attached to a loaded model with forward hooks.

Targets (the layers kohya's `networks.lora` trains):

* UNet: every `Linear` and 1x1 `Conv2d` inside a `Transformer2DModel` (attention `to_q/to_k/to_v/
  to_out.0`, the feed-forward `ff.net.0.proj` / `ff.net.2`, `proj_in` / `proj_out`), rank
  `rank` / `alpha`. With `conv_rank > 0` (LoCon) also the layers of `ResnetBlock2D`,
  `Downsample2D` and `Upsample2D`: their 3x3 convs with `conv_rank` / `conv_alpha`, their
  `Linear` / 1x1 convs (time embedding projection, shortcut) with `rank` / `alpha`.
* Text encoders: the `Linear` layers of `CLIPAttention` and `CLIPMLP` (`q/k/v/out_proj`,
  `fc1`, `fc2`).

Each target gets a `LoraModule`: `down` (a `Linear` to `rank`, or a conv with the target's kernel,
stride and padding) initialised kaiming-uniform(a=√5) as `nn.Linear` is, and `up` (a `Linear` or
1x1 conv back), initialised to zero, so the attached network starts as the base model. A forward
hook on the target adds `up(down(x)) · alpha / rank · multiplier` to the target's output; the
target itself is never replaced or changed. The LoRA weights are float32 whatever the model's
dtype (under autocast the products run in the autocast dtype); with a `seed` the initial weights
are the same on every run and device.

Module keys are kohya's: `lora_unet_<diffusers path>` for SD 1.x / 2.x and
`lora_unet_<SGM/LDM path>` for SDXL (kohya trains SDXL on its own LDM-named UNet), `lora_te_` for
the only encoder of SD 1.x / 2.x, `lora_te1_` / `lora_te2_` for SDXL's CLIP-L / OpenCLIP-G (the
refiner's only encoder is `lora_te2_`), each followed by the transformers path under
`text_model.`; dots become underscores. `modules.models.lora_keys.KeyMap` resolves them back to the
same layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from modules.models.loader import StableDiffusionModel
from modules.models.lora_keys import unet_ldm_names

__all__ = [
    "LoraModule",
    "LoraNetwork",
    "LoraTarget",
    "find_targets",
]

UNET_BLOCKS = frozenset({"Transformer2DModel"})
UNET_CONV_BLOCKS = frozenset({"ResnetBlock2D", "Downsample2D", "Upsample2D"})
TEXT_BLOCKS = frozenset({"CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP"})
_CLIP_TOWER = ("embeddings.", "encoder.", "final_layer_norm")


@dataclass(frozen=True)
class LoraTarget:
    """A layer a LoRA trains: its kohya key, component (`unet`, `text_encoder`,
    `text_encoder_2`), `named_modules()` name there, the module, and whether it is a 3x3 conv
    (LoCon rank)."""

    key: str
    component: str
    name: str
    module: nn.Module
    is_conv3x3: bool

    @property
    def is_text_encoder(self) -> bool:
        return self.component != "unet"


def _is_target_layer(module: nn.Module) -> bool:
    return type(module) is nn.Linear or type(module) is nn.Conv2d


def _is_1x1(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)


def text_encoder_prefixes(model: StableDiffusionModel) -> list[tuple[str, str]]:
    """(kohya prefix, component) of each text encoder, in `model.text_encoders` order."""
    count = len(model.text_encoders)
    base = model.family.base
    if base == "sdxl" and count >= 2:
        return [("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2")]
    if base == "sdxl-refiner":
        return [("lora_te2_", "text_encoder")]
    return [("lora_te_", "text_encoder")]


def find_targets(
    model: StableDiffusionModel, *, unet: bool = True, text_encoders: bool = True, conv: bool = False
) -> list[LoraTarget]:
    """The layers kohya's LoRA trains on this model (see the module docstring)."""
    targets: list[LoraTarget] = []
    seen: set[int] = set()
    if unet:
        ldm = unet_ldm_names(model.unet) if model.family.is_sdxl else {}
        blocks = UNET_BLOCKS | (UNET_CONV_BLOCKS if conv else frozenset())
        for block_name, block in model.unet.named_modules():
            if type(block).__name__ not in blocks:
                continue
            for child_name, child in block.named_modules():
                if not child_name or not _is_target_layer(child) or id(child) in seen:
                    continue
                name = f"{block_name}.{child_name}"
                path = ldm.get(name, name) if model.family.is_sdxl else name
                is_3x3 = isinstance(child, nn.Conv2d) and not _is_1x1(child)
                if is_3x3 and not conv:
                    continue
                seen.add(id(child))
                targets.append(LoraTarget("lora_unet_" + path.replace(".", "_"), "unet", name, child, is_3x3))
    if text_encoders:
        for encoder, (prefix, component) in zip(model.text_encoders, text_encoder_prefixes(model), strict=False):
            for block_name, block in cast(nn.Module, encoder).named_modules():
                if type(block).__name__ not in TEXT_BLOCKS:
                    continue
                for child_name, child in block.named_modules():
                    if not child_name or type(child) is not nn.Linear or id(child) in seen:
                        continue
                    name = f"{block_name}.{child_name}"
                    path = f"text_model.{name}" if name.startswith(_CLIP_TOWER) else name
                    seen.add(id(child))
                    targets.append(LoraTarget(prefix + path.replace(".", "_"), component, name, child, False))
    return targets


class LoraModule(nn.Module):
    """down/up for one target layer; `forward(x)` is the delta added to the layer's output."""

    def __init__(
        self,
        target: nn.Module,
        rank: int,
        alpha: float,
        *,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        weight = cast(torch.Tensor, target.weight)
        device = weight.device
        self.rank = int(rank)
        self.down: nn.Module
        self.up: nn.Module
        if isinstance(target, nn.Conv2d):
            self.down = nn.Conv2d(
                target.in_channels,
                self.rank,
                target.kernel_size,  # type: ignore[arg-type]
                target.stride,  # type: ignore[arg-type]
                target.padding,  # type: ignore[arg-type]
                target.dilation,  # type: ignore[arg-type]
                bias=False,
                device=device,
                dtype=dtype,
            )
            self.up = nn.Conv2d(self.rank, target.out_channels, 1, bias=False, device=device, dtype=dtype)
        elif isinstance(target, nn.Linear):
            self.down = nn.Linear(target.in_features, self.rank, bias=False, device=device, dtype=dtype)
            self.up = nn.Linear(self.rank, target.out_features, bias=False, device=device, dtype=dtype)
        else:  # pragma: no cover - find_targets only yields Linear / Conv2d
            raise TypeError(f"no LoRA for {type(target).__name__}")
        self.alpha = float(alpha)  # a number, not a tensor: reading it never syncs a device
        self.multiplier = 1.0
        self.reset_parameters(generator)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """down: kaiming-uniform(a=√5) (drawn on the CPU from `generator` when given, so a seed
        gives the same start on every device); up: zero."""
        down = cast(torch.Tensor, self.down.weight)
        with torch.no_grad():
            if generator is None:
                nn.init.kaiming_uniform_(down, a=math.sqrt(5))
            else:
                values = torch.empty(down.shape, dtype=torch.float32)
                nn.init.kaiming_uniform_(values, a=math.sqrt(5), generator=generator)
                down.copy_(values)
        nn.init.zeros_(cast(torch.Tensor, self.up.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = cast(torch.Tensor, self.down.weight)
        if not torch.is_autocast_enabled(x.device.type) and x.dtype != weight.dtype:
            x = x.to(weight.dtype)
        return cast(torch.Tensor, self.up(self.down(x))) * (self.scale * self.multiplier)


class LoraNetwork(nn.Module):
    """The LoRA modules of one model, keyed by kohya key (see the module docstring).

    `attach()` registers the forward hooks (and moves nothing); `detach()` removes them. The
    network keeps references to the target layers but not to the model."""

    def __init__(
        self,
        model: StableDiffusionModel,
        *,
        rank: int = 4,
        alpha: float = 1.0,
        conv_rank: int = 0,
        conv_alpha: float = 1.0,
        train_unet: bool = True,
        train_text_encoder: bool = True,
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"network rank must be positive, got {rank}")
        if not (train_unet or train_text_encoder):
            raise ValueError("a LoRA needs the UNet or the text encoders (or both) to train")
        self.rank, self.alpha = int(rank), float(alpha)
        self.conv_rank, self.conv_alpha = int(conv_rank), float(conv_alpha)
        self.train_unet, self.train_text_encoder = train_unet, train_text_encoder
        self.targets: dict[str, LoraTarget] = {}
        self.loras = nn.ModuleDict()
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for target in find_targets(model, unet=train_unet, text_encoders=train_text_encoder, conv=self.conv_rank > 0):
            rank_, alpha_ = (self.conv_rank, self.conv_alpha) if target.is_conv3x3 else (self.rank, self.alpha)
            self.targets[target.key] = target
            self.loras[target.key] = LoraModule(target.module, rank_, alpha_, dtype=dtype, generator=generator)
        if not self.targets:
            raise ValueError("no layer of this model can take a LoRA")
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- parts -------------------------------------------------------------------------------

    def modules_of(self, *, text_encoder: bool) -> Iterator[tuple[str, LoraModule]]:
        for key, target in self.targets.items():
            if target.is_text_encoder == text_encoder:
                yield key, cast(LoraModule, self.loras[key])

    def unet_parameters(self) -> list[nn.Parameter]:
        return [p for _, m in self.modules_of(text_encoder=False) for p in m.parameters()]

    def text_encoder_parameters(self) -> list[nn.Parameter]:
        return [p for _, m in self.modules_of(text_encoder=True) for p in m.parameters()]

    def set_multiplier(self, multiplier: float) -> None:
        for module in self.loras.values():
            cast(LoraModule, module).multiplier = float(multiplier)

    # -- hooks -------------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> None:
        if self._handles:
            return
        for key, target in self.targets.items():
            self._handles.append(target.module.register_forward_hook(_hook(cast(LoraModule, self.loras[key]))))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextmanager
    def applied(self) -> Iterator[LoraNetwork]:
        self.attach()
        try:
            yield self
        finally:
            self.detach()

    # -- weights -----------------------------------------------------------------------------

    def kohya_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """`<key>.lora_down.weight`, `<key>.lora_up.weight`, `<key>.alpha` for every module,
        detached, on the CPU, in `dtype` (default: the weights' own); alpha as a 0-d tensor."""
        out: dict[str, torch.Tensor] = {}
        for key in self.targets:
            module = cast(LoraModule, self.loras[key])
            down = cast(torch.Tensor, module.down.weight).detach()
            up = cast(torch.Tensor, module.up.weight).detach()
            alpha = torch.tensor(module.alpha)
            target_dtype = dtype or down.dtype
            out[f"{key}.lora_down.weight"] = down.to("cpu", target_dtype).contiguous()
            out[f"{key}.lora_up.weight"] = up.to("cpu", target_dtype).contiguous()
            out[f"{key}.alpha"] = alpha.to("cpu", target_dtype).contiguous()
        return out

    def load_kohya_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Put the weights of a `kohya_state_dict` (e.g. a resume state) back, strictly."""
        expected = set(self.kohya_state_dict())
        missing, extra = expected - set(tensors), set(tensors) - expected
        if missing or extra:
            raise ValueError(
                f"LoRA weights do not fit this network: {len(missing)} missing (e.g. {sorted(missing)[:2]}), "
                f"{len(extra)} unexpected (e.g. {sorted(extra)[:2]})"
            )
        with torch.no_grad():
            for key in self.targets:
                module = cast(LoraModule, self.loras[key])
                for suffix, tensor in (
                    ("lora_down.weight", cast(torch.Tensor, module.down.weight)),
                    ("lora_up.weight", cast(torch.Tensor, module.up.weight)),
                ):
                    source = tensors[f"{key}.{suffix}"]
                    if source.shape != tensor.shape:
                        raise ValueError(f"{key}.{suffix}: shape {tuple(source.shape)}, expected {tuple(tensor.shape)}")
                    tensor.copy_(source.to(tensor))
                module.alpha = float(tensors[f"{key}.alpha"])


def _hook(lora: LoraModule) -> Any:
    def add_delta(_module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        delta = lora(args[0])
        return output + delta.to(output.dtype)

    return add_delta
