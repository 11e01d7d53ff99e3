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


@pytest.fixture(scope="module")
def services(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("cn-gen")
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
