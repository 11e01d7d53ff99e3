"""Diffusers component configs derived from tensor shapes, so that a tiny test checkpoint and a
full-size one take the same code path and no config is ever fetched.

What shapes cannot tell is fixed per family and written here once:
- SD 1.x UNets use 8 attention heads per block; SD 2.x and SDXL UNets use 64-channel heads.
- Text encoders use 64-channel heads; OpenAI CLIP-L uses quick_gelu, OpenCLIP uses gelu.
- Narrow test models (an SD 1.x UNet narrower than 320 channels, an OpenAI CLIP tower narrower
  than 512) are not released architectures, so their head counts are a convention: we follow the
  small A1111 parity checkpoint (`shared/parity/`), whose pixels A1111 made with 2 UNet heads per
  block and 32-channel CLIP heads; any other count gives a different picture.
- SDXL's extra conditioning embeds each micro-condition number with 256 channels.
- SD 2.x runs the OpenCLIP text tower up to its penultimate layer, so its last layer is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modules.core.errors import UnknownModelError
from modules.models.families import (
    REFINER_OPENCLIP_PREFIX,
    SD1_CLIP_PREFIX,
    SD2_OPENCLIP_PREFIX,
    SDXL_CLIP_L_PREFIX,
    SDXL_OPENCLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    ModelFamily,
)

Shapes = Mapping[str, Sequence[int]]

SDXL_TIME_EMBED_DIM = 256
HEAD_CHANNELS = 64
SD1_UNET_HEADS = 8
SD1_UNET_WIDTH = 320  # every released SD 1.x UNet
NARROW_SD1_UNET_HEADS = 2
NARROW_CLIP_WIDTH = 512  # CLIP towers narrower than this are test models
NARROW_CLIP_HEAD_CHANNELS = 32


def sd1_unet_heads(model_channels: int) -> int:
    """Attention heads per block of an SD 1.x UNet whose first level is `model_channels` wide."""
    return SD1_UNET_HEADS if model_channels >= SD1_UNET_WIDTH else NARROW_SD1_UNET_HEADS


def clip_heads(hidden: int) -> int:
    """Attention heads of an OpenAI CLIP text tower of width `hidden`."""
    if hidden >= NARROW_CLIP_WIDTH:
        return max(1, hidden // HEAD_CHANNELS)
    return max(1, hidden // NARROW_CLIP_HEAD_CHANNELS)


CLIP_BOS_ID = 49406
CLIP_EOS_ID = 49407

SCHEDULER_BASE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder inside a single-file checkpoint."""

    prefix: str  # where its tensors live in the file
    layout: str  # "clip" (HF CLIP layout) or "openclip"
    config: dict[str, Any]  # transformers CLIPTextConfig kwargs
    with_projection: bool  # CLIPTextModelWithProjection (SDXL's second encoder) or CLIPTextModel
    pad_token: str  # "<|endoftext|>" for OpenAI CLIP, "!" for OpenCLIP
    drop_last_layer: bool = False  # SD 2.x: the file has one more layer than is run


@dataclass(frozen=True)
class Architecture:
    """Everything needed to build the diffusers modules of one checkpoint."""

    family: ModelFamily
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoders: tuple[TextEncoderSpec, ...]
    scheduler: dict[str, Any] = field(default_factory=dict)


def _shape(shapes: Shapes, key: str) -> Sequence[int]:
    try:
        return shapes[key]
    except KeyError:
        raise UnknownModelError(f"expected tensor {key!r} is missing: the file is incomplete") from None


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for key in shapes if (m := rx.match(key))}
    return sorted(found)


# ----------------------------------------------------------------------------------------- UNet


def unet_config(shapes: Shapes, family: ModelFamily) -> dict[str, Any]:
    """A `UNet2DConditionModel` config for the LDM UNet under `model.diffusion_model.`."""
    p = UNET_PREFIX
    conv_in = _shape(shapes, p + "input_blocks.0.0.weight")
    model_channels, in_channels = int(conv_in[0]), int(conv_in[1])
    out_channels = int(_shape(shapes, p + "out.2.weight")[0])

    # Walk input blocks: resblocks (optionally followed by a transformer) until a downsampler.
    levels: list[list[int]] = [[]]
    for i in _indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\.")[1:]:
        if p + f"input_blocks.{i}.0.op.weight" in shapes:
            levels.append([])
        else:
            levels[-1].append(i)
    if not levels[0]:
        raise UnknownModelError("UNet input blocks have an unexpected structure")
    num_res_blocks = len(levels[0])
    if any(len(level) != num_res_blocks for level in levels):
        raise UnknownModelError("UNet levels have different numbers of resblocks, which is not supported")

    block_out: list[int] = []
    depths: list[int] = []
    for level in levels:
        first = level[0]
        block_out.append(int(_shape(shapes, p + f"input_blocks.{first}.0.out_layers.3.weight")[0]))
        depths.append(_transformer_depth(shapes, p + f"input_blocks.{first}.1."))
    mid_depth = _transformer_depth(shapes, p + "middle_block.1.")

    attn_levels = [d for d in depths if d > 0]
    if not attn_levels:
        raise UnknownModelError("UNet has no cross-attention blocks")
    context_dim, linear = _attention_facts(shapes)

    if len(set(attn_levels)) == 1 and mid_depth == attn_levels[0]:
        layers_per_block: int | list[int] = attn_levels[0]
    else:
        layers_per_block = [d if d > 0 else 1 for d in depths]
        if mid_depth != layers_per_block[-1]:
            raise UnknownModelError(
                f"UNet middle block depth {mid_depth} does not match its last level ({layers_per_block[-1]})"
            )

    if family.base == "sd1":
        heads: int | list[int] = sd1_unet_heads(model_channels)
    else:
        heads = [max(1, c // HEAD_CHANNELS) for c in block_out]

    config: dict[str, Any] = {
        "sample_size": 128 if family.is_sdxl else (96 if family.base == "sd2" else 64),
        "in_channels": in_channels,
        "out_channels": out_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        "block_out_channels": block_out,
        "layers_per_block": num_res_blocks,
        "cross_attention_dim": context_dim,
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "transformer_layers_per_block": layers_per_block,
        "norm_num_groups": 32,
    }
    if block_out[0] != model_channels:
        raise UnknownModelError("UNet first level width differs from its input conv width")

    label = shapes.get(p + "label_emb.0.0.weight")
    if label is not None:
        adm_in = int(label[1])
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=adm_in,
        )
    return config


def _transformer_depth(shapes: Shapes, prefix: str) -> int:
    return len(_indices(shapes, re.escape(prefix) + r"transformer_blocks\.(\d+)\.attn1\."))


def _attention_facts(shapes: Shapes) -> tuple[int, bool]:
    for key, shape in shapes.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            proj_in = key.split("transformer_blocks.")[0] + "proj_in.weight"
            return int(shape[1]), len(_shape(shapes, proj_in)) == 2
    raise UnknownModelError("UNet has no cross-attention weights")


# ------------------------------------------------------------------------------------------ VAE


def vae_config(shapes: Shapes, prefix: str, family: ModelFamily) -> dict[str, Any]:
    """An `AutoencoderKL` config for LDM VAE tensors under `prefix` ('' for a separate VAE file)."""
    p = prefix
    conv_in = _shape(shapes, p + "encoder.conv_in.weight")
    levels = _indices(shapes, re.escape(p) + r"encoder\.down\.(\d+)\.")
    if not levels:
        raise UnknownModelError("VAE encoder has no levels")
    block_out = [int(_shape(shapes, p + f"encoder.down.{i}.block.0.conv2.weight")[0]) for i in levels]
    layers = len(_indices(shapes, re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\."))
    latent = int(_shape(shapes, p + "decoder.conv_in.weight")[1])
    return {
        "in_channels": int(conv_in[1]),
        "out_channels": int(_shape(shapes, p + "decoder.conv_out.weight")[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": block_out,
        "layers_per_block": layers,
        "latent_channels": latent,
        "norm_num_groups": 32,
        "sample_size": 1024 if family.is_sdxl else 512,
        "scaling_factor": family.vae_scaling_factor,
        "force_upcast": family.is_sdxl,
    }


def find_vae_prefix(shapes: Shapes) -> str:
    """'' for a bare VAE file, 'first_stage_model.' for a full checkpoint."""
    for prefix in ("", VAE_PREFIX):
        if prefix + "encoder.conv_in.weight" in shapes and prefix + "decoder.conv_out.weight" in shapes:
            return prefix
    raise UnknownModelError("no LDM VAE tensors (encoder.conv_in / decoder.conv_out) found")


# -------------------------------------------------------------------------------- text encoders


def _clip_config(shapes: Shapes, prefix: str) -> dict[str, Any]:
    """HF CLIP layout (`...text_model.embeddings.token_embedding.weight` etc.)."""
    tm = prefix + "text_model."
    if tm + "embeddings.token_embedding.weight" not in shapes:
        tm = prefix  # old files without the text_model level
    vocab, hidden = (int(x) for x in _shape(shapes, tm + "embeddings.token_embedding.weight"))
    layers = _indices(shapes, re.escape(tm) + r"encoder\.layers\.(\d+)\.")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(_shape(shapes, tm + "encoder.layers.0.mlp.fc1.weight")[0]),
        "num_hidden_layers": len(layers),
        "num_attention_heads": clip_heads(hidden),
        "max_position_embeddings": int(_shape(shapes, tm + "embeddings.position_embedding.weight")[0]),
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": hidden,
        "bos_token_id": CLIP_BOS_ID,
        "eos_token_id": CLIP_EOS_ID,
        "pad_token_id": CLIP_EOS_ID,
    }


def _open_clip_config(shapes: Shapes, prefix: str, *, drop_last: bool) -> dict[str, Any]:
    vocab, width = (int(x) for x in _shape(shapes, prefix + "token_embedding.weight"))
    layers = _indices(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    proj = shapes.get(prefix + "text_projection")
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": int(_shape(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0]),
        "num_hidden_layers": len(layers) - (1 if drop_last else 0),
        "num_attention_heads": max(1, width // HEAD_CHANNELS),
        "max_position_embeddings": int(_shape(shapes, prefix + "positional_embedding")[0]),
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": int(proj[1]) if proj is not None else width,
        "bos_token_id": CLIP_BOS_ID,
        "eos_token_id": CLIP_EOS_ID,
        "pad_token_id": 0,
    }


def text_encoder_specs(shapes: Shapes, family: ModelFamily) -> tuple[TextEncoderSpec, ...]:
    eot, bang = "<|endoftext|>", "!"
    if family.base == "sd1":
        return (TextEncoderSpec(SD1_CLIP_PREFIX, "clip", _clip_config(shapes, SD1_CLIP_PREFIX), False, eot),)
    if family.base == "sd2":
        cfg = _open_clip_config(shapes, SD2_OPENCLIP_PREFIX, drop_last=True)
        return (TextEncoderSpec(SD2_OPENCLIP_PREFIX, "openclip", cfg, False, bang, drop_last_layer=True),)
    if family.base == "sdxl":
        return (
            TextEncoderSpec(SDXL_CLIP_L_PREFIX, "clip", _clip_config(shapes, SDXL_CLIP_L_PREFIX), False, eot),
            TextEncoderSpec(
                SDXL_OPENCLIP_PREFIX,
                "openclip",
                _open_clip_config(shapes, SDXL_OPENCLIP_PREFIX, drop_last=False),
                True,
                bang,
            ),
        )
    cfg = _open_clip_config(shapes, REFINER_OPENCLIP_PREFIX, drop_last=False)
    return (TextEncoderSpec(REFINER_OPENCLIP_PREFIX, "openclip", cfg, True, bang),)


def scheduler_config(family: ModelFamily, prediction_type: str) -> dict[str, Any]:
    config = dict(SCHEDULER_BASE, prediction_type=prediction_type)
    if family.is_sdxl:
        config["timestep_spacing"] = "leading"
    return config


def architecture(shapes: Shapes, family: ModelFamily, prediction_type: str = "epsilon") -> Architecture:
    """All component configs of a single-file checkpoint of `family`; parts whose sizes do not
    fit together are refused here, at load, not at the first generation."""
    arch = Architecture(
        family=family,
        unet=unet_config(shapes, family),
        vae=vae_config(shapes, VAE_PREFIX, family),
        text_encoders=text_encoder_specs(shapes, family),
        scheduler=scheduler_config(family, prediction_type),
    )
    check_fit(arch)
    return arch


def check_fit(arch: Architecture) -> None:
    """The UNet's cross-attention width is the text encoders' output width (summed for SDXL) and
    an SDXL UNet's `label_emb` input is the pooled text width plus 256 per size/crop/score id (6
    ids for the base, 5 for the refiner: 2816 and 2560 at full size). `UnknownModelError` otherwise."""
    unet = arch.unet
    hidden = sum(int(spec.config["hidden_size"]) for spec in arch.text_encoders)
    context = int(unet["cross_attention_dim"])
    if context != hidden:
        raise UnknownModelError(
            f"the UNet's cross-attention width {context} does not fit the text encoders' output width {hidden}"
        )
    if not arch.family.is_sdxl:
        return
    adm_in = unet.get("projection_class_embeddings_input_dim")
    if adm_in is None:
        raise UnknownModelError("an SDXL UNet without label_emb (size conditioning)")
    pooled = next((int(spec.config["projection_dim"]) for spec in arch.text_encoders if spec.with_projection), 0)
    ids = 5 if arch.family.base == "sdxl-refiner" else 6
    expected = pooled + ids * SDXL_TIME_EMBED_DIM
    if int(adm_in) != expected:
        raise UnknownModelError(
            f"label_emb takes {adm_in} inputs where this {arch.family.label} layout needs {expected} "
            f"(pooled text {pooled} + {ids} x {SDXL_TIME_EMBED_DIM} size/crop ids)"
        )
