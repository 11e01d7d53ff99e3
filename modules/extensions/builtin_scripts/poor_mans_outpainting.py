"""A1111's "Poor man's outpainting" (img2img): grow the canvas by up to `pixels` on the chosen sides
(the new size rounded up to multiples of 64, shared between opposite sides), then inpaint the new
border with the chosen masked content, tile by tile: the canvas is cut into tiles of the request's
width x height overlapping by `pixels`, every tile that reaches into the border is inpainted
(one image each, seeds going up by one), and the tiles are pasted back with blended overlaps.
A1111's `script_args`: `[pixels, mask_blur, inpainting_fill, direction]`, masked content by
index (0 fill, 1 original, 2 latent noise, 3 latent nothing) or by name.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw

from modules.core.errors import ValidationError
from modules.extensions import runtime
from modules.extensions.builtin_scripts import tiles
from modules.extensions.builtin_scripts.outpainting_mk_2 import check_canvas, check_directions, split_growth, whole
from modules.extensions.processing_api import Processed, process_images
from modules.extensions.script_base import Script

NAME = "Poor man's outpainting"
DIRECTIONS = ("left", "right", "up", "down")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")


def masked_content(value: Any) -> int:
    """The masked-content index from A1111's radio (an index) or its label."""
    if isinstance(value, str):
        if value.lower() in MASKED_CONTENT:
            return MASKED_CONTENT.index(value.lower())
        if value.strip().isdigit():
            value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(MASKED_CONTENT):
        return value
    raise ValidationError(f"{NAME}: masked content must be 0..3 or one of {', '.join(MASKED_CONTENT)}, got {value!r}")


class PoorMansOutpainting(Script):
    def title(self) -> str:
        return "Poor man's outpainting"

    def show(self, is_img2img: bool) -> Any:
        return is_img2img

    def ui(self, is_img2img: bool) -> Any:
        if not is_img2img:
            return None
        import gradio as gr

        pixels = gr.Slider(
            label="Pixels to expand", minimum=8, maximum=256, step=8, value=128, elem_id=self.elem_id("pixels")
        )
        mask_blur = gr.Slider(
            label="Mask blur", minimum=0, maximum=64, step=1, value=4, elem_id=self.elem_id("mask_blur")
        )
        inpainting_fill = gr.Radio(
            label="Masked content",
            choices=list(MASKED_CONTENT),
            value="fill",
            type="index",
            elem_id=self.elem_id("inpainting_fill"),
        )
        direction = gr.CheckboxGroup(
            label="Outpainting direction",
            choices=list(DIRECTIONS),
            value=list(DIRECTIONS),
            elem_id=self.elem_id("direction"),
        )
        return [pixels, mask_blur, inpainting_fill, direction]

    def run(self, p: Any, pixels: Any, mask_blur: Any, inpainting_fill: Any, direction: Any) -> Processed:
        px = whole(pixels, "pixels to expand", NAME, 0)
        blur = whole(mask_blur, "mask blur", NAME, 0)
        fill = masked_content(inpainting_fill)
        sides = check_directions(direction, NAME)
        if not p.init_images:
            raise ValidationError(f"{NAME}: an init image is required")
        tile_w, tile_h = int(p.width) // 8 * 8, int(p.height) // 8 * 8
        tiles.check_tiling(tile_w, tile_h, px, what=f"{NAME}: pixels to expand")
        init_img: Image.Image = p.init_images[0]
        check_canvas(init_img, px, NAME, sides)  # one canvas: the tiles are made one at a time

        save_samples = not p.do_not_save_samples
        p.mask_blur = blur * 2
        p.inpainting_fill = fill
        p.inpaint_full_res = False

        left, right = split_growth(init_img.width, px if "left" in sides else 0, px if "right" in sides else 0)
        up, down = split_growth(init_img.height, px if "up" in sides else 0, px if "down" in sides else 0)
        width, height = init_img.width + left + right, init_img.height + up + down
        canvas = Image.new("RGB", (width, height))
        canvas.paste(init_img, (left, up))

        def border_mask(margin: int) -> Image.Image:
            """White (inpaint) everywhere but the init image, shrunk by `margin` on grown sides."""
            mask = Image.new("L", (width, height), "white")
            ImageDraw.Draw(mask).rectangle(
                (
                    left + (margin if left > 0 else 0),
                    up + (margin if up > 0 else 0),
                    width - right - (margin if right > 0 else 0),
                    height - down - (margin if down > 0 else 0),
                ),
                fill="black",
            )
            return mask

        grid = tiles.split_grid(canvas, tile_w, tile_h, px)
        grid_mask = tiles.split_grid(border_mask(blur * 2), tile_w, tile_h, px)
        grid_latent = tiles.split_grid(border_mask(blur // 2), tile_w, tile_h, px)

        p.n_iter = 1
        p.batch_size = 1
        p.width, p.height = tile_w, tile_h
        p.do_not_save_grid = True
        p.do_not_save_samples = True

        def inside(tile: tiles.Tile, y: int, h: int) -> bool:
            return tile.x >= left and tile.x + tile.width <= width - right and y >= up and y + h <= height - down

        work: list[tuple[tiles.Tile, Image.Image, Image.Image]] = []
        for row, mask_row, latent_row in zip(grid.rows, grid_mask.rows, grid_latent.rows, strict=True):
            for tile, mask_tile, latent_tile in zip(row.tiles, mask_row.tiles, latent_row.tiles, strict=True):
                if not inside(tile, row.y, row.height):
                    work.append((tile, mask_tile.image, latent_tile.image))

        job = runtime.current_job()
        initial_seed: int | None = None
        initial_info: str | None = None
        parts: list[Processed] = []
        for i, (tile, mask_image, latent_image) in enumerate(work):
            if job is not None:
                if job.ctx.interrupted or job.ctx.stopping_generation:
                    break
                job.ctx.textinfo = f"{NAME}: batch {i + 1} out of {len(work)}"
            p.init_images = [tile.image]
            p.image_mask = mask_image
            p.latent_mask = latent_image
            processed = process_images(p)
            parts.append(processed)
            if initial_seed is None:
                initial_seed, initial_info = processed.seed, processed.info
            p.seed = processed.seed + 1
            done = processed.images[processed.index_of_first_image :]
            tile.image = done[0] if done else Image.new("RGB", (tile.width, tile_h))
        for tile, _, _ in work[len(parts) :]:  # interrupted: A1111 leaves the rest black
            tile.image = Image.new("RGB", (tile.width, tile_h))

        combined = tiles.combine_grid(grid)
        tiles.save_script_image(
            combined, kind="img2img", seed=initial_seed, prompt=str(p.prompt), infotext=initial_info, save=save_samples
        )
        seed = initial_seed if initial_seed is not None else -1
        out = Processed(
            p,
            [combined],
            seed,
            initial_info or "",
            all_prompts=[str(p.prompt)],
            all_negative_prompts=[str(p.negative_prompt or "")],
            all_seeds=[seed],
            infotexts=[initial_info or ""],
        )
        out.width, out.height = combined.size
        out.results = [r for part in parts for r in part.results]
        return out
