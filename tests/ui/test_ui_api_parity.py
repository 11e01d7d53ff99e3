"""The UI's converter and the API's converter build the same `Txt2ImgRequest` for the same values
(every field the txt2img tab has: hires fix with its checkpoint, sampler, schedule and prompts, and
the refiner). What an API client sends for the UI's "Use same ..." is nothing (null), and for an
unticked refiner no refiner fields."""

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
    "hr_checkpoint_name": "Use same checkpoint",
    "hr_sampler_name": "Use same sampler",
    "hr_scheduler": "Use same scheduler",
    "hr_prompt": "",
    "hr_negative_prompt": "",
    "enable_refiner": False,
    "refiner_checkpoint": None,
    "refiner_switch_at": 0.8,
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
    {
        "enable_hr": True,
        "hr_upscaler": "Lanczos",
        "hr_checkpoint_name": "sd2.safetensors [0123456789]",
        "hr_sampler_name": "Euler a",
        "hr_scheduler": "Karras",
        "hr_prompt": "a red cube, detailed",
        "hr_negative_prompt": "lowres",
    },
    {"enable_hr": True, "hr_sampler_name": "DPM++ SDE", "hr_scheduler": "Automatic", "hr_upscaler": "None"},
    {"enable_refiner": True, "refiner_checkpoint": "sdxl_refiner.safetensors [abcdef0123]", "refiner_switch_at": 0.65},
    # ticked without a checkpoint, or a checkpoint chosen but unticked: no refiner
    {"enable_refiner": True, "refiner_checkpoint": None, "refiner_switch_at": 0.5},
    {"enable_refiner": True, "refiner_checkpoint": "", "refiner_switch_at": 0.5},
    {"enable_refiner": False, "refiner_checkpoint": "sdxl_refiner.safetensors", "refiner_switch_at": 0.3},
    {
        "enable_hr": True,
        "hr_checkpoint_name": "sd1.safetensors",
        "enable_refiner": True,
        "refiner_checkpoint": "sd2.safetensors",
        "refiner_switch_at": 1.0,
    },
]
# what the UI shows for "nothing chosen", which an API client leaves out
SAME = {
    "hr_checkpoint_name": "Use same checkpoint",
    "hr_sampler_name": "Use same sampler",
    "hr_scheduler": "Use same scheduler",
}
UI_ONLY = {"enable_refiner"}


def _api_values(values: dict[str, Any]) -> dict[str, Any]:
    """What an API client sends for the same generation: no "Use same ..." values, and the refiner
    fields only when the refiner is on with a checkpoint."""
    data = {k: v for k, v in values.items() if k not in UI_ONLY and SAME.get(k) != v}
    if not values["enable_refiner"] or not values["refiner_checkpoint"]:
        data.pop("refiner_checkpoint", None)
        data.pop("refiner_switch_at")
    return data


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
    payload = Txt2ImgPayload(**_api_values(values), save_images=True)
    from_api = to_txt2img(payload, DecodeOptions(max_pixels=1 << 24, allow_urls=False))
    assert isinstance(from_ui, Txt2ImgRequest)
    assert from_ui == from_api


def test_ui_defaults_are_a1111_ui_defaults_not_api_defaults() -> None:
    request = txt2img_request_from_ui(**_ui_values(DEFAULTS))
    assert (request.steps, request.effective_sampler, request.cfg_scale) == (20, "DPM++ 2M", 7.0)
    assert (request.width, request.height, request.seed) == (512, 512, -1)
    assert not request.do_not_save_samples
    # hires "Use same ..." and an unticked refiner are no request values at all
    assert (request.hr_checkpoint_name, request.hr_sampler_name, request.hr_scheduler) == (None, None, None)
    assert (request.hr_prompt, request.hr_negative_prompt) == ("", "")
    assert (request.refiner_checkpoint, request.refiner_switch_at) == (None, None)


def test_the_ui_passes_hires_choices_and_the_refiner_on() -> None:
    values = {
        **DEFAULTS,
        "enable_hr": True,
        "hr_checkpoint_name": "sd2.safetensors [0123456789]",
        "hr_sampler_name": "Euler a",
        "hr_scheduler": "Karras",
        "hr_prompt": "sharp",
        "hr_negative_prompt": "soft",
        "enable_refiner": True,
        "refiner_checkpoint": "sdxl_refiner.safetensors",
        "refiner_switch_at": 0.65,
    }
    request = txt2img_request_from_ui(**_ui_values(values))
    assert (request.hr_checkpoint_name, request.hr_sampler_name, request.hr_scheduler) == (
        "sd2.safetensors [0123456789]",
        "Euler a",
        "Karras",
    )
    assert (request.hr_prompt, request.hr_negative_prompt) == ("sharp", "soft")
    assert (request.refiner_checkpoint, request.refiner_switch_at) == ("sdxl_refiner.safetensors", 0.65)
    unticked = txt2img_request_from_ui(**_ui_values({**values, "enable_refiner": False}))
    assert (unticked.refiner_checkpoint, unticked.refiner_switch_at) == (None, None)
