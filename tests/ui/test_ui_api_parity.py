"""The UI's converter and the API's converter build the same `Txt2ImgRequest` for the same values
(every field the txt2img tab has)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from modules.api.images import DecodeOptions
from modules.api.schemas_generation import Txt2ImgPayload, to_txt2img
from modules.core.requests import Txt2ImgRequest
from modules.ui.txt2img import txt2img_request_from_ui

# the converter's keyword names (the tab's fields by name)
UI_FIELDS = tuple(inspect.signature(txt2img_request_from_ui).parameters)

DEFAULTS: dict[str, Any] = {
    "prompt": "a red cube on a table",
    "negative_prompt": "blurry",
    "styles": [],
    "sampler_name": "DPM++ 2M",
    "scheduler": "Automatic",
    "steps": 20,
    "enable_hr": False,
    "hr_upscaler": "Latent",
    "hr_second_pass_steps": 0,
    "denoising_strength": 0.7,
    "hr_scale": 2.0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "width": 512,
    "height": 512,
    "n_iter": 1,
    "batch_size": 1,
    "cfg_scale": 7.0,
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_w": 0,
    "seed_resize_from_h": 0,
}

CASES = [
    {},
    {"steps": 3, "width": 64, "height": 64, "seed": 1234, "cfg_scale": 4.5, "scheduler": "Karras"},
    {"n_iter": 3, "batch_size": 2, "sampler_name": "Euler a", "styles": ["one", "two"]},
    {"subseed": 99, "subseed_strength": 0.25, "seed_resize_from_w": 256, "seed_resize_from_h": 320},
    {
        "enable_hr": True,
        "hr_upscaler": "Latent (nearest)",
        "hr_second_pass_steps": 5,
        "denoising_strength": 0.55,
        "hr_scale": 1.5,
        "hr_resize_x": 768,
        "hr_resize_y": 640,
    },
    {"prompt": "", "negative_prompt": "", "width": 1024, "height": 768},
]


def _ui_values(values: dict[str, Any]) -> dict[str, Any]:
    """What Gradio hands the handler: sliders send floats."""
    floats = {"steps", "width", "height", "n_iter", "batch_size", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y"}
    return {k: float(v) if k in floats else v for k, v in values.items()}


@pytest.mark.parametrize("changes", CASES)
def test_ui_and_api_build_equal_requests(changes: dict[str, Any]) -> None:
    values = {**DEFAULTS, **changes}
    assert set(values) == set(UI_FIELDS)
    from_ui = txt2img_request_from_ui(**_ui_values(values))
    # the UI saves what it makes (A1111's UI does); the API client asks for it with save_images
    from_api = to_txt2img(Txt2ImgPayload(**values, save_images=True), DecodeOptions(max_pixels=1 << 24, allow_urls=False))
    assert isinstance(from_ui, Txt2ImgRequest)
    assert from_ui == from_api


def test_ui_defaults_are_a1111_ui_defaults_not_api_defaults() -> None:
    request = txt2img_request_from_ui(**_ui_values(DEFAULTS))
    assert (request.steps, request.effective_sampler, request.cfg_scale) == (20, "DPM++ 2M", 7.0)
    assert (request.width, request.height, request.seed) == (512, 512, -1)
    assert not request.do_not_save_samples
