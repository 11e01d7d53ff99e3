"""The hook LoRA (modules/engine/training/lora_network.py): kohya's targets and key names, which
our loader's KeyMap resolves back to the same layers; zero start; hooks only while attached;
the same forward as peft's LoRA layer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from modules.engine.training.lora_network import LoraModule, LoraNetwork, find_targets
from modules.models.loader import Placement, StableDiffusionModel, load_single_file
from modules.models.lora_keys import KeyMap


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> dict[str, StableDiffusionModel]:
    return {name: load_single_file(tiny_models[name], Placement()) for name in ("sd1", "sd2", "sdxl", "sdxl-refiner")}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl-refiner"])
def test_keymap_resolves_every_key_to_the_hooked_layer(models: dict[str, StableDiffusionModel], family: str) -> None:
    model = models[family]
    network = LoraNetwork(model, rank=2, conv_rank=2)
    keymap = KeyMap(model)
    assert len(network.targets) > 50
    for key, target in network.targets.items():
        found = keymap.lookup(key)
        assert found is not None, key
        assert found.module is target.module, key
        assert found.is_text_encoder == target.is_text_encoder, key


def test_key_names_follow_kohya(models: dict[str, StableDiffusionModel]) -> None:
    sd1 = set(LoraNetwork(models["sd1"], rank=2).targets)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in sd1
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj" in sd1
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in sd1
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in sd1
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1" in sd1
    assert not any("resnets" in k or "conv" in k for k in sd1)  # no LoCon without conv_dim
    xl = set(LoraNetwork(models["sdxl"], rank=2).targets)
    assert any(k.startswith("lora_unet_input_blocks_") and k.endswith("_attn2_to_k") for k in xl)
    assert any(k.startswith("lora_unet_middle_block_1_") for k in xl)
    assert any(k.startswith("lora_te1_text_model_encoder_layers_") for k in xl)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_") for k in xl)
    assert not any("down_blocks" in k or "text_projection" in k for k in xl)


def test_parts_can_be_left_out(models: dict[str, StableDiffusionModel]) -> None:
    unet_only = LoraNetwork(models["sd1"], rank=2, train_text_encoder=False)
    assert unet_only.targets and not any(t.is_text_encoder for t in unet_only.targets.values())
    assert unet_only.text_encoder_parameters() == []
    te_only = LoraNetwork(models["sd1"], rank=2, train_unet=False)
    assert all(t.is_text_encoder for t in te_only.targets.values())


def test_conv_dim_adds_3x3_locon_modules(models: dict[str, StableDiffusionModel]) -> None:
    network = LoraNetwork(models["sd1"], rank=4, alpha=2.0, conv_rank=3, conv_alpha=1.5)
    tensors = network.kohya_state_dict()
    key = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert tensors[f"{key}.lora_down.weight"].shape[:1] == (3,)
    assert tensors[f"{key}.lora_down.weight"].shape[2:] == (3, 3)
    assert tensors[f"{key}.lora_up.weight"].shape[1:] == (3, 1, 1)
    assert float(tensors[f"{key}.alpha"]) == 1.5
    # the time embedding projection and the downsampler get LoRA too (rank / alpha and conv rank)
    assert tensors["lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight"].shape[0] == 4
    assert "lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight" in tensors
    attn = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert tensors[f"{attn}.lora_down.weight"].shape[0] == 4 and float(tensors[f"{attn}.alpha"]) == 2.0
    xl = LoraNetwork(models["sdxl"], rank=2, conv_rank=2).targets
    assert "lora_unet_input_blocks_1_0_in_layers_2" in xl and xl["lora_unet_input_blocks_1_0_in_layers_2"].is_conv3x3


def _unet_out(model: StableDiffusionModel) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    hidden = torch.randn(1, 77, model.unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        return model.unet(x, torch.tensor([500]), encoder_hidden_states=hidden).sample


def test_starts_as_the_base_model_and_hooks_only_while_attached(models: dict[str, StableDiffusionModel]) -> None:
    model = models["sd1"]
    base = _unet_out(model)
    network = LoraNetwork(model, rank=4, conv_rank=2)
    assert all(p.dtype == torch.float32 for p in network.parameters())
    with network.applied():
        assert torch.equal(_unet_out(model), base)  # up is zero
        with torch.no_grad():
            for module in network.loras.values():
                assert isinstance(module, LoraModule)
                module.up.weight.normal_(0, 0.1)
        changed = _unet_out(model)
        assert not torch.allclose(changed, base)
        assert all(t.module._forward_hooks for t in network.targets.values())
    assert not any(t.module._forward_hooks for t in network.targets.values())
    assert torch.equal(_unet_out(model), base)
    network.set_multiplier(0.0)
    with network.applied():
        assert torch.allclose(_unet_out(model), base)


def test_down_init_is_kaiming_uniform_like_linear() -> None:
    torch.manual_seed(0)
    lora = LoraModule(nn.Linear(300, 20), rank=16, alpha=8.0)
    bound = 1 / math.sqrt(300)  # kaiming_uniform(a=sqrt(5)) bound for fan_in 300
    assert lora.down.weight.abs().max() <= bound + 1e-6
    assert lora.down.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(lora.up.weight) == 0
    assert lora.scale == 0.5


@pytest.mark.parametrize("kind", ["linear", "conv1x1", "conv3x3"])
def test_forward_equals_peft_lora(kind: str) -> None:
    torch.manual_seed(1)
    if kind == "linear":
        layer: nn.Module = nn.Linear(16, 24)
        x = torch.randn(2, 5, 16)
    elif kind == "conv1x1":
        layer = nn.Conv2d(8, 12, 1)
        x = torch.randn(2, 8, 6, 6)
    else:
        layer = nn.Conv2d(8, 12, 3, padding=1)
        x = torch.randn(2, 8, 6, 6)
    rank, alpha = 4, 3.0
    holder = nn.Sequential()
    holder.add_module("target", layer)
    ours = LoraModule(layer, rank, alpha)
    with torch.no_grad():
        ours.up.weight.normal_()
    handle = layer.register_forward_hook(lambda _m, args, out: out + ours(args[0]))
    try:
        with torch.no_grad():
            expected_ours = holder(x)
    finally:
        handle.remove()

    peft_model = inject_adapter_in_model(
        LoraConfig(r=rank, lora_alpha=alpha, target_modules=["target"], lora_dropout=0.0), holder
    )
    peft_layer = peft_model.target
    with torch.no_grad():
        peft_layer.lora_A["default"].weight.copy_(ours.down.weight)
        peft_layer.lora_B["default"].weight.copy_(ours.up.weight)
        assert peft_layer.scaling["default"] == pytest.approx(ours.scale)
        expected_peft = peft_model(x)
    torch.testing.assert_close(expected_ours, expected_peft)


def test_fp16_target_keeps_fp32_lora_weights() -> None:
    layer = nn.Linear(8, 8).to(torch.bfloat16)
    lora = LoraModule(layer, 2, 1.0)
    assert lora.down.weight.dtype == torch.float32
    with torch.no_grad():
        lora.up.weight.fill_(0.5)
    out = lora(torch.randn(3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lora(torch.randn(3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_state_dict_round_trip(models: dict[str, StableDiffusionModel]) -> None:
    model = models["sd1"]
    a = LoraNetwork(model, rank=2)
    with torch.no_grad():
        for p in a.parameters():
            p.normal_()
    b = LoraNetwork(model, rank=2)
    b.load_kohya_state_dict(a.kohya_state_dict())
    for key, tensor in a.kohya_state_dict().items():
        assert torch.equal(b.kohya_state_dict()[key], tensor)
    with pytest.raises(ValueError, match="do not fit"):
        LoraNetwork(model, rank=2, conv_rank=2).load_kohya_state_dict(a.kohya_state_dict())


def test_find_targets_text_encoder_layers(models: dict[str, StableDiffusionModel]) -> None:
    targets = find_targets(models["sd1"], unet=False)
    names = {t.name.rsplit(".", 1)[-1] for t in targets}
    assert names == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}


def test_a_seed_gives_the_same_start(models: dict[str, StableDiffusionModel]) -> None:
    a = LoraNetwork(models["sd1"], rank=2, seed=5).kohya_state_dict()
    b = LoraNetwork(models["sd1"], rank=2, seed=5).kohya_state_dict()
    c = LoraNetwork(models["sd1"], rank=2, seed=6).kohya_state_dict()
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])
