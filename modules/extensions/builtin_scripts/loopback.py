"""A1111's "Loopback" (img2img): each output becomes the next loop's input, `loops` times, the
denoising strength going from the request's to "final denoising strength" along a curve: Linear
(straight), Aggressive (sine: moves early) or Lazy (1 - cosine: moves late). From the second loop
on, masked content is "original". `n_iter` runs the whole loop that many times from the init
image. Seeds go up by one per loop. A grid of the loop (of the last images with `n_iter` > 1)
comes first when `return_grid` is on.
A1111's `script_args`: `[loops, final_denoising_strength, denoising_curve, append_interrogation]`.

"Append interrogated prompt" (CLIP / DeepBooru): before each loop, the prompt becomes the
request's prompt, ", " and the interrogation of that loop's input image (A1111's rule; the
interrogators' weights are checked first: missing ones are an error naming the file, not a loop
without them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from PIL import Image

from modules.core.errors import ValidationError
from modules.extensions import runtime
from modules.extensions.builtin_scripts import grid_labels, tiles
from modules.extensions.processing_api import Processed, fix_seed, process_images
from modules.extensions.script_base import Script

CURVES = ("Aggressive", "Linear", "Lazy")
INTERROGATORS = ("None", "CLIP", "DeepBooru")


def _interrogator(choice: str) -> Callable[[Image.Image, Any], str] | None:
    """The engine's interrogator for "CLIP" / "DeepBooru" (its weights checked now), None for "None"."""
    if choice == "None":
        return None
    env = runtime.maybe_environment()
    interrogator = getattr(env.engine, "interrogator", None) if env is not None and env.engine is not None else None
    if interrogator is None:
        raise ValidationError(f"Loopback: 'Append interrogated prompt' with {choice} needs the image interrogator")
    model = "clip" if choice == "CLIP" else "deepdanbooru"
    interrogator.require(model)

    def interrogate(image: Image.Image, ctx: Any) -> str:
        return str(interrogator.interrogate(image.convert("RGB"), model, ctx))

    return interrogate


def denoising_strength(loop: int, loops: int, initial: float, final: float, curve: str) -> float:
    """The strength of loop `loop` (0 = the first, which uses `initial`)."""
    if loops == 1:
        return initial
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        shape = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        shape = 1 - math.cos(progress * math.pi * 0.5)
    else:
        shape = progress
    return initial + (final - initial) * shape


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValidationError(f"Loopback: {what} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValidationError(f"Loopback: {what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValidationError(f"Loopback: {what} must be a finite number, got {value!r}")
    return number


class Loopback(Script):
    def title(self) -> str:
        return "Loopback"

    def show(self, is_img2img: bool) -> Any:
        return is_img2img

    def ui(self, is_img2img: bool) -> Any:
        import gradio as gr

        loops = gr.Slider(minimum=1, maximum=32, step=1, label="Loops", value=4, elem_id=self.elem_id("loops"))
        final_denoising_strength = gr.Slider(
            minimum=0,
            maximum=1,
            step=0.01,
            label="Final denoising strength",
            value=0.5,
            elem_id=self.elem_id("final_denoising_strength"),
        )
        denoising_curve = gr.Dropdown(label="Denoising strength curve", choices=list(CURVES), value="Linear")
        append_interrogation = gr.Dropdown(
            label="Append interrogated prompt at each iteration", choices=list(INTERROGATORS), value="None"
        )
        return [loops, final_denoising_strength, denoising_curve, append_interrogation]

    def run(
        self, p: Any, loops: Any, final_denoising_strength: Any, denoising_curve: Any, append_interrogation: Any
    ) -> Processed:
        count = _number(loops, "loops")
        if not count.is_integer() or count < 1:
            raise ValidationError(f"Loopback: loops must be a whole number >= 1, got {loops!r}")
        final = _number(final_denoising_strength, "final denoising strength")
        if not 0 <= final <= 1:
            raise ValidationError(f"Loopback: final denoising strength must be within 0..1, got {final:g}")
        if denoising_curve not in CURVES:
            raise ValidationError(
                f"Loopback: unknown denoising strength curve {denoising_curve!r} ({', '.join(CURVES)})"
            )
        if append_interrogation not in INTERROGATORS:
            raise ValidationError(
                f"Loopback: unknown interrogator {append_interrogation!r} ({', '.join(INTERROGATORS)})"
            )
        interrogate = _interrogator(str(append_interrogation))
        if not p.init_images:
            raise ValidationError("Loopback: an init image is required")
        loops = int(count)

        fix_seed(p)
        batch_count = max(1, int(p.n_iter))
        save_grid = not p.do_not_save_grid
        p.extra_generation_params = {
            **(p.extra_generation_params or {}),
            "Final denoising strength": final,
            "Denoising curve": denoising_curve,
        }
        p.batch_size = 1
        p.n_iter = 1
        p.do_not_save_grid = True
        initial = float(p.denoising_strength if p.denoising_strength is not None else 0.75)
        original_init = list(p.init_images)
        original_fill = p.inpainting_fill
        original_prompt = str(p.prompt or "")
        if interrogate is not None:
            p.extra_generation_params["Append interrogated prompt at each iteration"] = append_interrogation

        job = runtime.current_job()

        def stopped() -> bool:
            return job is not None and (job.ctx.interrupted or job.ctx.stopping_generation)

        def skipped() -> bool:
            return job is not None and job.ctx.skipped

        initial_seed: int | None = None
        initial_info: str | None = None
        history: list[Image.Image] = []
        history_infos: list[str] = []
        history_seeds: list[int] = []
        parts: list[Processed] = []
        for n in range(batch_count):
            p.init_images = original_init
            p.denoising_strength = initial
            last: Image.Image | None = None
            last_info = ""
            last_seed = int(p.seed)
            for i in range(loops):
                if interrogate is not None:
                    tags = interrogate(p.init_images[0], job.ctx if job is not None else None)
                    p.prompt = f"{original_prompt}, {tags}" if original_prompt else tags
                    p.all_prompts = None  # the prompt of this loop, not the first loop's
                if job is not None:
                    job.ctx.textinfo = f"Loopback: iteration {i + 1}/{loops}, batch {n + 1}/{batch_count}"
                processed = process_images(p)
                parts.append(processed)
                if stopped():
                    break
                if initial_seed is None:
                    initial_seed = processed.seed
                    initial_info = processed.info
                p.seed = processed.seed + 1
                p.denoising_strength = denoising_strength(i + 1, loops, initial, final, str(denoising_curve))
                if skipped():
                    break
                first = processed.index_of_first_image
                last = processed.images[first]
                last_info = processed.infotexts[first] if first < len(processed.infotexts) else processed.info
                last_seed = processed.seed
                p.init_images = [last]
                p.inpainting_fill = 1  # "original" for the next loops
                if batch_count == 1:
                    history.append(last)
                    history_infos.append(last_info)
                    history_seeds.append(last_seed)
            if batch_count > 1 and last is not None and not skipped() and not stopped():
                history.append(last)
                history_infos.append(last_info)
                history_seeds.append(last_seed)
            p.inpainting_fill = original_fill
            if stopped():
                break

        env = runtime.maybe_environment()
        grids: list[Image.Image] = []
        if len(history) > 1:
            grid = grid_labels.image_grid(history, rows=1)
            tiles.save_script_image(
                grid,
                kind="img2img",
                seed=initial_seed,
                prompt=str(p.prompt),
                infotext=initial_info,
                grid=True,
                save=save_grid,
            )
            if env is None or bool(env.options.get("return_grid")):
                grids.append(grid)

        out = Processed(
            p,
            [*grids, *history],
            initial_seed if initial_seed is not None else int(p.seed),
            initial_info or "",
            all_prompts=[str(p.prompt)] * len(history),
            all_negative_prompts=[str(p.negative_prompt or "")] * len(history),
            all_seeds=history_seeds,
            infotexts=[initial_info or ""] * len(grids) + history_infos,
            index_of_first_image=len(grids),
        )
        out.results = [r for part in parts for r in part.results]
        return out
