"""Family detection from tensor names and shapes (no tensor data needed)."""

from __future__ import annotations

import pytest

from modules.core.errors import UnknownModelError
from modules.models import families as fam

UNET = fam.UNET_INPUT_CONV


def _shapes(in_channels: int, *markers: str) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {UNET: (320, in_channels, 3, 3)}
    shapes.update({m: (8,) for m in markers})
    return shapes


SD1 = ("cond_stage_model.transformer.text_model.final_layer_norm.weight",)
SD1_OLD = ("cond_stage_model.transformer.final_layer_norm.weight",)
SD2 = ("cond_stage_model.model.ln_final.weight",)
SDXL = (
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
    "conditioner.embedders.1.model.ln_final.weight",
    "model.diffusion_model.label_emb.0.0.weight",
)
REFINER = ("conditioner.embedders.0.model.ln_final.weight", "model.diffusion_model.label_emb.0.0.weight")


@pytest.mark.parametrize(
    ("channels", "markers", "expected"),
    [
        (4, SD1, "sd1"),
        (9, SD1, "sd1-inpaint"),
        (8, SD1, "sd1-ip2p"),
        (4, SD1_OLD, "sd1"),
        (4, SD2, "sd2"),
        (9, SD2, "sd2-inpaint"),
        (4, SDXL, "sdxl"),
        (9, SDXL, "sdxl-inpaint"),
        (4, REFINER, "sdxl-refiner"),
    ],
)
def test_detects_every_family(channels: int, markers: tuple[str, ...], expected: str) -> None:
    assert fam.detect_family(_shapes(channels, *markers)).id == expected


def test_unsupported_variant_names_the_file_and_channels() -> None:
    with pytest.raises(UnknownModelError, match=r"x\.safetensors.*7 input channels"):
        fam.detect_family(_shapes(7, *SD1), "x.safetensors")


@pytest.mark.parametrize(
    ("keys", "hint"),
    [
        (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "LoRA"),
        (["encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight"], "VAE"),
        (["string_to_param"], "embedding"),
        ([], "no tensors"),
    ],
)
def test_not_a_checkpoint_says_what_it_looks_like(keys: list[str], hint: str) -> None:
    with pytest.raises(UnknownModelError, match=hint) as err:
        fam.detect_family({k: (4, 4) for k in keys}, "thing.safetensors")
    assert "thing.safetensors" in str(err.value)
