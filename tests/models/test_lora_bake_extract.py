"""LoRA bake into / extract from single-file checkpoints, on the tiny fixture checkpoints.

* `CheckpointLayers`: every parameter of the loaded UNet and text encoders equals the file tensor
  (or rows of it) the map names, for SD1, SD2, SDXL and the refiner.
* `BakePlan`: a checkpoint with LoRAs baked in by a small streaming driver (TensorSource ->
  plan.apply -> write_checkpoint), loaded by the loader, equals the original checkpoint with the
  same LoRAs applied at run time (`WeightPatcher` + `NetworkPatch`).
* `extract_lora`: B = A + random low-rank deltas; the extracted LoRA applied to A at run time
  gives B (rank >= the deltas' rank) or B within the SVD truncation error (lower rank); the file
  reads in the network registry and matches every key; interrupts and bad inputs leave no file.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modules.core.errors import ModelFileError, ValidationError
from modules.core.hashes import HashCache
from modules.models.checkpoint_io import read_state_dict, tensor_shapes
from modules.models.checkpoint_layers import CheckpointLayers
from modules.models.loader import Placement, StableDiffusionModel, load_single_file
from modules.models.lora_bake import BakePlan, BakeReport, Weight
from modules.models.lora_extract import extract_lora, low_rank
from modules.models.lora_formats import NetworkWeights, parse_network, read_network
from modules.models.lora_patch import NetworkPatch, match_network
from modules.models.merge import TensorSource, write_checkpoint
from modules.models.network_registry import NetworkRegistry
from modules.models.patches import WeightPatcher, namespace
from tests.fixtures import lora_files as lf

pytestmark = pytest.mark.usefixtures("no_network")

U = "model.diffusion_model."


def state(model: StableDiffusionModel) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by namespaced name (`unet.*`, `vae.*`, `text_encoder*.*`)."""
    return {
        f"{prefix}.{name}": tensor.detach().clone()
        for prefix, module in namespace(model).items()
        for name, tensor in module.state_dict().items()
    }


def runtime_state(checkpoint: Path, networks: Sequence[tuple[NetworkWeights, float, float]]) -> dict[str, torch.Tensor]:
    """The checkpoint loaded and patched at run time: (weights, te, unet) per network, in order."""
    model = load_single_file(checkpoint, Placement())
    patches = [NetworkPatch(f"n{i}", w, te, unet) for i, (w, te, unet) in enumerate(networks)]
    WeightPatcher(model).apply(patches)
    return state(model)


def assert_states_close(actual: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert actual.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(actual[name], tensor, rtol=1e-5, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


# ---------------------------------------------------------------------------- the layer map


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl-refiner", "sd1-inpaint"])
def test_every_mapped_parameter_equals_its_file_tensor(tiny_models: dict[str, Path], family: str) -> None:
    path = tiny_models[family]
    layers = CheckpointLayers(tensor_shapes(path), path)
    assert all(p.device.type == "meta" for m in layers.components().values() for p in m.parameters())
    loaded = load_single_file(path, Placement())
    file = read_state_dict(path)
    modules = namespace(loaded)
    params = {
        f"{prefix}.{name}": tensor
        for prefix, module in modules.items()
        if prefix != "vae"
        for name, tensor in module.named_parameters()
    }
    mapped = {param.param_name: slot for param, slot in layers.items()}
    assert layers.unmapped == []
    assert mapped.keys() == params.keys()  # every UNet / text-encoder parameter, nothing else
    for name, slot in mapped.items():
        want = slot.view(file[slot.key]).reshape(params[name].shape)
        assert torch.equal(params[name], want.to(params[name].dtype)), name
    # the other direction: a file key lists the parameters stored in it, rows covering it once
    for key in layers.file_keys():
        entries = layers.at(key)
        assert all(slot.key == key for _, slot in entries)
        if len(entries) > 1:
            rows = sorted((s.rows.start, s.rows.stop) for _, s in entries if s.rows is not None)
            assert len(rows) == 3 and rows[0][0] == 0 and rows[-1][1] == file[key].shape[0]
            assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))
    if family in ("sd2", "sdxl", "sdxl-refiner"):
        assert any(len(layers.at(k)) == 3 for k in layers.file_keys())  # OpenCLIP q/k/v
        assert any(slot.transposed for _, slot in layers.items()) == (family != "sd2")


def test_a_file_missing_a_lora_target_is_refused(tiny_models: dict[str, Path]) -> None:
    path = tiny_models["sd1"]
    shapes = dict(tensor_shapes(path))
    del shapes[U + "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight"]
    with pytest.raises(ModelFileError, match=r"ff\.net\.2"):
        CheckpointLayers(shapes, path)


# ----------------------------------------------------------------------------------- baking


def bake(checkpoint: Path, networks: Sequence[tuple[NetworkWeights, Weight]], out: Path) -> BakeReport:
    """The merge loop in miniature: stream A's tensors, add the plan's deltas, write."""
    with TensorSource(checkpoint) as source:
        plan = BakePlan(source.shapes, checkpoint, networks)
        tensors: dict[str, torch.Tensor] = {}
        for key in source.keys():  # noqa: SIM118 - TensorSource has no __iter__
            tensor = source.get(key)
            assert tensor is not None
            if plan.touches(key):
                baked = plan.apply(key, tensor)
                assert baked.dtype == torch.float32
                tensor = baked.to(tensor.dtype)
            tensors[key] = tensor
        write_checkpoint(out, tensors, {"format": "pt"})
    return plan.report


@pytest.fixture(scope="module")
def pristine(tiny_models: dict[str, Path]) -> dict[str, StableDiffusionModel]:
    """Loaded, never patched models (the LoRA fixture writers read layer names and shapes)."""
    return {f: load_single_file(tiny_models[f], Placement()) for f in ("sd1", "sd2", "sdxl")}


def _check_bake(
    checkpoint: Path, files: Sequence[tuple[lf.LoraFile, float, float]], out: Path
) -> dict[str, torch.Tensor]:
    networks = [(read_network(f.path), (te, unet)) for f, te, unet in files]
    report = bake(checkpoint, networks, out)
    for (f, _, _), entry in zip(files, report.networks, strict=True):
        assert (entry.unmatched, entry.unsupported, entry.dropped_bias) == ([], [], [])
        assert entry.matched == len(f.module_keys)
    assert report.complete and report.warnings() == []
    baked = state(load_single_file(out, Placement()))
    want = runtime_state(checkpoint, [(w, te, unet) for (w, _), (_, te, unet) in zip(networks, files, strict=True)])
    assert_states_close(baked, want)
    original = state(load_single_file(checkpoint, Placement()))
    changed = [k for k in original if not torch.equal(original[k], baked[k])]
    assert changed and not any(k.startswith("vae.") for k in changed)
    return baked


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_a_baked_kohya_lora_and_locon_equals_the_run_time_patch(
    tiny_models: dict[str, Path], pristine: dict[str, StableDiffusionModel], tmp_path: Path, family: str
) -> None:
    f = lf.kohya_sd(tmp_path / "lora.safetensors", pristine[family])
    assert any(k.endswith("_conv2") for k in f.module_keys)  # LoCon with lora_mid
    _check_bake(tiny_models[family], [(f, 0.7, 0.7)], tmp_path / "baked.safetensors")


def test_a_baked_sdxl_lora_equals_the_run_time_patch(
    tiny_models: dict[str, Path], pristine: dict[str, StableDiffusionModel], tmp_path: Path
) -> None:
    """kohya SDXL names (SGM UNet, lora_te1_, lora_te2_ into OpenCLIP's fused q/k/v rows)."""
    f = lf.kohya_ldm(tmp_path / "xl.safetensors", tiny_models["sdxl"], pristine["sdxl"])
    assert any(k.startswith("lora_te2_") and k.endswith("q_proj") for k in f.module_keys)
    _check_bake(tiny_models["sdxl"], [(f, 0.8, 0.8)], tmp_path / "baked.safetensors")


@pytest.mark.parametrize("algo", ["loha", "lokr", "full", "norm", "dora", "ia3", "glora"])
def test_baked_lycoris_formats_equal_the_run_time_patch(
    tiny_models: dict[str, Path], pristine: dict[str, StableDiffusionModel], tmp_path: Path, algo: str
) -> None:
    """Bias deltas (full, norm) and deltas that read the pristine weight (DoRA, IA3, GLoRA)."""
    f = lf.lycoris(tmp_path / f"{algo}.safetensors", pristine["sd1"], algo)
    _check_bake(tiny_models["sd1"], [(f, 0.6, 0.6)], tmp_path / "baked.safetensors")


def test_two_loras_baked_at_once_with_their_own_weights(
    tiny_models: dict[str, Path], pristine: dict[str, StableDiffusionModel], tmp_path: Path
) -> None:
    model = pristine["sd1"]
    a = lf.kohya_sd(tmp_path / "a.safetensors", model, seed=1)
    b = lf.lycoris(tmp_path / "b.safetensors", model, "loha", seed=2)
    baked = _check_bake(tiny_models["sd1"], [(a, 0.7, 0.7), (b, -0.5, -0.5)], tmp_path / "two.safetensors")
    only_a = _check_bake(tiny_models["sd1"], [(a, 0.7, 0.7)], tmp_path / "one.safetensors")
    assert any(not torch.equal(baked[k], only_a[k]) for k in b.deltas)


def test_one_number_is_both_multipliers_and_a_pair_is_te_then_unet(
    tiny_models: dict[str, Path], pristine: dict[str, StableDiffusionModel], tmp_path: Path
) -> None:
    f = lf.kohya_sd(tmp_path / "lora.safetensors", pristine["sd1"], seed=5)
    weights = read_network(f.path)
    bake(tiny_models["sd1"], [(weights, 0.4)], tmp_path / "one.safetensors")
    assert_states_close(
        state(load_single_file(tmp_path / "one.safetensors", Placement())),
        runtime_state(tiny_models["sd1"], [(weights, 0.4, 0.4)]),
    )
    bake(tiny_models["sd1"], [(weights, (0.0, 1.5))], tmp_path / "pair.safetensors")
    pair = state(load_single_file(tmp_path / "pair.safetensors", Placement()))
    assert_states_close(pair, runtime_state(tiny_models["sd1"], [(weights, 0.0, 1.5)]))
    original = state(pristine["sd1"])
    assert all(torch.equal(pair[k], original[k]) for k in original if k.startswith("text_encoder."))


def test_a_full_delta_on_openclips_transposed_projection_bakes_like_run_time(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """`text_projection` is stored [width, proj] in the file and is [proj, width] in the model."""
    shape = tuple(tensor_shapes(tiny_models["sdxl"])["conditioner.embedders.1.model.text_projection"])
    generator = torch.Generator().manual_seed(7)
    diff = torch.randn(shape[1], shape[0], generator=generator) * 0.1  # the model's layout
    weights = parse_network({"lora_te2_text_projection.diff": diff}, source="proj.safetensors")
    report = bake(tiny_models["sdxl"], [(weights, 0.5)], tmp_path / "baked.safetensors")
    assert (report.networks[0].matched_te, report.complete) == (1, True)
    baked = state(load_single_file(tmp_path / "baked.safetensors", Placement()))
    assert_states_close(baked, runtime_state(tiny_models["sdxl"], [(weights, 0.5, 0.5)]))
    original = state(load_single_file(tiny_models["sdxl"], Placement()))
    name = "text_encoder_2.text_projection.weight"
    torch.testing.assert_close(baked[name], original[name] + 0.5 * diff)


def test_what_cannot_be_baked_is_reported(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    down, up = torch.zeros(2, 32), torch.zeros(32, 2)
    weights = parse_network(
        {
            "lora_unet_no_such_layer.lora_down.weight": down,
            "lora_unet_no_such_layer.lora_up.weight": up,
            "lora_unet_down_blocks_0_attentions_0_proj_in.oft_blocks": torch.zeros(4, 8, 8),
        },
        source="odd.safetensors",
    )
    with TensorSource(tiny_models["sd1"]) as source:
        plan = BakePlan(source.shapes, tiny_models["sd1"], [(weights, 1.0)])
    entry = plan.report.networks[0]
    assert (entry.unmatched, entry.unsupported) == (
        ["lora_unet_no_such_layer"],
        ["lora_unet_down_blocks_0_attentions_0_proj_in"],
    )
    assert not plan.report.complete and plan.keys == frozenset()
    warnings = " ".join(plan.report.warnings())
    assert "nothing baked" in warnings and "match no layer" in warnings and "no supported format" in warnings


# ------------------------------------------------------------------------------- extracting

# (file key, rows or None, rank of the delta): UNet linears, 1x1 and 3x3 convs, text encoders
SD1_TARGETS = [
    (U + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", None, 3),
    (U + "input_blocks.4.1.transformer_blocks.0.ff.net.2.weight", None, 3),
    (U + "output_blocks.2.1.proj_in.weight", None, 3),
    (U + "input_blocks.4.0.in_layers.2.weight", None, 3),
    ("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", None, 3),
    ("cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc1.weight", None, 3),
]
SDXL_TARGETS = [
    (U + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", None, 3),
    (U + "input_blocks.4.0.in_layers.2.weight", None, 3),
    ("conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc2.weight", None, 3),
    ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", slice(128, 256), 3),
    ("conditioner.embedders.1.model.transformer.resblocks.1.mlp.c_fc.weight", None, 3),
]
Target = tuple[str, slice | None, int]


def tuned_checkpoint(
    base: Path, targets: Sequence[Target], out: Path, seed: int = 0, scale: float = 0.3
) -> dict[str, torch.Tensor]:
    """B = A + a random rank-r delta on each target (rows of a fused tensor where given);
    returns the deltas (each the shape of its rows / tensor)."""
    tensors = load_file(str(base))
    generator = torch.Generator().manual_seed(seed)
    deltas: dict[str, torch.Tensor] = {}
    for key, rows, rank in targets:
        part = tensors[key][rows] if rows is not None else tensors[key]
        mat = part.reshape(part.shape[0], -1)
        left = torch.randn(mat.shape[0], rank, generator=generator)
        right = torch.randn(rank, mat.shape[1], generator=generator)
        delta = (left @ right * (scale / math.sqrt(rank * mat.shape[1]))).reshape(part.shape)
        part.add_(delta)  # a view: writes into tensors[key]
        deltas[f"{key}[{rows}]"] = delta
    save_file(tensors, str(out), metadata={"format": "pt"})
    return deltas


def applied(original: Path, lora: Path) -> dict[str, torch.Tensor]:
    return runtime_state(original, [(read_network(lora), 1.0, 1.0)])


@pytest.mark.parametrize(("family", "targets"), [("sd1", SD1_TARGETS), ("sdxl", SDXL_TARGETS)])
def test_an_extracted_lora_applied_to_a_reproduces_b(
    tiny_models: dict[str, Path], tmp_path: Path, family: str, targets: list[Target]
) -> None:
    a = tiny_models[family]
    b = tmp_path / "b.safetensors"
    tuned_checkpoint(a, targets, b)
    result = extract_lora(a, b, tmp_path / "x.safetensors", rank=4, conv_rank=4, clamp_quantile=1.0)
    assert result.path == tmp_path / "x.safetensors" and not result.text_encoder_skipped
    assert_states_close(applied(a, result.path), state(load_single_file(b, Placement())), atol=2e-5)


@pytest.mark.parametrize(("family", "targets"), [("sd1", SD1_TARGETS), ("sdxl", SDXL_TARGETS)])
def test_a_lower_rank_loses_exactly_the_dropped_singular_values(
    tiny_models: dict[str, Path], tmp_path: Path, family: str, targets: list[Target]
) -> None:
    a = tiny_models[family]
    b = tmp_path / "b.safetensors"
    deltas = tuned_checkpoint(a, targets, b, seed=3)
    rank = 1
    result = extract_lora(a, b, tmp_path / "x.safetensors", rank=rank, conv_rank=rank, clamp_quantile=1.0)
    got, want = applied(a, result.path), state(load_single_file(b, Placement()))
    errors = sorted(float((got[k] - want[k]).norm()) for k in want if not torch.allclose(got[k], want[k], atol=1e-5))
    expected = sorted(
        float(torch.linalg.svdvals(d.reshape(d.shape[0], -1))[rank:].square().sum().sqrt()) for d in deltas.values()
    )
    assert len(errors) == len(expected) and all(e > 1e-3 for e in expected)
    for error, truncation in zip(errors, expected, strict=True):
        assert error == pytest.approx(truncation, rel=1e-3)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_extracted_file_reads_in_the_registry_and_matches_every_key(
    tiny_models: dict[str, Path], pristine: dict[str, StableDiffusionModel], tmp_path: Path, family: str
) -> None:
    a = tiny_models[family]
    b = tmp_path / "b.safetensors"
    tuned_checkpoint(a, SD1_TARGETS if family == "sd1" else SDXL_TARGETS, b)
    lora_dir = tmp_path / "Lora"
    result = extract_lora(a, b, lora_dir / "extracted.safetensors", rank=8, conv_rank=2, save_fp16=True)
    registry = NetworkRegistry([lora_dir], [], HashCache(tmp_path / "cache.json"))
    info = registry.find_lora("extracted")
    assert info.error is None and info.sd_version == ("SDXL" if family == "sdxl" else "SD1")
    weights = read_network(result.path)
    match = match_network(weights, pristine[family])
    assert (match.unmatched, match.unsupported) == ([], [])
    assert match.matched_unet + match.matched_te == len(weights.modules) == result.modules
    keys = set(weights.modules)
    if family == "sd1":
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in keys
        assert "lora_unet_down_blocks_1_resnets_0_conv1" in keys  # conv_rank > 0: the resnets
        assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in keys
    else:
        assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k" in keys
        assert "lora_te1_text_model_encoder_layers_0_mlp_fc2" in keys
        assert "lora_te2_text_model_encoder_layers_0_self_attn_k_proj" in keys
    with safe_open(str(result.path), framework="pt") as fh:
        metadata = fh.metadata()
        stored = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    assert {t.dtype for t in stored.values()} == {torch.float16}
    conv = ("_conv1.lora_down.weight", "_in_layers_2.lora_down.weight")  # 3x3 resnet convs (SD1, SDXL names)
    conv_down = next(t for k, t in stored.items() if k.endswith(conv))
    assert conv_down.shape[0] == 2 and conv_down.dim() == 4
    assert metadata["ss_network_module"] == "networks.lora"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("8", "8.0")
    assert metadata == result.metadata


def test_text_encoders_below_min_diff_are_left_out(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    a = tiny_models["sd1"]
    b = tmp_path / "b.safetensors"
    tensors = load_file(str(a))
    tensors[SD1_TARGETS[0][0]] += 0.05
    tensors[SD1_TARGETS[4][0]] += 0.004  # the text encoder moves by less than min_diff
    save_file(tensors, str(b))
    result = extract_lora(a, b, tmp_path / "x.safetensors", rank=2, min_diff=0.01)
    assert result.text_encoder_skipped and result.text_encoder_max_diff == pytest.approx(0.004, rel=1e-2)
    assert not any(k.startswith("lora_te") for k in read_network(result.path).modules)
    kept = extract_lora(a, b, tmp_path / "y.safetensors", rank=2, min_diff=0.001)
    assert not kept.text_encoder_skipped
    assert any(k.startswith("lora_te_") for k in read_network(kept.path).modules)


@pytest.mark.parametrize("stop_at", [3, "Saving"])
def test_an_interrupted_extraction_leaves_no_file(
    tiny_models: dict[str, Path], tmp_path: Path, stop_at: int | str
) -> None:
    a = tiny_models["sd1"]
    b = tmp_path / "in" / "b.safetensors"
    b.parent.mkdir()
    tuned_checkpoint(a, SD1_TARGETS, b)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    seen: list[tuple[int, int, str]] = []

    def progress(done: int, total: int, what: str) -> None:
        seen.append((done, total, what))
        if done == stop_at or what == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_lora(a, b, out_dir / "x.safetensors", rank=2, progress=progress)
    assert list(out_dir.iterdir()) == []
    assert seen[0][0] == 0 and seen[0][1] > 100  # a call before the first layer, then one per layer


def test_mismatched_families_are_refused_before_any_tensor_is_read(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_reads(self: TensorSource, key: str) -> torch.Tensor:
        raise AssertionError(f"read {key}")

    monkeypatch.setattr(TensorSource, "get", no_reads)
    for other in ("sdxl", "sd1-inpaint", "sd2"):
        with pytest.raises(ValidationError, match="cannot extract a LoRA between"):
            extract_lora(tiny_models["sd1"], tiny_models[other], tmp_path / "x.safetensors", rank=4)
    with pytest.raises(ValidationError, match="already exists"):
        extract_lora(tiny_models["sd1"], tiny_models["sd1"], tiny_models["sd2"].with_suffix(".safetensors"), rank=4)
    with pytest.raises(ValidationError, match="safetensors"):
        extract_lora(tiny_models["sd1"], tiny_models["sd1"], tmp_path / "x.ckpt", rank=4)
    assert not any(tmp_path.iterdir())


def test_clamping_caps_both_factors_at_the_quantile() -> None:
    generator = torch.Generator().manual_seed(0)
    diff = torch.randn(48, 40, generator=generator) @ torch.randn(40, 40, generator=generator)
    up, down = low_rank(diff, 6, clamp_quantile=1.0)
    assert (up.shape, down.shape) == ((48, 6), (6, 40))
    values = torch.cat([up.reshape(-1), down.reshape(-1)]).abs()
    limit = float(torch.quantile(values, 0.9))
    c_up, c_down = low_rank(diff, 6, clamp_quantile=0.9)
    assert float(torch.cat([c_up.reshape(-1), c_down.reshape(-1)]).abs().max()) == pytest.approx(limit)
    assert torch.equal(c_up, up.clamp(-limit, limit)) and torch.equal(c_down, down.clamp(-limit, limit))
    conv_up, conv_down = low_rank(torch.randn(8, 4, 3, 3, generator=generator), 64)
    assert (conv_up.shape, conv_down.shape) == ((8, 8, 1, 1), (8, 4, 3, 3))
