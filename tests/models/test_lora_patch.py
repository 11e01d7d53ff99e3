"""LoRA / LyCORIS / PEFT files applied through `ModelManager.lease(ModelSpec(patches=...))`: the
patched weights equal each format's formula (computed by the fixture writers, or by merging the
deltas into the checkpoint file by hand), and a lease without the tag is bit-identical to the file."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from modules.core.hashes import HashCache
from modules.models.loader import Placement, StableDiffusionModel, load_single_file
from modules.models.lora_formats import NetworkWeights, read_network
from modules.models.lora_patch import NetworkPatch, match_network
from modules.models.manager import ModelManager
from modules.models.patches import namespace
from modules.models.registry import ModelRegistry
from modules.models.spec import ModelSpec
from tests.fixtures import lora_files as lf
from tests.fixtures.module_tmp import ModuleTempDirs

pytestmark = pytest.mark.usefixtures("no_network")
BIG = 1 << 40
FAMILIES = ("sd1", "sd1-inpaint", "sdxl")


@dataclass
class Env:
    manager: ModelManager
    files: dict[str, Path]  # family -> checkpoint
    pristine: dict[str, StableDiffusionModel]  # family -> a separately loaded, never patched copy
    root: Path


@pytest.fixture(scope="module")
def env(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Iterator[Env]:
    root = module_tmp.mktemp("lora")
    sd, vae = root / "Stable-diffusion", root / "VAE"
    sd.mkdir()
    vae.mkdir()
    files = {}
    for family in FAMILIES:
        files[family] = sd / f"{family}.safetensors"
        shutil.copy(tiny_models[family], files[family])
    registry = ModelRegistry([sd], [vae], HashCache(root / "cache.json"))
    manager = ModelManager(registry, Placement(), cache_bytes=BIG, background_hashing=False)
    pristine = {family: load_single_file(path, Placement()) for family, path in files.items()}
    yield Env(manager, files, pristine, root)


def state(model: StableDiffusionModel) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the UNet, text encoder(s) and VAE by namespaced name."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in namespace(model).items():
        for name, tensor in module.state_dict().items():
            out[f"{prefix}.{name}"] = tensor
    return out


def lease_state(env: Env, family: str, *patches: NetworkPatch) -> dict[str, torch.Tensor]:
    with env.manager.lease(ModelSpec(f"{family}.safetensors", patches=patches)) as model:
        return {k: v.clone() for k, v in state(model).items()}


def assert_bit_identical_after_removal(env: Env, family: str) -> None:
    after = lease_state(env, family)
    fresh = state(env.pristine[family])
    assert after.keys() == fresh.keys()
    different = [k for k in fresh if not torch.equal(after[k], fresh[k])]
    assert different == [], f"not bit-identical to the file: {different[:5]}"


def expected(
    base: dict[str, torch.Tensor], files: list[lf.LoraFile], unet: float, te: float
) -> dict[str, torch.Tensor]:
    out = dict(base)
    for f in files:
        for table in (f.deltas, f.bias_deltas):
            for name, delta in table.items():
                m = te if name.startswith("text_encoder") else unet
                out[name] = out[name] + m * delta.reshape(out[name].shape)
    return out


def assert_matches(
    actual: dict[str, torch.Tensor], want: dict[str, torch.Tensor], base: dict[str, torch.Tensor]
) -> None:
    """Changed weights equal `want` (float32 rounding apart); every other tensor is untouched."""
    assert actual.keys() == want.keys()
    for name, tensor in actual.items():
        if torch.equal(want[name], base[name]):
            assert torch.equal(tensor, base[name]), f"{name} changed"
        else:
            torch.testing.assert_close(tensor, want[name], rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


def patch(f: lf.LoraFile, te: float = 1.0, unet: float = 1.0, dyn: int | None = None) -> NetworkPatch:
    weights = read_network(f.path)
    return NetworkPatch(f"lora:{f.path.name}:te={te}:unet={unet}:dyn={dyn}", weights, te, unet, dyn)


WRITERS = {
    "kohya": lambda p, m: lf.kohya_sd(p, m),
    "loha": lambda p, m: lf.lycoris(p, m, "loha"),
    "lokr": lambda p, m: lf.lycoris(p, m, "lokr"),
    "ia3": lambda p, m: lf.lycoris(p, m, "ia3"),
    "full": lambda p, m: lf.lycoris(p, m, "full"),
    "norm": lambda p, m: lf.lycoris(p, m, "norm"),
    "dora": lambda p, m: lf.lycoris(p, m, "dora"),
    "glora": lambda p, m: lf.lycoris(p, m, "glora"),
    "peft": lambda p, m: lf.peft(p, m),
    "peft-bare": lambda p, m: lf.peft(p, m, unet_prefix=""),
    "peft-dora": lambda p, m: lf.peft(p, m, dora=True),
    "processor": lambda p, m: lf.diffusers_processor(p, m),
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_format_patches_to_its_formula_and_comes_off_bit_exactly(env: Env, fmt: str) -> None:
    model = env.pristine["sd1"]
    f = WRITERS[fmt](env.root / f"{fmt}.safetensors", model)
    p = patch(f, te=0.8, unet=0.6)
    match = match_network(p.weights, model)
    assert (match.unmatched, match.unsupported) == ([], [])
    assert match.matched_unet > 0 and match.matched_te > 0
    base = state(model)
    assert_matches(lease_state(env, "sd1", p), expected(base, [f], unet=0.6, te=0.8), base)
    assert_bit_identical_after_removal(env, "sd1")


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_ldm_named_loras_equal_the_deltas_merged_into_the_checkpoint_by_hand(env: Env, family: str) -> None:
    """kohya SDXL (SGM UNet names, lora_te1_, lora_te2_) and A1111's compvis-named SD1 layout: the
    oracle is the checkpoint file with the deltas added at its own keys, loaded as usual."""
    model = env.pristine[family]
    f = lf.kohya_ldm(env.root / f"ldm-{family}.safetensors", env.files[family], model)
    assert any(k.startswith("lora_unet_input_blocks_") for k in f.module_keys)
    merged = lf.merged_checkpoint(env.files[family], f.ldm_deltas, 0.9, 0.5, env.root / f"merged-{family}.safetensors")
    oracle = expected(state(load_single_file(merged, Placement())), [f], unet=0.9, te=0.5)  # + lora_te2_ deltas
    p = patch(f, te=0.5, unet=0.9)
    match = match_network(p.weights, model)
    assert match.unmatched == [] and match.matched_unet + match.matched_te == len(f.module_keys)
    assert_matches(lease_state(env, family, p), oracle, state(model))
    assert_bit_identical_after_removal(env, family)


def test_two_loras_add_and_an_unchanged_set_does_no_work(env: Env) -> None:
    model = env.pristine["sd1"]
    a = lf.kohya_sd(env.root / "two-a.safetensors", model, seed=1)
    b = lf.lycoris(env.root / "two-b.safetensors", model, "loha", seed=2)
    pa, pb = patch(a, 0.7, 0.7), patch(b, 1.0, -0.5)
    base = state(model)
    want = expected(expected(base, [a], unet=0.7, te=0.7), [b], unet=-0.5, te=1.0)
    assert_matches(lease_state(env, "sd1", pa, pb), want, base)
    stats = env.manager.patcher.stats  # type: ignore[union-attr]
    applied, skipped, patched = stats.applied, stats.skipped, stats.patched_tensors
    same = (NetworkPatch(pa.identity, pa.weights, 0.7, 0.7), NetworkPatch(pb.identity, pb.weights, 1.0, -0.5))
    lease_state(env, "sd1", *same)
    assert (stats.applied, stats.skipped, stats.patched_tensors) == (applied, skipped + 1, patched)
    assert_bit_identical_after_removal(env, "sd1")


@pytest.mark.parametrize(("te", "unet"), [(0.0, 1.0), (1.0, 0.0), (-1.0, -0.5)])
def test_text_encoder_and_unet_multipliers_act_separately(env: Env, te: float, unet: float) -> None:
    model = env.pristine["sd1"]
    f = lf.kohya_sd(env.root / "mult.safetensors", model, seed=3)
    base = state(model)
    after = lease_state(env, "sd1", patch(f, te=te, unet=unet))
    assert_matches(after, expected(base, [f], unet=unet, te=te), base)
    te_same = all(torch.equal(after[k], base[k]) for k in base if k.startswith("text_encoder."))
    unet_same = all(torch.equal(after[k], base[k]) for k in base if k.startswith("unet."))
    assert (te_same, unet_same) == (te == 0, unet == 0)
    assert_bit_identical_after_removal(env, "sd1")


def test_dyn_truncates_the_rank_of_plain_loras(env: Env) -> None:
    model = env.pristine["sd1"]
    f = lf.kohya_sd(env.root / "dyn.safetensors", model, seed=4, rank=4, alpha=2.0)
    tensors = read_network(f.path).modules
    want_deltas: dict[str, torch.Tensor] = {}
    for prefix, component, key_prefix in (
        ("unet", model.unet, "lora_unet_"),
        ("text_encoder", model.text_encoders[0], "lora_te_"),
    ):
        for name, module in component.named_modules():
            file_name = name if prefix == "unet" else lf.hf_text_name(name)
            parts = tensors.get(lf.kohya_name(key_prefix, file_name))
            if parts is None:
                continue
            if "lora_mid.weight" in parts:  # CP LoCon: A1111 keeps the full rank
                want_deltas[f"{prefix}.{name}.weight"] = f.deltas[f"{prefix}.{name}.weight"]
                continue
            up = parts["lora_up.weight"].float().flatten(1)[:, :2]
            down = parts["lora_down.weight"].float().flatten(1)[:2]
            want_deltas[f"{prefix}.{name}.weight"] = (up @ down).reshape(module.weight.shape) * (2.0 / 4)
    assert want_deltas.keys() == f.deltas.keys()
    base = state(model)
    truncated = lf.LoraFile(f.path, deltas=want_deltas)
    assert_matches(lease_state(env, "sd1", patch(f, dyn=2)), expected(base, [truncated], 1.0, 1.0), base)


def test_a_4_channel_conv_in_lora_is_zero_padded_on_an_inpainting_model(env: Env) -> None:
    model = env.pristine["sd1-inpaint"]
    assert model.unet.conv_in.weight.shape[1] == 9
    f = lf.conv_in_locon(env.root / "conv-in.safetensors", model, in_channels=4)
    base = state(model)
    assert_matches(lease_state(env, "sd1-inpaint", patch(f, unet=0.75)), expected(base, [f], 0.75, 1.0), base)
    assert_bit_identical_after_removal(env, "sd1-inpaint")


def test_an_sdxl_lora_matches_nothing_on_an_sd1_model(env: Env) -> None:
    f = lf.kohya_ldm(env.root / "xl-on-sd1.safetensors", env.files["sdxl"], env.pristine["sdxl"])
    weights = read_network(f.path)
    match = match_network(weights, env.pristine["sd1"])
    assert (match.matched_unet, match.matched_te) == (0, 0)
    assert sorted(match.unmatched) == sorted(f.module_keys)
    on_sdxl = match_network(weights, env.pristine["sdxl"])
    assert on_sdxl.matched_unet + on_sdxl.matched_te == len(f.module_keys)


def test_unknown_suffixes_are_reported_and_a_mismatched_layer_is_unmatched(env: Env) -> None:
    model = env.pristine["sd1"]
    f = lf.kohya_sd(env.root / "bad.safetensors", model, seed=5)
    good = read_network(f.path)
    modules = dict(good.modules)
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    modules[q] = {"oft_blocks": torch.zeros(4, 8, 8), "alpha": torch.tensor(1.0)}  # OFT: not supported
    parts = dict(modules[k])
    parts["lora_up.weight"] = torch.zeros(parts["lora_up.weight"].shape[0] + 1, parts["lora_up.weight"].shape[1])
    modules[k] = parts  # a LoRA for a wider layer
    modules["lora_unet_no_such_layer"] = dict(parts)
    bad = NetworkWeights(modules, {}, good.nbytes, "bad")
    match = match_network(bad, model)
    assert match.unsupported == [q]
    assert sorted(match.unmatched) == sorted([k, "lora_unet_no_such_layer"])
    assert match.matched_unet + match.matched_te == len(good.modules) - 2
    base = state(model)
    names = {
        q: "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        k: "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight",
    }
    skipped = lf.LoraFile(f.path, deltas={n: d for n, d in f.deltas.items() if n not in names.values()})
    assert_matches(lease_state(env, "sd1", NetworkPatch("bad", bad)), expected(base, [skipped], 1.0, 1.0), base)
