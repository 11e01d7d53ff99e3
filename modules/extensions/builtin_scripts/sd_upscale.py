"""A1111's "SD upscale" (img2img): upscale the init image with an upscaler, cut it into tiles of
the request's width x height that overlap, img2img every tile (`batch_size` tiles per
generation), and paste the tiles back with blended overlaps. `n_iter` makes that many upscales,
seeds `seed`, `seed + 1`, ... A1111's `script_args`: `[info, overlap, upscaler, scale_factor]`,
the upscaler by index into A1111's upscaler list (None, Lanczos, Nearest, then the model files
by name) or by name (any case).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from PIL import Image

from modules.core.errors import NotFoundError, ValidationError
from modules.engine import images as imgops
from modules.engine import upscaling
from modules.extensions import runtime
from modules.extensions.builtin_scripts import tiles
from modules.extensions.processing_api import Processed, fix_seed, process_images
from modules.extensions.script_base import Script

BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")


def upscaler_names() -> list[str]:
    """The upscalers as A1111 lists them (`shared.sd_upscalers`): None, Lanczos, Nearest first,
    then the rest sorted by name ignoring case."""
    env = runtime.maybe_environment()
    registry = env.upscalers if env is not None else None
    names: list[str] = list(registry.names()) if registry is not None else list(BUILTIN_UPSCALERS)
    builtin = [n for n in names if n in BUILTIN_UPSCALERS]
    return builtin + sorted((n for n in names if n not in BUILTIN_UPSCALERS), key=str.lower)


def resolve_upscaler(value: Any, names: Sequence[str]) -> str:
    """An upscaler named by index into `names` or by name (case-insensitive), as A1111's API takes it."""
    if isinstance(value, bool):
        raise ValidationError(f"SD upscale: upscaler must be a name or an index, got {value!r}")
    if isinstance(value, int | float) and float(value).is_integer():
        index = int(value)
        if not 0 <= index < len(names):
            raise ValidationError(f"SD upscale: upscaler index {index} is out of range 0..{len(names) - 1}")
        return names[index]
    if isinstance(value, str) and value.strip():
        wanted = value.strip().lower()
        for name in names:
            if name.lower() == wanted:
                return name
        env = runtime.maybe_environment()
        if env is not None and env.upscalers is not None:
            try:  # a model's file stem names it too
                return str(env.upscalers.get(value.strip()).name)
            except NotFoundError:
                pass
        raise ValidationError(f"SD upscale: upscaler not found: {value!r} (available: {', '.join(names)})")
    raise ValidationError(f"SD upscale: upscaler must be a name or an index, got {value!r}")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ValidationError(f"SD upscale: {what} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"SD upscale: {what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValidationError(f"SD upscale: {what} must be a finite number, got {value!r}")
    return number


class SDUpscale(Script):
    def title(self) -> str:
        return "SD upscale"

    def show(self, is_img2img: bool) -> Any:
        return is_img2img

    def ui(self, is_img2img: bool) -> Any:
        import gradio as gr

        names = upscaler_names()
        info = gr.HTML(
            '<p style="margin-bottom:0.75em">Will upscale the image by the selected scale factor; '
            "use width and height sliders to set tile size</p>"
        )
        overlap = gr.Slider(
            minimum=0, maximum=256, step=16, label="Tile overlap", value=64, elem_id=self.elem_id("overlap")
        )
        scale_factor = gr.Slider(
            minimum=1.0, maximum=4.0, step=0.05, label="Scale Factor", value=2.0, elem_id=self.elem_id("scale_factor")
        )
        upscaler_index = gr.Radio(
            label="Upscaler",
            choices=names,
            value=names[0],
            type="index",
            elem_id=self.elem_id("upscaler_index"),
        )
        return [info, overlap, upscaler_index, scale_factor]

    def run(self, p: Any, _info: Any, overlap: Any, upscaler_index: Any, scale_factor: Any) -> Processed:
        env = runtime.maybe_environment()
        upscaler = resolve_upscaler(upscaler_index, upscaler_names())
        overlap_px = _number(overlap, "tile overlap")
        if not overlap_px.is_integer():
            raise ValidationError(f"SD upscale: tile overlap must be a whole number of pixels, got {overlap!r}")
        scale = _number(scale_factor, "scale factor")
        if not 0 < scale <= upscaling.MAX_SCALE:
            raise ValidationError(f"SD upscale: scale factor must be in (0, {upscaling.MAX_SCALE:g}], got {scale:g}")
        if not p.init_images:
            raise ValidationError("SD upscale: an init image is required")
        # tiles are processed at the request's size, which the engine rounds down to multiples of 8
        tile_w, tile_h = int(p.width) // 8 * 8, int(p.height) // 8 * 8
        tiles.check_tiling(tile_w, tile_h, int(overlap_px), what="SD upscale: tile overlap")

        fix_seed(p)
        save_samples = not p.do_not_save_samples
        p.extra_generation_params["SD upscale overlap"] = int(overlap_px)
        p.extra_generation_params["SD upscale upscaler"] = upscaler

        background = str(env.options.get("img2img_background_color")) if env is not None else "#ffffff"
        init_img = imgops.flatten(p.init_images[0], background or "#ffffff")
        if upscaler == "None":
            image = init_img
        else:
            registry = env.upscalers if env is not None else None
            tile_opts = upscaling.tile_settings(env.options if env is not None else None)
            try:
                image = upscaling.upscale(init_img, upscaler, scale, registry=registry, tiles=tile_opts)
            except NotFoundError as exc:
                raise ValidationError(f"SD upscale: {exc}") from exc
        grid = tiles.split_grid(image, tile_w, tile_h, int(overlap_px))
        work = grid.images()

        seed = int(p.seed)
        batch_size = max(1, int(p.batch_size))
        upscale_count = max(1, int(p.n_iter))
        batch_count = math.ceil(len(work) / batch_size)
        p.width, p.height = tile_w, tile_h
        p.n_iter = 1
        p.do_not_save_grid = True
        p.do_not_save_samples = True

        job = runtime.current_job()
        results: list[Image.Image] = []
        infotexts: list[str] = []
        seeds: list[int] = []
        processed_parts: list[Processed] = []
        for n in range(upscale_count):
            start_seed = seed + n
            p.seed = start_seed
            done: list[Image.Image] = []
            first_info: str | None = None
            for i in range(batch_count):
                if job is not None:
                    if job.ctx.interrupted or job.ctx.stopping_generation:
                        break
                    job.ctx.textinfo = (
                        f"SD upscale: batch {i + 1 + n * batch_count} out of {batch_count * upscale_count}"
                    )
                chunk = work[i * batch_size : (i + 1) * batch_size]
                p.batch_size = len(chunk)
                p.init_images = chunk
                processed = process_images(p)
                processed_parts.append(processed)
                outputs = processed.images[processed.index_of_first_image :]
                if first_info is None:
                    first_info = processed.infotexts[processed.index_of_first_image] if outputs else processed.info
                p.seed = processed.seed + 1
                done.extend(outputs[: len(chunk)])
            if not done:
                break
            grid.replace_images(done)
            combined = tiles.combine_grid(grid)
            results.append(combined)
            seeds.append(start_seed)
            infotexts.append(first_info or "")
            tiles.save_script_image(
                combined, kind="img2img", seed=start_seed, prompt=str(p.prompt), infotext=first_info, save=save_samples
            )
            if job is not None and (job.ctx.interrupted or job.ctx.stopping_generation):
                break

        prompt = p.prompt if isinstance(p.prompt, str) else ""
        negative = p.negative_prompt if isinstance(p.negative_prompt, str) else ""
        out = Processed(
            p,
            results,
            seed,
            infotexts[0] if infotexts else "",
            all_prompts=[prompt] * len(results),
            all_negative_prompts=[negative] * len(results),
            all_seeds=seeds,
            all_subseeds=[int(p.subseed)] * len(results) if isinstance(p.subseed, int) else None,
            infotexts=infotexts,
        )
        out.width, out.height = image.width, image.height
        out.results = [r for part in processed_parts for r in part.results]
        return out
