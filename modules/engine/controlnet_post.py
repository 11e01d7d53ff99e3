"""What ControlNet does to a job's images outside the UNet (sd-webui-controlnet's rules; facts in
shared/reference/features.md section 3 and the extension's `scripts/controlnet.py`):

- `crop_to_inpaint_region`: img2img inpainting with "Only masked" (`inpaint_full_res`) crops the
  A1111 image to the masked region; a unit with `inpaint_crop_input_image` (the default) crops its
  control image (and mask) to the same region so the control lines up with what is generated. The
  control image is first fitted to the init image's size by the unit's resize mode, cropped, then
  fitted to the generation size with "Resize and Fill". Reference units are never cropped.
- `recolor_restore`: after decoding, the recolor preprocessors put their map back into the
  generated image: `recolor_luminance` replaces the L channel in LAB, `recolor_intensity` the V
  channel in HSV (the map is the unit's control at the image size).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
from PIL import Image, ImageOps

from modules.core.requests import RESIZE_FILL, GenerationRequest, Img2ImgRequest
from modules.engine import images as imgops

log = logging.getLogger(__name__)

RESIZE_MODE_INDEX = {"Just Resize": 0, "Crop and Resize": 1, "Resize and Fill": 2}
RECOLOR_CHANNELS = {
    "recolor_luminance": (cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB, 0),
    "recolor_intensity": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2),
}


def inpaint_crop_region(request: GenerationRequest) -> tuple[int, int, int, int] | None:
    """The region A1111's "Only masked" inpainting works on (init-image coordinates), or None when
    the request is not an "Only masked" inpaint or its mask is empty (then nothing is cropped)."""
    if not isinstance(request, Img2ImgRequest) or not request.inpaint_full_res or request.mask is None:
        return None
    if not request.init_images:
        return None
    mask = imgops.binary_mask(request.mask, round_mask=request.mask_round)
    if request.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    blur_x, blur_y = request.blur_xy
    mask = imgops.gaussian_kernel_blur(mask, blur_x, blur_y)
    size = request.init_images[0].size
    if mask.size != size:
        mask = mask.resize(size)
    box = imgops.masked_region(mask, request.inpaint_full_res_padding)
    if box is None:
        return None
    return imgops.expand_to_ratio(box, request.width, request.height, mask.size)


def crop_to_inpaint_region(
    image: Image.Image,
    mask: Image.Image | None,
    request: GenerationRequest,
    resize_mode: str,
    *,
    module: str,
    crop_input_image: bool,
) -> tuple[Image.Image, Image.Image | None, bool]:
    """The unit's control image (and mask) cropped as A1111 crops the init image for "Only
    masked" inpainting; the flag says whether anything was cropped."""
    if "reference" in module or not crop_input_image:
        return image, mask, False
    region = inpaint_crop_region(request)
    if region is None:
        return image, mask, False
    assert isinstance(request, Img2ImgRequest)
    init_w, init_h = request.init_images[0].size
    mode = RESIZE_MODE_INDEX.get(resize_mode, 1)

    def crop(picture: Image.Image) -> Image.Image:
        fitted = imgops.resize_image(mode, picture, init_w, init_h)
        return imgops.resize_image(RESIZE_FILL, fitted.crop(region), request.width, request.height)

    return crop(image), (crop(mask) if mask is not None else None), True


def recolor_restore(image: Image.Image, feed: np.ndarray, module: str) -> Image.Image:
    """`image` with the recolor channel replaced by `feed` (H, W uint8 at the image's size). A size
    mismatch (another extension resized the image) leaves the image as it is, logged."""
    to_code, from_code, channel = RECOLOR_CHANNELS[module]
    rgb = np.asarray(image.convert("RGB"))
    if feed.shape[:2] != rgb.shape[:2]:
        log.error(
            "ControlNet %s: the image is %dx%d but the control map %dx%d; the colours are not restored",
            module,
            rgb.shape[1],
            rgb.shape[0],
            feed.shape[1],
            feed.shape[0],
        )
        return image
    converted = cv2.cvtColor(rgb, to_code)
    converted[:, :, channel] = feed
    return Image.fromarray(cv2.cvtColor(converted, from_code))


__all__ = ["crop_to_inpaint_region", "inpaint_crop_region", "recolor_restore"]
