"""Pixel-space helpers for img2img and inpainting (PIL + numpy + torch; A1111 semantics)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from modules.core.requests import RESIZE_CROP, RESIZE_FILL


def to_tensor(images: list[Image.Image], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """RGB images -> (B, 3, H, W) in [-1, 1], as A1111 computes it (x / 255 in float32, then
    2x - 1)."""
    arrays = [np.asarray(im.convert("RGB")).astype(np.float32) / 255.0 for im in images]
    unit = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device=device, dtype=dtype)
    return unit * 2 - 1


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """An init image as A1111 reads it: transparent parts composited over `background` (the
    `img2img_background_color` option), RGB."""
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background)
        base.paste(rgba, mask=rgba)
        return base.convert("RGB")
    return image.convert("RGB")


def binary_mask(image: Image.Image, *, round_mask: bool = True) -> Image.Image:
    """A1111's `create_binary_mask`: an RGBA mask that is transparent somewhere is read from its
    alpha channel (thresholded at 128 when rounding); anything else, including an RGBA mask that
    is opaque everywhere (what browser canvases send), by its luminance."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        alpha = image.split()[-1].convert("L")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round_mask else alpha
    return image.convert("L")


def uncrop(image: Image.Image, size: tuple[int, int], paste_loc: tuple[int, int, int, int]) -> Image.Image:
    """A generated crop back at its place (x, y, w, h) on a transparent canvas of `size`."""
    x, y, w, h = paste_loc
    base = Image.new("RGBA", size)
    base.paste(resize_image(RESIZE_CROP, image, w, h), (x, y))
    return base


def apply_overlay(
    image: Image.Image, paste_loc: tuple[int, int, int, int] | None, overlay: Image.Image | None
) -> Image.Image:
    """A1111's inpaint composite: the generated image (uncropped for "only masked"), with the
    original's unmasked part (`overlay`, transparent where the mask repaints) composited over it."""
    if overlay is None:
        return image
    if paste_loc is not None:
        image = uncrop(image, (overlay.width, overlay.height), paste_loc)
    composed = image.convert("RGBA")
    composed.alpha_composite(overlay)
    return composed.convert("RGB")


def overlay_image(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The original with the repainted area cut out: RGBA, alpha = 255 - mask (premultiplied the
    way A1111 builds it, through an "RGBa" image)."""
    masked = Image.new("RGBa", (image.width, image.height))
    masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L")))
    return masked.convert("RGBA")


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> RGB images, converted as A1111 does: (x + 1) / 2 clamped to
    [0, 1], times 255 in float32, then truncated (not rounded) to uint8."""
    unit = torch.clamp((pixels.float() + 1.0) / 2.0, min=0.0, max=1.0)
    arr = (255.0 * unit).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111 resize modes: 0 just resize, 1 crop and resize (fill the box, crop the overflow
    centred), 2 resize and fill (fit inside, fill the borders by stretching the edge pixels),
    3 just resize (the latent variant is handled on latents by the caller)."""
    image = image.convert("RGB") if image.mode not in ("RGB", "RGBA", "L") else image
    if mode == RESIZE_CROP:
        ratio = max(width / image.width, height / image.height)
        w, h = max(1, round(image.width * ratio)), max(1, round(image.height * ratio))
        resized = image.resize((w, h), Image.Resampling.LANCZOS)
        left, top = (w - width) // 2, (h - height) // 2
        return resized.crop((left, top, left + width, top + height))
    if mode == RESIZE_FILL:
        ratio = min(width / image.width, height / image.height)
        w, h = max(1, round(image.width * ratio)), max(1, round(image.height * ratio))
        resized = image.resize((w, h), Image.Resampling.LANCZOS)
        out = Image.new(resized.mode, (width, height))
        out.paste(resized, ((width - w) // 2, (height - h) // 2))
        if w < width:  # stretch the edge columns into the borders
            left = (width - w) // 2
            out.paste(resized.resize((left, h), box=(0, 0, 1, h)), (0, (height - h) // 2))
            right = width - w - left
            out.paste(resized.resize((right, h), box=(w - 1, 0, w, h)), (left + w, (height - h) // 2))
        if h < height:
            top = (height - h) // 2
            out.paste(out.resize((width, top), box=(0, top, width, top + 1)), (0, 0))
            bottom = height - h - top
            out.paste(out.resize((width, bottom), box=(0, top + h - 1, width, top + h)), (0, top + h))
        return out
    return image.resize((width, height), Image.Resampling.LANCZOS)


def gaussian_kernel_blur(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """A1111's mask blur: Gaussian with kernel size 2*int(2.5*sigma+0.5)+1 per axis."""
    if blur_x <= 0 and blur_y <= 0:
        return mask
    arr = np.asarray(mask.convert("L"), dtype=np.float32)
    out = torch.from_numpy(arr)[None, None]
    for sigma, dim in ((blur_x, 3), (blur_y, 2)):
        if sigma <= 0:
            continue
        size = 2 * int(2.5 * sigma + 0.5) + 1
        x = torch.arange(size, dtype=torch.float32) - size // 2
        kernel = torch.exp(-(x**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        shape = [1, 1, 1, 1]
        shape[dim] = size
        padded = out.index_select(dim, _reflect101(out.shape[dim], size // 2))
        out = torch.nn.functional.conv2d(padded, kernel.view(shape))
    return Image.fromarray(out[0, 0].clamp(0, 255).round().to(torch.uint8).numpy(), mode="L")


def _reflect101(n: int, pad: int) -> torch.Tensor:
    """Indices of an axis of length `n` padded by `pad` on both sides with OpenCV's default border
    (BORDER_REFLECT_101: `dcb|abcd|cba`), repeating the reflection when `pad` exceeds the axis (a
    blur wider than the mask; torch's own reflect padding refuses that)."""
    index = torch.arange(-pad, n + pad)
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * (n - 1)
    index = index % period
    return torch.where(index >= n, period - index, index)


def prepare_mask(mask: Image.Image, *, invert: bool, blur_x: int, blur_y: int, round_mask: bool) -> Image.Image:
    """White = repaint. Alpha masks (sketch) use their alpha channel."""
    if mask.mode in ("RGBA", "LA"):
        mask = mask.getchannel("A")
    mask = mask.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    if round_mask:
        mask = mask.point(lambda v: 255 if v >= 128 else 0)
    return gaussian_kernel_blur(mask, blur_x, blur_y)


def masked_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """Bounding box of the mask grown by `padding`, clamped to the image; None if empty."""
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(0, x1 - padding), max(0, y1 - padding), min(mask.width, x2 + padding), min(mask.height, y2 + padding)


def expand_to_ratio(
    box: tuple[int, int, int, int], width: int, height: int, bounds: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Grow `box` so it has the aspect ratio width:height (as A1111 does before upscaling the
    crop), staying inside `bounds` (image width, height)."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    ratio = width / height
    if bw / bh < ratio:
        target = min(bounds[0], math.ceil(bh * ratio))
        grow = target - bw
        x1 -= grow // 2
        x2 += grow - grow // 2
    else:
        target = min(bounds[1], math.ceil(bw / ratio))
        grow = target - bh
        y1 -= grow // 2
        y2 += grow - grow // 2
    if x1 < 0:
        x2, x1 = x2 - x1, 0
    if y1 < 0:
        y2, y1 = y2 - y1, 0
    if x2 > bounds[0]:
        x1, x2 = max(0, x1 - (x2 - bounds[0])), bounds[0]
    if y2 > bounds[1]:
        y1, y2 = max(0, y1 - (y2 - bounds[1])), bounds[1]
    return x1, y1, x2, y2


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """ "fill" masked content: replace the masked area with colours spread in from around it
    (progressively blurred copies of the unmasked image, coarse to fine)."""
    image = image.convert("RGB")
    keep = ImageOps.invert(mask.convert("L")).point(lambda v: 255 if v > 127 else 0)
    base = Image.new("RGB", image.size)
    base.paste(image, mask=keep)
    result = Image.new("RGB", image.size)
    for radius in (256, 64, 16, 4, 1, 0):
        blurred = base.filter(ImageFilter.GaussianBlur(radius)) if radius else base
        weights = keep.filter(ImageFilter.GaussianBlur(radius)) if radius else keep
        arr = np.asarray(blurred, dtype=np.float32)
        w = np.asarray(weights, dtype=np.float32)[..., None] / 255.0
        normalised = np.where(w > 1e-3, arr / np.maximum(w, 1e-3), 0).clip(0, 255).astype(np.uint8)
        layer = Image.fromarray(normalised)
        result.paste(layer, mask=weights.point(lambda v: 255 if v > 0 else 0))
    result.paste(image, mask=keep)
    return result


def latent_mask(mask: Image.Image, width: int, height: int, *, round_mask: bool) -> torch.Tensor:
    """The mask at latent resolution (1, 1, h/8, w/8), 1 = repaint."""
    small = mask.convert("L").resize((width // 8, height // 8), Image.Resampling.LANCZOS)
    arr = np.asarray(small, dtype=np.float32) / 255.0
    if round_mask:
        arr = np.around(arr)
    return torch.from_numpy(arr)[None, None]


def outpaint_canvas(
    image: Image.Image, *, left: int = 0, right: int = 0, up: int = 0, down: int = 0, mask_overlap: int = 8
) -> tuple[Image.Image, Image.Image]:
    """Pad-then-inpaint: the image on a larger canvas (new borders filled from the edge pixels)
    and the mask of the new area (white), reaching `mask_overlap` pixels into the old image so
    the seam is repainted too. Outpainting scripts call this, then inpaint."""
    width, height = image.width + left + right, image.height + up + down
    canvas = resize_image(RESIZE_FILL, image.convert("RGB"), width, height) if (left == right and up == down) else None
    if canvas is None:
        canvas = Image.new("RGB", (width, height))
        stretched = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        canvas.paste(stretched)
        canvas.paste(image.convert("RGB"), (left, up))
    mask = Image.new("L", (width, height), 255)
    keep = (
        left + (mask_overlap if left else 0),
        up + (mask_overlap if up else 0),
        left + image.width - (mask_overlap if right else 0),
        up + image.height - (mask_overlap if down else 0),
    )
    mask.paste(0, keep)
    return canvas, mask
