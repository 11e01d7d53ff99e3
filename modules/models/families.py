"""Which model family a single-file checkpoint is, from its tensor names and shapes alone.

Detection never needs the tensor data: a safetensors header (or a loaded state dict's shapes) is
enough, so it is cheap and imports no torch. Each `FamilyRule` names the marker keys it needs and
the UNet input channels it accepts; the first rule that matches wins. An unknown file is an
`UnknownModelError` that names the file and says what was found in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from modules.core.errors import UnknownModelError

Shapes = Mapping[str, Sequence[int]]
Base = Literal["sd1", "sd2", "sdxl", "sdxl-refiner"]
Variant = Literal["normal", "inpaint", "ip2p"]

UNET_PREFIX = "model.diffusion_model."
UNET_INPUT_CONV = UNET_PREFIX + "input_blocks.0.0.weight"
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."


@dataclass(frozen=True)
class ModelFamily:
    """A kind of checkpoint: its base architecture and its UNet variant."""

    id: str
    label: str
    base: Base
    variant: Variant
    unet_in_channels: int

    @property
    def is_sdxl(self) -> bool:
        return self.base in ("sdxl", "sdxl-refiner")

    @property
    def vae_scaling_factor(self) -> float:
        return 0.13025 if self.is_sdxl else 0.18215


@dataclass(frozen=True)
class FamilyRule:
    """Matches when every marker key is present and the UNet input conv has `in_channels`."""

    family: ModelFamily
    markers: tuple[str, ...]

    def matches(self, shapes: Shapes, in_channels: int) -> bool:
        return in_channels == self.family.unet_in_channels and all(m in shapes for m in self.markers)


def _family(id_: str, label: str, base: Base, variant: Variant, channels: int) -> ModelFamily:
    return ModelFamily(id=id_, label=label, base=base, variant=variant, unet_in_channels=channels)


SD1 = _family("sd1", "SD 1.x", "sd1", "normal", 4)
SD1_INPAINT = _family("sd1-inpaint", "SD 1.x inpainting", "sd1", "inpaint", 9)
SD1_IP2P = _family("sd1-ip2p", "SD 1.x instruct-pix2pix", "sd1", "ip2p", 8)
SD2 = _family("sd2", "SD 2.x", "sd2", "normal", 4)
SD2_INPAINT = _family("sd2-inpaint", "SD 2.x inpainting", "sd2", "inpaint", 9)
SDXL = _family("sdxl", "SDXL base", "sdxl", "normal", 4)
SDXL_INPAINT = _family("sdxl-inpaint", "SDXL inpainting", "sdxl", "inpaint", 9)
SDXL_REFINER = _family("sdxl-refiner", "SDXL refiner", "sdxl-refiner", "normal", 4)

_SDXL_MARKERS = (
    SDXL_CLIP_L_PREFIX + "text_model.final_layer_norm.weight",
    SDXL_OPENCLIP_PREFIX + "ln_final.weight",
    UNET_PREFIX + "label_emb.0.0.weight",
)
_REFINER_MARKERS = (REFINER_OPENCLIP_PREFIX + "ln_final.weight", UNET_PREFIX + "label_emb.0.0.weight")
_SD2_MARKERS = (SD2_OPENCLIP_PREFIX + "ln_final.weight",)
_SD1_MARKERS = (SD1_CLIP_PREFIX + "text_model.final_layer_norm.weight",)
# Some early SD 1.x files were saved with an older transformers that had no `text_model.` level.
_SD1_OLD_MARKERS = (SD1_CLIP_PREFIX + "final_layer_norm.weight",)

RULES: tuple[FamilyRule, ...] = (
    FamilyRule(SDXL, _SDXL_MARKERS),
    FamilyRule(SDXL_INPAINT, _SDXL_MARKERS),
    FamilyRule(SDXL_REFINER, _REFINER_MARKERS),
    FamilyRule(SD2, _SD2_MARKERS),
    FamilyRule(SD2_INPAINT, _SD2_MARKERS),
    FamilyRule(SD1, _SD1_MARKERS),
    FamilyRule(SD1_INPAINT, _SD1_MARKERS),
    FamilyRule(SD1_IP2P, _SD1_MARKERS),
    FamilyRule(SD1, _SD1_OLD_MARKERS),
    FamilyRule(SD1_INPAINT, _SD1_OLD_MARKERS),
    FamilyRule(SD1_IP2P, _SD1_OLD_MARKERS),
)

FAMILIES: dict[str, ModelFamily] = {rule.family.id: rule.family for rule in RULES}


def detect_family(shapes: Shapes, source: str | Path = "<state dict>") -> ModelFamily:
    """The family of a single-file SD checkpoint, or `UnknownModelError` saying what the file holds."""
    conv = shapes.get(UNET_INPUT_CONV)
    if conv is None or len(conv) != 4:
        raise UnknownModelError(f"{source}: not a Stable Diffusion checkpoint ({describe_contents(shapes)})")
    in_channels = int(conv[1])
    for rule in RULES:
        if rule.matches(shapes, in_channels):
            return rule.family
    raise UnknownModelError(
        f"{source}: unsupported checkpoint: UNet with {in_channels} input channels and "
        f"{describe_contents(shapes)}; supported: {', '.join(f.label for f in FAMILIES.values())}"
    )


def describe_contents(shapes: Shapes) -> str:
    """A short human description of what a state dict holds, for error messages."""
    if not shapes:
        return "no tensors"
    keys = list(shapes)
    guess = _guess_other_kind(keys)
    prefixes: dict[str, int] = {}
    for key in keys:
        head = ".".join(key.split(".")[:2]) if key.count(".") >= 2 else key.split(".")[0]
        prefixes[head] = prefixes.get(head, 0) + 1
    top = sorted(prefixes.items(), key=lambda kv: -kv[1])[:5]
    listing = ", ".join(f"{name}.* ({count})" for name, count in top)
    found = f"{len(keys)} tensors: {listing}"
    return f"looks like {guess}; {found}" if guess else found


def _guess_other_kind(keys: Sequence[str]) -> str | None:
    if any(k.startswith(("lora_unet_", "lora_te", "lora_te1_", "lora_te2_")) for k in keys) or any(
        ".lora_down." in k or ".lora_A." in k for k in keys
    ):
        return "a LoRA (put it in models/Lora)"
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
        return "a VAE (put it in models/VAE)"
    if "string_to_param" in keys or "emb_params" in keys or {"clip_l", "clip_g"} <= set(keys):
        return "a textual-inversion embedding (put it in embeddings/)"
    if any(k.startswith(("params_ema", "params", "body.", "model.0.")) for k in keys[:50]):
        return "an upscaler (put it in models/ESRGAN or models/RealESRGAN)"
    if any(k.startswith(("double_blocks.", "joint_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        return "a FLUX/SD3-class model, which is not supported"
    return None
