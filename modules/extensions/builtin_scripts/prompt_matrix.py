"""A1111's "Prompt matrix": a prompt `base|part 1|part 2|...` makes one image per combination of
the parts (2^n for n parts, the base always in), joined to the base with ", " or " ", after it or
(put at start) before it, in the positive or the negative prompt; all with one seed unless
"different seeds". A grid of the images comes first: combination k is cell k in row-major order,
the first half of the parts (rounded up) switch along the columns, the rest along the rows, and
the labels above and left of the cells say which parts are in (struck through: out).
A1111's `script_args`: `[put_at_start, different_seeds, prompt_type, variations_delimiter,
margin_size]`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from PIL import Image

from modules.core.errors import ValidationError
from modules.extensions import runtime
from modules.extensions.builtin_scripts import grid_labels, tiles
from modules.extensions.processing_api import (
    Processed,
    StableDiffusionProcessing,
    StableDiffusionProcessingImg2Img,
    fix_seed,
    process_images,
)
from modules.extensions.script_base import Script

PROMPT_TYPES = ("positive", "negative")
DELIMITERS = {"comma": ", ", "space": " "}


def matrix_prompts(prompt: str, *, put_at_start: bool, delimiter: str) -> tuple[list[str], list[str]]:
    """(the parts of `prompt` split at `|`, one prompt per combination). Combination k holds part
    i + 1 when bit i of k is set, in order."""
    parts = prompt.split("|")
    out: list[str] = []
    for combination in range(2 ** (len(parts) - 1)):
        chosen = [text.strip().strip(",") for i, text in enumerate(parts[1:]) if combination & (1 << i)]
        chosen = [*chosen, parts[0]] if put_at_start else [parts[0], *chosen]
        out.append(delimiter.join(chosen))
    return parts, out


def matrix_shape(variable_parts: int) -> tuple[int, int]:
    """(columns, rows) of the grid for `variable_parts` parts."""
    return 2 ** math.ceil(variable_parts / 2), 2 ** (variable_parts // 2)


def matrix_grid(images: list[Image.Image], parts: list[str], margin: int, batch_size: int = 1) -> Image.Image:
    """The images in a grid labelled with the parts (active ones drawn, the others struck
    through: A1111's prompt matrix), `margin` pixels between cells."""
    _, rows = matrix_shape(len(parts) - 1)
    grid = grid_labels.image_grid(images, rows, batch_size=batch_size)
    return grid_labels.draw_prompt_matrix(grid, images[0].width, images[0].height, parts, margin)


def _flag(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValidationError(f"Prompt matrix: {what} must be true or false, got {value!r}")


def process_per_image(p: StableDiffusionProcessing, prompts: list[str], key: str, seeds: list[int]) -> Processed:
    """`process_images` for one image per entry of `prompts` (set as `p.<key>`) with `seeds`,
    `p.batch_size` at a time. A1111 makes a smaller last batch when the count is not a multiple
    of the batch size; a generation here has equal batches, so the rest is a second generation."""
    batch = max(1, int(p.batch_size))
    full = len(prompts) // batch * batch
    chunks = [(0, full, batch)] if full else []
    if full < len(prompts):
        chunks.append((full, len(prompts), len(prompts) - full))
    parts: list[Processed] = []
    for start, end, size in chunks:
        part_p = p if len(chunks) == 1 else copy.copy(p)
        part_p.batch_size = size
        part_p.n_iter = (end - start) // size
        setattr(part_p, key, prompts[start:end])
        part_p.seed = seeds[start:end]
        parts.append(process_images(part_p))
    return merge_processed(p, parts)


def merge_processed(p: StableDiffusionProcessing, parts: list[Processed]) -> Processed:
    """One `Processed` of the generated images of `parts`, in order (their own grids left out)."""
    if len(parts) == 1 and parts[0].index_of_first_image == 0:
        return parts[0]
    images: list[Image.Image] = []
    infotexts: list[str] = []
    for part in parts:
        first = part.index_of_first_image
        images.extend(part.images[first:])
        infotexts.extend(part.infotexts[first:])
    head = parts[0]
    merged = Processed(
        p,
        images,
        head.seed,
        head.info,
        subseed=head.subseed,
        all_prompts=[x for part in parts for x in part.all_prompts],
        all_negative_prompts=[x for part in parts for x in part.all_negative_prompts],
        all_seeds=[x for part in parts for x in part.all_seeds],
        all_subseeds=[x for part in parts for x in part.all_subseeds],
        infotexts=infotexts,
    )
    for name in ("sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash", "job_timestamp", "version"):
        setattr(merged, name, getattr(head, name))
    merged.results = [r for part in parts for r in part.results]
    return merged


class PromptMatrix(Script):
    def title(self) -> str:
        return "Prompt matrix"

    def ui(self, is_img2img: bool) -> Any:
        import gradio as gr

        gr.HTML("<br />")
        with gr.Row():
            with gr.Column():
                put_at_start = gr.Checkbox(
                    label="Put variable parts at start of prompt", value=False, elem_id=self.elem_id("put_at_start")
                )
                different_seeds = gr.Checkbox(
                    label="Use different seed for each picture", value=False, elem_id=self.elem_id("different_seeds")
                )
            with gr.Column():
                prompt_type = gr.Radio(
                    list(PROMPT_TYPES), label="Select prompt", elem_id=self.elem_id("prompt_type"), value="positive"
                )
                variations_delimiter = gr.Radio(
                    list(DELIMITERS),
                    label="Select joining char",
                    elem_id=self.elem_id("variations_delimiter"),
                    value="comma",
                )
            with gr.Column():
                margin_size = gr.Slider(
                    label="Grid margins (px)",
                    minimum=0,
                    maximum=500,
                    value=0,
                    step=2,
                    elem_id=self.elem_id("margin_size"),
                )
        return [put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size]

    def run(
        self,
        p: Any,
        put_at_start: Any,
        different_seeds: Any,
        prompt_type: Any,
        variations_delimiter: Any,
        margin_size: Any,
    ) -> Processed:
        if prompt_type not in PROMPT_TYPES:
            raise ValidationError(f"Prompt matrix: unknown prompt type {prompt_type!r} (positive or negative)")
        if variations_delimiter not in DELIMITERS:
            raise ValidationError(
                f"Prompt matrix: unknown variations delimiter {variations_delimiter!r} (comma or space)"
            )
        at_start = _flag(put_at_start, "put variable parts at start")
        vary_seeds = _flag(different_seeds, "use different seed for each picture")
        try:
            margin = int(margin_size)
        except (TypeError, ValueError):
            raise ValidationError(f"Prompt matrix: grid margins must be a number, got {margin_size!r}") from None
        if not 0 <= margin <= 500:
            raise ValidationError(f"Prompt matrix: grid margins must be 0..500 px, got {margin}")
        fix_seed(p)
        if isinstance(p.seed, list):
            raise ValidationError("Prompt matrix: the seed must be one number")

        prompt = p.prompt if prompt_type == "positive" else p.negative_prompt
        original = (prompt[0] if prompt else "") if isinstance(prompt, list) else (prompt or "")
        positive = (p.prompt[0] if p.prompt else "") if isinstance(p.prompt, list) else p.prompt
        parts, prompts = matrix_prompts(
            str(original), put_at_start=at_start, delimiter=DELIMITERS[variations_delimiter]
        )
        seeds = [int(p.seed) + (i if vary_seeds else 0) for i in range(len(prompts))]
        save_grid = not p.do_not_save_grid
        p.do_not_save_grid = True
        p.prompt_for_display = positive
        job = runtime.current_job()
        if job is not None:
            job.ctx.textinfo = f"Prompt matrix: {len(prompts)} images"
        key = "prompt" if prompt_type == "positive" else "negative_prompt"
        processed = process_per_image(p, prompts, key, seeds)

        generated = processed.images[processed.index_of_first_image :]
        if len(generated) < len(prompts):  # interrupted: no grid of a partial matrix
            return processed
        grid = matrix_grid(generated, parts, margin, max(1, int(p.batch_size)))
        processed.images = [grid, *generated]
        processed.infotexts = [processed.infotexts[0] if processed.infotexts else "", *processed.infotexts]
        processed.index_of_first_image = 1
        kind = "img2img" if isinstance(p, StableDiffusionProcessingImg2Img) else "txt2img"
        tiles.save_script_image(
            grid,
            kind=kind,
            seed=processed.seed,
            prompt=str(original),
            infotext=processed.infotexts[0],
            grid=True,
            save=save_grid,
        )
        return processed
