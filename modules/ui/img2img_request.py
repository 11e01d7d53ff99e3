"""The img2img tab's values as an `Img2ImgRequest`: one converter (`img2img_request_from_ui`,
keyword names as the tab's fields, tested equal to the API's converter) whose sub-tab decides
where the image and mask come from, and the "Resize to" / "Resize by" sizes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr
from PIL import Image

from modules.core.requests import Img2ImgRequest
from modules.ui.img2img_editor import (
    EditorValue,
    editor_composite,
    editor_image_and_mask,
    inpaint_sketch_image_and_mask,
    to_rgb,
)
from modules.ui.img2img_modes import BATCH, INPAINT, INPAINT_SKETCH, INPAINT_UPLOAD, SKETCH
from modules.ui.refiner import refiner_request_values

RESIZE_TO, RESIZE_BY = 0, 1  # the `#img2img_tabs_resize` tabs
SCRIPT_FIELDS = "script_fields"
"""Key of `request_for_image`'s values holding the script request fields (`modules.ui.scripts`),
set by the tab for its Batch runs, where each image's request is made from the values."""


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """ "Resize by": the image's size times `scale`, rounded down to multiples of 8 (as A1111)."""
    w, h = int(width * scale), int(height * scale)
    return w - w % 8, h - h % 8


def resolution_preview(size: tuple[int, int] | None, scale: float) -> str:
    """`#img2img_scale_resolution_preview`: "from WxH to WxH" for the current image."""
    if size is None:
        return ""
    tw, th = scaled_size(size[0], size[1], scale)
    return (
        f"<span>from <span class='resolution'>{size[0]}x{size[1]}</span> "
        f"to <span class='resolution'>{tw}x{th}</span></span>"
    )


def request_for_image(values: Mapping[str, Any], image: Image.Image, mask: Image.Image | None) -> Img2ImgRequest:
    """A request from the tab's values for one (image, mask); "Resize by" sizes it from `image`.
    The script fields under `SCRIPT_FIELDS`, when there, are the request's."""
    width, height = int(values["width"]), int(values["height"])
    if int(values["selected_scale_tab"]) == RESIZE_BY:
        width, height = scaled_size(image.width, image.height, float(values["scale_by"]))
        if width < 8 or height < 8:
            raise gr.Error(f"Resize by {values['scale_by']} makes the image too small ({width}x{height})")
    refiner, switch_at = refiner_request_values(
        values["enable_refiner"], values["refiner_checkpoint"], values["refiner_switch_at"]
    )
    return Img2ImgRequest(
        prompt=values["prompt"] or "",
        negative_prompt=values["negative_prompt"] or "",
        styles=tuple(values["styles"] or ()),
        init_images=(image,),
        mask=mask,
        resize_mode=int(values["resize_mode"]),
        mask_blur=int(values["mask_blur"]),
        inpainting_mask_invert=int(values["inpainting_mask_invert"]),
        inpainting_fill=int(values["inpainting_fill"]),
        inpaint_full_res=bool(values["inpaint_full_res"]),
        inpaint_full_res_padding=int(values["inpaint_full_res_padding"]),
        sampler_name=values["sampler_name"] or None,
        scheduler=values["scheduler"] or None,
        steps=int(values["steps"]),
        refiner_checkpoint=refiner,
        refiner_switch_at=switch_at,
        width=width,
        height=height,
        n_iter=int(values["n_iter"]),
        batch_size=int(values["batch_size"]),
        cfg_scale=float(values["cfg_scale"]),
        image_cfg_scale=float(values["image_cfg_scale"]),
        denoising_strength=float(values["denoising_strength"]),
        seed=int(values["seed"]),
        subseed=int(values["subseed"]),
        subseed_strength=float(values["subseed_strength"]),
        seed_resize_from_w=int(values["seed_resize_from_w"]),
        seed_resize_from_h=int(values["seed_resize_from_h"]),
        **values.get(SCRIPT_FIELDS, {}),
    )


def img2img_request_from_ui(
    *,
    mode: int,
    init_image: Image.Image | None,
    sketch: EditorValue | None,
    inpaint_editor: EditorValue | None,
    inpaint_sketch: EditorValue | None,
    inpaint_base: Image.Image | None,
    inpaint_mask: Image.Image | None,
    mask_alpha: float,
    prompt: str,
    negative_prompt: str,
    styles: list[str] | tuple[str, ...] | None,
    resize_mode: int,
    mask_blur: float,
    inpainting_mask_invert: int,
    inpainting_fill: int,
    inpaint_full_res: int,
    inpaint_full_res_padding: float,
    sampler_name: str,
    scheduler: str,
    steps: float,
    enable_refiner: bool,
    refiner_checkpoint: str | None,
    refiner_switch_at: float,
    selected_scale_tab: int,
    width: float,
    height: float,
    scale_by: float,
    n_iter: float,
    batch_size: float,
    cfg_scale: float,
    image_cfg_scale: float,
    denoising_strength: float,
    seed: float,
    subseed: float,
    subseed_strength: float,
    seed_resize_from_w: float,
    seed_resize_from_h: float,
) -> Img2ImgRequest:
    """The UI's values as a request; the sub-tab decides where the image and mask come from.
    The refiner is there only when ticked with a checkpoint chosen (`modules.ui.refiner`).
    Raises `gr.Error` when an image (or the mask) is missing. Batch (mode 5) makes one request
    per image: see `modules.ui.img2img_batch` and `request_for_image`."""
    values = dict(locals())
    mask: Image.Image | None = None
    if mode == INPAINT:
        image, mask = editor_image_and_mask(inpaint_editor)
    elif mode == INPAINT_SKETCH:
        image, mask = inpaint_sketch_image_and_mask(inpaint_sketch, mask_alpha)
    elif mode == INPAINT_UPLOAD:
        if inpaint_base is None:
            raise gr.Error("Please upload an image to inpaint")
        if inpaint_mask is None:
            raise gr.Error("Please upload a mask")
        image, mask = to_rgb(inpaint_base), to_rgb(inpaint_mask).convert("L")
    elif mode == SKETCH:
        sketched = editor_composite(sketch)
        if sketched is None:
            raise gr.Error("Please upload an image to sketch on")
        image = sketched
    elif mode == BATCH:
        raise gr.Error("Batch makes one request per image (img2img_batch)")
    else:
        if init_image is None:
            raise gr.Error("Please upload an image for img2img")
        image = to_rgb(init_image)
    return request_for_image(values, image, mask)
