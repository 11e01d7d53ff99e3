"""Parsing network files into modules, and the per-format delta math on small tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modules.core.errors import ModelFileError
from modules.models.lora_formats import (
    Fit,
    GloraAdapter,
    HadaAdapter,
    Ia3Adapter,
    LokrAdapter,
    LoraAdapter,
    add_module_delta,
    dora_axis,
    fit,
    make_adapter,
    module_delta_shape,
    parse_network,
    read_network,
)

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + 17 * len(shape) + sum(shape)))


def _kohya() -> dict[str, torch.Tensor]:
    return {
        f"{Q}.lora_down.weight": _rand(4, 8).half(),
        f"{Q}.lora_up.weight": _rand(6, 4).half(),
        f"{Q}.alpha": torch.tensor(2.0).half(),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.hada_w1_a": _rand(6, 2),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.hada_w1_b": _rand(2, 8),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.hada_w2_a": _rand(6, 2, seed=1),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.hada_w2_b": _rand(2, 8, seed=1),
    }


def test_kohya_keys_are_grouped_by_the_module_key_as_written() -> None:
    weights = parse_network(_kohya())
    assert set(weights.modules) == {Q, "lora_te_text_model_encoder_layers_0_mlp_fc1"}
    assert set(weights.modules[Q]) == {"lora_down.weight", "lora_up.weight", "alpha"}
    # kept as float32 (converted once at parse; the sums are float32 anyway)
    assert all(t.dtype == torch.float32 for parts in weights.modules.values() for t in parts.values())
    assert weights.nbytes == sum(t.numel() * 4 for t in _kohya().values())
    assert isinstance(make_adapter(weights.modules[Q]), LoraAdapter)
    assert isinstance(make_adapter(weights.modules["lora_te_text_model_encoder_layers_0_mlp_fc1"]), HadaAdapter)


def test_diffusers_and_peft_suffixes_are_read_as_kohya_ones() -> None:
    sd = {
        "unet.down_blocks.0.attn1.to_q.lora_A.weight": _rand(4, 8),
        "unet.down_blocks.0.attn1.to_q.lora_B.weight": _rand(6, 4),
        "unet.down_blocks.0.attn1.to_q.lora_magnitude_vector": _rand(6),
        "base_model.model.mid.to_k.lora_A.weight": _rand(4, 8),
        "base_model.model.mid.to_k.lora_B.weight": _rand(6, 4),
        "unet.up.attn2.processor.to_out_lora.down.weight": _rand(4, 8),
        "unet.up.attn2.processor.to_out_lora.up.weight": _rand(6, 4),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight": _rand(4, 8),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight": _rand(6, 4),
        "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora.down.weight": _rand(4, 8),
        "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora.up.weight": _rand(6, 4),
        "unet.conv_in.weight": _rand(6, 8),  # an ordinary tensor: not part of any network
    }
    modules = parse_network(sd).modules
    assert set(modules) == {
        "unet.down_blocks.0.attn1.to_q",
        "base_model.model.mid.to_k",
        "unet.up.attn2.processor.to_out_lora",
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
        "text_encoder.text_model.encoder.layers.1.mlp.fc1",
    }
    for parts in modules.values():
        assert {"lora_down.weight", "lora_up.weight"} <= set(parts)
    q = modules["unet.down_blocks.0.attn1.to_q"]
    assert torch.equal(q["lora_down.weight"], sd["unet.down_blocks.0.attn1.to_q.lora_A.weight"])
    assert q["dora_scale"].shape == (6, 1)  # PEFT's magnitude: one per output row
    assert dora_axis(q["dora_scale"], (6, 8)) == 0


def test_bundled_embeddings_are_kept_by_name() -> None:
    sd = _kohya() | {
        "bundle_emb.easy.string_to_param.*": _rand(2, 16),
        "bundle_emb.xl.clip_l": _rand(1, 16),
        "bundle_emb.xl.clip_g": _rand(1, 32),
    }
    weights = parse_network(sd)
    assert set(weights.modules) == {Q, "lora_te_text_model_encoder_layers_0_mlp_fc1"}
    assert weights.bundled_embeddings.keys() == {"easy", "xl"}
    assert weights.bundled_embeddings["easy"].keys() == {"string_to_param.*"}
    assert weights.bundled_embeddings["xl"].keys() == {"clip_l", "clip_g"}
    only = parse_network({"bundle_emb.easy.string_to_param.*": _rand(2, 16)})
    assert only.modules == {} and "easy" in only.bundled_embeddings


def test_a_file_that_is_no_network_is_a_model_file_error_naming_it(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ModelFileError) as err:
        read_network(tiny_models["sd1"])
    assert str(tiny_models["sd1"]) in str(err.value) and "not a LoRA" in str(err.value)
    alpha_only = tmp_path / "alpha.safetensors"
    save_file({f"{Q}.alpha": torch.tensor(1.0), "unet.conv_in.weight": _rand(2, 2)}, str(alpha_only))
    with pytest.raises(ModelFileError, match=r"alpha\.safetensors"):
        read_network(alpha_only)


def test_safetensors_and_pt_files_read_alike(tmp_path: Path) -> None:
    sd = _kohya()
    save_file(sd, str(tmp_path / "a.safetensors"), metadata={"ss_network_module": "networks.lora"})
    torch.save(sd, tmp_path / "a.pt")
    a, b = read_network(tmp_path / "a.safetensors"), read_network(tmp_path / "a.pt")
    assert a.modules.keys() == b.modules.keys() and a.nbytes == b.nbytes
    for key, parts in a.modules.items():
        assert all(torch.equal(parts[s], b.modules[key][s]) for s in parts)


# -- the math, on small tensors ------------------------------------------------------------------


def _apply(
    parts: dict[str, torch.Tensor], weight: torch.Tensor, multiplier: float = 1.0, dyn: int | None = None
) -> torch.Tensor:
    adapter = make_adapter(parts)
    assert adapter is not None
    placement = module_delta_shape(adapter, tuple(weight.shape))
    assert placement is not None
    total = weight.clone()
    add_module_delta(total, adapter, placement, multiplier, lambda: weight, dyn)
    return total - weight


def test_a_scale_tensor_overrides_alpha_over_rank_and_a_bias_tensor_is_added_before_scaling() -> None:
    up, down, w = _rand(6, 4), _rand(4, 8), torch.zeros(6, 8)
    base = {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(2.0)}
    torch.testing.assert_close(_apply(base, w, 0.5), up @ down * (2.0 / 4) * 0.5)
    torch.testing.assert_close(_apply(base | {"scale": torch.tensor(3.0)}, w), up @ down * 3.0)
    bias = _rand(6, 8, seed=3)
    torch.testing.assert_close(_apply(base | {"bias": bias}, w, 2.0), (up @ down + bias) * 0.5 * 2.0)
    no_alpha = {"lora_up.weight": up, "lora_down.weight": down}
    torch.testing.assert_close(_apply(no_alpha, w), up @ down)


def test_dyn_keeps_the_first_ranks_and_the_files_scale() -> None:
    up, down = _rand(6, 4), _rand(4, 8)
    parts = {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(2.0)}
    torch.testing.assert_close(_apply(parts, torch.zeros(6, 8), dyn=2), up[:, :2] @ down[:2] * 0.5)


def test_a_plain_lora_is_fused_into_the_sum_without_building_its_delta(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_full(*args: object) -> torch.Tensor:
        raise AssertionError("materialised the full delta")

    monkeypatch.setattr(LoraAdapter, "full", no_full)
    up, down = _rand(6, 4, 1, 1), _rand(4, 8, 3, 3)
    delta = _apply({"lora_up.weight": up, "lora_down.weight": down}, torch.zeros(6, 8, 3, 3))
    torch.testing.assert_close(delta, (up.flatten(1) @ down.flatten(1)).reshape(6, 8, 3, 3))


def test_lokr_takes_alpha_over_rank_only_from_a_decomposed_factor() -> None:
    w1, w2 = _rand(2, 2), _rand(3, 4)
    full = {"lokr_w1": w1, "lokr_w2": w2, "alpha": torch.tensor(8.0)}
    torch.testing.assert_close(_apply(full, torch.zeros(6, 8)), torch.kron(w1, w2))
    a, b = _rand(3, 2), _rand(2, 4)
    decomposed = {"lokr_w1": w1, "lokr_w2_a": a, "lokr_w2_b": b, "alpha": torch.tensor(8.0)}
    adapter = make_adapter(decomposed)
    assert isinstance(adapter, LokrAdapter) and adapter.dim == 2
    torch.testing.assert_close(_apply(decomposed, torch.zeros(6, 8)), torch.kron(w1, a @ b) * 4.0)


def test_ia3_scales_rows_or_columns_of_the_weight() -> None:
    w, v_out, v_in = _rand(6, 8), _rand(6), _rand(8)
    assert isinstance(make_adapter({"weight": v_out}), Ia3Adapter)
    torch.testing.assert_close(_apply({"weight": v_out, "on_input": torch.tensor(False)}, w), w * v_out[:, None])
    torch.testing.assert_close(_apply({"weight": v_in, "on_input": torch.tensor(True)}, w), w * v_in[None, :])
    assert module_delta_shape(make_adapter({"weight": v_in}), (6, 8)) is None  # type: ignore[arg-type]


def test_glora_uses_the_weight_and_no_rank_scale() -> None:
    w = _rand(6, 8)
    a1, a2, b1, b2 = _rand(2, 8), _rand(8, 2), _rand(2, 8, seed=1), _rand(6, 2)
    parts = {"a1.weight": a1, "a2.weight": a2, "b1.weight": b1, "b2.weight": b2, "alpha": torch.tensor(1.0)}
    assert isinstance(make_adapter(parts), GloraAdapter)
    torch.testing.assert_close(_apply(parts, w), b2 @ b1 + w @ a2 @ a1)


def test_dora_renormalises_per_input_channel_and_then_takes_the_multiplier() -> None:
    w, up, down = _rand(6, 8), _rand(6, 4), _rand(4, 8)
    scale = _rand(1, 8).abs() + 0.5
    parts = {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(4.0), "dora_scale": scale}
    merged = w + up @ down
    want = merged * (scale / merged.norm(dim=0, keepdim=True)) - w
    torch.testing.assert_close(_apply(parts, w, 0.3), 0.3 * want)


def test_dora_next_to_lokr_with_one_norm_per_output_row() -> None:
    w, w1, w2 = _rand(6, 8), _rand(2, 2), _rand(3, 4)
    scale = _rand(6, 1).abs() + 0.5
    parts = {"lokr_w1": w1, "lokr_w2": w2, "dora_scale": scale}
    merged = w + torch.kron(w1, w2)
    want = merged * (scale / merged.norm(dim=1, keepdim=True)) - w
    torch.testing.assert_close(_apply(parts, w, -0.5), -0.5 * want)


def test_fit_reshapes_pads_input_channels_or_refuses() -> None:
    assert fit((6, 8), (6, 8, 1, 1)) == Fit(8, False)
    assert fit((6, 72), (6, 8, 3, 3)) == Fit(72, False)
    assert fit((32, 4, 3, 3), (32, 9, 3, 3)) == Fit(36, True)
    assert fit((6, 8), (7, 8)) is None
    assert fit((6, 8), (6, 9)) is None
    assert fit((32, 4, 1, 1), (32, 9, 3, 3)) is None
