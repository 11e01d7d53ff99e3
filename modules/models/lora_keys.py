"""Which layer of a loaded model a network file's module key names.

The lookup is built forward from the model's own `named_modules()`: every layer with a weight gets
the names files use for it, and a file key is looked up as written (after taking off its prefix).
Underscores are never parsed back into dots (`to_q`, `self_attn`, `text_model` contain them).

Names a layer answers to:

* UNet (`unet.*`): kohya `lora_unet_<diffusers path, . -> _>` (SD 1.x/2.x); kohya SDXL
  `lora_unet_<SGM/LDM path, . -> _>` (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`), which
  A1111 also accepts for SD 1.x; diffusers/PEFT `unet.<path>` or the bare `<path>`
  (`base_model.model.` in front allowed), the old attention-processor form
  (`attn1.processor.to_q_lora`), and `diffusion_model.<LDM path>`. The LDM names come from the
  UNet's own block structure (resnets, attentions, down/upsamplers per block), not SD1 constants.
* Text encoders (transformers names as files write them, `text_model.encoder.layers.0.self_attn.q_proj`,
  also where transformers 5's `CLIPTextModel` has no `text_model.` level any more):
  SD 1.x/2.x `lora_te_` (and `lora_te1_`, which A1111 also takes) and `text_encoder.`;
  SDXL `lora_te1_` / `text_encoder.` = CLIP-L (`text_encoder.*`), `lora_te2_` / `text_encoder_2.` =
  OpenCLIP-bigG (`text_encoder_2.*`); the SDXL refiner's only encoder is bigG, so `lora_te2_` /
  `text_encoder_2.` name it.

The per-component tables are built once per module object and cached (weakly keyed).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

if TYPE_CHECKING:
    from modules.models.loader import StableDiffusionModel

UNET = "unet"

_RESNET_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP_LDM = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_PEFT_WRAPPER = "base_model.model."
# transformers 5's `CLIPTextModel` holds the tower's layers at the top (`encoder.layers.0...`);
# files name them as older versions did, under `text_model.` (`...WithProjection` still has it).
_CLIP_TOWER = ("embeddings.", "encoder.", "final_layer_norm")
_PROCESSOR_LAYER = re.compile(r"^(to_q|to_k|to_v|to_out)_lora$")


@dataclass(frozen=True)
class Target:
    """A layer of the model: `component` is the namespace prefix of its parameters (`unet`,
    `text_encoder`, `text_encoder_2`), `name` its `named_modules()` name there."""

    component: str
    name: str
    module: torch.nn.Module

    @property
    def is_text_encoder(self) -> bool:
        return self.component != UNET

    @property
    def weight(self) -> torch.nn.Parameter:
        return cast(torch.nn.Parameter, self.module.weight)

    def param_name(self, attr: str = "weight") -> str:
        return f"{self.component}.{self.name}.{attr}"


class ComponentKeys:
    """The names of one component's weighted layers: `underscored` (kohya, after the prefix) and
    `dotted` (diffusers/PEFT), each alias -> module name; `ldm` for the UNet's LDM names."""

    def __init__(self, module: torch.nn.Module, ldm: bool) -> None:
        self.modules: dict[str, torch.nn.Module] = {}
        self.underscored: dict[str, str] = {}
        self.dotted: dict[str, str] = {}
        self.ldm_dotted: dict[str, str] = {}
        ldm_names = unet_ldm_names(module) if ldm else {}
        for name, layer in module.named_modules():
            if not isinstance(getattr(layer, "weight", None), torch.nn.Parameter):
                continue
            self.modules[name] = layer
            aliases = [name]
            if not ldm and name.startswith(_CLIP_TOWER):
                aliases.insert(0, f"text_model.{name}")
            for alias in aliases:
                self.underscored.setdefault(alias.replace(".", "_"), name)
                self.dotted.setdefault(alias, name)
            ldm_name = ldm_names.get(name)
            if ldm_name is not None:
                self.underscored.setdefault(ldm_name.replace(".", "_"), name)
                self.ldm_dotted[ldm_name] = name


_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, ComponentKeys] = weakref.WeakKeyDictionary()


def component_keys(module: torch.nn.Module, ldm: bool = False) -> ComponentKeys:
    """The (cached) name tables of one component."""
    keys = _CACHE.get(module)
    if keys is None:
        keys = _CACHE[module] = ComponentKeys(module, ldm)
    return keys


def unet_ldm_names(unet: torch.nn.Module) -> dict[str, str]:
    """diffusers UNet module name -> the LDM/SGM (`openaimodel.UNetModel`) name of the same
    layer, for every layer with a weight, derived from the UNet's own blocks."""
    blocks: dict[str, str] = {}  # diffusers block prefix -> LDM prefix
    resnet_blocks: set[str] = set()
    index = 1
    for i, block in enumerate(getattr(unet, "down_blocks", ())):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            blocks[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{index}.0"
            resnet_blocks.add(f"down_blocks.{i}.resnets.{j}")
            if attentions is not None and j < len(attentions):
                blocks[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{index}.1"
            index += 1
        if getattr(block, "downsamplers", None):
            blocks[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        for j in range(len(mid.resnets)):
            blocks[f"mid_block.resnets.{j}"] = f"middle_block.{2 * j}"
            resnet_blocks.add(f"mid_block.resnets.{j}")
        for j in range(len(getattr(mid, "attentions", ()) or ())):
            blocks[f"mid_block.attentions.{j}"] = f"middle_block.{2 * j + 1}"
    index = 0
    for i, block in enumerate(getattr(unet, "up_blocks", ())):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            blocks[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{index}.0"
            resnet_blocks.add(f"up_blocks.{i}.resnets.{j}")
            if attentions is not None and j < len(attentions):
                blocks[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{index}.1"
            index += 1
        if getattr(block, "upsamplers", None):
            slot = 2 if attentions is not None else 1
            blocks[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{index - 1}.{slot}.conv"
    blocks.update(_UNET_TOP_LDM)

    out: dict[str, str] = {}
    for name, layer in unet.named_modules():
        if not isinstance(getattr(layer, "weight", None), torch.nn.Parameter):
            continue
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            ldm = blocks.get(prefix)
            if ldm is None:
                continue
            rest = parts[cut:]
            if prefix in resnet_blocks and rest:
                rest = [_RESNET_LDM.get(rest[0], rest[0]), *rest[1:]]
            out[name] = ".".join([ldm, *rest])
            break
    return out


class KeyMap:
    """File module key -> `Target` for one loaded model."""

    def __init__(self, model: StableDiffusionModel) -> None:
        self.unet = component_keys(model.unet, ldm=True)
        encoders = [(f"text_encoder_{i + 1}" if i else "text_encoder", e) for i, e in enumerate(model.text_encoders)]
        self.encoders: dict[str, tuple[str, ComponentKeys]] = {}
        base = model.family.base
        if base == "sdxl" and len(encoders) >= 2:
            kohya = {"lora_te1_": encoders[0], "lora_te2_": encoders[1]}
            dotted = {"text_encoder": encoders[0], "text_encoder_2": encoders[1]}
        elif base == "sdxl-refiner" and encoders:
            kohya = {"lora_te2_": encoders[0]}
            dotted = {"text_encoder_2": encoders[0]}
        elif encoders:
            kohya = {"lora_te_": encoders[0], "lora_te1_": encoders[0]}
            dotted = {"text_encoder": encoders[0]}
        else:  # pragma: no cover - every family has a text encoder
            kohya, dotted = {}, {}
        self._kohya_te = {p: (ns, component_keys(e)) for p, (ns, e) in kohya.items()}
        self._dotted_te = {p: (ns, component_keys(e)) for p, (ns, e) in dotted.items()}
        self._bare_te = (encoders[0][0], component_keys(encoders[0][1])) if encoders else None

    def lookup(self, key: str) -> Target | None:
        """The layer a module key names, or None."""
        if key.startswith("lora_unet_"):
            return self._target(UNET, self.unet, self.unet.underscored.get(key[len("lora_unet_") :]))
        for prefix, (component, keys) in self._kohya_te.items():
            if key.startswith(prefix):
                return self._target(component, keys, keys.underscored.get(key[len(prefix) :]))
        if key.startswith(("lora_", "lycoris_", "oft_")):
            return None
        return self._lookup_dotted(key.removeprefix(_PEFT_WRAPPER))

    def _lookup_dotted(self, key: str) -> Target | None:
        head, _, rest = key.partition(".")
        if head in self._dotted_te:
            component, keys = self._dotted_te[head]
            return self._target(component, keys, keys.dotted.get(rest))
        if head == UNET:
            return self._target(UNET, self.unet, self.unet.dotted.get(_processor_layer(rest)))
        for ldm_prefix in ("model.diffusion_model.", "diffusion_model."):
            if key.startswith(ldm_prefix):
                return self._target(UNET, self.unet, self.unet.ldm_dotted.get(key[len(ldm_prefix) :]))
        if head == "text_model" and self._bare_te is not None:
            component, keys = self._bare_te
            return self._target(component, keys, keys.dotted.get(key))
        return self._target(UNET, self.unet, self.unet.dotted.get(_processor_layer(key)))

    @staticmethod
    def _target(component: str, keys: ComponentKeys, name: str | None) -> Target | None:
        if name is None:
            return None
        return Target(component, name, keys.modules[name])


def _processor_layer(path: str) -> str:
    """`...attn1.processor.to_q_lora` -> `...attn1.to_q` (`to_out_lora` -> `to_out.0`)."""
    if ".processor." not in path:
        return path
    block, _, layer = path.rpartition(".processor.")
    match = _PROCESSOR_LAYER.match(layer)
    if match is None:
        return path
    name = match.group(1)
    return f"{block}.{'to_out.0' if name == 'to_out' else name}"


_SDXL_ONLY = re.compile(
    r"^(lora_te2_|text_encoder_2\.)"  # a second text encoder
    r"|(label_emb|add_embedding)"  # SDXL's size/crop conditioning
    r"|transformer_blocks[._][1-9]"  # more than one transformer layer per block
)


def is_sdxl_network(module_keys: Iterable[str]) -> bool:
    """Whether a network's keys name layers only SDXL has (a second text encoder, the
    size/crop embedding, several transformer layers per block)."""
    return any(_SDXL_ONLY.search(k) for k in module_keys)
