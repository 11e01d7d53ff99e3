"""Block-weighted merges: the weight syntaxes and presets, and every key of a merged tiny SD1 /
SDXL checkpoint checked against the formula for its block (base alpha outside the blocks)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from modules.core.errors import ValidationError
from modules.core.hashes import HashCache
from modules.models import merge as mg
from modules.models.checkpoint_io import read_state_dict
from modules.core.merge_blocks import (
    PRESET_NAMES,
    SD_LAYOUT,
    SDXL_LAYOUT,
    BlockLayout,
    layout_of,
    parse_block_weights,
    preset_values,
    presets_for,
)
from modules.models.registry import ModelRegistry
from tests.fixtures.ldm_checkpoints import tensor_specs, write_checkpoint

BLOCK = re.compile(r"^model\.diffusion_model\.(input_blocks|middle_block|output_blocks)\.(\d+)\.")

# the block-weighted merge extension's preset table (preset.tsv), as published
GRAD_V_25 = [abs(12 - i) / 12 for i in range(25)]
NORMAL_SIGMOID_25 = [0, 0.00506365740740741, 0.0196759259259259, 0.04296875, 0.0740740740740741]


def test_block_names_and_layouts() -> None:
    assert len(SD_LAYOUT) == 25 and len(SDXL_LAYOUT) == 19
    assert SD_LAYOUT.names[:2] == ("IN00", "IN01") and SD_LAYOUT.names[12] == "M00"
    assert SD_LAYOUT.names[-1] == "OUT11" and SDXL_LAYOUT.names[-1] == "OUT08"
    assert SD_LAYOUT.index_of("model.diffusion_model.input_blocks.11.0.in_layers.0.weight") == 11
    assert SD_LAYOUT.index_of("model.diffusion_model.middle_block.2.out_layers.3.bias") == 12
    assert SD_LAYOUT.index_of("model.diffusion_model.output_blocks.0.1.proj_in.weight") == 13
    for outside in (
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.out.2.weight",
        "model.diffusion_model.label_emb.0.0.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
        "first_stage_model.decoder.conv_out.weight",
    ):
        assert SD_LAYOUT.index_of(outside) is None


def test_full_list_base_first_sparse_and_names() -> None:
    values = [i / 24 for i in range(25)]
    w = parse_block_weights(",".join(str(v) for v in values), SD_LAYOUT, default=0.3)
    assert w.values == tuple(values) and w.base == 0.3  # base defaults to M
    w = parse_block_weights("0.9," + ",".join(str(v) for v in values), SD_LAYOUT, default=0.3)
    assert w.base == 0.9 and w.values == tuple(values)  # one more value in front = BASE
    w = parse_block_weights("0:0.5, 3:0.6", SD_LAYOUT, default=0.3)
    assert w.values[0] == 0.5 and w.values[3] == 0.6 and w.values[1] == 0.3 and w.values[24] == 0.3
    w = parse_block_weights("in03:0.6, M00:0.1, OUT11:1, BASE:0.2", SD_LAYOUT, default=0.3)
    assert (w.values[3], w.values[12], w.values[24], w.base) == (0.6, 0.1, 1.0, 0.2)
    w = parse_block_weights([0.5] * 19, SDXL_LAYOUT, default=0.3, base=0.7)
    assert w.values == (0.5,) * 19 and w.base == 0.7
    assert w.alpha_for("model.diffusion_model.input_blocks.8.1.proj_in.weight") == 0.5
    assert w.alpha_for("conditioner.embedders.1.model.ln_final.weight") == 0.7
    assert w.as_dict()["BASE"] == 0.7 and w.as_dict()["OUT08"] == 0.5


@pytest.mark.parametrize(
    ("text", "layout", "message"),
    [
        ("1,2", SD_LAYOUT, "need 25 values"),
        (",".join(["0.5"] * 25), SDXL_LAYOUT, "need 19 values"),
        ("0:1.5", SD_LAYOUT, "between 0 and 1"),
        ("25:0.5", SD_LAYOUT, "past the last block"),
        ("IN09:0.5", SDXL_LAYOUT, "no block 'IN09'"),
        ("IN01:0.5, 1:0.6", SD_LAYOUT, "given twice"),
        ("0.5,x", SD_LAYOUT, "not a number"),
        ("NOPE", SD_LAYOUT, "unknown block weight preset"),
        ("WRAP08", SDXL_LAYOUT, "defined for the 25 blocks"),
        ("", SD_LAYOUT, "empty"),
    ],
)
def test_bad_weights_are_clear_errors(text: str, layout: BlockLayout, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_block_weights(text, layout, default=0.3)
    with pytest.raises(ValidationError, match="given twice"):
        parse_block_weights("BASE:0.2, IN00:0.1", SD_LAYOUT, default=0.3, base=0.5)


def test_presets_match_the_extension_table() -> None:
    assert preset_values("GRAD_V", SD_LAYOUT) == pytest.approx(GRAD_V_25)
    assert preset_values("grad_a", SD_LAYOUT) == pytest.approx([1 - v for v in GRAD_V_25])
    assert preset_values("NORMAL-SIGMOID", SD_LAYOUT)[:5] == pytest.approx(NORMAL_SIGMOID_25)
    assert preset_values("WRAP08", SD_LAYOUT) == [1.0] * 4 + [0.0] * 17 + [1.0] * 4
    assert preset_values("OUT12_5", SD_LAYOUT)[12] == 0.5
    sdxl = preset_values("GRAD_V", SDXL_LAYOUT)
    assert len(sdxl) == 19 and sdxl[0] == 1 and sdxl[9] == 0 and sdxl[18] == 1
    assert set(presets_for(SD_LAYOUT)) == set(PRESET_NAMES)
    assert "WRAP08" not in presets_for(SDXL_LAYOUT) and "GRAD_V" in presets_for(SDXL_LAYOUT)
    w = parse_block_weights("FLAT_75", SD_LAYOUT, default=0.3, base=0.1)
    assert w.values == (0.75,) * 25 and w.base == 0.1


# ------------------------------------------------------------------------------ files


@pytest.fixture()
def sd_dir(tmp_path: Path) -> Path:
    sd = tmp_path / "Stable-diffusion"
    sd.mkdir()
    for name, family, seed in (
        ("a", "sd1", 0),
        ("b", "sd1", 1),
        ("c", "sd1", 2),
        ("xa", "sdxl", 0),
        ("xb", "sdxl", 1),
        ("inpaint", "sd1-inpaint", 3),
    ):
        write_checkpoint(sd / f"{name}.safetensors", family, seed=seed)
    return sd


def _registry(sd: Path) -> ModelRegistry:
    registry = ModelRegistry([sd], [], HashCache(sd.parent / "cache.json"))
    registry.refresh()
    return registry


def _expected_alpha(key: str, layout: BlockLayout, values: list[float], base: float) -> float:
    match = BLOCK.match(key)
    if match is None:
        return base
    kind, n = match.group(1), int(match.group(2))
    if kind == "input_blocks":
        return values[n]
    if kind == "middle_block":
        return values[layout.inputs]
    return values[layout.inputs + 1 + n]


@pytest.mark.parametrize(("family", "layout"), [("sd1", SD_LAYOUT), ("sd2", SD_LAYOUT), ("sdxl", SDXL_LAYOUT)])
def test_full_size_layouts(family: str, layout: BlockLayout) -> None:
    """The real models' keys (the full-size fixture layouts) give 25 / 19 blocks."""
    assert layout_of(spec.key for spec in tensor_specs(family, "full")) == layout


@pytest.mark.parametrize(("a", "b"), [("a.safetensors", "b.safetensors"), ("xa.safetensors", "xb.safetensors")])
def test_every_key_follows_its_block(sd_dir: Path, a: str, b: str) -> None:
    registry = _registry(sd_dir)
    layout = layout_of(read_state_dict(sd_dir / a))  # the tiny fixtures have fewer blocks than the real models
    values = [round(0.02 + i * 0.9 / len(layout), 4) for i in range(len(layout))]  # a distinct alpha per block
    base = 0.15
    request = mg.MergeRequest(
        primary_model_name=a,
        secondary_model_name=b,
        multiplier=0.9,
        block_weights=",".join(str(v) for v in values),
        base_alpha=base,
        custom_name="blocks",
    )
    result = mg.merge_checkpoints(request, registry, sd_dir)
    sa, sb, out = read_state_dict(sd_dir / a), read_state_dict(sd_dir / b), read_state_dict(result.path)
    seen_blocks: set[float] = set()
    for key, tensor in out.items():
        ta = sa[key]
        if not ta.is_floating_point() or "model" not in key or key in mg.SKIP_ON_MERGE:
            assert torch.equal(tensor, ta), key
            continue
        alpha = _expected_alpha(key, layout, values, base)
        seen_blocks.add(alpha)
        expected = ta.float() * (1 - alpha) + sb[key].float() * alpha
        assert torch.equal(tensor, expected.to(ta.dtype)), key
    assert seen_blocks == {*values, base}  # every block (and the base) was exercised
    recipe = json.loads(result.metadata["sd_merge_recipe"])
    assert recipe["block_weights"] == ",".join(f"{v:.6g}" for v in values) and recipe["base_alpha"] == base


def test_add_difference_per_block_and_sparse(sd_dir: Path) -> None:
    registry = _registry(sd_dir)
    request = mg.MergeRequest(
        primary_model_name="a.safetensors",
        secondary_model_name="b.safetensors",
        tertiary_model_name="c.safetensors",
        interp_method=mg.ADD_DIFFERENCE,
        multiplier=0.4,
        block_weights="IN00:1, M00:0, 1:0.9, BASE:0.5",
    )
    result = mg.merge_checkpoints(request, registry, sd_dir)
    assert result.path.name == "a + bw(b - c).safetensors"
    sa, sb, sc = (read_state_dict(sd_dir / f"{n}.safetensors") for n in "abc")
    layout = layout_of(sa)
    out = read_state_dict(result.path)
    values = [0.4] * len(layout)
    values[0], values[1], values[layout.inputs] = 1.0, 0.9, 0.0
    for key, tensor in out.items():
        if not sa[key].is_floating_point() or key in mg.SKIP_ON_MERGE:
            continue
        alpha = _expected_alpha(key, layout, values, 0.5)
        expected = sa[key].float() + (sb[key].float() - sc[key].float()) * alpha
        assert torch.equal(tensor, expected), key


def test_inpainting_a_with_blocks(sd_dir: Path) -> None:
    registry = _registry(sd_dir)
    request = mg.MergeRequest(
        primary_model_name="inpaint.safetensors", secondary_model_name="b.safetensors", block_weights="GRAD_V"
    )
    result = mg.merge_checkpoints(request, registry, sd_dir)
    assert result.is_inpainting and result.path.name == "bw(inpaint, b).inpainting.safetensors"
    out, sa, sb = (
        read_state_dict(result.path),
        read_state_dict(sd_dir / "inpaint.safetensors"),
        read_state_dict(sd_dir / "b.safetensors"),
    )
    conv = "model.diffusion_model.input_blocks.0.0.weight"  # IN00: alpha 1 -> B's 4 channels, A's extra 5
    assert torch.equal(out[conv][:, :4], sb[conv]) and torch.equal(out[conv][:, 4:], sa[conv][:, 4:])


def test_mismatched_families_refused_before_any_tensor(sd_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = _registry(sd_dir)

    def no_reads(self: mg.TensorSource, key: str) -> torch.Tensor:
        raise AssertionError(f"read {key} before refusing")

    monkeypatch.setattr(mg.TensorSource, "get", no_reads)
    for request in (
        mg.MergeRequest(primary_model_name="a.safetensors", secondary_model_name="xb.safetensors"),
        mg.MergeRequest(
            primary_model_name="a.safetensors",
            secondary_model_name="b.safetensors",
            tertiary_model_name="xa.safetensors",
            interp_method=mg.ADD_DIFFERENCE,
        ),
    ):
        with pytest.raises(ValidationError, match="must be of the same kind"):
            mg.merge_checkpoints(request, registry, sd_dir)
    # a block list of the wrong length, and a preset the model has no table for: also before any read
    for weights, message in (("0.5,0.5", "need 13 values"), ("WRAP08", "25 blocks")):
        with pytest.raises(ValidationError, match=message):
            mg.merge_checkpoints(
                mg.MergeRequest(
                    primary_model_name="xa.safetensors" if weights == "WRAP08" else "a.safetensors",
                    secondary_model_name="xb.safetensors" if weights == "WRAP08" else "b.safetensors",
                    block_weights=weights,
                ),
                registry,
                sd_dir,
            )
    assert not list(sd_dir.glob(".*tmp"))


def test_request_refusals() -> None:
    for kwargs, message in (
        ({"interp_method": mg.NO_INTERPOLATION, "block_weights": "GRAD_V"}, "two or three models"),
        ({"base_alpha": 0.5}, "only with block weights"),
        ({"block_weights": "GRAD_V", "base_alpha": 1.5}, "base alpha must be between"),
        ({"bake_loras": (("", 1.0),)}, "needs a name"),
        ({"bake_loras": (("x", float("nan")),)}, "must be a number"),
    ):
        request = mg.MergeRequest(primary_model_name="a", secondary_model_name="b", **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match=message):
            mg.validate_request(request)
