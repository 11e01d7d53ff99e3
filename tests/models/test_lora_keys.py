"""File module keys -> layers of our diffusers/transformers modules, built forward from
`named_modules()`; the LDM/SGM names are held to the single-file checkpoints' own keys."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from modules.models.checkpoint_io import tensor_shapes
from modules.models.loader import Placement, StableDiffusionModel, load_single_file
from modules.models.lora_keys import KeyMap, component_keys, is_sdxl_network, unet_ldm_names

pytestmark = pytest.mark.usefixtures("no_network")
LDM_UNET = "model.diffusion_model."


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> dict[str, StableDiffusionModel]:
    return {f: load_single_file(tiny_models[f], Placement()) for f in ("sd1", "sd2", "sdxl", "sdxl-refiner")}


@pytest.mark.parametrize("family", ["sd1", "sd1-inpaint", "sd2", "sdxl", "sdxl-refiner"])
def test_every_unet_layer_gets_the_ldm_name_the_checkpoint_file_uses(tiny_models: dict[str, Path], family: str) -> None:
    """One-to-one onto the file's weight keys, with the same number of values (a Linear proj_in
    of SD2/SDXL is a 1x1 conv in the file)."""
    shapes = {k[len(LDM_UNET) :]: s for k, s in tensor_shapes(tiny_models[family]).items() if k.startswith(LDM_UNET)}
    unet = load_single_file(tiny_models[family], Placement()).unet
    names = unet_ldm_names(unet)
    weighted = [n for n, m in unet.named_modules() if isinstance(getattr(m, "weight", None), torch.nn.Parameter)]
    assert sorted(names) == sorted(weighted)
    keys = {f"{ldm}.weight" for ldm in names.values()}
    assert keys == {k for k in shapes if k.endswith(".weight")}
    for name, ldm in names.items():
        assert math.prod(shapes[f"{ldm}.weight"]) == unet.get_submodule(name).weight.numel(), name


SD1_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
SD1_FF = "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.0.proj"
SD1_OUT = "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0"


@pytest.mark.parametrize(
    ("key", "component", "name"),
    [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "unet", SD1_Q),
        ("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q", "unet", SD1_Q),
        ("lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_0_proj", "unet", SD1_FF),
        ("lora_unet_output_blocks_5_1_transformer_blocks_0_ff_net_0_proj", "unet", SD1_FF),
        ("lora_unet_input_blocks_1_0_in_layers_2", "unet", "down_blocks.0.resnets.0.conv1"),
        ("lora_unet_input_blocks_4_0_skip_connection", "unet", "down_blocks.1.resnets.0.conv_shortcut"),
        ("lora_unet_input_blocks_3_0_op", "unet", "down_blocks.0.downsamplers.0.conv"),
        ("lora_unet_middle_block_2_out_layers_3", "unet", "mid_block.resnets.1.conv2"),
        ("lora_unet_output_blocks_2_2_conv", "unet", "up_blocks.0.upsamplers.0.conv"),
        ("lora_unet_time_embed_0", "unet", "time_embedding.linear_1"),
        ("lora_unet_conv_in", "unet", "conv_in"),
        (
            "lora_te_text_model_encoder_layers_1_self_attn_out_proj",
            "text_encoder",
            "encoder.layers.1.self_attn.out_proj",
        ),
        ("lora_te1_text_model_encoder_layers_0_mlp_fc1", "text_encoder", "encoder.layers.0.mlp.fc1"),
        ("lora_te2_text_model_encoder_layers_0_mlp_fc1", None, None),
        (f"unet.{SD1_Q}", "unet", SD1_Q),
        (SD1_Q, "unet", SD1_Q),
        (f"base_model.model.{SD1_Q}", "unet", SD1_Q),
        ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora", "unet", SD1_Q),
        ("unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora", "unet", SD1_OUT),
        ("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q", "unet", SD1_Q),
        (
            "text_encoder.text_model.encoder.layers.0.self_attn.k_proj",
            "text_encoder",
            "encoder.layers.0.self_attn.k_proj",
        ),
        ("text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj", None, None),
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q_x", None, None),
        ("lycoris_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", None, None),
    ],
)
def test_sd1_keys(models: dict[str, StableDiffusionModel], key: str, component: str | None, name: str | None) -> None:
    target = KeyMap(models["sd1"]).lookup(key)
    if component is None:
        assert target is None
        return
    assert target is not None and target.component == component
    assert target.name == name
    module = models["sd1"].unet if component == "unet" else models["sd1"].text_encoders[0]
    assert target.module is module.get_submodule(name)
    assert target.param_name() == f"{component}.{name}.weight"


@pytest.mark.parametrize(
    ("key", "component", "name"),
    [
        (
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k",
            "unet",
            "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
        ),
        (
            "lora_unet_middle_block_1_transformer_blocks_1_ff_net_2",
            "unet",
            "mid_block.attentions.0.transformer_blocks.1.ff.net.2",
        ),
        ("lora_unet_middle_block_1_proj_in", "unet", "mid_block.attentions.0.proj_in"),
        ("lora_unet_output_blocks_2_2_conv", "unet", "up_blocks.0.upsamplers.0.conv"),
        ("lora_unet_output_blocks_3_0_skip_connection", "unet", "up_blocks.1.resnets.0.conv_shortcut"),
        ("lora_unet_output_blocks_5_0_emb_layers_1", "unet", "up_blocks.1.resnets.2.time_emb_proj"),
        ("lora_unet_label_emb_0_0", "unet", "add_embedding.linear_1"),
        ("lora_unet_label_emb_0_2", "unet", "add_embedding.linear_2"),
        ("lora_unet_time_embed_2", "unet", "time_embedding.linear_2"),
        ("lora_unet_out_2", "unet", "conv_out"),
        ("lora_unet_out_0", "unet", "conv_norm_out"),
        (
            "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k",
            "unet",
            "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
        ),
        ("lora_te1_text_model_encoder_layers_1_self_attn_q_proj", "text_encoder", "encoder.layers.1.self_attn.q_proj"),
        ("lora_te2_text_model_encoder_layers_9_mlp_fc2", "text_encoder_2", "text_model.encoder.layers.9.mlp.fc2"),
        ("lora_te_text_model_encoder_layers_0_mlp_fc1", None, None),
        ("text_encoder.text_model.encoder.layers.0.mlp.fc1", "text_encoder", "encoder.layers.0.mlp.fc1"),
        ("text_encoder_2.text_model.encoder.layers.0.mlp.fc1", "text_encoder_2", "text_model.encoder.layers.0.mlp.fc1"),
    ],
)
def test_sdxl_keys(models: dict[str, StableDiffusionModel], key: str, component: str | None, name: str | None) -> None:
    target = KeyMap(models["sdxl"]).lookup(key)
    if component is None:
        assert target is None
        return
    assert target is not None and (target.component, target.name) == (component, name)


def test_the_refiners_only_encoder_is_named_by_the_second_encoders_keys(
    models: dict[str, StableDiffusionModel],
) -> None:
    keymap = KeyMap(models["sdxl-refiner"])
    target = keymap.lookup("lora_te2_text_model_encoder_layers_0_self_attn_q_proj")
    assert target is not None and target.component == "text_encoder"
    assert target.module is models["sdxl-refiner"].text_encoders[0].get_submodule(target.name)
    assert keymap.lookup("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") is None


def test_sd2_text_encoder_keys_use_the_transformers_names(models: dict[str, StableDiffusionModel]) -> None:
    target = KeyMap(models["sd2"]).lookup("lora_te_text_model_encoder_layers_1_mlp_fc2")
    assert target is not None and target.component == "text_encoder" and target.name.endswith("layers.1.mlp.fc2")


def test_the_tables_are_built_once_per_module(models: dict[str, StableDiffusionModel]) -> None:
    unet = models["sd1"].unet
    keys = component_keys(unet, ldm=True)
    assert component_keys(unet, ldm=True) is keys
    assert KeyMap(models["sd1"]).unet is keys
    assert component_keys(models["sdxl"].unet, ldm=True) is not keys


def test_sdxl_only_layers_mark_a_network_as_sdxl() -> None:
    assert is_sdxl_network(["lora_unet_input_blocks_4_1_proj_in", "lora_te2_text_model_encoder_layers_0_mlp_fc1"])
    assert is_sdxl_network(["text_encoder_2.text_model.encoder.layers.0.mlp.fc1"])
    assert is_sdxl_network(["lora_unet_input_blocks_4_1_transformer_blocks_3_attn1_to_q"])
    assert is_sdxl_network(["unet.down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q"])
    assert is_sdxl_network(["lora_unet_label_emb_0_0"])
    assert not is_sdxl_network(
        [
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q",
            "lora_te_text_model_encoder_layers_11_mlp_fc1",
            "lora_te1_text_model_encoder_layers_0_mlp_fc1",
            "text_encoder.text_model.encoder.layers.0.mlp.fc1",
        ]
    )
