"""img2img's 📎 (Interrogate CLIP, `#interrogate`) and 📦 (Interrogate DeepBooru, `#deepbooru`)
tool buttons, after 📋 in the prompt row's tools as in A1111.

A click interrogates the image of the current sub-tab (the sketch with its strokes, the inpaint
image without its mask) as a job on the worker and puts the result in the prompt box. On the
Batch sub-tab it writes `<name>.txt` with the interrogation of each image of the input directory
into the output directory (beside the images when that is empty), replacing older files, and
leaves the prompt as it is. Missing weights, no image or a refused folder are a `gr.Error`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from modules.core.errors import SdWebuiError
from modules.engine.interrogation import (
    CLIP,
    DEEPDANBOORU,
    CaptionReport,
    submit_folder_interrogation,
    submit_interrogation,
)
from modules.services import Services
from modules.ui.common import PromptRow
from modules.ui.img2img_editor import image_of_mode
from modules.ui.img2img_modes import BATCH
from modules.ui.named_inputs import inputs_of, values_of
from modules.ui.server_folders import server_dir


@dataclass
class InterrogateButtons:
    clip: gr.Button
    deepbooru: gr.Button


def add_interrogate_buttons(row: PromptRow) -> InterrogateButtons:
    """📎 and 📦 appended to the row of 📋 (the prompt row's tools)."""
    tools = row.style_apply.parent
    assert tools is not None, "the prompt row's tools must be built first"
    parent = tools.parent
    with tools:  # entering a built block again makes the current context its parent: undone below
        clip = gr.Button("📎", elem_id="interrogate", size="sm", min_width=40)
        deepbooru = gr.Button("📦", elem_id="deepbooru", size="sm", min_width=40)
    tools.parent = parent
    return InterrogateButtons(clip, deepbooru)


def _gr_error(exc: SdWebuiError) -> gr.Error:
    return gr.Error(str(exc))


def interrogate_image(services: Services, image: Image.Image | None, model: str) -> str:
    """The interrogation of `image` (a job on the worker, waited for)."""
    if image is None:
        raise gr.Error("There is no image in this sub-tab to interrogate")
    try:
        handle = submit_interrogation(services.engine, image.convert("RGB"), model)
        return str(handle.result())
    except SdWebuiError as exc:
        raise _gr_error(exc) from exc


def interrogate_batch(services: Services, input_dir: str, output_dir: str, model: str) -> CaptionReport:
    """Batch 📎 / 📦: the captions of the input directory's images, written as a job."""
    src = server_dir(services.paths, input_dir, "Input directory")
    dst = server_dir(services.paths, output_dir, "Output directory") if output_dir.strip() else src
    try:
        report: CaptionReport = submit_folder_interrogation(services.engine, src, dst, model).result()
    except SdWebuiError as exc:
        raise _gr_error(exc) from exc
    return report


def wire_interrogate_buttons(
    services: Services,
    buttons: InterrogateButtons,
    image_fields: dict[str, Any],
    batch_fields: dict[str, Any],
    prompt: gr.Textbox,
) -> None:
    """`image_fields`: `image_of_mode`'s parameters by name (with "mode"); `batch_fields`: the
    Batch sub-tab's "batch_input_dir" and "batch_output_dir"."""
    fields = {
        **image_fields,
        "batch_input_dir": batch_fields["batch_input_dir"],
        "batch_output_dir": batch_fields["batch_output_dir"],
    }

    def handler(model: str) -> Callable[[dict[Any, Any]], Any]:
        def run(data: dict[Any, Any]) -> Any:
            values = values_of(fields, data)
            mode = int(values["mode"])
            if mode == BATCH:
                report = interrogate_batch(
                    services, str(values["batch_input_dir"] or ""), str(values["batch_output_dir"] or ""), model
                )
                gr.Info(report.summary())
                return gr.update()
            image = image_of_mode(
                mode,
                values["init_image"],
                values["sketch"],
                values["inpaint_editor"],
                values["inpaint_sketch"],
                values["inpaint_base"],
            )
            return interrogate_image(services, image, model)

        return run

    buttons.clip.click(handler(CLIP), inputs_of(fields), prompt, show_progress="minimal")
    buttons.deepbooru.click(handler(DEEPDANBOORU), inputs_of(fields), prompt, show_progress="minimal")
