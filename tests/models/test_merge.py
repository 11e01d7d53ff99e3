"""Checkpoint merging on the tiny fixture checkpoints: exact numerics of the three methods,
float16, VAE baking, discarding, inpainting/ip2p first convs, metadata, config copy, the merged
file loading through the loader and appearing in the registry, refusals and atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from modules.core.errors import ModelFileError, NotFoundError, ValidationError
from modules.core.hashes import HashCache, sha256_file
from modules.models import merge as mg
from modules.models.checkpoint_io import read_state_dict
from modules.models.loader import Placement, load_single_file
from modules.models.registry import ModelRegistry
from tests.fixtures.ldm_checkpoints import write_checkpoint

CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
UNET_W = "model.diffusion_model.out.2.weight"
TEXT_W = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
VAE_W = "first_stage_model.decoder.conv_out.weight"


@pytest.fixture()
def env(tiny_models: dict[str, Path], tmp_path: Path) -> tuple[ModelRegistry, Path]:
    sd = tmp_path / "models" / "Stable-diffusion"
    vae = tmp_path / "models" / "VAE"
    sd.mkdir(parents=True)
    vae.mkdir(parents=True)
    shutil.copy(tiny_models["sd1"], sd / "a.safetensors")
    write_checkpoint(sd / "b.safetensors", "sd1", seed=1)
    write_checkpoint(sd / "c.safetensors", "sd1", seed=2)
    shutil.copy(tiny_models["sd1-ckpt"], sd / "a_pickle.ckpt")
    shutil.copy(tiny_models["sd1-inpaint"], sd / "inpaint.safetensors")
    shutil.copy(tiny_models["sd1-ip2p"], sd / "ip2p.safetensors")
    shutil.copy(tiny_models["vae"], vae / "vae-tiny.safetensors")
    (sd / "b.yaml").write_text("model: {}\n", encoding="utf-8")
    registry = ModelRegistry([sd], [vae], HashCache(tmp_path / "cache.json"))
    registry.refresh()
    return registry, sd


def _req(**kw: object) -> mg.MergeRequest:
    base: dict[str, object] = {"primary_model_name": "a.safetensors", "secondary_model_name": "b.safetensors"}
    base.update(kw)
    return mg.MergeRequest(**base)  # type: ignore[arg-type]


def _sd(path: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(path)


def test_merge_tensor_numerics_exact() -> None:
    a = torch.tensor([1.0, 2.0, 4.0])
    b = torch.tensor([3.0, 6.0, 0.0])
    c = torch.tensor([1.0, 1.0, 1.0])
    out, kind = mg.merge_tensor(mg.WEIGHTED_SUM, a, b, None, 0.25)
    assert kind == "merged"
    assert out.tolist() == [1.5, 3.0, 3.0]
    out, _ = mg.merge_tensor(mg.ADD_DIFFERENCE, a, b, c, 0.5)
    assert out.tolist() == [2.0, 4.5, 3.5]
    out, kind = mg.merge_tensor(mg.NO_INTERPOLATION, a, b, None, 0.5)
    assert kind == "kept" and out is a
    ints = torch.tensor([1, 2])
    assert mg.merge_tensor(mg.WEIGHTED_SUM, ints, ints * 3, None, 0.5)[0] is ints
    half = mg.merge_tensor(mg.WEIGHTED_SUM, a.half(), b.half(), None, 0.25)[0]
    assert half.dtype == torch.float16 and half.tolist() == [1.5, 3.0, 3.0]


def test_weighted_sum_file(env: tuple[ModelRegistry, Path]) -> None:
    registry, sd = env
    steps: list[tuple[int, int]] = []
    result = mg.merge_checkpoints(
        _req(multiplier=0.3), registry, sd, progress=lambda done, total, _w: steps.append((done, total))
    )
    assert result.path == sd / "0.7(a) + 0.3(b).safetensors"
    assert result.message == f"Checkpoint saved to {result.path}"
    a, b, out = _sd(sd / "a.safetensors"), _sd(sd / "b.safetensors"), _sd(result.path)
    for key in (UNET_W, TEXT_W, VAE_W):
        expected = a[key].float() * 0.7 + b[key].float() * 0.3
        assert torch.equal(out[key], expected), key
        assert not torch.equal(out[key], a[key])
    assert not any(k.startswith("model_ema.") for k in out)
    # non-float tensors (position ids) are A's
    for key, tensor in a.items():
        if not tensor.is_floating_point() and not key.startswith("model_ema."):
            assert torch.equal(out[key], tensor), key
    assert steps[0][0] == 0 and steps[-1][0] == steps[-1][1] == len(out) == len(a) - 2  # model_ema.* dropped
    assert result.merged > 0
    # the registry was refreshed: the new file is listed (as the top-bar dropdown shows it)
    assert result.path.name in [c.name for c in registry.checkpoints()]
    # config "A, B or C": A has none, B has one
    assert (sd / "0.7(a) + 0.3(b).yaml").read_text(encoding="utf-8") == "model: {}\n"


def test_merged_file_loads_through_loader(env: tuple[ModelRegistry, Path]) -> None:
    registry, sd = env
    result = mg.merge_checkpoints(_req(multiplier=0.5, custom_name="half"), registry, sd)
    model = load_single_file(result.path, Placement())
    assert model.family.id == "sd1"
    info = registry.find_checkpoint("half")
    assert info.filename == result.path


def test_add_difference(env: tuple[ModelRegistry, Path]) -> None:
    registry, sd = env
    req = _req(
        interp_method=mg.ADD_DIFFERENCE, tertiary_model_name="c.safetensors", multiplier=0.5, config_source="Don't"
    )
    result = mg.merge_checkpoints(req, registry, sd)
    assert result.path.name == "a + 0.5(b - c).safetensors"
    a, b, c = _sd(sd / "a.safetensors"), _sd(sd / "b.safetensors"), _sd(sd / "c.safetensors")
    out = _sd(result.path)
    for key in (UNET_W, TEXT_W):
        assert torch.equal(out[key], a[key] + (b[key] - c[key]) * 0.5)
    assert not (sd / "a + 0.5(b - c).yaml").exists()


def test_no_interpolation_fp16_from_pickle(env: tuple[ModelRegistry, Path]) -> None:
    registry, sd = env
    req = mg.MergeRequest(
        primary_model_name="a_pickle.ckpt", interp_method=mg.NO_INTERPOLATION, save_as_half=True, custom_name="conv"
    )
    result = mg.merge_checkpoints(req, registry, sd)
    a, out = _sd(sd / "a_pickle.ckpt"), _sd(result.path)
    assert result.merged == 0
    assert set(out) == {k for k in a if not k.startswith("model_ema.")}
    for key, tensor in out.items():
        if a[key].dtype == torch.float32:
            assert tensor.dtype == torch.float16
            assert torch.equal(tensor, a[key].half())
        else:
            assert torch.equal(tensor, a[key])


def test_ckpt_format_output(env: tuple[ModelRegistry, Path]) -> None:
    registry, sd = env
    req = mg.MergeRequest(
        primary_model_name="a.safetensors", interp_method=mg.NO_INTERPOLATION, checkpoint_format="ckpt"
    )
    result = mg.merge_checkpoints(req, registry, sd)
    assert result.path == sd / "a.ckpt"
    out = read_state_dict(result.path)  # the restricted loader reads it
    assert torch.equal(out[UNET_W], _sd(sd / "a.safetensors")[UNET_W])


def test_bake_vae_and_discard(env: tuple[ModelRegistry, Path]) -> None:
    registry, sd = env
    vae = load_file(str(registry.find_vae("vae-tiny.safetensors").filename))
    req = _req(bake_in_vae="vae-tiny.safetensors", discard_weights=r"^cond_stage_model\.", custom_name="baked")
    result = mg.merge_checkpoints(req, registry, sd)
    out = _sd(result.path)
    assert torch.equal(out[VAE_W], vae["decoder.conv_out.weight"])
    assert not any(k.startswith("cond_stage_model.") for k in out)
    assert result.discarded > 0
    assert any(k.startswith("model.diffusion_model.") for k in out)


def test_inpainting_first_conv(env: tuple[ModelRegistry, Path]) -> None:
    registry, sd = env
    result = mg.merge_checkpoints(_req(primary_model_name="inpaint.safetensors", multiplier=0.5), registry, sd)
    assert result.is_inpainting
    assert result.path.name == "0.5(inpaint) + 0.5(b).inpainting.safetensors"
    a, b, out = _sd(sd / "inpaint.safetensors"), _sd(sd / "b.safetensors"), _sd(result.path)
    assert a[CONV_IN].shape[1] == 9 and b[CONV_IN].shape[1] == 4
    assert out[CONV_IN].shape == a[CONV_IN].shape
    assert torch.equal(out[CONV_IN][:, :4], a[CONV_IN][:, :4] * 0.5 + b[CONV_IN] * 0.5)
    assert torch.equal(out[CONV_IN][:, 4:], a[CONV_IN][:, 4:])
    assert load_single_file(result.path, Placement()).family.id == "sd1-inpaint"

    ip2p = mg.merge_checkpoints(_req(primary_model_name="ip2p.safetensors", multiplier=0.5), registry, sd)
    assert ip2p.is_instruct_pix2pix and ip2p.path.name.endswith(".instruct-pix2pix.safetensors")
    assert _sd(ip2p.path)[CONV_IN].shape[1] == 8

    with pytest.raises(ValidationError, match="A must be the inpainting model"):
        mg.merge_checkpoints(_req(secondary_model_name="inpaint.safetensors", custom_name="x"), registry, sd)
    assert not (sd / "x.safetensors").exists()


def test_metadata(env: tuple[ModelRegistry, Path]) -> None:
    registry, sd = env
    req = _req(multiplier=0.25, custom_name="meta", metadata_json='{"author": "me"}')
    result = mg.merge_checkpoints(req, registry, sd)
    with safe_open(str(result.path), framework="pt") as handle:
        meta = handle.metadata()
    recipe = json.loads(meta["sd_merge_recipe"])
    sha_a, sha_b = sha256_file(sd / "a.safetensors"), sha256_file(sd / "b.safetensors")
    assert recipe["type"] == "webui"
    assert recipe["primary_model_hash"] == sha_a and recipe["secondary_model_hash"] == sha_b
    assert recipe["tertiary_model_hash"] is None
    assert recipe["interp_method"] == "Weighted sum" and recipe["multiplier"] == 0.25
    assert recipe["is_inpainting"] is False and recipe["custom_name"] == "meta"
    models = json.loads(meta["sd_merge_models"])
    assert models[sha_a]["name"] == "a.safetensors" and models[sha_b]["name"] == "b.safetensors"
    assert meta["author"] == "me" and meta["format"] == "pt"

    # a merge of a merge carries the earlier recipe
    again = mg.merge_checkpoints(_req(primary_model_name="meta.safetensors", custom_name="meta2"), registry, sd)
    models2 = json.loads(again.metadata["sd_merge_models"])
    assert sha_a in models2 and models2[sha256_file(result.path)]["sd_merge_recipe"]["multiplier"] == 0.25

    bare = mg.merge_checkpoints(_req(custom_name="bare", save_metadata=False), registry, sd)
    with safe_open(str(bare.path), framework="pt") as handle:
        assert "sd_merge_recipe" not in (handle.metadata() or {})


def test_refusals(env: tuple[ModelRegistry, Path]) -> None:
    registry, sd = env
    before = sorted(p.name for p in sd.iterdir())
    with pytest.raises(ValidationError, match="primary"):
        mg.merge_checkpoints(_req(primary_model_name=""), registry, sd)
    with pytest.raises(ValidationError, match="secondary"):
        mg.merge_checkpoints(_req(secondary_model_name=None), registry, sd)
    with pytest.raises(ValidationError, match="tertiary"):
        mg.merge_checkpoints(_req(interp_method=mg.ADD_DIFFERENCE), registry, sd)
    with pytest.raises(ValidationError, match="regular expression"):
        mg.merge_checkpoints(_req(discard_weights="(["), registry, sd)
    with pytest.raises(ValidationError, match="plain file name"):
        mg.merge_checkpoints(_req(custom_name="../evil"), registry, sd)
    with pytest.raises(NotFoundError):
        mg.merge_checkpoints(_req(secondary_model_name="nope"), registry, sd)
    # the output would be an input: refused, input untouched
    digest = sha256_file(sd / "a.safetensors")
    with pytest.raises(ValidationError, match="overwrite an input"):
        mg.merge_checkpoints(_req(custom_name="a"), registry, sd)
    assert sha256_file(sd / "a.safetensors") == digest
    assert sorted(p.name for p in sd.iterdir()) == before
    # any existing file: refused too
    mg.merge_checkpoints(_req(custom_name="once"), registry, sd)
    with pytest.raises(ValidationError, match="already exists"):
        mg.merge_checkpoints(_req(custom_name="once"), registry, sd)


def test_interrupted_merge_leaves_no_file(env: tuple[ModelRegistry, Path]) -> None:
    registry, sd = env
    before = sorted(p.name for p in sd.iterdir())

    class Stop(Exception):
        pass

    def stop_late(done: int, total: int, what: str) -> None:
        if what == "Saving":
            raise Stop()

    with pytest.raises(Stop):
        mg.merge_checkpoints(_req(custom_name="partial"), registry, sd, progress=stop_late)
    assert sorted(p.name for p in sd.iterdir()) == before

    def stop_midway(done: int, total: int, what: str) -> None:
        if done == total // 2:
            assert any(p.name.startswith(".partial.safetensors.") for p in sd.iterdir())  # being written
            raise Stop()

    with pytest.raises(Stop):
        mg.merge_checkpoints(_req(custom_name="partial"), registry, sd, progress=stop_midway)
    assert sorted(p.name for p in sd.iterdir()) == before

    # a tensor that does not fit the header already written: refused, the temp file removed
    with pytest.raises(ModelFileError), mg._Output(sd / "broken.safetensors", [("x", torch.float32, (2,))], {}) as out:
        out.add("x", torch.zeros(3))
    assert sorted(p.name for p in sd.iterdir()) == before


def test_streamed_safetensors_match_the_library(tmp_path: Path) -> None:
    """Our streaming writer against safetensors' reader: dtypes, shapes, 0-d and empty tensors,
    tied tensors (as some pickles have), metadata."""
    shared = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    tensors = {
        "a.model.w": shared,
        "b.model.w": shared,
        "half": torch.randn(3, 1, 2).half(),
        "bf16": torch.randn(4).bfloat16(),
        "ids": torch.arange(77, dtype=torch.int64)[None],
        "scalar": torch.tensor(0.5),
        "empty": torch.zeros(0, 4),
        "flag": torch.tensor([True, False]),
    }
    target = tmp_path / "stream.safetensors"
    mg.write_checkpoint(target, tensors, {"format": "pt", "x": "é"})
    out = load_file(str(target))
    assert set(out) == set(tensors)
    for key, tensor in tensors.items():
        assert out[key].dtype == tensor.dtype and torch.equal(out[key], tensor), key
    with safe_open(str(target), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "x": "é"}
    with pytest.raises(ValidationError, match="already exists"):
        mg.write_checkpoint(target, tensors, {})


def test_existing_name_refused_before_merging(env: tuple[ModelRegistry, Path]) -> None:
    registry, sd = env
    (sd / "taken.safetensors").write_bytes(b"not ours")
    steps: list[int] = []
    with pytest.raises(ValidationError, match="already exists"):
        mg.merge_checkpoints(_req(custom_name="taken"), registry, sd, progress=lambda d, _t, _w: steps.append(d))
    assert steps == []  # refused from the headers, before any tensor was read
    assert (sd / "taken.safetensors").read_bytes() == b"not ours"
    # an inpainting result gets its suffix, so the plain name being taken is no obstacle
    result = mg.merge_checkpoints(_req(primary_model_name="inpaint.safetensors", custom_name="taken"), registry, sd)
    assert result.path.name == "taken.inpainting.safetensors"
