"""A1111's "Outpainting mk2" (img2img): grow the canvas by up to `pixels` on the chosen sides (the
new size rounded up to multiples of 64, the growth shared between opposite sides), one side at a
time; the new strip is filled with noise shaped like the picture's own frequency spectrum
(g-diffuser's matched noise: "fall-off exponent" shapes the spectrum, "color variation" how
colourful the noise starts) and inpainted with masked content "original". Each side is one
generation of the request's batch at most the request's width x height, taken from the edge
being grown. `n_iter` repeats it all; a grid comes first with `return_grid`.
A1111's `script_args`: `[info, pixels, mask_blur, direction, noise_q, color_variation]`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from modules.core.errors import ValidationError
from modules.core.requests import Limits
from modules.extensions import runtime
from modules.extensions.builtin_scripts import grid_labels, tiles
from modules.extensions.processing_api import Processed, process_images
from modules.extensions.script_base import Script

DIRECTIONS = ("left", "right", "up", "down")


# -- matched noise ------------------------------------------------------------------------------


def _fft(data: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D FFT over the first two axes, zero frequency moved to the centre."""
    axes = (0, 1)
    return np.fft.ifftshift(np.fft.fft2(np.fft.fftshift(data, axes=axes), axes=axes, norm="ortho"), axes=axes)


def _ifft(data: np.ndarray) -> np.ndarray:
    axes = (0, 1)
    return np.fft.ifftshift(np.fft.ifft2(np.fft.fftshift(data, axes=axes), axes=axes, norm="ortho"), axes=axes)


def _falloff_window(rows: int, cols: int) -> np.ndarray:
    """1 / ((u^2 + 1)(v^2 + 1)) over coordinates from -1 to 1, stretched on the longer side."""
    short = min(rows, cols)
    u = (np.arange(rows) / rows * 2.0 - 1.0) * (rows / short)
    v = (np.arange(cols) / cols * 2.0 - 1.0) * (cols / short)
    return 1.0 / np.outer(u**2 + 1.0, v**2 + 1.0)


def match_histograms(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each column (channel) of `source` (N, C) remapped so its value distribution follows the
    same column of `reference` (M, C): quantile to quantile, by linear interpolation."""
    out = np.empty_like(source, dtype=np.float64)
    for c in range(source.shape[1]):
        _, inverse, counts = np.unique(source[:, c], return_inverse=True, return_counts=True)
        ref_values, ref_counts = np.unique(reference[:, c], return_counts=True)
        quantiles = np.cumsum(counts) / source.shape[0]
        ref_quantiles = np.cumsum(ref_counts) / reference.shape[0]
        out[:, c] = np.interp(quantiles, ref_quantiles, ref_values)[inverse.reshape(-1)]
    return out


def matched_noise(
    image: np.ndarray, mask: np.ndarray, noise_q: float = 1.0, color_variation: float = 0.05
) -> np.ndarray:
    """`image` (H, W, 3, floats 0..1) with the part where `mask` (H, W, 3, 1 = fill) is set
    replaced by noise whose spectrum follows the known part's (magnitude ** `noise_q`, its phase)
    and whose values are matched to the known part's histogram. Deterministic (a fixed seed)."""
    grey_mask = mask.mean(axis=2)
    fill = grey_mask > 1e-6
    known = grey_mask < 1e-3

    windowed = image * (1.0 - mask)
    peak = float(windowed.max())
    if peak > 0:
        windowed = windowed / peak
    windowed = windowed + float(image.mean()) * mask  # the average colour where nothing is known
    spectrum = _fft(windowed)
    magnitude = np.abs(spectrum)
    phase = np.divide(spectrum, magnitude, out=np.zeros_like(spectrum), where=magnitude != 0)

    rng = np.random.default_rng(0)
    noise = rng.random(image.shape)
    grey = noise.mean(axis=2, keepdims=True)
    noise = noise * color_variation + (1.0 - color_variation) * grey
    noise = np.real(_ifft(_fft(noise) * _falloff_window(image.shape[0], image.shape[1])[:, :, None]))
    shaped = np.real(_ifft(np.abs(_fft(noise)) ** 2 * magnitude**noise_q * phase))
    shaped -= shaped.min()
    top = float(shaped.max())
    if top > 0:
        shaped /= top
    if fill.any() and known.any():
        shaped[fill, :] = match_histograms(shaped[fill, :], image[known, :])
    out = image * (1.0 - mask) + shaped * mask
    return np.clip(out, 0.0, 1.0)


# -- the script -----------------------------------------------------------------------------


def _round64(value: int) -> int:
    return math.ceil(value / 64) * 64


def split_growth(size: int, before: int, after: int) -> tuple[int, int]:
    """How much each side grows: the total is `size + before + after` rounded up to 64, minus
    `size`, shared in proportion between the sides asked for."""
    target = _round64(size + before + after)
    grow_before = before * (target - size) // (before + after) if before > 0 else 0
    grow_after = target - size - grow_before if after > 0 else 0
    return grow_before, grow_after


def request_limits() -> Limits:
    """The size limits of the settings in force (`max_image_side`, `max_pixels_times_batch`), the
    same ones every request is checked against; the defaults outside a job."""
    env = runtime.maybe_environment()
    return Limits.from_options(env.options) if env is not None else Limits()


def check_canvas(image: Image.Image, pixels: int, script: str, sides: Sequence[str], batch_size: int = 1) -> None:
    """The grown canvas (`batch_size` of them are made at once) must stay within the request size
    limits (settings `max_image_side`, `max_pixels_times_batch`): checked before any work."""
    limits = request_limits()
    left, right = split_growth(image.width, pixels if "left" in sides else 0, pixels if "right" in sides else 0)
    up, down = split_growth(image.height, pixels if "up" in sides else 0, pixels if "down" in sides else 0)
    width, height = image.width + left + right, image.height + up + down
    if max(width, height) > limits.max_side:
        raise ValidationError(
            f"{script}: expanding {image.width}x{image.height} by {pixels} px makes a {width}x{height} canvas, "
            f"more than {limits.max_side} px per side (setting max_image_side)"
        )
    total = width * height * max(batch_size, 1)
    if total > limits.max_pixels_times_batch:
        raise ValidationError(
            f"{script}: expanding {image.width}x{image.height} by {pixels} px makes a {width}x{height} canvas; x "
            f"batch size {batch_size} = {total} pixels, more than {limits.max_pixels_times_batch} "
            "(setting max_pixels_times_batch)"
        )


def check_directions(direction: Any, script: str) -> list[str]:
    if isinstance(direction, str):
        direction = [direction]
    if not isinstance(direction, list | tuple) or any(d not in DIRECTIONS for d in direction):
        raise ValidationError(f"{script}: directions must be a list of {', '.join(DIRECTIONS)}, got {direction!r}")
    return list(direction)


def whole(value: Any, what: str, script: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValidationError(f"{script}: {what} must be a whole number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValidationError(f"{script}: {what} must be a whole number, got {value!r}") from None
    if not number.is_integer() or number < low or (high is not None and number > high):
        bounds = f">= {low}" if high is None else f"within {low}..{high}"
        raise ValidationError(f"{script}: {what} must be a whole number {bounds}, got {value!r}")
    return int(number)


def real(value: Any, what: str, script: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValidationError(f"{script}: {what} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValidationError(f"{script}: {what} must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise ValidationError(f"{script}: {what} must be within {low:g}..{high:g}, got {value!r}")
    return number


class OutpaintingMk2(Script):
    def title(self) -> str:
        return "Outpainting mk2"

    def show(self, is_img2img: bool) -> Any:
        return is_img2img

    def ui(self, is_img2img: bool) -> Any:
        if not is_img2img:
            return None
        import gradio as gr

        info = gr.HTML(
            '<p style="margin-bottom:0.75em">Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, '
            "Denoising strength: 0.8</p>"
        )
        pixels = gr.Slider(
            label="Pixels to expand", minimum=8, maximum=256, step=8, value=128, elem_id=self.elem_id("pixels")
        )
        mask_blur = gr.Slider(
            label="Mask blur", minimum=0, maximum=64, step=1, value=8, elem_id=self.elem_id("mask_blur")
        )
        direction = gr.CheckboxGroup(
            label="Outpainting direction",
            choices=list(DIRECTIONS),
            value=list(DIRECTIONS),
            elem_id=self.elem_id("direction"),
        )
        noise_q = gr.Slider(
            label="Fall-off exponent (lower=higher detail)",
            minimum=0.0,
            maximum=4.0,
            step=0.01,
            value=1.0,
            elem_id=self.elem_id("noise_q"),
        )
        color_variation = gr.Slider(
            label="Color variation",
            minimum=0.0,
            maximum=1.0,
            step=0.01,
            value=0.05,
            elem_id=self.elem_id("color_variation"),
        )
        return [info, pixels, mask_blur, direction, noise_q, color_variation]

    def run(
        self, p: Any, _info: Any, pixels: Any, mask_blur: Any, direction: Any, noise_q: Any, color_variation: Any
    ) -> Processed:
        name = "Outpainting mk2"
        px = whole(pixels, "pixels to expand", name, 0)
        blur = whole(mask_blur, "mask blur", name, 0)
        sides = check_directions(direction, name)
        fall_off = real(noise_q, "fall-off exponent", name, 0.0, 16.0)
        variation = real(color_variation, "color variation", name, 0.0, 1.0)
        if not p.init_images:
            raise ValidationError(f"{name}: an init image is required")
        init_img: Image.Image = p.init_images[0].convert("RGB")
        check_canvas(init_img, px, name, sides, int(p.batch_size or 1))

        save_samples = not p.do_not_save_samples
        save_grid = not p.do_not_save_grid
        process_width, process_height = int(p.width), int(p.height)
        p.inpaint_full_res = False
        p.inpainting_fill = 1
        p.do_not_save_samples = True
        p.do_not_save_grid = True

        left, right = split_growth(init_img.width, px if "left" in sides else 0, px if "right" in sides else 0)
        up, down = split_growth(init_img.height, px if "up" in sides else 0, px if "down" in sides else 0)
        blur_x = blur if left > 0 or right > 0 else 0
        blur_y = blur if up > 0 or down > 0 else 0
        p.mask_blur = None  # the per-axis values below are the ones used
        p.mask_blur_x = blur_x * 4
        p.mask_blur_y = blur_y * 4

        job = runtime.current_job()
        first: list[Any] = [None, None]  # the first generation's seed and infotext
        parts: list[Processed] = []

        def expand(images: Sequence[Image.Image], amount: int, side: str) -> list[Image.Image]:
            horizontal = side in ("left", "right")
            grow_x = amount if horizontal else 0
            grow_y = 0 if horizontal else amount
            outputs: list[Image.Image] = []
            to_process: list[Image.Image] = []
            mask = Image.new("RGB", (8, 8))
            res_w = res_h = 0
            for image in images:
                res_w, res_h = image.width + grow_x, image.height + grow_y
                canvas = Image.new("RGB", (_round64(res_w), _round64(res_h)))
                canvas.paste(image, (grow_x if side == "left" else 0, grow_y if side == "up" else 0))
                mask = Image.new("RGB", canvas.size, "white")
                ImageDraw.Draw(mask).rectangle(
                    (
                        amount + blur_x if side == "left" else 0,
                        amount + blur_y if side == "up" else 0,
                        mask.width - amount - blur_x if side == "right" else res_w,
                        mask.height - amount - blur_y if side == "down" else res_h,
                    ),
                    fill="black",
                )
                noised = matched_noise(
                    np.asarray(canvas, dtype=np.float64) / 255.0,
                    np.asarray(mask, dtype=np.float64) / 255.0,
                    fall_off,
                    variation,
                )
                filled = Image.fromarray(np.clip(noised * 255.0, 0, 255).astype(np.uint8), "RGB")
                outputs.append(filled)
                # the part processed: at most the request's size, at the edge being grown
                width = min(process_width, image.width + grow_x) if horizontal else canvas.width
                height = canvas.height if horizontal else min(process_height, image.height + grow_y)
                p.width, p.height = width, height
                box = (
                    0 if side == "left" else filled.width - width,
                    0 if side == "up" else filled.height - height,
                    width if side == "left" else filled.width,
                    height if side == "up" else filled.height,
                )
                mask = mask.crop(box)
                p.image_mask = mask
                to_process.append(filled.crop(box))
            p.init_images = to_process
            latent_mask = Image.new("RGB", (p.width, p.height), "white")
            ImageDraw.Draw(latent_mask).rectangle(
                (
                    amount + blur_x * 2 if side == "left" else 0,
                    amount + blur_y * 2 if side == "up" else 0,
                    mask.width - amount - blur_x * 2 if side == "right" else res_w,
                    mask.height - amount - blur_y * 2 if side == "down" else res_h,
                ),
                fill="black",
            )
            p.latent_mask = latent_mask
            processed = process_images(p)
            parts.append(processed)
            if first[0] is None:
                first[0], first[1] = processed.seed, processed.info
            done = processed.images[processed.index_of_first_image :]
            for n in range(len(outputs)):
                if n < len(done):
                    made = done[n]
                    outputs[n].paste(
                        made,
                        (
                            0 if side == "left" else outputs[n].width - made.width,
                            0 if side == "up" else outputs[n].height - made.height,
                        ),
                    )
                outputs[n] = outputs[n].crop((0, 0, res_w, res_h))
            return outputs

        batch_count = max(1, int(p.n_iter))
        batch_size = max(1, int(p.batch_size))
        p.n_iter = 1
        results: list[Image.Image] = []
        for i in range(batch_count):
            if job is not None:
                if job.ctx.interrupted or job.ctx.stopping_generation:
                    break
                job.ctx.textinfo = f"{name}: batch {i + 1} out of {batch_count}"
            images = [init_img] * batch_size
            for side, amount in (("left", left), ("right", right), ("up", up), ("down", down)):
                if amount > 0:
                    images = expand(images, amount, side)
            results.extend(images)

        env = runtime.maybe_environment()
        leading: list[Image.Image] = []
        only_if_multiple = env is None or bool(env.options.get("grid_only_if_multiple"))
        if results and not (len(results) < 2 and only_if_multiple):
            grid = grid_labels.image_grid(results)
            if env is None or bool(env.options.get("return_grid")):
                leading.append(grid)
            tiles.save_script_image(
                grid, kind="img2img", seed=first[0], prompt=str(p.prompt), infotext=first[1], grid=True, save=save_grid
            )
        for image in results:
            tiles.save_script_image(
                image, kind="img2img", seed=first[0], prompt=str(p.prompt), infotext=first[1], save=save_samples
            )
        out = Processed(
            p,
            [*leading, *results],
            first[0] if first[0] is not None else -1,
            first[1] or "",
            all_prompts=[str(p.prompt)] * len(results),
            all_negative_prompts=[str(p.negative_prompt or "")] * len(results),
            all_seeds=[first[0] if first[0] is not None else -1] * len(results),
            infotexts=[first[1] or ""] * (len(leading) + len(results)),
            index_of_first_image=len(leading),
        )
        if results:
            out.width, out.height = results[0].size
        out.results = [r for part in parts for r in part.results]
        return out
