"""The weight-free ControlNet preprocessors as numpy/OpenCV operations, with the resolution handling
sd-webui-controlnet applies around them (facts from the extension's `scripts/utils.py`,
`annotator/util.py`, `scripts/preprocessor/model_free_preprocessors.py`,
`scripts/preprocessor/legacy/processor.py`, `annotator/color`, `annotator/shuffle`; written here
from those facts, not copied).

Every function takes an RGB image as an (H, W, 3) uint8 array and returns one (the detected map,
RGB). Which ones resize to the preprocessor resolution and which keep the input size is the
extension's choice, kept as is:

- resized so the short side is `resolution` (cubic up, area down; the extension pads to multiples
  of 64 with edge pixels, runs the filter, and crops the padding off again): canny, scribble_xdog,
  threshold, lineart_standard, blur_gaussian, shuffle; color resizes its own way (area, Python
  rounding) before its 64-pixel grid;
- input size kept: none, invert, tile_resample (shrunk by its rate), tile_colorfix(+sharp),
  recolor_luminance / recolor_intensity, reference_*, inpaint*.

cv2 is imported inside the functions: importing this module loads no OpenCV.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from modules.core.errors import ValidationError

Array = np.ndarray


# -- image plumbing ---------------------------------------------------------------------------------


def hwc3(image: Array) -> Array:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3) uint8, as the extension's
    `HWC3`: gray is repeated, RGBA is composited over white by its alpha."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W[, 1|3|4]) image, got shape {image.shape}")
    channels = image.shape[2]
    if channels == 3:
        return image
    if channels == 1:
        return np.concatenate([image, image, image], axis=2)
    color = image[:, :, 0:3].astype(np.float32)
    alpha = image[:, :, 3:4].astype(np.float32) / 255.0
    blended = color * alpha + 255.0 * (1.0 - alpha)
    return blended.clip(0, 255).astype(np.uint8)


def pad64(size: int) -> int:
    """Pixels to add so that `size` becomes a multiple of 64."""
    return int(np.ceil(float(size) / 64.0) * 64 - size)


def resized_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(H, W) after scaling so the short side is `resolution` (numpy rounding, as the extension)."""
    k = float(resolution) / float(min(height, width))
    return int(np.round(float(height) * k)), int(np.round(float(width) * k))


def resize_with_pad(image: Array, resolution: int) -> tuple[Array, Callable[[Array], Array]]:
    """The extension's `resize_image_with_pad`: scale so the short side is `resolution` (cubic when
    enlarging, area when shrinking), pad right and bottom to multiples of 64 by repeating the edge,
    and return the padded image with a function that crops a same-sized result back."""
    import cv2

    image = hwc3(image)
    height, width = image.shape[:2]
    target_h, target_w = resized_size(height, width, resolution)
    enlarging = float(resolution) / float(min(height, width)) > 1
    interpolation = cv2.INTER_CUBIC if enlarging else cv2.INTER_AREA
    resized = cv2.resize(image, (target_w, target_h), interpolation=interpolation)
    padded = np.pad(resized, [[0, pad64(target_h)], [0, pad64(target_w)], [0, 0]], mode="edge")

    def remove_pad(result: Array) -> Array:
        return np.ascontiguousarray(result[:target_h, :target_w]).copy()

    return np.ascontiguousarray(padded), remove_pad


# -- the preprocessors ------------------------------------------------------------------------------


def identity(image: Array) -> Array:
    """none, reference_only / reference_adain / reference_adain+attn, tile_colorfix(+sharp): the
    image itself (what those modules do happens at sampling time, not here)."""
    return hwc3(image).copy()


def invert(image: Array) -> Array:
    """invert (from white bg & black line): 255 - pixel, input size kept."""
    return 255 - hwc3(image)


def canny(image: Array, resolution: int, low: float, high: float) -> Array:
    """cv2.Canny with integer thresholds on the resized, padded image, gray repeated to RGB."""
    import cv2

    padded, remove_pad = resize_with_pad(image, resolution)
    edges = cv2.Canny(padded, int(low), int(high))
    return remove_pad(cv2.cvtColor(edges, cv2.COLOR_GRAY2RGB))


def blur_gaussian(image: Array, resolution: int, sigma: float) -> Array:
    """Gaussian blur (sigma in pixels, kernel size from sigma) of the resized image."""
    import cv2

    padded, remove_pad = resize_with_pad(image, resolution)
    return np.asarray(cv2.GaussianBlur(remove_pad(padded), (0, 0), float(sigma)))


def scribble_xdog(image: Array, resolution: int, threshold: float) -> Array:
    """Difference of Gaussians (sigma 0.5 and 5.0); a pixel is white where the darkest channel's
    DoG response, doubled, exceeds `threshold`. The doubling is done in uint8 as the extension does
    it (so responses of 128 and more wrap around); kept for identical maps."""
    import cv2

    padded, remove_pad = resize_with_pad(image, resolution)
    fine = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 0.5)
    coarse = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    response = (255 - dog).astype(np.uint8)
    doubled = (response * np.uint8(2)).astype(np.uint8)  # uint8 wrap-around, as the extension
    result = np.zeros_like(padded, dtype=np.uint8)
    result[doubled > threshold] = 255
    return remove_pad(result)


def threshold(image: Array, resolution: int, level: float) -> Array:
    """White where every channel of the resized image is above `level`, black elsewhere."""
    padded, remove_pad = resize_with_pad(image, resolution)
    result = np.zeros_like(padded, dtype=np.uint8)
    result[np.min(padded, axis=2) > level] = 255
    return remove_pad(result)


def tile_resample(image: Array, rate: float) -> Array:
    """Shrink by `rate` (area interpolation, sizes truncated); rates below 1.1 keep the image."""
    import cv2

    image = hwc3(image)
    if rate < 1.1:
        return image.copy()
    height, width = image.shape[:2]
    new_h = int(float(height) / float(rate))
    new_w = int(float(width) / float(rate))
    return np.asarray(cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA))


def lineart_standard(image: Array, resolution: int) -> Array:
    """Dark lines on a light background: how much darker each pixel is than its Gaussian-blurred
    surroundings (sigma 6, the darkest channel), normalised by the median of the clear responses
    (those above 8, at least 16) and scaled by 127; white lines on black."""
    import cv2

    padded, remove_pad = resize_with_pad(image, resolution)
    x = padded.astype(np.float32)
    blurred = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    clear = intensity[intensity > 8]
    # np.median of nothing is NaN, and the extension's max(16, NaN) is 16
    scale = max(16.0, float(np.median(clear))) if clear.size else 16.0
    intensity = intensity / scale * 127
    return hwc3(remove_pad(intensity.clip(0, 255).astype(np.uint8)))


def _resize_shortest_edge(image: Array, size: int) -> Array:
    import cv2

    height, width = image.shape[:2]
    if height < width:
        new_h, new_w = size, round(width / height * size)
    else:
        new_h, new_w = round(height / width * size), size
    return np.asarray(cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA))


def color_grid(image: Array, resolution: int) -> Array:
    """t2ia_color_grid: short side to `resolution` (area), then down to a (W//64, H//64) grid
    (cubic) and back up by nearest neighbour: blocks of about 64 pixels of one colour each."""
    import cv2

    resized = _resize_shortest_edge(hwc3(image), resolution)
    height, width = resized.shape[:2]
    if height < 64 or width < 64:
        raise ValidationError(f"t2ia_color_grid needs at least 64x64 pixels after resizing, got {width}x{height}")
    grid = cv2.resize(resized, (width // 64, height // 64), interpolation=cv2.INTER_CUBIC)
    return np.asarray(cv2.resize(grid, (width, height), interpolation=cv2.INTER_NEAREST))


def _recolor(image: Array, conversion: int, channel: int, gamma: float) -> Array:
    import cv2

    # The extension converts its RGB arrays with the BGR codes; kept for identical maps (it only
    # matters for luminance, where red and blue swap their weights).
    converted = cv2.cvtColor(hwc3(image), conversion)
    values = converted[:, :, channel].astype(np.float32) / 255.0
    values = values**gamma
    gray = (values * 255.0).clip(0, 255).astype(np.uint8)
    return np.asarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB))


def recolor_luminance(image: Array, gamma: float) -> Array:
    """The L of CIE Lab (uint8 scale), raised to `gamma`, as a gray RGB image; input size kept."""
    import cv2

    return _recolor(image, cv2.COLOR_BGR2LAB, 0, gamma)


def recolor_intensity(image: Array, gamma: float) -> Array:
    """The V of HSV (the brightest channel), raised to `gamma`, as a gray RGB image."""
    import cv2

    return _recolor(image, cv2.COLOR_BGR2HSV, 2, gamma)


def noise_disk(height: int, width: int, cell: int, rng: np.random.RandomState) -> Array:
    """Smooth noise in [0, 1], (H, W, 1): uniform values on a coarse grid of `cell`-pixel cells,
    enlarged by cubic interpolation with a one-cell margin cropped away, then min-max normalised
    (the extension's `make_noise_disk` with one channel)."""
    import cv2

    coarse = rng.uniform(low=0, high=1, size=(height // cell + 2, width // cell + 2, 1))
    noise = cv2.resize(coarse, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = noise[cell : cell + height, cell : cell + width]
    noise = noise - np.min(noise)
    noise = noise / np.max(noise)
    return np.asarray(noise)[:, :, None]


def shuffle(image: Array, resolution: int, rng: np.random.RandomState) -> Array:
    """Content shuffle: the resized image remapped through a smooth random flow field (x then y
    noise, 256-pixel cells, drawn from `rng` in that order; the extension draws from numpy's global
    generator seeded per generation, which a `RandomState(seed)` reproduces)."""
    import cv2

    padded, remove_pad = resize_with_pad(image, resolution)
    img = remove_pad(padded)
    height, width = img.shape[:2]
    x = noise_disk(height, width, 256, rng) * float(width - 1)
    y = noise_disk(height, width, 256, rng) * float(height - 1)
    flow = np.concatenate([x, y], axis=2).astype(np.float32)
    # one two-channel map and no second one, as the extension (OpenCV's stubs miss map2=None)
    return np.asarray(cv2.remap(img, flow, None, cv2.INTER_LINEAR))  # type: ignore[call-overload]


def inpaint_display(image: Array, mask: Array) -> Array:
    """The preview the extension shows for inpaint modules: RGBA with alpha 255 - mask // 2
    (the area to repaint half transparent)."""
    alpha = (255 - mask // 2).astype(np.uint8)
    return np.concatenate([hwc3(image), alpha[:, :, None]], axis=2)


def inpaint_control_hint(image: Array, mask: Array) -> Array:
    """What a ControlNet inpaint model is given for an image and its mask (the extension's
    "inpaint protocol"): RGB scaled to [0, 1] where the mask is at most half (<= 127), -1 where it
    is set. (H, W, 3) float32."""
    colors = hwc3(image).astype(np.float32) / 255.0
    masked = (mask.astype(np.float32) / 255.0 > 0.5)[:, :, None]
    return np.where(masked, np.float32(-1.0), colors).astype(np.float32)


def pixel_perfect_resolution(
    image_height: int, image_width: int, target_height: int, target_width: int, *, outer_fit: bool
) -> int:
    """The extension's pixel-perfect preprocessor resolution: the short side of the image once
    scaled to cover the target (Crop and Resize, Just Resize) or to fit inside it (Resize and Fill,
    `outer_fit`)."""
    k_h = float(target_height) / float(image_height)
    k_w = float(target_width) / float(image_width)
    k = min(k_h, k_w) if outer_fit else max(k_h, k_w)
    return int(np.round(k * float(min(image_height, image_width))))
