"""ControlNet inside real generations (the engine with its registry, cache and applier) on the tiny
SD 1.x and SDXL checkpoints: a unit at weight 0 gives the same pixels as no unit, weight 1 changes
them; LDM-style, diffusers-style single files and a diffusers folder holding the same tensors give
the same image; guidance_end 0.5 runs the ControlNet on the first half of the steps only; an SD 1.x
ControlNet on an SDXL model is refused."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modules.app import build_services
from modules.core.controlnet import ControlNetUnit
from modules.core.errors import ModelFileError
from modules.core.requests import Txt2ImgRequest
from modules.core.settings import parse_settings
from modules.engine.controlnet import ActiveUnit
from modules.services import Services
from tests.fixtures.controlnet_files import write_controlnet, write_controlnet_folder
from tests.fixtures.module_tmp import ModuleTempDirs


@pytest.fixture(scope="module")
def services(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Iterator[Services]:
    root = module_tmp.mktemp("cn-gen")
    sd = root / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    shutil.copy(tiny_models["sd1"], sd / "sd1.safetensors")
    shutil.copy(tiny_models["sdxl"], sd / "sdxl.safetensors")
    cn = root / "models" / "ControlNet"
    write_controlnet(cn / "cn_sd1_ldm.safetensors", "sd1", "ldm", seed=5)
    write_controlnet(cn / "cn_sd1_diffusers.safetensors", "sd1", "diffusers", seed=5)
    write_controlnet_folder(cn / "cn_sd1_folder", "sd1", seed=5)
    write_controlnet(cn / "cn_xl_ldm.safetensors", "sdxl", "ldm", seed=6)
    write_controlnet(cn / "cn_xl_diffusers.pth", "sdxl", "diffusers", seed=6)
    built = build_services(parse_settings(["--data-dir", str(root)], {}), root, {})
    yield built
    built.worker.shutdown()


def _source() -> Image.Image:
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    arr[12:52, 20:44] = 255
    return Image.fromarray(arr)


def _run(services: Services, checkpoint: str, *units: ControlNetUnit, steps: int = 4) -> Any:
    request = Txt2ImgRequest(
        prompt="a tower",
        steps=steps,
        width=64,
        height=64,
        seed=3,
        sampler_name="Euler",
        cfg_scale=5,
        override_settings={"sd_model_checkpoint": checkpoint},
        controlnet_units=units,
        do_not_save_samples=True,
        do_not_save_grid=True,
    )
    return services.engine.run_sync(request, timeout=300)


def _unit(model: str, **changes: Any) -> ControlNetUnit:
    base: dict[str, Any] = {
        "enabled": True,
        "module": "canny",
        "model": model,
        "image": _source(),
        "processor_res": 64,
        "threshold_a": 100,
        "threshold_b": 200,
    }
    base.update(changes)
    return ControlNetUnit(**base)


def _pixels(result: Any) -> np.ndarray:
    return np.asarray(result.images[0])


@pytest.mark.parametrize(
    ("checkpoint", "layouts"),
    [
        ("sd1.safetensors", ("cn_sd1_ldm", "cn_sd1_diffusers", "cn_sd1_folder")),
        ("sdxl.safetensors", ("cn_xl_ldm", "cn_xl_diffusers")),
    ],
)
def test_weight_zero_is_no_unit_and_layouts_agree(
    services: Services, checkpoint: str, layouts: tuple[str, ...]
) -> None:
    plain = _pixels(_run(services, checkpoint))
    assert np.array_equal(_pixels(_run(services, checkpoint, _unit(layouts[0], weight=0.0))), plain)
    controlled = [_pixels(_run(services, checkpoint, _unit(name))) for name in layouts]
    assert not np.array_equal(controlled[0], plain)
    for other in controlled[1:]:
        assert np.array_equal(other, controlled[0])  # the same tensors in another layout: the same image
    result = _run(services, checkpoint, _unit(layouts[0]))
    assert f'ControlNet 0: "Module: canny, Model: {layouts[0]} [' in result.infotexts[0]


def test_guidance_end_half_runs_on_the_first_half(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    from modules.engine import controlnet as cn

    seen: list[tuple[int, int]] = []
    real = cn.ControlNetApplier._run

    def spy(self: cn.ControlNetApplier, unit: ActiveUnit, call: Any) -> Any:
        seen.append((call.step, call.steps))
        return real(self, unit, call)

    monkeypatch.setattr(cn.ControlNetApplier, "_run", spy)
    _run(services, "sd1.safetensors", _unit("cn_sd1_ldm", guidance_end=0.5), steps=6)
    steps = sorted({step for step, _ in seen})
    total = seen[0][1]
    assert steps == [s for s in range(total) if s / total <= 0.5] and steps  # Euler: one call per step


def test_family_mismatch_is_refused(services: Services) -> None:
    with pytest.raises(ModelFileError, match="SD 1"):
        _run(services, "sdxl.safetensors", _unit("cn_sd1_ldm"))


def test_recolor_puts_its_map_back_into_the_image(services: Services) -> None:
    """recolor_luminance: after decoding, the image's LAB lightness is the unit's map (the
    extension's post-processing); without the unit it is not."""
    import cv2

    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3))
    unit = _unit("cn_sd1_ldm", module="recolor_luminance", image=Image.fromarray(gradient), threshold_a=1.0)
    result = _run(services, "sd1", unit)
    plain = _run(services, "sd1")
    lightness = cv2.cvtColor(np.asarray(result.images[0].convert("RGB")), cv2.COLOR_RGB2LAB)[:, :, 0]
    expected = cv2.cvtColor(gradient, cv2.COLOR_RGB2LAB)[:, :, 0]
    # the channel is replaced, then converted back to RGB (colours out of gamut clip) and read again
    assert np.abs(lightness.astype(int) - expected.astype(int)).mean() < 8
    plain_l = cv2.cvtColor(np.asarray(plain.images[0].convert("RGB")), cv2.COLOR_RGB2LAB)[:, :, 0]
    assert np.abs(plain_l.astype(int) - expected.astype(int)).mean() > 30


def test_only_masked_inpaint_crops_the_control_image(services: Services) -> None:
    """img2img "Only masked": the control image is cropped to the inpaint area (the detected map
    shows the crop, scaled to the generation size); with inpaint_crop_input_image False it is not."""
    from modules.core.requests import Img2ImgRequest

    picture = np.zeros((128, 128, 3), dtype=np.uint8)
    picture[:, 64:] = 255  # left half black, right half white
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (72, 8, 120, 56))  # inside the white half

    def run(crop: bool) -> Any:
        request = Img2ImgRequest(
            prompt="a tower",
            steps=2,
            width=64,
            height=64,
            seed=3,
            sampler_name="Euler",
            denoising_strength=0.5,
            init_images=(Image.fromarray(picture),),
            mask=mask,
            mask_blur=0,
            inpaint_full_res=True,
            inpaint_full_res_padding=0,
            override_settings={"sd_model_checkpoint": "sd1"},
            controlnet_units=(
                _unit(
                    "cn_sd1_ldm",
                    module="none",
                    image=Image.fromarray(picture),
                    resize_mode="Just Resize",
                    inpaint_crop_input_image=crop,
                ),
            ),
            do_not_save_samples=True,
            do_not_save_grid=True,
        )
        return services.engine.run_sync(request, timeout=300)

    cropped = np.asarray(run(True).extra_images[0].convert("L"))
    whole = np.asarray(run(False).extra_images[0].convert("L"))
    assert cropped.min() == 255  # the crop lies in the white half
    assert whole[:, :32].max() < 10 and whole[:, -32:].min() > 245  # both halves


def test_recolor_restore_replaces_the_channel_exactly_where_in_gamut() -> None:
    import cv2

    from modules.engine.controlnet_post import recolor_restore

    grey = Image.new("RGB", (8, 8), (100, 100, 100))
    feed = np.full((8, 8), 200, dtype=np.uint8)
    out = recolor_restore(grey, feed, "recolor_intensity")
    assert cv2.cvtColor(np.asarray(out), cv2.COLOR_RGB2HSV)[:, :, 2].min() == 200
    assert recolor_restore(grey, np.zeros((4, 4), np.uint8), "recolor_luminance") is grey  # size mismatch: kept


def test_tile_colorfix_runs_its_latent_fix_at_every_step(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """tile_colorfix inside a generation: at weight 0 nothing changes; otherwise its colour fix
    (modules.engine.controlnet_latent, whose maths is tested there) rewrites the UNet output at
    every model call with the control image's latent, and the image differs from the fix-less one."""
    from modules.engine import controlnet_latent

    red = Image.new("RGB", (64, 64), (220, 30, 30))
    plain = np.asarray(_run(services, "sd1").images[0])
    zero = _run(services, "sd1", _unit("cn_sd1_ldm", module="tile_colorfix", image=red, weight=0))
    assert np.array_equal(np.asarray(zero.images[0]), plain)

    with_fix = np.asarray(_run(services, "sd1", _unit("cn_sd1_ldm", module="tile_colorfix", image=red)).images[0])
    changed: list[bool] = []
    real = controlnet_latent.ColorFixApplier.__call__

    def spy(self: Any, call: Any, call_next: Any) -> Any:
        out = real(self, call, call_next)
        changed.append(not bool((out == call_next(call)).all()))
        return out

    monkeypatch.setattr(controlnet_latent.ColorFixApplier, "__call__", spy)
    _run(services, "sd1", _unit("cn_sd1_ldm", module="tile_colorfix", image=red))
    assert changed == [True] * 4  # 4 Euler steps, one batched cond/uncond call each

    def no_fix(self: Any, call: Any, call_next: Any) -> Any:
        return call_next(call)

    monkeypatch.setattr(controlnet_latent.ColorFixApplier, "__call__", no_fix)
    without = np.asarray(_run(services, "sd1", _unit("cn_sd1_ldm", module="tile_colorfix", image=red)).images[0])
    assert not np.array_equal(with_fix, without)


def test_inpaint_only_keeps_the_unmasked_area_of_the_control_image(services: Services) -> None:
    """txt2img with an inpaint_only unit: outside the (dilated, blurred) mask the image is the
    control image (the extension's paste-back), inside it is generated."""
    control = np.zeros((64, 64, 3), dtype=np.uint8)
    control[:, :, 1] = 180  # green everywhere
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    unit = _unit("cn_sd1_ldm", module="inpaint_only", image=Image.fromarray(control), mask=mask)
    result = _run(services, "sd1", unit)
    out = np.asarray(result.images[0].convert("RGB")).astype(int)
    assert not any("inpaint_only runs as" in w for w in result.warnings)
    assert np.abs(out[:8, :8] - control[:8, :8]).max() <= 1  # far from the mask: the control image
    assert np.abs(out[30:34, 30:34] - control[30:34, 30:34]).max() > 20  # the masked centre: generated
