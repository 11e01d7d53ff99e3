"""Pieces the generation tabs (txt2img, img2img) share: the prompt row with A1111's elem_ids,
the sampler choices, following a job's progress and live preview through its `JobHandle`, the
progress and infotext HTML, and the Generate / Interrupt / Skip wiring."""

from __future__ import annotations

import contextlib
import html
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from modules.core.errors import SdWebuiError
from modules.core.generation_info import generation_info
from modules.core.requests import GenerationRequest
from modules.core.results import Result
from modules.engine.facade import JobHandle
from modules.engine.samplers import list_samplers, list_schedulers
from modules.services import Services
from modules.ui.named_inputs import Fields, inputs_of, values_of
from modules.ui.styles import build_styles_dialog

POLL_SECONDS = 0.25
DEFAULT_SAMPLER = "DPM++ 2M"
AUTOMATIC = "Automatic"
PROMPT_PLACEHOLDER = "Prompt\n(Press Ctrl+Enter to generate, Alt+Enter to skip, Esc to interrupt)"
NEG_PLACEHOLDER = "Negative prompt\n(Press Ctrl+Enter to generate, Alt+Enter to skip, Esc to interrupt)"


@dataclass
class PromptRow:
    token_counter: Any
    prompt: Any
    neg_counter: Any
    negative: Any
    generate: Any
    interrupt: Any
    skip: Any
    clear: Any
    styles: Any
    paste: Any
    style_apply: Any
    styles_edit: Any
    # set by Interrupt, cleared when Generate starts: a run of several jobs (img2img batch) stops
    # even when Interrupt lands between two jobs, when no job is there to receive it
    stop_requested: threading.Event = field(default_factory=threading.Event)


def build_prompt_row(prefix: str, services: Services) -> PromptRow:
    """The top row of a generation tab: prompts with token counters, Generate (Interrupt and Skip
    take its place while a job runs), paste / clear / apply-styles tools, the styles dropdown with
    its editor (`modules.ui.styles`); elem_ids `<prefix>_prompt` etc. as A1111."""
    with gr.Row(elem_id=f"{prefix}_toprow", equal_height=False):
        with gr.Column(scale=6, elem_id=f"{prefix}_prompt_container"):
            token_counter = gr.HTML(
                "<span>0/75</span>", elem_id=f"{prefix}_token_counter", elem_classes="token-counter"
            )
            prompt = gr.Textbox(
                label="Prompt", show_label=False, lines=3, placeholder=PROMPT_PLACEHOLDER, elem_id=f"{prefix}_prompt"
            )
            neg_counter = gr.HTML(
                "<span>0/75</span>", elem_id=f"{prefix}_negative_token_counter", elem_classes="token-counter"
            )
            negative = gr.Textbox(
                label="Negative prompt",
                show_label=False,
                lines=3,
                placeholder=NEG_PLACEHOLDER,
                elem_id=f"{prefix}_neg_prompt",
            )
        with gr.Column(scale=1, min_width=240, elem_id=f"{prefix}_actions_column"):
            with gr.Row(elem_id=f"{prefix}_generate_box"):
                generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
                interrupt = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt", visible=False)
                skip = gr.Button("Skip", elem_id=f"{prefix}_skip", visible=False)
            with gr.Row(elem_id=f"{prefix}_tools"):
                paste = gr.Button("↙️", elem_id=f"{prefix}_paste", elem_classes="paste", size="sm", min_width=40)
                clear = gr.Button("🗑️", elem_id=f"{prefix}_clear_prompt", size="sm", min_width=40)
                style_apply = gr.Button("📋", elem_id=f"{prefix}_style_apply", size="sm", min_width=40)
            with gr.Row(elem_id=f"{prefix}_styles_row", equal_height=True):
                style_dropdown = gr.Dropdown(
                    label="Styles",
                    choices=[s.name for s in services.styles.styles()],
                    value=[],
                    multiselect=True,
                    elem_id=f"{prefix}_styles",
                    scale=4,
                )
                styles_edit = gr.Button("🖌️", elem_id=f"{prefix}_styles_edit_button", size="sm", min_width=40, scale=0)
    row = PromptRow(
        token_counter,
        prompt,
        neg_counter,
        negative,
        generate,
        interrupt,
        skip,
        clear,
        style_dropdown,
        paste,
        style_apply,
        styles_edit,
    )
    build_styles_dialog(prefix, services, row)
    return row


def sampler_choices() -> tuple[list[str], str | None]:
    """(the sampler dropdown's choices, its default): every A1111 sampler, DPM++ 2M the default."""
    samplers = [s.name for s in list_samplers()]
    return samplers, DEFAULT_SAMPLER if DEFAULT_SAMPLER in samplers else (samplers[0] if samplers else None)


def scheduler_choices() -> list[str]:
    """The schedule-type dropdown's choices, Automatic first."""
    return [AUTOMATIC, *[s.label for s in list_schedulers() if s.label != AUTOMATIC]]


def submit(services: Services, request: GenerationRequest) -> JobHandle[Result]:
    try:
        return services.engine.submit(request)
    except SdWebuiError as exc:
        raise gr.Error(str(exc)) from exc


def refresh_period(services: Services) -> float:
    """A1111's `live_preview_refresh_period` (ms, default 1000) in seconds: how often the progress
    bar and the live preview are sent to the page (at least every 0.1 s: each update re-renders
    the gallery in the browser, and a page flooded with them stops answering clicks)."""
    value = services.options.get("live_preview_refresh_period")
    ms = float(value) if isinstance(value, int | float) else 1000.0
    return max(0.1, ms / 1000.0)


def follow(
    job: JobHandle[Result], render: Callable[[dict[str, Any]], str], period: float = POLL_SECONDS
) -> Iterator[tuple[str, Any]]:
    """While `job` is queued or runs: (its rendered progress, `[preview]` when a new live preview
    of it exists, else `gr.skip()`), every `period` s. Returns as soon as the job is done; read it
    with `result_of`."""
    shown: object = None
    while not job.done():
        data = job.progress()
        preview = job.preview()
        if preview is not None and preview is not shown:
            shown = preview
            yield render(data), [preview]
        else:
            yield render(data), gr.skip()
        with contextlib.suppress(Exception):  # done or still running; the outcome is read after
            job.result(timeout=period)


def progress_html(progress: dict[str, Any]) -> str:
    """A job's `/progress` body as the bar over the gallery ("waiting…" while it is queued)."""
    state = progress.get("state", {})
    percent = round(100 * float(progress.get("progress") or 0.0))
    step, steps = state.get("sampling_step", 0), state.get("sampling_steps", 0)
    eta = float(progress.get("eta_relative") or 0.0)
    text = f"{percent}% · step {step}/{steps} · ETA {eta:.0f}s" if steps else f"{percent}% · waiting…"
    return (
        "<div class='sdw-progress'><div class='sdw-progress-bar' "
        f"style='width:{percent}%'></div><span class='sdw-progress-text'>{html.escape(text)}</span></div>"
    )


def info_html(result: Result) -> str:
    """The infotext under the gallery: the first image's parameters, warnings, time taken."""
    if not result.infotexts:
        return ""
    lines = "<br>".join(html.escape(line) for line in result.infotexts[0].split("\n"))
    warnings = "".join(f"<p class='sdw-warning'>{html.escape(w)}</p>" for w in result.warnings)
    interrupted = "<p class='sdw-warning'>Interrupted</p>" if result.interrupted else ""
    elapsed = f"<p class='time'>Time taken: <b>{result.elapsed:.1f} sec.</b></p>"
    return f"<div class='infotext'><p>{lines}</p></div>{interrupted}{warnings}{elapsed}"


def open_image(item: Any) -> Image.Image:
    """A loaded PIL image from what Gradio hands a handler: a path, an uploaded file (an object
    with `.path` or `.name`), a `{"path": ...}` dict, a gallery item `(path, caption)`, or a PIL
    image. An unreadable file is a `gr.Error` naming it."""
    if isinstance(item, tuple | list):
        item = item[0]
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, str | Path):
        path = str(item)
    elif isinstance(item, dict):
        path = str(item.get("path"))
    else:
        path = str(getattr(item, "path", None) or getattr(item, "name", ""))
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except OSError as exc:  # UnidentifiedImageError included
        raise gr.Error(f"Could not read the image {html.escape(Path(path).name)}") from exc


def parse_generation_info(text: str | None) -> dict[str, Any]:
    """A tab's generation info JSON (`gallery_items`) as a dict; {} when empty or unreadable."""
    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def default_gallery_index(gallery_size: int, info: dict[str, Any]) -> int:
    """The image a send/save acts on when none was clicked: the first after a leading grid."""
    return min(int(info.get("index_of_first_image", 0) or 0), gallery_size - 1)


def gallery_items(request: GenerationRequest, result: Result) -> tuple[list[Any], str]:
    """(gallery images, generation info JSON) for a finished job: the grid first when there is one
    (A1111's `index_of_first_image` 1), and A1111's `Processed.js()` keys, whose `infotexts` line
    up with the gallery images."""
    images: list[Any] = list(result.images)
    first = 0
    if result.grid is not None:
        images.insert(0, result.grid)
        first = 1
    return images, json.dumps(generation_info(request, result, first), default=str)


def result_of(job: JobHandle[Result]) -> Result:
    try:
        return job.result()
    except SdWebuiError as exc:
        raise gr.Error(str(exc)) from exc


def run_generation(services: Services, request: GenerationRequest) -> Iterator[tuple[Any, ...]]:
    """Submit `request` and follow it: yields the results column's outputs (progress, gallery,
    info HTML, generation info, last seeds), first the progress and live previews, then the
    finished images with their infotext and the seeds ♻️ reuses."""
    job = submit(services, request)
    yield progress_html(job.progress()), gr.skip(), "", "", gr.skip()
    for shown, preview in follow(job, progress_html, refresh_period(services)):
        yield shown, preview, gr.skip(), gr.skip(), gr.skip()
    result = result_of(job)
    images, info = gallery_items(request, result)
    seeds = (result.seeds[0] if result.seeds else -1, result.subseeds[0] if result.subseeds else -1)
    yield "", images, info_html(result), info, seeds


def wire_generate(
    services: Services,
    row: PromptRow,
    run: Callable[[dict[str, Any]], Iterator[tuple[Any, ...]]],
    fields: Fields,
    outputs: list[Any],
    *,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Generate runs `run` with the values of `fields` by name; Interrupt and Skip replace Generate
    while it runs. `check` (same values) raises user errors before the buttons change, so an error
    leaves them as they were."""
    inputs = inputs_of(fields)

    def run_named(data: dict[Any, Any]) -> Iterator[tuple[Any, ...]]:
        yield from run(values_of(fields, data))

    def hide_generate() -> tuple[Any, Any, Any]:
        row.stop_requested.clear()
        return gr.update(visible=False), gr.update(visible=True), gr.update(visible=True)

    def show_generate() -> tuple[Any, Any, Any]:
        return gr.update(visible=True), gr.update(visible=False), gr.update(visible=False)

    buttons = [row.generate, row.interrupt, row.skip]
    # Ctrl+Enter clicks Generate (modules/ui/js/shortcuts.js); Enter / Shift+Enter stay newlines, as in A1111
    if check is not None:
        check_values = check

        def check_named(data: dict[Any, Any]) -> None:
            check_values(values_of(fields, data))

        started = row.generate.click(check_named, inputs, None, show_progress="hidden").success(
            hide_generate, None, buttons, queue=False
        )
    else:
        started = row.generate.click(hide_generate, None, buttons, queue=False)
    started.then(run_named, inputs, outputs, show_progress="hidden").then(show_generate, None, buttons, queue=False)

    def interrupt() -> None:
        row.stop_requested.set()
        services.engine.interrupt()

    row.interrupt.click(interrupt, None, None, queue=False)
    row.skip.click(lambda: services.engine.skip(), None, None, queue=False)
    row.clear.click(lambda: ("", ""), None, [row.prompt, row.negative], queue=False)


@dataclass
class OutputButtons:
    """The tool buttons under a generation tab's gallery (A1111's ids): save the selected image,
    save all as a zip, send the selected image to img2img / inpaint / extras."""

    save: Any
    save_zip: Any
    send_to_img2img: Any
    send_to_inpaint: Any
    send_to_extras: Any
    download: Any


def build_output_buttons(prefix: str) -> OutputButtons:
    with gr.Row(elem_id=f"image_buttons_{prefix}", elem_classes="image-buttons"):
        save = gr.Button("💾", elem_id=f"save_{prefix}", size="sm", min_width=40)
        save_zip = gr.Button("🗃️", elem_id=f"save_zip_{prefix}", size="sm", min_width=40)
        to_img2img = gr.Button("🖼️", elem_id=f"{prefix}_send_to_img2img", size="sm", min_width=40)
        to_inpaint = gr.Button("🎨️", elem_id=f"{prefix}_send_to_inpaint", size="sm", min_width=40)
        to_extras = gr.Button("📐", elem_id=f"{prefix}_send_to_extras", size="sm", min_width=40)
    download = gr.File(label="Saved files", file_count="multiple", visible=False, elem_id=f"download_files_{prefix}")
    return OutputButtons(save, save_zip, to_img2img, to_inpaint, to_extras, download)


@dataclass
class SeedSection:
    """The seed row and its "Extra" group (variation seed and strength, resize seed from)."""

    seed: Any
    extra: Any
    subseed: Any
    subseed_strength: Any
    resize_w: Any
    resize_h: Any
    last_seeds: Any  # (seed, subseed) of the last generation, for ♻️


def build_seed_section(prefix: str) -> SeedSection:
    """A1111's seed controls with their elem_ids; 🎲 sets -1, ♻️ reuses the last generation's."""
    with gr.Row(equal_height=True, elem_id=f"{prefix}_seed_row"):
        seed = gr.Number(label="Seed", value=-1, precision=0, elem_id=f"{prefix}_seed", scale=4)
        random_seed = gr.Button("⚄", elem_id=f"{prefix}_random_seed", size="sm", min_width=40, scale=0)
        reuse_seed = gr.Button("♻️", elem_id=f"{prefix}_reuse_seed", size="sm", min_width=40, scale=0)
        extra = gr.Checkbox(label="Extra", value=False, elem_id=f"{prefix}_subseed_show", scale=1)
    with gr.Group(visible=False, elem_id=f"{prefix}_seed_extras") as extra_group:
        with gr.Row(equal_height=True):
            subseed = gr.Number(label="Variation seed", value=-1, precision=0, elem_id=f"{prefix}_subseed")
            random_subseed = gr.Button("⚄", elem_id=f"{prefix}_random_subseed", size="sm", min_width=40, scale=0)
            reuse_subseed = gr.Button("♻️", elem_id=f"{prefix}_reuse_subseed", size="sm", min_width=40, scale=0)
            subseed_strength = gr.Slider(
                0, 1, value=0, step=0.01, label="Variation strength", elem_id=f"{prefix}_subseed_strength"
            )
        with gr.Row():
            resize_w = gr.Slider(
                0, 2048, value=0, step=8, label="Resize seed from width", elem_id=f"{prefix}_seed_resize_from_w"
            )
            resize_h = gr.Slider(
                0, 2048, value=0, step=8, label="Resize seed from height", elem_id=f"{prefix}_seed_resize_from_h"
            )
    last_seeds = gr.State((-1, -1))
    random_seed.click(lambda: -1, None, seed, queue=False)
    random_subseed.click(lambda: -1, None, subseed, queue=False)
    reuse_seed.click(lambda s: s[0], last_seeds, seed, queue=False)
    reuse_subseed.click(lambda s: s[1], last_seeds, subseed, queue=False)
    extra.change(lambda on: gr.update(visible=on), extra, extra_group, queue=False)
    return SeedSection(seed, extra, subseed, subseed_strength, resize_w, resize_h, last_seeds)


@dataclass
class ResultsColumn:
    progress: Any
    gallery: Any
    output_buttons: OutputButtons
    html_info: Any
    generation_info: Any  # A1111's generation info JSON (`gallery_items`)


def build_results_column(prefix: str) -> ResultsColumn:
    """Progress bar (over the gallery top), gallery, tool buttons, infotext HTML, generation info."""
    with gr.Column(scale=1, elem_id=f"{prefix}_results"):
        progress = gr.HTML("", elem_id=f"{prefix}_progress", min_height=0)
        gallery = gr.Gallery(
            label="Output",
            show_label=False,
            columns=4,
            height=420,
            object_fit="contain",
            format="png",
            interactive=False,
            elem_id=f"{prefix}_gallery",
        )
        output_buttons = build_output_buttons(prefix)
        html_info = gr.HTML("", elem_id=f"html_info_{prefix}")
        generation_info = gr.Textbox(
            label="Generation info", visible="hidden", elem_id=f"generation_info_{prefix}", interactive=False
        )
    return ResultsColumn(progress, gallery, output_buttons, html_info, generation_info)
