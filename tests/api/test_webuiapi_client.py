"""The real `webuiapi` client (PyPI, unmodified) against a live server on tiny models."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import webuiapi
from PIL import Image

from modules.services import Services

pytestmark = pytest.mark.usefixtures("no_network")

SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def api(live_server: str) -> webuiapi.WebUIApi:
    parts = urlsplit(live_server)
    return webuiapi.WebUIApi(host=parts.hostname, port=parts.port, sampler="Euler a", steps=2)


def _picture() -> Image.Image:
    image = Image.new("RGB", (64, 64), (30, 160, 90))
    image.paste((250, 250, 0), (10, 10, 40, 40))
    return image


def test_txt2img(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(prompt="a tiny cat", negative_prompt="dog", seed=321, batch_size=2, **SMALL)
    assert len(result.images) == 2 and result.image.size == (64, 64)
    assert result.info["all_seeds"] == [321, 322]
    assert result.info["sampler_name"] == "Euler a"
    assert result.image.info["parameters"] == result.info["infotexts"][0]
    assert result.parameters["prompt"] == "a tiny cat"


def test_img2img_and_inpainting(api: webuiapi.WebUIApi) -> None:
    result = api.img2img(images=[_picture()], prompt="p", seed=5, denoising_strength=0.5, **SMALL)
    assert result.image.size == (64, 64)
    assert "Denoising strength: 0.5" in result.info["infotexts"][0]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = api.img2img(images=[_picture()], mask_image=mask, prompt="p", seed=6, **SMALL)
    assert result.image.size == (64, 64)
    assert "Mask blur: 4" in result.info["infotexts"][0]


def test_png_info(api: webuiapi.WebUIApi) -> None:
    made = api.txt2img(prompt="read me back", seed=99, **SMALL)
    result = api.png_info(made.image)
    assert result.info == made.info["infotexts"][0]
    assert result.parameters["Prompt"] == "read me back" and result.parameters["Seed"] == "99"


def test_options_models_and_samplers(api: webuiapi.WebUIApi, api_services: Services) -> None:
    options = api.get_options()
    assert "sd_model_checkpoint" in options and "samples_format" in options
    api.set_options({"jpeg_quality": 81})
    assert api.get_options()["jpeg_quality"] == 81
    samplers = [s["name"] for s in api.get_samplers()]
    assert "Euler" in samplers and "Euler a" in samplers
    names = api.util_get_model_names()
    assert len(names) == 3 and any(n.startswith("sd2.safetensors") for n in names)
    try:
        api.util_set_model("sd2")
        assert api_services.models.active.info.name == "sd2.safetensors"  # type: ignore[union-attr]
        assert api.get_options()["sd_model_checkpoint"].startswith("sd2.safetensors")
        made = api.txt2img(prompt="on sd2", seed=1, **SMALL)
        assert made.info["sd_model_name"] == "sd2"
    finally:
        # exact title: webuiapi's fuzzy match would pick "sd1-inpaint..." for "sd1.safetensors"
        api.util_set_model(next(n for n in names if n.startswith("sd1.safetensors")), find_closest=False)
    assert api_services.models.active.info.name == "sd1.safetensors"  # type: ignore[union-attr]


def test_progress_and_interrupt(api: webuiapi.WebUIApi) -> None:
    progress = api.get_progress()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0
    assert api.interrupt() == {}
    api.util_wait_for_ready(check_interval=0.1)
