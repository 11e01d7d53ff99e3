"""Where each weighted layer of a loaded model lives in its single-file checkpoint, from the
file's shapes alone.

`CheckpointLayers(shapes, source)` builds a skeleton `StableDiffusionModel` of the checkpoint on
the meta device (the loader's configs, `architecture`, under accelerate's `init_empty_weights`:
no tensor is read or allocated) and a two-way map between every parameter of its UNet and text
encoders (`LayerParam`: component, module name, `weight` / `bias`) and its place in the file
(`FileSlot`: key, plus the rows of a fused tensor, plus whether it is stored transposed):

* UNet: `model.diffusion_model.<LDM name>.<attr>`, the LDM name from `lora_keys.unet_ldm_names`.
* Text encoders in the HF CLIP layout (SD 1.x `cond_stage_model.transformer.`, SDXL
  `conditioner.embedders.0.transformer.`): the transformers name under the prefix, with or
  without the `text_model.` level as the file has it (transformers 5's `CLIPTextModel` has none).
* OpenCLIP layout (SD 2.x `cond_stage_model.model.`, SDXL `conditioner.embedders.1.model.`, the
  refiner's `conditioner.embedders.0.model.`): `q/k/v_proj` are rows 0..w, w..2w, 2w..3w of
  `transformer.resblocks.N.attn.in_proj_weight` / `in_proj_bias`; `out_proj` -> `attn.out_proj`,
  `fc1` / `fc2` -> `mlp.c_fc` / `mlp.c_proj`, `layer_norm1/2` -> `ln_1/2`, `final_layer_norm` ->
  `ln_final`, the embeddings -> `token_embedding.weight` / `positional_embedding`, and the
  projection -> `text_projection` (stored transposed). SD 2.x's last resblock, which the model
  does not run, is in no layer.

Components are named as `patches.namespace` and `lora_keys.Target` name them (`unet`,
`text_encoder`, `text_encoder_2`), so a `Target` from `lora_keys.KeyMap` on the skeleton finds its
slot directly. A slot is only made when the file holds the key with a shape that fits the
parameter; a LoRA-targetable layer (a UNet Linear/Conv2d, a text encoder's q/k/v/out_proj,
fc1, fc2) without one is a `ModelFileError`, any other parameter without one is logged and listed
in `unmapped`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from modules.core.errors import ModelFileError
from modules.models import families as fam
from modules.models.architecture import Architecture, TextEncoderSpec, architecture
from modules.models.loader import StableDiffusionModel, TextEncoder
from modules.models.lora_keys import UNET, Target, unet_ldm_names

log = logging.getLogger(__name__)

Shapes = Mapping[str, Sequence[int]]

TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
"""The text-encoder layers LoRA trainers target (kohya: CLIPAttention and CLIPMLP's Linears)."""

_FUSED = {"q_proj": 0, "k_proj": 1, "v_proj": 2}
_OPEN_CLIP_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_OPEN_CLIP_PARTS = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


@dataclass(frozen=True)
class LayerParam:
    """A parameter of the skeleton: `component` (`unet`, `text_encoder`, `text_encoder_2`), the
    module's `named_modules()` name there, and `attr` (`weight` or `bias`)."""

    component: str
    name: str
    attr: str = "weight"

    @property
    def param_name(self) -> str:
        """The name in the patch namespace (`patches.namespace`): `unet.<module>.<attr>`."""
        return f"{self.component}.{self.name}.{self.attr}"


@dataclass(frozen=True)
class FileSlot:
    """Where a parameter is stored: `key`, the `rows` of it when fused (OpenCLIP q/k/v), and
    whether it is stored transposed (OpenCLIP's `text_projection`)."""

    key: str
    rows: slice | None = None
    transposed: bool = False

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        """The parameter's part of the file tensor `tensor` (a view: rows of a contiguous
        tensor stay contiguous; a transposed slot's view is not)."""
        if self.rows is not None:
            tensor = tensor[self.rows]
        return tensor.t() if self.transposed else tensor

    def shape_in(self, file_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of `view` for a file tensor of `file_shape`."""
        shape = [int(n) for n in file_shape]
        if self.rows is not None and shape:
            start, stop, _ = self.rows.indices(shape[0])
            shape[0] = max(0, stop - start)
        if self.transposed:
            shape.reverse()
        return tuple(shape)


def build_skeleton(
    shapes: Shapes, source: Path, family: fam.ModelFamily | None = None
) -> tuple[StableDiffusionModel, Architecture]:
    """The checkpoint's model with every parameter on the meta device (nothing read, nothing
    allocated), and the architecture it was built from."""
    family = family or fam.detect_family(shapes, source)
    arch = architecture(shapes, family)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(arch.unet)
        vae = AutoencoderKL.from_config(arch.vae)
        encoders: list[TextEncoder] = []
        for spec in arch.text_encoders:
            cls = CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel
            encoders.append(cls(CLIPTextConfig(**spec.config)))
    for module in (unet, vae, *encoders):
        module.eval()
        module.requires_grad_(False)
    model = StableDiffusionModel(
        family=family,
        prediction_type=str(arch.scheduler["prediction_type"]),
        unet=unet,
        vae=vae,
        text_encoders=tuple(encoders),
        tokenizers=(),
        scheduler_config=arch.scheduler,
        source=source,
    )
    return model, arch


def component_name(index: int) -> str:
    """`text_encoder` for the first encoder, `text_encoder_<n>` for the n-th."""
    return f"text_encoder_{index + 1}" if index else "text_encoder"


def tower_name(name: str) -> str:
    """A text-encoder module name without the `text_model.` level (which transformers 5's
    `CLIPTextModel` no longer has and its `...WithProjection` still has)."""
    return name.removeprefix("text_model.")


def is_lora_target(component: str, name: str, module: torch.nn.Module) -> bool:
    """Whether trainers put LoRAs on this layer: every UNet Linear/Conv2d, a text encoder's
    attention and MLP Linears."""
    if component == UNET:
        return isinstance(module, torch.nn.Linear | torch.nn.Conv2d)
    return isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TE_TARGETS


class CheckpointLayers:
    """The skeleton of one checkpoint and the map between its parameters and the file's keys."""

    def __init__(self, shapes: Shapes, source: Path, family: fam.ModelFamily | None = None) -> None:
        self.source = source
        self.shapes = shapes
        self.model, self.architecture = build_skeleton(shapes, source, family)
        self.family = self.model.family
        self._slots: dict[LayerParam, FileSlot] = {}
        self._by_key: dict[str, list[tuple[LayerParam, FileSlot]]] = {}
        self._modules: dict[str, dict[str, torch.nn.Module]] = {}
        self.unmapped_params: list[LayerParam] = []  # parameters with no place in the file
        self._map_unet()
        specs = self.architecture.text_encoders
        for index, (encoder, spec) in enumerate(zip(self.model.text_encoders, specs, strict=True)):
            self._map_text_encoder(component_name(index), encoder, spec)
        missing = [
            p.param_name
            for p in self.unmapped_params
            if is_lora_target(p.component, p.name, self.module(p.component, p.name))
        ]
        if missing:
            raise ModelFileError(
                f"{source}: {len(missing)} layers have no place in the file (e.g. {missing[:3]}); "
                "the file does not fit the layout its family should have"
            )
        if self.unmapped:
            log.warning("%s: %d parameters not found in the file: %s", source, len(self.unmapped), self.unmapped[:5])

    # -- queries --------------------------------------------------------------------------------

    @property
    def unmapped(self) -> list[str]:
        """Names (namespace form) of the parameters that have no place in the file."""
        return [p.param_name for p in self.unmapped_params]

    def slot(self, component: str, name: str, attr: str = "weight") -> FileSlot | None:
        """The file slot of a parameter, or None."""
        return self._slots.get(LayerParam(component, name, attr))

    def slot_of(self, target: Target, attr: str = "weight") -> FileSlot | None:
        """The file slot of a `lora_keys.Target`'s weight or bias (a target from a `KeyMap` on
        `self.model`)."""
        return self.slot(target.component, target.name, attr)

    def at(self, file_key: str) -> list[tuple[LayerParam, FileSlot]]:
        """The parameters stored in `file_key` (three for a fused OpenCLIP q/k/v tensor)."""
        return list(self._by_key.get(file_key, ()))

    def items(self) -> Iterator[tuple[LayerParam, FileSlot]]:
        """Every mapped parameter with its slot, in the skeleton's module order."""
        return iter(self._slots.items())

    def file_keys(self) -> list[str]:
        return list(self._by_key)

    def module(self, component: str, name: str) -> torch.nn.Module:
        """A skeleton module (meta tensors) by component and name."""
        return self._modules[component][name]

    def components(self) -> dict[str, torch.nn.Module]:
        """The UNet and text encoders of the skeleton by component name."""
        out: dict[str, torch.nn.Module] = {UNET: self.model.unet}
        for index, encoder in enumerate(self.model.text_encoders):
            out[component_name(index)] = encoder
        return out

    def param_shape(self, param: LayerParam) -> tuple[int, ...]:
        tensor = getattr(self.module(param.component, param.name), param.attr)
        return tuple(int(n) for n in tensor.shape)

    # -- building ------------------------------------------------------------------------------

    def _add(self, param: LayerParam, tensor: torch.Tensor, slot: FileSlot | None) -> None:
        shape = tuple(int(n) for n in tensor.shape)
        file_shape = self.shapes.get(slot.key) if slot is not None else None
        if slot is None or file_shape is None or not _fits(slot.shape_in(file_shape), shape):
            self.unmapped_params.append(param)
            return
        self._slots[param] = slot
        self._by_key.setdefault(slot.key, []).append((param, slot))

    def _weighted(self, component: str, module: torch.nn.Module) -> Iterator[tuple[str, str, torch.Tensor]]:
        table = self._modules.setdefault(component, {})
        for name, layer in module.named_modules():
            own = dict(layer.named_parameters(recurse=False))
            if not own:
                continue
            table[name] = layer
            for attr, tensor in own.items():
                yield name, attr, tensor

    def _map_unet(self) -> None:
        ldm = unet_ldm_names(self.model.unet)
        for name, attr, tensor in self._weighted(UNET, self.model.unet):
            ldm_name = ldm.get(name)
            slot = FileSlot(f"{fam.UNET_PREFIX}{ldm_name}.{attr}") if ldm_name is not None else None
            self._add(LayerParam(UNET, name, attr), tensor, slot)

    def _map_text_encoder(self, component: str, encoder: torch.nn.Module, spec: TextEncoderSpec) -> None:
        if spec.layout == "clip":
            has_level = any(k.startswith(spec.prefix + "text_model.") for k in self.shapes)
            level = "text_model." if has_level else ""
            for name, attr, tensor in self._weighted(component, encoder):
                key = f"{spec.prefix}{level}{tower_name(name)}.{attr}"
                self._add(LayerParam(component, name, attr), tensor, FileSlot(key))
            return
        for name, attr, tensor in self._weighted(component, encoder):
            slot = _open_clip_slot(spec.prefix, tower_name(name), attr, int(tensor.shape[0]))
            self._add(LayerParam(component, name, attr), tensor, slot)


def _fits(view_shape: tuple[int, ...], param_shape: tuple[int, ...]) -> bool:
    """A file view fits a parameter when the shapes are equal, or (a 1x1 conv stored as a
    Linear and the like) when the first dimension and the element count are."""
    if view_shape == param_shape:
        return True
    return (
        bool(view_shape)
        and bool(param_shape)
        and view_shape[0] == param_shape[0]
        and math.prod(view_shape) == math.prod(param_shape)
    )


def _open_clip_slot(prefix: str, name: str, attr: str, rows: int) -> FileSlot | None:
    full = f"{name}.{attr}"
    if full in _OPEN_CLIP_TOP:
        return FileSlot(prefix + _OPEN_CLIP_TOP[full])
    if full == "text_projection.weight":
        return FileSlot(prefix + "text_projection", transposed=True)
    match = _OPEN_CLIP_LAYER.match(name)
    if match is None:
        return None
    block = f"{prefix}transformer.resblocks.{match.group(1)}."
    part = match.group(2)
    if part.startswith("self_attn.") and part.removeprefix("self_attn.") in _FUSED:
        index = _FUSED[part.removeprefix("self_attn.")]
        return FileSlot(f"{block}attn.in_proj_{attr}", rows=slice(index * rows, (index + 1) * rows))
    mapped = _OPEN_CLIP_PARTS.get(part)
    if mapped is None:
        return None
    return FileSlot(f"{block}{mapped}.{attr}")
