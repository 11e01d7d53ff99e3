"""ControlNet files: the registry (names, hashes, the extension's matching rules) and the offline
loader (every key layout, SD1/SD2/SDXL, strictness, refusals), and the cache in the memory budget.

Oracles: a `ControlNetModel` built by hand from the hand-written config of the fixture with
tensors converted by diffusers' own converter; diffusers' `from_single_file` (offline, local
config) where it handles the file; `ControlNetModel.from_unet` of the base UNet as the base
loader builds it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import init_empty_weights
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from diffusers.models.controlnets.controlnet import ControlNetModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from modules.core.errors import ModelFileError, NotFoundError, UnknownModelError, UnsafeModelFileError
from modules.core.hashes import HashCache
from modules.models import families as fam
from modules.models.controlnet import (
    CONTROLNET,
    ControlNetCache,
    ControlNetInfo,
    ControlNetRegistry,
    LoadedControlNet,
    controlnet_config,
    ldm_key_map,
    load_controlnet,
    probe_file,
    probe_shapes,
    to_diffusers_keys,
)
from modules.models.loader import Placement, load_single_file
from modules.models.memory import MemoryBudget
from tests.fixtures import pickles
from tests.fixtures.controlnet_files import (
    CONTROLNET_FAMILIES,
    LDM_PREFIX,
    build_controlnet_by_hand,
    controlnet_diffusers_state_dict,
    controlnet_from_checkpoint,
    controlnet_ldm_state_dict,
    controlnet_tensor_specs,
    write_control_lora,
    write_controlnet,
    write_controlnet_folder,
    write_t2i_adapter,
)
from tests.fixtures.controlnet_files import controlnet_config as fixture_config
from tests.fixtures.ldm_checkpoints import UNetSpec, family_spec, unet_config, write_checkpoint
from tests.fixtures.module_tmp import ModuleTempDirs

LAYOUTS = ("ldm.safetensors", "ldm-bare.safetensors", "ldm.pth", "diffusers.safetensors", "folder")
FAMILY = {"sd1": fam.SD1, "sd2": fam.SD2, "sdxl": fam.SDXL}


def _write(directory: Path, family: str, layout: str, seed: int = 0, stem: str | None = None) -> Path:
    name = stem or f"{family}-{layout.split('.')[0]}"
    if layout == "ldm.safetensors":
        return write_controlnet(directory / f"{name}.safetensors", family, seed=seed)
    if layout == "ldm-bare.safetensors":
        return write_controlnet(directory / f"{name}.safetensors", family, seed=seed, prefix="")
    if layout == "ldm.pth":
        return write_controlnet(directory / f"{name}.pth", family, seed=seed)
    if layout == "diffusers.safetensors":
        return write_controlnet(directory / f"{name}.safetensors", family, "diffusers", seed=seed)
    return write_controlnet_folder(directory / name, family, seed=seed)


@pytest.fixture(scope="module")
def files(module_tmp: ModuleTempDirs) -> dict[tuple[str, str], Path]:
    root = module_tmp.mktemp("controlnets")
    return {(f, layout): _write(root, f, layout) for f in CONTROLNET_FAMILIES for layout in LAYOUTS}


@pytest.fixture(scope="module")
def hand_built() -> dict[str, Any]:
    return {f: build_controlnet_by_hand(f, controlnet_diffusers_state_dict(f)) for f in CONTROLNET_FAMILIES}


def _inputs(family: str, batch: int = 2, seed: int = 0) -> dict[str, Any]:
    """Inputs of the tiny UNet's shapes: 8x8 latents, 64x64 hints, its context width."""
    g = torch.Generator().manual_seed(seed)
    u = family_spec(family).unet
    kwargs: dict[str, Any] = {
        "sample": torch.randn(batch, 4, 8, 8, generator=g),
        "timestep": torch.tensor([999.0, 250.0][:batch]),
        "encoder_hidden_states": torch.randn(batch, 7, u.context_dim, generator=g),
    }
    if u.adm_in_channels is not None:
        pooled = u.adm_in_channels - 6 * 256
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=g),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * batch),
        }
    return kwargs


def _run(model: Any, family: str, scale: float = 1.0) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    hint = torch.rand(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        down, mid = model(**_inputs(family), controlnet_cond=hint, conditioning_scale=scale, return_dict=False)
    return list(down), mid


def _assert_same_model(a: Any, b: Any) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key, value in sb.items():
        assert sa[key].shape == value.shape, key
        assert torch.equal(sa[key], value), key


# ---------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", CONTROLNET_FAMILIES)
def test_each_layout_loads_as_the_hand_built_model(
    family: str, layout: str, files: dict[tuple[str, str], Path], hand_built: dict[str, Any]
) -> None:
    loaded = load_controlnet(files[family, layout], base_family=FAMILY[family])
    assert isinstance(loaded, LoadedControlNet)
    assert isinstance(loaded.model, ControlNetModel)
    assert loaded.family == FAMILY[family]
    assert loaded.layout == ("ldm" if layout.startswith("ldm") else "diffusers")
    assert not loaded.global_pool and not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    _assert_same_model(loaded.model, hand_built[family])
    down, mid = _run(loaded.model, family)
    ref_down, ref_mid = _run(hand_built[family], family)
    assert len(down) == len(ref_down) == len(list(loaded.model.controlnet_down_blocks))
    for got, want in zip(down, ref_down, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(mid, ref_mid, rtol=0, atol=0)
    assert float(mid.abs().mean()) > 0  # trained-like zero convs: the residuals are not zero


@pytest.mark.parametrize("family", CONTROLNET_FAMILIES)
def test_residuals_fit_the_tiny_unet(family: str, files: dict[tuple[str, str], Path]) -> None:
    """The residuals have the tiny base UNet's skip shapes: it takes them and its output changes."""
    torch.manual_seed(0)
    cfg = {k: v for k, v in unet_config(family).items() if not k.startswith("_")}
    unet = UNet2DConditionModel(**cfg).eval()
    controlnet = load_controlnet(files[family, "ldm.safetensors"]).model
    down, mid = _run(controlnet, family)
    inputs = _inputs(family)
    with torch.no_grad():
        plain = unet(**inputs).sample
        controlled = unet(**inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        zero = [d * 0 for d in down]
        unchanged = unet(**inputs, down_block_additional_residuals=zero, mid_block_additional_residual=mid * 0).sample
    assert controlled.shape == plain.shape
    assert not torch.allclose(controlled, plain)
    torch.testing.assert_close(unchanged, plain, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("family", "layout"),
    [
        ("sd1", "ldm.safetensors"),
        ("sd1", "ldm-bare.safetensors"),
        ("sd1", "diffusers.safetensors"),
        ("sd2", "ldm-bare.safetensors"),
        ("sdxl", "diffusers.safetensors"),
    ],
)
def test_diffusers_from_single_file_agrees(
    family: str, layout: str, files: dict[tuple[str, str], Path], tmp_path: Path, no_network: None
) -> None:
    """Cross-check with diffusers' own single-file loader (offline, config from a local folder);
    it does not detect LDM-keyed SDXL ControlNets, which only our converter loads."""
    (tmp_path / "config.json").write_text(json.dumps(fixture_config(family)), encoding="utf-8")
    theirs = ControlNetModel.from_single_file(str(files[family, layout]), config=str(tmp_path), local_files_only=True)
    ours = load_controlnet(files[family, layout]).model
    _assert_same_model(ours, theirs)
    for got, want in zip(_run(ours, family)[0], _run(theirs.eval(), family)[0], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("family", CONTROLNET_FAMILIES)
def test_full_size_ldm_keys_map_like_diffusers_converter(family: str) -> None:
    """Every key of a full-size LDM ControlNet gets the name diffusers' converter gives it (values
    stand in for tensors: the converter only moves them), SDXL's label_emb included, and the
    result is exactly a full-size ControlNetModel's key set and shapes."""
    specs = controlnet_tensor_specs(family, "full", prefix="")
    mapping = ldm_key_map(s.key for s in specs)
    theirs = convert_controlnet_checkpoint({s.key: s.key for s in specs}, {"layers_per_block": 2})
    theirs_inverse = {old: new for new, old in theirs.items()}
    for old, new in mapping.items():
        if old.startswith("label_emb."):
            assert new.startswith("add_embedding.linear_")
        else:
            assert theirs_inverse[old] == new, old
    shapes = {mapping[s.key]: s.shape for s in specs}
    config = controlnet_config(shapes, FAMILY[family])
    with init_empty_weights():
        model = ControlNetModel.from_config(config)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes


# The configs of released ControlNets (config.json of lllyasviel/control_v11p_sd15_canny,
# thibaud/controlnet-sd21-canny-diffusers, diffusers/controlnet-canny-sdxl-1.0).
RELEASED = {
    "sd1": {
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "use_linear_projection": False,
        "layers_per_block": 2,
        "conditioning_embedding_out_channels": [16, 32, 96, 256],
    },
    "sd2": {
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "cross_attention_dim": 1024,
        "attention_head_dim": [5, 10, 20, 20],
        "use_linear_projection": True,
        "layers_per_block": 2,
    },
    "sdxl": {
        "block_out_channels": [320, 640, 1280],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "cross_attention_dim": 2048,
        "attention_head_dim": [5, 10, 20],
        "transformer_layers_per_block": [1, 2, 10],
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
}


@pytest.mark.parametrize("family", CONTROLNET_FAMILIES)
def test_full_size_config_from_shapes_is_the_released_one(family: str) -> None:
    specs = controlnet_tensor_specs(family, "full")
    probe = probe_shapes({s.key: s.shape for s in specs})
    assert (probe.layout, probe.family, probe.prefix) == ("ldm", FAMILY[family], LDM_PREFIX)
    shapes = to_diffusers_keys({s.key: s.shape for s in specs}, probe, "full")
    config = controlnet_config(shapes, probe.family)
    for key, value in RELEASED[family].items():
        assert config[key] == value, key


def test_sdxl_mid_and_small_layouts_derive_their_configs() -> None:
    """The extension's SDXL "mid" LDM layout (attention only at the last level, depth 1) and
    diffusers-keyed mid/small ones (a level with a 0-block transformer; no attention at all):
    the config from shapes rebuilds exactly their key set and shapes."""
    u = family_spec("sdxl", "full").unet
    mid = UNetSpec(4, 320, (1, 2, 4), 2, (0, 0, 1), 1, u.context_dim, True, head_dim=64, adm_in_channels=2816)
    specs = controlnet_tensor_specs("sdxl", unet=mid)
    probe = probe_shapes({s.key: s.shape for s in specs})
    shapes = to_diffusers_keys({s.key: s.shape for s in specs}, probe, "mid")
    config = controlnet_config(shapes, probe.family)
    assert config["down_block_types"] == ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"]
    assert config["transformer_layers_per_block"][-1] == 1
    with init_empty_weights():
        built = ControlNetModel.from_config(config)
    assert {k: tuple(v.shape) for k, v in built.state_dict().items()} == shapes

    base = {k: v for k, v in RELEASED["sdxl"].items() if k != "transformer_layers_per_block"}
    variants = {
        "mid": dict(base, transformer_layers_per_block=[0, 0, 1]),
        "small": dict(
            base, down_block_types=["DownBlock2D"] * 3, mid_block_type="UNetMidBlock2D", transformer_layers_per_block=1
        ),
    }
    for name, cfg in variants.items():
        with init_empty_weights():
            model = ControlNetModel.from_config(cfg)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        probe = probe_shapes(shapes, name)
        assert (probe.layout, probe.family) == ("diffusers", fam.SDXL)
        derived = controlnet_config(shapes, probe.family)
        with init_empty_weights():
            rebuilt = ControlNetModel.from_config(derived)
        assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes, name


@pytest.mark.parametrize("family", CONTROLNET_FAMILIES)
def test_controlnet_from_a_base_checkpoint_matches_from_unet(family: str, tmp_path: Path) -> None:
    """A ControlNet made from the tiny checkpoint's UNet loads as `ControlNetModel.from_unet` of
    the UNet the base loader builds from that checkpoint: same config facts (heads, depths,
    context), same encoder weights, same residuals once the hint/zero convs are copied over."""
    from tests.fixtures.ldm_checkpoints import ldm_state_dict

    checkpoint = write_checkpoint(tmp_path / "base.safetensors", family)
    base = load_single_file(checkpoint, Placement())
    path = tmp_path / "from-base.safetensors"
    save_file(controlnet_from_checkpoint(ldm_state_dict(family), family), str(path))
    ours = load_controlnet(path, base_family=base.family).model
    theirs = ControlNetModel.from_unet(base.unet).eval()
    for key in ("attention_head_dim", "cross_attention_dim", "use_linear_projection", "block_out_channels"):
        assert ours.config[key] == theirs.config[key], key
    for part in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
        _assert_same_model(getattr(ours, part), getattr(theirs, part))
    if family == "sdxl":
        _assert_same_model(ours.add_embedding, theirs.add_embedding)
    for part in ("controlnet_cond_embedding", "controlnet_down_blocks", "controlnet_mid_block"):
        getattr(theirs, part).load_state_dict(getattr(ours, part).state_dict())
    for got, want in zip(_run(ours, family)[0], _run(theirs, family)[0], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_dtype_and_device(files: dict[tuple[str, str], Path]) -> None:
    loaded = load_controlnet(files["sd1", "ldm.pth"], dtype=torch.float16, device="cpu")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float16}
    assert loaded.dtype == torch.float16 and loaded.device == torch.device("cpu")
    assert loaded.nbytes() == sum(p.numel() * 2 for p in loaded.model.parameters())


def test_shuffle_from_the_file_name_or_the_folder_config(files: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    shuffle = tmp_path / "control_v11e_sd15_shuffle.safetensors"
    shutil.copy(files["sd1", "ldm.safetensors"], shuffle)
    loaded = load_controlnet(shuffle)
    assert loaded.global_pool and loaded.is_shuffle and loaded.model.config.global_pool_conditions
    down, mid = _run(loaded.model, "sd1")
    assert all(d.shape[-2:] == (1, 1) for d in down) and mid.shape[-2:] == (1, 1)
    _, plain_mid = _run(load_controlnet(files["sd1", "ldm.safetensors"]).model, "sd1")
    torch.testing.assert_close(mid, plain_mid.mean(dim=(2, 3), keepdim=True))

    folder = write_controlnet_folder(tmp_path / "pooled", "sd1", shuffle=True)
    assert load_controlnet(folder).global_pool
    assert not load_controlnet(files["sd1", "folder"]).global_pool


def test_folder_variants_and_config_settings(tmp_path: Path) -> None:
    """fp16-variant and .bin weights; the folder's config.json settings shapes cannot tell
    (heads, upcast) are used."""
    folder = write_controlnet_folder(tmp_path / "cn-bin", "sd1", safe=False, variant="fp16")
    assert (folder / "diffusion_pytorch_model.fp16.bin").is_file()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.update(attention_head_dim=4, upcast_attention=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    loaded = load_controlnet(folder)
    assert loaded.model.config.attention_head_dim == 4 and loaded.model.config.upcast_attention
    assert probe_file(folder).family == fam.SD1


def test_full_cldm_checkpoint_uses_only_the_control_model(files: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    """lllyasviel's v1.0 files hold the whole cldm model; the `control_model.` part is the ControlNet."""
    tensors = load_file(str(files["sd1", "ldm.safetensors"]))
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 4, 3, 3)
    tensors["first_stage_model.encoder.conv_in.weight"] = torch.zeros(32, 3, 3, 3)
    path = tmp_path / "control_sd15_canny.safetensors"
    save_file(tensors, str(path))
    _assert_same_model(load_controlnet(path).model, load_controlnet(files["sd1", "ldm.safetensors"]).model)


# ---------------------------------------------------------------------------------------- refusals


def test_pickle_with_code_is_refused_and_never_run(tmp_path: Path) -> None:
    for build in (pickles.write_zip_system_ckpt, pickles.write_getattr_chain_ckpt, pickles.write_extra_member_ckpt):
        path, marker = build(tmp_path, f"evil_{build.__name__}.pth")
        with pytest.raises(UnsafeModelFileError):
            load_controlnet(path)
        assert not marker.exists()


def test_folder_with_code_is_refused(tmp_path: Path) -> None:
    folder = write_controlnet_folder(tmp_path / "cn", "sd1")
    (folder / "controlnet.py").write_text("raise SystemExit('ran')\n", encoding="utf-8")
    with pytest.raises(UnsafeModelFileError, match="contains code"):
        load_controlnet(folder)


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_missing_unexpected_or_misshapen_tensors_are_refused(layout: str, tmp_path: Path) -> None:
    if layout == "ldm":
        tensors = controlnet_ldm_state_dict("sd1")
        victim, extra = LDM_PREFIX + "zero_convs.3.0.weight", LDM_PREFIX + "zero_convs.99.0.weight"
    else:
        tensors = controlnet_diffusers_state_dict("sd1")
        victim, extra = "controlnet_down_blocks.3.weight", "controlnet_down_blocks.3.scale"

    def write(name: str, change: Callable[[dict[str, torch.Tensor]], None]) -> Path:
        copy = dict(tensors)
        change(copy)
        path = tmp_path / f"{name}.safetensors"
        save_file(copy, str(path))
        return path

    with pytest.raises(ModelFileError, match="1 missing"):
        load_controlnet(write("missing", lambda t: t.pop(victim)))
    with pytest.raises(ModelFileError, match="1 unexpected"):
        load_controlnet(write("unexpected", lambda t: t.__setitem__(extra, torch.zeros(3))))
    with pytest.raises(ModelFileError, match="size mismatch"):
        load_controlnet(write("misshapen", lambda t: t.__setitem__(victim, torch.zeros(64, 64, 1, 1))))


@pytest.mark.parametrize(
    ("family", "base", "message"),
    [
        ("sdxl", fam.SD1, r"an SDXL ControlNet on an SD 1\.x model"),
        ("sd1", fam.SDXL, r"an SD 1\.x ControlNet on an SDXL model"),
        ("sd2", fam.SD1_INPAINT, r"an SD 2\.x ControlNet on an SD 1\.x model"),
        ("sdxl", fam.SDXL_REFINER, "an SDXL ControlNet on an SDXL refiner model"),
    ],
)
def test_family_mismatch_is_refused(
    family: str, base: fam.ModelFamily, message: str, files: dict[tuple[str, str], Path]
) -> None:
    with pytest.raises(ModelFileError, match=message):
        load_controlnet(files[family, "ldm.safetensors"], base_family=base)


def test_inpaint_base_of_the_same_family_is_accepted(files: dict[tuple[str, str], Path]) -> None:
    assert load_controlnet(files["sd1", "diffusers.safetensors"], base_family=fam.SD1_INPAINT).family == fam.SD1


def test_other_control_models_are_refused_by_name(tmp_path: Path, tiny_vae: Path) -> None:
    with pytest.raises(ModelFileError, match="control-LoRA"):
        load_controlnet(write_control_lora(tmp_path / "control-lora-canny-rank128.safetensors"))
    with pytest.raises(ModelFileError, match="T2I-Adapter"):
        load_controlnet(write_t2i_adapter(tmp_path / "t2iadapter_canny_sd15v2.pth"))
    with pytest.raises(ModelFileError, match="T2I-Adapter"):
        load_controlnet(write_t2i_adapter(tmp_path / "t2i-diffusers.safetensors", diffusers_keys=True))
    ip = tmp_path / "ip-adapter_sd15.safetensors"
    save_file({"image_proj.proj.weight": torch.zeros(4, 4), "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 4)}, str(ip))
    with pytest.raises(ModelFileError, match="IP-Adapter"):
        load_controlnet(ip)
    with pytest.raises(UnknownModelError, match="not a ControlNet"):
        load_controlnet(tiny_vae)


@pytest.fixture()
def tiny_vae(tmp_path: Path) -> Path:
    from tests.fixtures.ldm_checkpoints import write_vae

    return write_vae(tmp_path / "vae.safetensors")


# ---------------------------------------------------------------------------------------- registry


def _old_hash(path: Path) -> str:
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]


def _blob(path: Path, seed: int) -> Path:
    """Registry tests need bytes, not tensors: 1.2 MiB of seeded bytes (past the hash offset)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    path.write_bytes(torch.randint(0, 256, (1_250_000,), generator=g, dtype=torch.uint8).numpy().tobytes())
    return path


@pytest.fixture()
def tree(tmp_path: Path, files: dict[tuple[str, str], Path]) -> dict[str, Path]:
    main, extra = tmp_path / "ControlNet", tmp_path / "extension-models"
    out = {
        "canny": _blob(main / "control_v11p_sd15_canny.pth", 1),
        "canny_fp16": _blob(main / "sub" / "control_v11p_sd15_canny_fp16.safetensors", 2),
        "depth": _blob(main / "Control_SD15_Depth.ckpt", 3),
        "t2i": _blob(main / "t2iadapter_canny.bin", 4),
        "short_pt": _blob(main / "canny.pt", 5),
        "none": _blob(main / "None.pth", 6),
        "yaml": _blob(main / "control_v11p_sd15_canny.yaml", 7),
        "hidden": _blob(main / ".trash" / "old_canny.pth", 8),
        "xl_extra": _blob(extra / "diffusers_xl_canny_full.safetensors", 9),
        "dup": _blob(extra / "control_v11p_sd15_canny.pth", 1),  # same bytes: same name as in main
        "depth_other": _blob(extra / "control_sd15_depth.safetensors", 10),
    }
    folder = main / "controlnet-canny-sdxl-1.0"
    shutil.copytree(files["sdxl", "folder"], folder)
    out["folder"] = folder
    out["main"], out["extra"] = main, extra
    return out


def _registry(tree: dict[str, Path], tmp_path: Path, **kwargs: Any) -> ControlNetRegistry:
    return ControlNetRegistry([tree["main"], tree["extra"]], HashCache(tmp_path / "cache.json"), **kwargs)


def test_registry_names_as_the_extension(tree: dict[str, Path], tmp_path: Path) -> None:
    registry = _registry(tree, tmp_path)
    weights = tree["folder"] / "diffusion_pytorch_model.safetensors"
    main = sorted(
        [
            ("Control_SD15_Depth", tree["depth"]),
            ("canny", tree["short_pt"]),
            ("control_v11p_sd15_canny", tree["canny"]),
            ("control_v11p_sd15_canny_fp16", tree["canny_fp16"]),
            ("controlnet-canny-sdxl-1.0", weights),
            ("t2iadapter_canny", tree["t2i"]),
        ],
        key=lambda e: e[1].name if e[1] != weights else tree["folder"].name,
    )
    extra = [("control_sd15_depth", tree["depth_other"]), ("diffusers_xl_canny_full", tree["xl_extra"])]
    expected = [f"{stem} [{_old_hash(path)}]" for stem, path in main + extra]
    assert registry.names() == ["None", *expected]
    # the API's list: one name per lowercase stem, where the stem first appears (Control_SD15_Depth
    # is listed first), answered by the entry listed last for it (the extra folder's depth model)
    depth_other = f"control_sd15_depth [{_old_hash(tree['depth_other'])}]"
    assert expected[0].startswith("Control_SD15_Depth ") and expected[-2] == depth_other
    assert registry.model_list() == [depth_other, *expected[1:-2], expected[-1]]
    infos = {i.stem: i for i in registry.infos()}
    assert infos["control_v11p_sd15_canny"].path == tree["canny"]  # the first folder wins a repeated name
    folder = infos["controlnet-canny-sdxl-1.0"]
    assert folder.is_folder and folder.path == tree["folder"] and folder.weights == weights
    assert _old_hash(weights) == folder.old_hash


def test_registry_old_hash_of_a_short_file(tmp_path: Path) -> None:
    """A1111 hashes the empty string for files shorter than 1 MiB."""
    (tmp_path / "cn").mkdir()
    (tmp_path / "cn" / "tiny.safetensors").write_bytes(b"x" * 100)
    registry = ControlNetRegistry([tmp_path / "cn"], HashCache(tmp_path / "cache.json"))
    assert registry.names() == ["None", f"tiny [{hashlib.sha256(b'').hexdigest()[:8]}]"]


def _found(registry: ControlNetRegistry, name: str) -> ControlNetInfo:
    info = registry.find(name)
    assert info is not None
    return info


def test_find_follows_the_extensions_rules(tree: dict[str, Path], tmp_path: Path) -> None:
    registry = _registry(tree, tmp_path)
    canny = f"control_v11p_sd15_canny [{_old_hash(tree['canny'])}]"
    assert _found(registry, canny).path == tree["canny"]
    assert _found(registry, "CONTROL_V11P_SD15_CANNY").name == canny
    assert _found(registry, "canny").path == tree["short_pt"]  # an exact stem before any substring
    assert _found(registry, "sd15_can").name == canny  # the shortest stem containing the text
    assert _found(registry, "xl").stem == "diffusers_xl_canny_full"
    assert _found(registry, "SDXL-1").stem == "controlnet-canny-sdxl-1.0"
    assert _found(registry, "canny_fp16").path == tree["canny_fp16"]
    # two stems differing only in case: as the extension, the one listed last answers the stem
    assert _found(registry, "control_sd15_depth").path == tree["depth_other"]
    assert _found(registry, "Control_SD15_Depth").path == tree["depth_other"]
    assert _found(registry, f"Control_SD15_Depth [{_old_hash(tree['depth'])}]").path == tree["depth"]
    for nothing in ("None", "none", "", None):
        assert registry.find(nothing) is None
    for unknown in ("lineart", f"control_v11p_sd15_canny [{'0' * 8}]", "old_canny"):
        with pytest.raises(NotFoundError, match="ControlNet model not found"):
            registry.find(unknown)


def test_find_rescans_once_on_a_miss(tree: dict[str, Path], tmp_path: Path) -> None:
    registry = _registry(tree, tmp_path)
    assert "None" in registry.names()
    _blob(tree["extra"] / "control_v11p_sd15_lineart.safetensors", 11)
    found = registry.find("lineart")
    assert found is not None and found.stem == "control_v11p_sd15_lineart"
    (tree["extra"] / "control_v11p_sd15_lineart.safetensors").unlink()
    registry.refresh()
    with pytest.raises(NotFoundError):
        registry.find("lineart")


def test_registry_sorting_and_filter(tree: dict[str, Path], tmp_path: Path) -> None:
    os.utime(tree["depth"], (1_000, 1_000))
    os.utime(tree["canny"], (9_000_000_000, 9_000_000_000))
    by_date = [i.stem for i in _registry(tree, tmp_path, sort_by="date").infos() if i.path.parent == tree["main"]]
    assert by_date[0] == "control_v11p_sd15_canny" and by_date[-1] == "Control_SD15_Depth"
    filtered = _registry(tree, tmp_path, name_filter=" Depth ").infos()
    assert [i.stem for i in filtered] == ["Control_SD15_Depth", "control_sd15_depth"]


def test_scan_reads_no_tensors_and_full_hash_is_cached(tmp_path: Path) -> None:
    """A corrupt file is listed (the scan reads only the 64 KiB the name hash needs) and fails
    to load; the full sha256 is computed on demand and kept in cache.json."""
    bad = _blob(tmp_path / "cn" / "broken.safetensors", 12)
    cache = HashCache(tmp_path / "cache.json")
    registry = ControlNetRegistry([tmp_path / "cn"], cache)
    info = _found(registry, "broken")
    with pytest.raises(ModelFileError):
        load_controlnet(info.path)
    full = hashlib.sha256(bad.read_bytes()).hexdigest()
    assert registry.sha256(info) == full
    saved = json.loads((tmp_path / "cache.json").read_text(encoding="utf-8"))
    assert saved["hashes"]["controlnet/broken"]["sha256"] == full


def test_registry_entry_loads(tree: dict[str, Path], tmp_path: Path) -> None:
    info = _found(_registry(tree, tmp_path), "canny-sdxl")
    assert load_controlnet(info.path, base_family=fam.SDXL).family == fam.SDXL


# ---------------------------------------------------------------------------------------- cache


@pytest.fixture()
def two_sd1(tmp_path: Path) -> list[Any]:
    cn = tmp_path / "cn"
    write_controlnet(cn / "first.safetensors", "sd1", seed=1)
    write_controlnet(cn / "second.safetensors", "sd1", seed=2)
    write_controlnet(cn / "xl.safetensors", "sdxl", seed=3)
    registry = ControlNetRegistry([cn], HashCache(tmp_path / "cache.json"))
    return [_found(registry, "first"), _found(registry, "second"), _found(registry, "xl")]


class _CountingLoader:
    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, path: Path, **kwargs: Any) -> LoadedControlNet:
        self.calls.append(path)
        return load_controlnet(path, **kwargs)


def test_cache_reuses_and_evicts_through_the_budget(two_sd1: list[Any]) -> None:
    first, second, _ = two_sd1
    loader = _CountingLoader()
    size = load_controlnet(first.path).nbytes()
    budget = MemoryBudget(limit=size * 3 // 2)
    cache = ControlNetCache(budget, cache_size=4, loader=loader)
    a = cache.get(first, "cpu", torch.float32)
    assert cache.get(first, "cpu", torch.float32) is a and len(loader.calls) == 1
    assert budget.keys(CONTROLNET) == (ControlNetCache.key(first, "cpu", torch.float32),)
    assert budget.snapshot()[0].nbytes == size
    half = cache.get(first, "cpu", torch.float16)  # another dtype is another entry
    assert half is not a and half.dtype == torch.float16
    cache.get(second, "cpu", torch.float32)  # over the limit: the least recently used go
    assert budget.evictions >= 1
    assert ControlNetCache.key(first, "cpu", torch.float32) not in cache.held()
    assert ControlNetCache.key(second, "cpu", torch.float32) in cache.held()
    assert cache.get(first, "cpu", torch.float32) is not a and len(loader.calls) == 4

    with cache.using(second, "cpu", torch.float32) as pinned:
        cache.get(first, "cpu", torch.float32)
        cache.get(first, "cpu", torch.float16)
        assert ControlNetCache.key(second, "cpu", torch.float32) in cache.held()
        assert cache.get(second, "cpu", torch.float32) is pinned
    cache.unload()
    assert cache.held() == [] and budget.keys(CONTROLNET) == ()


def test_cache_size_caps_the_count(two_sd1: list[Any]) -> None:
    first, second, _ = two_sd1
    cache = ControlNetCache(MemoryBudget(), cache_size=1)
    cache.get(first, "cpu", torch.float32)
    cache.get(second, "cpu", torch.float32)
    assert cache.held() == [ControlNetCache.key(second, "cpu", torch.float32)]
    assert cache.budget.keys(CONTROLNET) == (ControlNetCache.key(second, "cpu", torch.float32),)


def test_cache_checks_the_family_even_when_held(two_sd1: list[Any]) -> None:
    _, _, xl = two_sd1
    cache = ControlNetCache(MemoryBudget())
    assert cache.get(xl, "cpu", torch.float32, base_family=fam.SDXL).family == fam.SDXL
    with pytest.raises(ModelFileError, match=r"an SDXL ControlNet on an SD 1\.x model"):
        cache.get(xl, "cpu", torch.float32, base_family=fam.SD1)
