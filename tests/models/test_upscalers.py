"""Upscaler registry (A1111 folders, spandrel detection, safe loading) and tiled upscaling."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core.errors import ModelFileError, NotFoundError, UnsafeModelFileError, ValidationError
from modules.engine import upscaling
from modules.engine.upscaling import (
    TileSettings,
    UpscaleOutOfMemoryError,
    pil_to_tensor,
    run_tiled,
    tile_settings,
    upscale,
)
from modules.models.upscalers import UpscalerRegistry, arch_registry, scale_from_name
from tests.fixtures import pickles
from tests.fixtures.upscaler_models import FIXTURES, build_upscaler_set, verify
from tests.fixtures.module_tmp import ModuleTempDirs

FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT")


@pytest.fixture(scope="module")
def models_dir(module_tmp: ModuleTempDirs) -> Path:
    root = module_tmp.mktemp("upscalers")
    build_upscaler_set(root)
    return root


@pytest.fixture()
def registry(models_dir: Path) -> UpscalerRegistry:
    return UpscalerRegistry([(k, models_dir / k) for k in FOLDERS])


def _image(width: int = 96, height: int = 80, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth-ish content (a gradient plus noise) like a real picture
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    noise = rng.integers(0, 55, size=(height, width, 3))
    return Image.fromarray((base + noise).astype(np.uint8), "RGB")


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_detected_with_architecture_and_scale(models_dir: Path, name: str) -> None:
    folder, filename, arch, scale = FIXTURES[name]
    verify(models_dir / folder / filename, arch, scale)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_registry_detects_on_first_use(registry: UpscalerRegistry, name: str) -> None:
    _folder, filename, arch, scale = FIXTURES[name]
    info = registry.get(Path(filename).stem)
    assert info.architecture is None  # the scan read no weights
    loaded = registry.load(info)
    assert loaded.architecture == arch
    assert loaded.scale == scale
    assert registry.get(info.name).architecture == arch
    assert registry.get(info.name).scale == scale


def test_registry_lists_builtins_then_folder_files(registry: UpscalerRegistry, models_dir: Path) -> None:
    items = registry.list()
    assert [i["name"] for i in items[:3]] == ["None", "Lanczos", "Nearest"]
    assert all(set(i) == {"name", "model_name", "model_path", "model_url", "scale"} for i in items)
    assert items[0] == {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    by_name = {i["name"]: i for i in items}
    for folder, filename, _arch, scale in FIXTURES.values():
        entry = by_name[Path(filename).stem]
        assert entry["model_path"] == str(models_dir / folder / filename)
        assert entry["model_name"] == Path(filename).stem
        assert entry["scale"] == scale  # guessed from the file name before any load
    real = registry.realesrgan_models()
    assert {r["name"] for r in real} == {"tiny_RealESRGAN_x4plus", "tiny_realesr-general-x4v3"}
    assert all(set(r) == {"name", "path", "scale"} for r in real)


def test_scan_reads_no_weights(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import modules.models.upscalers as mod

    def boom(path: Path) -> None:
        raise AssertionError(f"scan read {path}")

    monkeypatch.setattr(mod, "read_state_dict", boom)
    reg = UpscalerRegistry([(k, models_dir / k) for k in FOLDERS])
    assert len(reg.list()) == 3 + len(FIXTURES)


def test_refresh_sees_new_files_and_missing_folders(tmp_path: Path) -> None:
    reg = UpscalerRegistry([("ESRGAN", tmp_path / "ESRGAN"), ("SwinIR", tmp_path / "nope")])
    assert reg.names() == ["None", "Lanczos", "Nearest"]
    from tests.fixtures.upscaler_models import write_compact

    write_compact(tmp_path / "ESRGAN" / "sub" / "2x_thing.safetensors", scale=2)
    (tmp_path / "ESRGAN" / "notes.txt").write_text("hi")
    assert reg.refresh()[-1].name == "2x_thing"
    assert reg.get("2X_THING").scale == 2
    with pytest.raises(NotFoundError):
        reg.get("missing")


@pytest.mark.parametrize(
    ("stem", "scale"),
    [("4x_foo", 4), ("RealESRGAN_x4plus", 4), ("realesr-general-x4v3", 4), ("foo_x2", 2), ("2x-bar", 2), ("plain", 4)],
)
def test_scale_from_name(stem: str, scale: int) -> None:
    assert scale_from_name(stem) == scale


def test_private_arch_registry_leaves_spandrel_global_alone() -> None:
    from spandrel import MAIN_REGISTRY

    ours = arch_registry()
    assert "SRFormer" in ours  # from spandrel_extra_arches
    assert "SRFormer" not in MAIN_REGISTRY
    assert len(ours) > len(MAIN_REGISTRY)


def test_lru_cache_is_bounded(models_dir: Path) -> None:
    reg = UpscalerRegistry([(k, models_dir / k) for k in FOLDERS], cache_size=2)
    first = reg.load("tiny_esrgan_old_4x")
    assert reg.load("tiny_esrgan_old_4x") is first
    reg.load("tiny_realesr-general-x4v3")
    reg.load("tiny_swinir_2x")
    assert reg.load("tiny_esrgan_old_4x") is not first  # evicted, loaded again


@pytest.mark.parametrize(
    "name", ["tiny_esrgan_old_4x", "tiny_esrgan_old_2x", "tiny_RealESRGAN_x4plus", "tiny_realesr-general-x4v3"]
)
def test_tiled_equals_untiled(registry: UpscalerRegistry, name: str) -> None:
    model = registry.load(name)
    image = pil_to_tensor(_image(96, 80), model.device, model.dtype)
    whole = run_tiled(model, image, 0, 8)
    tiled = run_tiled(model, image, 32, 8)
    assert tiled.shape == whole.shape == (1, 3, 80 * model.scale, 96 * model.scale)
    assert float((tiled - whole).abs().max()) <= 2 / 255


def test_tiles_cover_the_image_with_progress(registry: UpscalerRegistry) -> None:
    seen: list[tuple[int, int]] = []
    model = registry.load("tiny_realesr-general-x4v3")
    image = pil_to_tensor(_image(70, 45), model.device, model.dtype)
    out = run_tiled(model, image, 32, 8, progress=lambda d, t: seen.append((d, t)))
    assert out.shape == (1, 3, 180, 280)
    assert seen[-1] == (6, 6)  # 3 columns x 2 rows


def test_upscale_reaches_exact_size_with_repeated_passes(registry: UpscalerRegistry) -> None:
    calls: list[tuple[int, ...]] = []
    model = registry.load("tiny_esrgan_old_2x")
    real = model.descriptor

    class Counting:
        def __getattr__(self, item: str) -> object:
            return getattr(real, item)

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(x.shape))
            return real(x)

    object.__setattr__(model, "descriptor", Counting())
    try:
        out = upscale(_image(30, 20), model, 3.5, tiles=TileSettings(tile=0))
    finally:
        object.__setattr__(model, "descriptor", real)
    assert out.size == (105, 70)
    assert len(calls) == 2  # 2x -> 4x, then Lanczos down to 3.5x


def test_upscale_by_name_through_registry(registry: UpscalerRegistry) -> None:
    out = upscale(_image(24, 16), "tiny_swinir_2x", 2, registry=registry)
    assert out.size == (48, 32) and out.mode == "RGB"
    rgba = _image(24, 16).convert("RGBA")
    out = upscale(rgba, "tiny_realesr-general-x4v3", 2, registry=registry, tiles=TileSettings(tile=16, overlap=4))
    assert out.size == (48, 32) and out.mode == "RGBA"


def test_builtins() -> None:
    image = _image(20, 10)
    assert upscale(image, "None", 2) is image
    assert upscale(image, "Lanczos", 2.5).size == (50, 25)
    nearest = upscale(image, "Nearest", 2)
    assert nearest.size == (40, 20)
    assert nearest.getpixel((1, 1)) == image.getpixel((0, 0))
    with pytest.raises(ValidationError):
        upscale(image, "Lanczos", 0)


def test_out_of_memory_halves_the_tile(registry: UpscalerRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    model = registry.load("tiny_realesr-general-x4v3")
    real_call = type(model.descriptor).__call__
    sizes: list[int] = []

    def limited(self: object, x: torch.Tensor) -> torch.Tensor:
        sizes.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > 24:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_call(self, x)

    monkeypatch.setattr(type(model.descriptor), "__call__", limited)
    out = upscale(_image(96, 80), model, 4, tiles=TileSettings(tile=96, overlap=4))
    assert out.size == (384, 320)
    # 96 (whole image) fails, 48 (balanced: 42px tiles) fails, 24 (balanced: 23px tiles) works
    assert sizes[0] == 96 and 24 < sizes[1] <= 48 and sizes[-1] <= 24


def test_runtime_error_out_of_memory_also_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[-1])
        if x.shape[-1] > 20:
            raise RuntimeError("CUDA error: out of memory")
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    out, tile = upscaling.run_tiled_with_retry(model, torch.rand(1, 3, 40, 40), 0, 4)
    assert out.shape == (1, 3, 80, 80)
    assert tile == 20
    assert calls[0] == 40 and max(calls[1:]) <= 20  # whole image, then tiles of at most 20px


def test_out_of_memory_below_the_floor_is_a_clear_error() -> None:
    def model(x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(UpscaleOutOfMemoryError, match="out of memory even with"):
        upscaling.run_tiled_with_retry(model, torch.rand(1, 3, 64, 64), 64, 8, min_tile=16)


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        upscaling.run_tiled_with_retry(model, torch.rand(1, 3, 64, 64), 64, 8)
    assert calls == [1]


def test_garbage_file_is_model_file_error(tmp_path: Path) -> None:
    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    (folder / "garbage.pth").write_bytes(b"not a model at all" * 10)
    torch.save({"foo.weight": torch.zeros(3, 3)}, folder / "unknown.pth")
    reg = UpscalerRegistry([("ESRGAN", folder)])
    assert {"garbage", "unknown"} <= set(reg.names())
    with pytest.raises(ModelFileError, match=r"garbage\.pth"):
        reg.load("garbage")
    with pytest.raises(ModelFileError, match=r"unknown\.pth.*not a supported upscaler"):
        reg.load("unknown")


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ESRGAN"
    path, marker = pickles.write_zip_system_ckpt(folder, "4x_evil.pth")
    legacy, legacy_marker = pickles.write_legacy_exec_ckpt(folder, "evil_legacy.pth")
    reg = UpscalerRegistry([("ESRGAN", folder)])
    for name, file, mark in (("4x_evil", path, marker), ("evil_legacy", legacy, legacy_marker)):
        with pytest.raises(UnsafeModelFileError, match=file.name):
            reg.load(name)
        assert not mark.exists()


def test_tile_settings_from_options() -> None:
    from modules.models.upscalers import UpscalerInfo

    assert tile_settings(None) == TileSettings(192, 8)
    opts = {"ESRGAN_tile": 64, "ESRGAN_tile_overlap": 4, "DAT_tile": 128, "DAT_tile_overlap": 16}
    assert tile_settings(opts) == TileSettings(64, 4)
    dat = UpscalerInfo("x", "x", "/x.pth", 4, "DAT")
    assert tile_settings(opts, dat) == TileSettings(128, 16)


def test_real_option_keys_exist() -> None:
    from modules.core.option_defaults import default_option_infos

    keys = {info.key for info in default_option_infos()}
    assert {"ESRGAN_tile", "ESRGAN_tile_overlap", "DAT_tile", "DAT_tile_overlap"} <= keys


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(256, 192, 8), (256, 64, 8), (70, 32, 8), (33, 32, 8), (997, 192, 16)]
)
def test_axis_tiles_cover_with_overlap(length: int, tile: int, overlap: int) -> None:
    size, starts = upscaling.axis_tiles(length, tile, overlap)
    assert size <= tile and starts[0] == 0 and starts[-1] + size == length
    assert all(b - a <= size - overlap for a, b in itertools.pairwise(starts))


def test_narrow_tiles_with_large_overlap() -> None:
    image = torch.rand(1, 3, 20, 50)
    out = run_tiled(lambda x: torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"), image, 16, 8)
    expected = torch.nn.functional.interpolate(image, scale_factor=2, mode="nearest")
    assert torch.allclose(out, expected, atol=1e-6)


def test_cpu_models_stay_float32(registry: UpscalerRegistry) -> None:
    loaded = registry.load("tiny_realesr-general-x4v3")
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32
    assert loaded.descriptor.supports_half  # would run in fp16 on CUDA unless --no-half
