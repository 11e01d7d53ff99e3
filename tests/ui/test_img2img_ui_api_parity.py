"""The img2img tab's converter and the API's converter build the same `Img2ImgRequest` for the same
values: every field the tab has, for each image sub-tab (the UI's image and mask are sent to the
API as base64 PNGs; images are compared by their pixels). The refiner is sent by an API client
only when the tab's Refiner box is ticked with a checkpoint."""

from __future__ import annotations

import base64
import dataclasses
import inspect
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modules.api.images import DecodeOptions
from modules.api.schemas_generation import Img2ImgPayload, to_img2img
from modules.core.requests import Img2ImgRequest
from modules.ui.img2img_modes import IMG2IMG, INPAINT, INPAINT_SKETCH, INPAINT_UPLOAD, SKETCH
from modules.ui.img2img_request import RESIZE_BY, RESIZE_TO, img2img_request_from_ui, scaled_size

# the converter's keyword names (the tab's fields by name)
UI_FIELDS = tuple(inspect.signature(img2img_request_from_ui).parameters)
IMAGE_FIELDS = ("init_images", "mask", "latent_mask")
DECODE = DecodeOptions(max_pixels=4096 * 4096, allow_urls=False)


def _image() -> Image.Image:
    image = Image.new("RGB", (96, 80), (180, 60, 30))
    image.paste((30, 90, 200), (20, 10, 60, 50))
    return image


def _stroke_layer() -> Image.Image:
    layer = Image.new("RGBA", (96, 80), (0, 0, 0, 0))
    layer.paste((250, 250, 40, 255), (30, 30, 70, 60))
    return layer


def _editor() -> dict[str, Any]:
    background = _image().convert("RGBA")
    composite = background.copy()
    composite.alpha_composite(_stroke_layer())
    return {"background": background, "layers": [_stroke_layer()], "composite": composite}


def _mask() -> Image.Image:
    mask = Image.new("L", (96, 80), 0)
    mask.paste(255, (10, 10, 50, 40))
    return mask


# the tab's values with A1111's UI defaults; the sub-tab's images are added per case
UI_DEFAULTS: dict[str, Any] = {
    "mode": IMG2IMG,
    "init_image": None,
    "sketch": None,
    "inpaint_editor": None,
    "inpaint_sketch": None,
    "inpaint_base": None,
    "inpaint_mask": None,
    "mask_alpha": 0,
    "prompt": "a red cube on a table",
    "negative_prompt": "blurry",
    "styles": [],
    "resize_mode": 0,
    "mask_blur": 4,
    "inpainting_mask_invert": 0,
    "inpainting_fill": 1,
    "inpaint_full_res": 0,
    "inpaint_full_res_padding": 32,
    "sampler_name": "DPM++ 2M",
    "scheduler": "Automatic",
    "steps": 20,
    "enable_refiner": False,
    "refiner_checkpoint": None,
    "refiner_switch_at": 0.8,
    "selected_scale_tab": RESIZE_TO,
    "width": 512,
    "height": 512,
    "scale_by": 1.0,
    "n_iter": 1,
    "batch_size": 1,
    "cfg_scale": 7.0,
    "image_cfg_scale": 1.5,
    "denoising_strength": 0.75,
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_w": 0,
    "seed_resize_from_h": 0,
}
# UI-only names: which image sub-tab, where its image and mask come from, the resize tabs
UI_ONLY = {
    "mode",
    "init_image",
    "sketch",
    "inpaint_editor",
    "inpaint_sketch",
    "inpaint_base",
    "inpaint_mask",
    "mask_alpha",
    "selected_scale_tab",
    "scale_by",
    "enable_refiner",
}

CASES: list[dict[str, Any]] = [
    {"init_image": _image()},
    {"init_image": _image(), "steps": 3, "width": 64, "height": 64, "seed": 1234, "cfg_scale": 4.5},
    {"init_image": _image(), "scheduler": "Karras", "sampler_name": "Euler a", "styles": ["one", "two"]},
    {"init_image": _image(), "n_iter": 3, "batch_size": 2, "resize_mode": 2, "denoising_strength": 0.3},
    {"init_image": _image(), "subseed": 99, "subseed_strength": 0.25, "seed_resize_from_w": 256},
    {"init_image": _image(), "seed_resize_from_h": 320, "image_cfg_scale": 2.35},
    {"init_image": _image(), "selected_scale_tab": RESIZE_BY, "scale_by": 1.5},
    {"mode": SKETCH, "sketch": _editor()},
    {"mode": SKETCH, "sketch": _editor(), "selected_scale_tab": RESIZE_BY, "scale_by": 2.0},
    {"mode": INPAINT, "inpaint_editor": _editor()},
    {
        "mode": INPAINT,
        "inpaint_editor": _editor(),
        "mask_blur": 12,
        "inpainting_mask_invert": 1,
        "inpainting_fill": 2,
        "inpaint_full_res": 1,
        "inpaint_full_res_padding": 64,
    },
    {"mode": INPAINT_SKETCH, "inpaint_sketch": _editor()},
    {"mode": INPAINT_SKETCH, "inpaint_sketch": _editor(), "mask_alpha": 40, "inpainting_fill": 0},
    {"mode": INPAINT_UPLOAD, "inpaint_base": _image(), "inpaint_mask": _mask(), "inpainting_fill": 3},
    {"init_image": _image(), "prompt": "", "negative_prompt": "", "width": 1024, "height": 768},
    {"init_image": _image(), "enable_refiner": True, "refiner_checkpoint": "sdxl_refiner.safetensors"},
    {
        "mode": INPAINT,
        "inpaint_editor": _editor(),
        "enable_refiner": True,
        "refiner_checkpoint": "sd2.safetensors [0123456789]",
        "refiner_switch_at": 0.35,
    },
    # ticked without a checkpoint, or a checkpoint chosen but unticked: no refiner
    {"init_image": _image(), "enable_refiner": True, "refiner_checkpoint": "", "refiner_switch_at": 0.5},
    {"init_image": _image(), "enable_refiner": False, "refiner_checkpoint": "sd2.safetensors"},
]


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _ui_values(values: dict[str, Any]) -> dict[str, Any]:
    """What Gradio hands the handler: sliders send floats."""
    floats = {
        "steps",
        "width",
        "height",
        "n_iter",
        "batch_size",
        "mask_blur",
        "inpaint_full_res_padding",
        "mask_alpha",
        "seed_resize_from_w",
        "seed_resize_from_h",
    }
    return {k: float(v) if k in floats else v for k, v in values.items()}


def _api_payload(values: dict[str, Any], image: Image.Image, mask: Image.Image | None) -> Img2ImgPayload:
    """What an API client sends for the same generation: the sub-tab's image (and mask) as base64,
    the size it asks for (with "Resize by", the scaled size), `inpaint_full_res` as a bool."""
    data = {k: v for k, v in values.items() if k not in UI_ONLY}
    if values["selected_scale_tab"] == RESIZE_BY:
        data["width"], data["height"] = scaled_size(image.width, image.height, values["scale_by"])
    data["inpaint_full_res"] = bool(values["inpaint_full_res"])
    if not values["enable_refiner"] or not values["refiner_checkpoint"]:
        data.pop("refiner_checkpoint")
        data.pop("refiner_switch_at")
    # the UI saves what it makes (A1111's UI does); the API client asks for it with save_images
    return Img2ImgPayload(
        **data, init_images=[_b64(image)], mask=_b64(mask) if mask is not None else None, save_images=True
    )


def _pixels(image: Image.Image | None, mode: str) -> Any:
    return None if image is None else np.asarray(image.convert(mode))


@pytest.mark.parametrize("changes", CASES)
def test_ui_and_api_build_equal_requests(changes: dict[str, Any]) -> None:
    values = {**UI_DEFAULTS, **changes}
    assert set(values) == set(UI_FIELDS)
    from_ui = img2img_request_from_ui(**_ui_values(values))
    assert isinstance(from_ui, Img2ImgRequest) and len(from_ui.init_images) == 1
    from_api = to_img2img(_api_payload(values, from_ui.init_images[0], from_ui.mask), DECODE)

    for name in (f.name for f in dataclasses.fields(Img2ImgRequest)):
        if name not in IMAGE_FIELDS:
            assert getattr(from_ui, name) == getattr(from_api, name), name
    assert len(from_api.init_images) == 1
    assert np.array_equal(_pixels(from_ui.init_images[0], "RGB"), _pixels(from_api.init_images[0], "RGB"))
    assert (from_ui.mask is None) == (from_api.mask is None)
    if from_ui.mask is not None:
        assert np.array_equal(_pixels(from_ui.mask, "L"), _pixels(from_api.mask, "L"))
    assert from_ui.latent_mask is None and from_api.latent_mask is None


def test_the_ui_image_is_the_sub_tabs_image() -> None:
    """The pixels the API is sent above are the sub-tab's own: the upload, the sketch composite,
    the inpaint background, and the upload-mask as is."""
    values = {**UI_DEFAULTS, "mode": SKETCH, "sketch": _editor()}
    request = img2img_request_from_ui(**_ui_values(values))
    expected = _editor()["composite"].convert("RGB")
    assert np.array_equal(np.asarray(request.init_images[0]), np.asarray(expected))
    values = {**UI_DEFAULTS, "mode": INPAINT_UPLOAD, "inpaint_base": _image(), "inpaint_mask": _mask()}
    request = img2img_request_from_ui(**_ui_values(values))
    assert np.array_equal(np.asarray(request.init_images[0]), np.asarray(_image()))
    assert request.mask is not None and np.array_equal(np.asarray(request.mask), np.asarray(_mask()))
    scaled = img2img_request_from_ui(
        **_ui_values({**UI_DEFAULTS, "init_image": _image(), "selected_scale_tab": RESIZE_BY, "scale_by": 1.5})
    )
    assert (scaled.width, scaled.height) == (144, 120)


def test_ui_defaults_are_a1111_ui_defaults() -> None:
    request = img2img_request_from_ui(**_ui_values({**UI_DEFAULTS, "init_image": _image()}))
    assert (request.steps, request.effective_sampler, request.cfg_scale) == (20, "DPM++ 2M", 7.0)
    assert (request.denoising_strength, request.image_cfg_scale, request.mask_blur) == (0.75, 1.5, 4)
    assert (request.inpainting_fill, request.inpaint_full_res, request.inpaint_full_res_padding) == (1, False, 32)
    assert not request.do_not_save_samples
    assert (request.refiner_checkpoint, request.refiner_switch_at) == (None, None)


def test_the_refiner_is_on_only_when_ticked_with_a_checkpoint() -> None:
    on = {**UI_DEFAULTS, "init_image": _image(), "enable_refiner": True, "refiner_checkpoint": "sd2.safetensors"}
    request = img2img_request_from_ui(**_ui_values({**on, "refiner_switch_at": 0.6}))
    assert (request.refiner_checkpoint, request.refiner_switch_at) == ("sd2.safetensors", 0.6)
    for off in ({"enable_refiner": False}, {"refiner_checkpoint": None}, {"refiner_checkpoint": "None"}):
        request = img2img_request_from_ui(**_ui_values({**on, **off}))
        assert (request.refiner_checkpoint, request.refiner_switch_at) == (None, None), off
