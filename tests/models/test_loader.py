"""The offline loader on tiny checkpoints in every family's real layout.

Each test maps a few file tensors to module parameters by hand (independently of the key
converters the loader uses) and checks the values are identical, then runs each component.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modules.core.errors import ModelFileError, UnknownModelError, UnsafeModelFileError
from modules.models.loader import (
    Placement,
    StableDiffusionModel,
    load_diffusers_folder,
    load_single_file,
    load_vae_file,
)

pytestmark = pytest.mark.usefixtures("no_network")

ALL = ["sd1", "sd1-inpaint", "sd1-ip2p", "sd2", "sd2-inpaint", "sdxl", "sdxl-refiner", "sdxl-inpaint"]
CPU = Placement()
U = "model.diffusion_model."


def _first_attention(model: StableDiffusionModel) -> tuple[int, int]:
    """(down block index, LDM input block index) of the first cross-attention block."""
    index = 1
    for i, block in enumerate(model.unet.down_blocks):
        if getattr(block, "attentions", None):
            return i, index
        index += len(block.resnets) + (1 if block.downsamplers else 0)
    raise AssertionError("no attention")


def _text_model(encoder: torch.nn.Module) -> torch.nn.Module:
    return getattr(encoder, "text_model", encoder)


def _check_tensors(model: StableDiffusionModel, sd: dict[str, torch.Tensor]) -> None:
    unet, vae = model.unet, model.vae
    pairs = [
        (U + "input_blocks.0.0.weight", unet.conv_in.weight),
        (U + "time_embed.0.weight", unet.time_embedding.linear_1.weight),
        (U + "out.2.weight", unet.conv_out.weight),
        (U + "middle_block.1.proj_in.weight", unet.mid_block.attentions[0].proj_in.weight),
        (U + "output_blocks.0.0.in_layers.2.weight", unet.up_blocks[0].resnets[0].conv1.weight),
        ("first_stage_model.encoder.conv_in.weight", vae.encoder.conv_in.weight),
        ("first_stage_model.decoder.up.0.block.2.conv2.weight", vae.decoder.up_blocks[-1].resnets[2].conv2.weight),
        ("first_stage_model.quant_conv.weight", vae.quant_conv.weight),
    ]
    block, ldm_index = _first_attention(model)
    attn = unet.down_blocks[block].attentions[0].transformer_blocks[0]
    pairs += [
        (U + f"input_blocks.{ldm_index}.1.transformer_blocks.0.attn2.to_k.weight", attn.attn2.to_k.weight),
        (U + f"input_blocks.{ldm_index}.1.transformer_blocks.0.ff.net.2.weight", attn.ff.net[2].weight),
    ]
    if model.family.is_sdxl:
        pairs.append((U + "label_emb.0.0.weight", unet.add_embedding.linear_1.weight))
    for key, param in pairs:
        assert torch.equal(sd[key].to(param.dtype), param), key
    q = sd["first_stage_model.decoder.mid.attn_1.q.weight"]
    assert q.ndim == 4  # real files store the VAE attention as 1x1 convs
    assert torch.equal(q[:, :, 0, 0], vae.decoder.mid_block.attentions[0].to_q.weight)

    prefixes = {
        "sd1": ["cond_stage_model.transformer.text_model."],
        "sd2": ["cond_stage_model.model."],
        "sdxl": ["conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model."],
        "sdxl-refiner": ["conditioner.embedders.0.model."],
    }[model.family.base]
    for prefix, encoder in zip(prefixes, model.text_encoders, strict=True):
        tm = _text_model(encoder)
        if prefix.endswith("text_model."):
            assert torch.equal(
                sd[prefix + "encoder.layers.0.self_attn.q_proj.weight"], tm.encoder.layers[0].self_attn.q_proj.weight
            )
            assert torch.equal(sd[prefix + "final_layer_norm.weight"], tm.final_layer_norm.weight)
        else:
            width = tm.config.hidden_size
            in_proj = sd[prefix + "transformer.resblocks.0.attn.in_proj_weight"]
            assert torch.equal(in_proj[width : 2 * width], tm.encoder.layers[0].self_attn.k_proj.weight)
            assert torch.equal(sd[prefix + "ln_final.weight"], tm.final_layer_norm.weight)
            if hasattr(encoder, "text_projection"):
                assert torch.equal(sd[prefix + "text_projection"].T, encoder.text_projection.weight)
        assert not torch.allclose(tm.final_layer_norm.weight, torch.ones_like(tm.final_layer_norm.weight))


def _run_components(model: StableDiffusionModel) -> None:
    unet, vae = model.unet, model.vae
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states, pooled = [], None
        for tokenizer, encoder in zip(model.tokenizers, model.text_encoders, strict=True):
            ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
            assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
            out = encoder(ids, output_hidden_states=True)
            hidden = out.hidden_states[-2] if model.family.is_sdxl else out.last_hidden_state
            assert hidden.shape == (1, 77, encoder.config.hidden_size)
            states.append(hidden)
            if hasattr(out, "text_embeds"):
                pooled = out.text_embeds
                assert pooled.shape == (1, encoder.config.projection_dim)
        context = torch.cat(states, dim=-1)
        assert context.shape[-1] == unet.config.cross_attention_dim
        sample = torch.cat([latents] + [latents[:, :1]] * (unet.config.in_channels - 4), dim=1)
        extra = {}
        if model.family.is_sdxl:
            assert pooled is not None
            n_ids = (unet.config.projection_class_embeddings_input_dim - pooled.shape[-1]) // 256
            extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": torch.ones(1, n_ids) * 64}
        noise = unet(sample, torch.tensor([10]), encoder_hidden_states=context, **extra).sample
        assert noise.shape == (1, 4, 8, 8) and torch.isfinite(noise).all()
        image = vae.decode(latents).sample
        assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
        encoded = vae.encode(image).latent_dist.mean
        assert encoded.shape == (1, 4, 8, 8)


@pytest.mark.parametrize("family", ALL)
def test_every_family_loads_with_the_files_tensors_and_runs(tiny_models: dict[str, Path], family: str) -> None:
    path = tiny_models[family]
    model = load_single_file(path, CPU)
    assert model.family.id == family
    _check_tensors(model, load_file(str(path)))
    _run_components(model)
    assert model.timings.total > 0


def test_sd2_text_encoder_drops_the_last_layer_like_a1111_penultimate(tiny_models: dict[str, Path]) -> None:
    sd = load_file(str(tiny_models["sd2"]))
    resblocks = {k.split(".")[4] for k in sd if k.startswith("cond_stage_model.model.transformer.resblocks.")}
    model = load_single_file(tiny_models["sd2"], CPU)
    assert model.text_encoders[0].config.num_hidden_layers == len(resblocks) - 1
    assert model.tokenizers[0].pad_token == "!"


def test_sd2_prediction_type_from_yaml_or_default(tiny_models: dict[str, Path]) -> None:
    assert load_single_file(tiny_models["sd2-v"], CPU, default_sd2_prediction="epsilon").prediction_type == (
        "v_prediction"
    )
    assert load_single_file(tiny_models["sd2"], CPU, default_sd2_prediction="epsilon").prediction_type == "epsilon"
    assert load_single_file(tiny_models["sd2"], CPU).prediction_type == "v_prediction"
    assert load_single_file(tiny_models["sd1"], CPU).prediction_type == "epsilon"


def test_ckpt_loads_through_the_allow_list_with_the_same_tensors(tiny_models: dict[str, Path]) -> None:
    a = load_single_file(tiny_models["sd1-ckpt"], CPU)
    b = load_single_file(tiny_models["sd1"], CPU)
    for (name, x), (_, y) in zip(a.unet.state_dict().items(), b.unet.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_diffusers_folders_load(tiny_models: dict[str, Path]) -> None:
    for key, family in (("sd1-diffusers", "sd1"), ("sdxl-diffusers", "sdxl")):
        model = load_diffusers_folder(tiny_models[key], CPU)
        assert model.family.id == family
        single = load_single_file(tiny_models[family], CPU)
        assert torch.equal(model.unet.conv_in.weight, single.unet.conv_in.weight)
        _run_components(model)


def test_diffusers_folder_with_code_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(tiny_models["sd1-diffusers"], folder)
    (folder / "unet" / "my_unet.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(UnsafeModelFileError, match="contains code"):
        load_diffusers_folder(folder, CPU)


@pytest.mark.parametrize("key", ["vae", "vae-pt"])
def test_separate_vae_files(tiny_models: dict[str, Path], key: str) -> None:
    from modules.models.families import SD1

    vae = load_vae_file(tiny_models[key], SD1, CPU)
    sd = load_file(str(tiny_models["vae"]))
    assert torch.equal(sd["decoder.conv_out.weight"], vae.decoder.conv_out.weight)
    assert vae.config.scaling_factor == pytest.approx(0.18215)


def test_loading_a_vae_as_a_checkpoint_says_so(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(UnknownModelError, match=r"vae-tiny\.safetensors.*VAE"):
        load_single_file(tiny_models["vae"], CPU)


def test_truncated_and_garbage_files_are_clean_errors(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    data = tiny_models["sd1"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_single_file(cut, CPU)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(ModelFileError):
        load_single_file(junk, CPU)


def test_fp16_placement_gives_fp16_weights(tiny_models: dict[str, Path]) -> None:
    half = Placement(dtype=torch.float16, vae_dtype=torch.float32, text_encoder_dtype=torch.float16)
    model = load_single_file(tiny_models["sdxl"], half)
    assert model.unet.conv_in.weight.dtype == torch.float16
    assert model.vae.encoder.conv_in.weight.dtype == torch.float32
    assert all(e.dtype == torch.float16 for e in model.text_encoders)
