"""The Extras models wired into generation: hires fix with a model upscaler, restore_faces with
the shared face-restorer registry (built by the composition root, as in production)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from modules.app import build_services
from modules.core.requests import Txt2ImgRequest
from modules.core.settings import parse_settings
from tests.fixtures.upscaler_models import write_esrgan_old

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture()
def services(tiny_models: dict[str, Path], tmp_path: Path):  # type: ignore[no-untyped-def]
    sd = tmp_path / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    shutil.copy(tiny_models["sd1"], sd / "sd1.safetensors")
    write_esrgan_old(tmp_path / "models" / "ESRGAN" / "4x_tiny.pth")
    s = build_services(parse_settings(["--data-dir", str(tmp_path), "--no-hashing"], {}), tmp_path, {})
    yield s
    s.worker.shutdown()


def _request(**kw: object) -> Txt2ImgRequest:
    base: dict[str, object] = {
        "prompt": "a cat",
        "width": 64,
        "height": 64,
        "steps": 2,
        "seed": 7,
        "sampler_name": "Euler",
    }
    base.update(kw)
    return Txt2ImgRequest(**base)  # type: ignore[arg-type]


def test_hires_fix_with_a_model_upscaler_from_models_esrgan(services) -> None:  # type: ignore[no-untyped-def]
    names = [u["name"] for u in services.upscalers.list()]
    assert "4x_tiny" in names
    r = services.engine.run_sync(
        _request(enable_hr=True, hr_upscaler="4x_tiny", hr_scale=1.5, hr_second_pass_steps=1, denoising_strength=0.3),
        120,
    )
    assert r.images[0].size == (96, 96)
    assert "Hires upscaler: 4x_tiny" in r.infotexts[0]


def test_unknown_hires_upscaler_is_a_clear_error(services) -> None:  # type: ignore[no-untyped-def]
    from modules.core.errors import NotFoundError

    with pytest.raises(NotFoundError):
        services.engine.run_sync(_request(enable_hr=True, hr_upscaler="nope", hr_scale=1.5), 120)


def test_restore_faces_without_weights_warns_and_with_weights_applies(services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = services.engine.run_sync(_request(restore_faces=True), 120)
    assert any("restore_faces" in w for w in r.warnings)
    from tests.fixtures.face_models import write_gfpgan

    write_gfpgan(tmp_path / "models" / "GFPGAN" / "GFPGANv1.4.pth")
    services.options.set("face_restoration_model", "GFPGAN")
    r = services.engine.run_sync(_request(restore_faces=True), 120)
    assert not any("restore_faces" in w for w in r.warnings)
    assert "Face restoration: GFPGAN" in r.infotexts[0]
