"""The Extras tab (a1111.md 10.3): Single Image / Batch Process sources, the Upscale, GFPGAN and
CodeFormer settings with A1111's labels, defaults and elem_ids, named by the keywords of one
converter (`extras_request_from_ui`) and submitted to the engine as an `ExtrasRequest` job
(queued behind generation, like the `/sdapi/v1/extra-*` routes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from modules.core.atomic import atomic_write_bytes
from modules.core.errors import SdWebuiError
from modules.core.jobs import ExtrasRequest
from modules.core.results import ExtrasResult
from modules.engine.image_metadata import encode_image
from modules.services import Services
from modules.ui.common import open_image
from modules.ui.named_inputs import inputs_of, values_of
from modules.ui.selected_tab import TabHolder, selected_tab_holder, set_on_select
from modules.ui.server_folders import folder_images, server_dir

SINGLE, BATCH, DIRECTORY = 0, 1, 2
SCALE_BY, SCALE_TO = 0, 1
NONE = "None"


def extras_request_from_ui(
    *,
    images: Sequence[Image.Image],
    resize_mode: int,
    upscale_enabled: bool,
    upscaler_1: str | None,
    upscaler_2: str | None,
    upscaler_2_visibility: float,
    upscaling_resize: float,
    upscaling_resize_w: float,
    upscaling_resize_h: float,
    upscaling_crop: bool,
    gfpgan_enabled: bool,
    gfpgan_visibility: float,
    codeformer_enabled: bool,
    codeformer_visibility: float,
    codeformer_weight: float,
) -> ExtrasRequest:
    """The UI's settings for `images` as one request; a disabled section does nothing."""
    return ExtrasRequest(
        images=tuple(images),
        resize_mode=int(resize_mode),
        upscaling_resize=float(upscaling_resize),
        upscaling_resize_w=int(upscaling_resize_w),
        upscaling_resize_h=int(upscaling_resize_h),
        upscaling_crop=bool(upscaling_crop),
        upscaler_1=(upscaler_1 or NONE) if upscale_enabled else NONE,
        upscaler_2=upscaler_2 or NONE,
        extras_upscaler_2_visibility=float(upscaler_2_visibility),
        gfpgan_visibility=float(gfpgan_visibility) if gfpgan_enabled else 0.0,
        codeformer_visibility=float(codeformer_visibility) if codeformer_enabled else 0.0,
        codeformer_weight=float(codeformer_weight),
    )


def run_on_engine(services: Services, request: ExtrasRequest) -> list[ExtrasResult]:
    """The request as one job on the engine (queued behind generation); waits for it. Errors are
    `gr.Error`s."""
    try:
        results: list[ExtrasResult] = services.engine.submit(request).result()
    except SdWebuiError as exc:
        raise gr.Error(str(exc)) from exc
    return results


def upscaler_names(services: Services) -> list[str]:
    return [str(u["name"]) for u in services.upscalers.list()]


def _open_files(files: Sequence[Any] | None) -> list[Image.Image]:
    return [open_image(item) for item in files or ()]


def _save_results(results: Sequence[ExtrasResult], names: Sequence[Path], folder: Path) -> None:
    for result, name in zip(results, names, strict=True):
        data = encode_image(result.image, "png", infotext=result.infotext or None, pnginfo_section="postprocessing")
        atomic_write_bytes(folder / f"{name.stem}.png", data)


@dataclass
class ExtrasTab:
    generate: gr.Button
    output_image: gr.Image
    gallery: gr.Gallery
    html_info: gr.HTML
    # what "Send to extras" fills: the single-image input, the source mode and its tabs
    image: gr.Image
    mode: TabHolder  # SINGLE, BATCH or DIRECTORY: the selected source tab
    mode_tabs: gr.Tabs
    # Generate's inputs by name: the source, then the settings by `extras_request_from_ui` keyword
    fields: dict[str, Any] = field(default_factory=dict)


def build_extras_tab(services: Services) -> ExtrasTab:
    names = upscaler_names(services)
    # the selected tabs, held in the page (`selected_tab`): Generate reads the tabs the user sees
    mode = selected_tab_holder(SINGLE, "extras_selected_mode")
    resize_mode = selected_tab_holder(SCALE_BY, "extras_selected_resize_mode")

    with gr.Row(equal_height=False, elem_id="extras_row"):
        with gr.Column(scale=1, elem_id="extras_settings"):
            with gr.Tabs(elem_id="mode_extras") as mode_tabs:
                with gr.Tab("Single Image", id="extras_single_tab", elem_id="extras_single_tab") as single_tab:
                    image = gr.Image(
                        label="Source",
                        type="pil",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        height=300,
                        elem_id="extras_image",
                    )
                with gr.Tab(
                    "Batch Process", id="extras_batch_process_tab", elem_id="extras_batch_process_tab"
                ) as batch_tab:
                    batch_files = gr.File(
                        label="Batch Process",
                        file_count="multiple",
                        file_types=["image"],
                        elem_id="extras_image_batch",
                    )
                with gr.Tab(
                    "Batch from Directory", id="extras_batch_directory_tab", elem_id="extras_batch_directory_tab"
                ) as directory_tab:
                    input_dir = gr.Textbox(
                        label="Input directory",
                        placeholder="A directory on the same machine where the server is running.",
                        elem_id="extras_batch_input_dir",
                    )
                    output_dir = gr.Textbox(
                        label="Output directory",
                        placeholder="Leave blank to save images to the default path.",
                        elem_id="extras_batch_output_dir",
                    )
                    show_results = gr.Checkbox(
                        label="Show result images", value=True, elem_id="extras_show_extras_results"
                    )
            with gr.Accordion("Upscale", open=True, elem_id="extras_upscale"):
                upscale_enabled = gr.Checkbox(label="Enable", value=True, elem_id="extras_upscale-checkbox")
                upscaler_1 = gr.Dropdown(label="Upscaler 1", choices=names, value=NONE, elem_id="extras_upscaler_1")
                with gr.Row():
                    upscaler_2 = gr.Dropdown(label="Upscaler 2", choices=names, value=NONE, elem_id="extras_upscaler_2")
                    upscaler_2_visibility = gr.Slider(
                        0, 1, value=0, step=0.001, label="Upscaler 2 visibility", elem_id="extras_upscaler_2_visibility"
                    )
                with gr.Tabs(elem_id="extras_resize_mode"):
                    with gr.Tab("Scale by", id="extras_scale_by_tab", elem_id="extras_scale_by_tab") as scale_by_tab:
                        upscaling_resize = gr.Slider(
                            1, 8, value=4, step=0.05, label="Resize", elem_id="extras_upscaling_resize"
                        )
                    with (
                        gr.Tab("Scale to", id="extras_scale_to_tab", elem_id="extras_scale_to_tab") as scale_to_tab,
                        gr.Row(equal_height=True),
                    ):
                        with gr.Column(scale=4):
                            resize_w = gr.Slider(
                                64, 8192, value=512, step=8, label="Width", elem_id="extras_upscaling_resize_w"
                            )
                            resize_h = gr.Slider(
                                64, 8192, value=512, step=8, label="Height", elem_id="extras_upscaling_resize_h"
                            )
                        switch = gr.Button("⇅", elem_id="upscaling_res_switch_btn", size="sm", min_width=40, scale=0)
                        crop = gr.Checkbox(label="Crop to fit", value=True, elem_id="extras_upscaling_crop", scale=1)
            with gr.Accordion("GFPGAN", open=False, elem_id="extras_gfpgan"):
                gfpgan_enabled = gr.Checkbox(label="Enable", value=False, elem_id="extras_gfpgan-checkbox")
                gfpgan_visibility = gr.Slider(
                    0, 1, value=1, step=0.001, label="Visibility", elem_id="extras_gfpgan_visibility"
                )
            with gr.Accordion("CodeFormer", open=False, elem_id="extras_codeformer"):
                codeformer_enabled = gr.Checkbox(label="Enable", value=False, elem_id="extras_codeformer-checkbox")
                codeformer_visibility = gr.Slider(
                    0, 1, value=1, step=0.001, label="Visibility", elem_id="extras_codeformer_visibility"
                )
                codeformer_weight = gr.Slider(
                    0,
                    1,
                    value=0,
                    step=0.001,
                    label="Weight (0 = maximum effect, 1 = minimum effect)",
                    elem_id="extras_codeformer_weight",
                )
        with gr.Column(scale=1, elem_id="extras_results"):
            generate = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            output_image = gr.Image(
                label="Output",
                show_label=False,
                type="pil",
                format="png",
                interactive=False,
                height=420,
                elem_id="extras_output_image",
            )
            gallery = gr.Gallery(
                label="Output",
                show_label=False,
                columns=4,
                height=420,
                object_fit="contain",
                format="png",
                visible=False,
                elem_id="extras_gallery",
            )
            html_info = gr.HTML("", elem_id="html_info_x")

    # the settings by the converter's keywords, then where the images come from
    settings_fields: dict[str, Any] = {
        "resize_mode": resize_mode,
        "upscale_enabled": upscale_enabled,
        "upscaler_1": upscaler_1,
        "upscaler_2": upscaler_2,
        "upscaler_2_visibility": upscaler_2_visibility,
        "upscaling_resize": upscaling_resize,
        "upscaling_resize_w": resize_w,
        "upscaling_resize_h": resize_h,
        "upscaling_crop": crop,
        "gfpgan_enabled": gfpgan_enabled,
        "gfpgan_visibility": gfpgan_visibility,
        "codeformer_enabled": codeformer_enabled,
        "codeformer_visibility": codeformer_visibility,
        "codeformer_weight": codeformer_weight,
    }
    source_fields: dict[str, Any] = {
        "source_mode": mode,
        "image": image,
        "batch_files": batch_files,
        "input_dir": input_dir,
        "output_dir": output_dir,
        "show_results": show_results,
    }
    fields = {**source_fields, **settings_fields}

    def run(data: dict[Any, Any]) -> tuple[Any, Any, str]:
        values = values_of(fields, data)
        source_mode = int(values["source_mode"])
        names: list[Path] = []
        target: Path | None = None
        if source_mode == DIRECTORY:
            in_dir = server_dir(services.paths, values["input_dir"], "Input directory")
            names = folder_images(services.paths, in_dir, "Input directory")
            out_dir = values["output_dir"]
            default_out = services.options.get("outdir_extras_samples") or "outputs/extras-images"
            target = (
                server_dir(services.paths, out_dir, "Output directory")
                if out_dir and out_dir.strip()
                else services.paths.output_path(str(default_out))
            )
            images = _open_files([str(p) for p in names])
        elif source_mode == BATCH:
            images = _open_files(values["batch_files"])
        else:
            images = [values["image"]] if values["image"] is not None else []
        if not images:
            raise gr.Error("Please upload an image" if source_mode == SINGLE else "No images to process")
        settings = {name: values[name] for name in settings_fields}
        results = run_on_engine(services, extras_request_from_ui(images=images, **settings))
        if target is not None:
            _save_results(results, names, target)
        info = f"<div class='infotext'>{results[0].html_info}</div>" if results else ""
        # one image: shown whole; a batch: a gallery
        if source_mode == SINGLE:
            return gr.update(value=results[0].image, visible=True), gr.update(value=None, visible=False), info
        shown = [r.image for r in results] if (values["show_results"] or source_mode == BATCH) else []
        return gr.update(value=None, visible=False), gr.update(value=shown, visible=True), info

    generate.click(run, inputs_of(fields), [output_image, gallery, html_info], show_progress="minimal")
    set_on_select(single_tab, mode, SINGLE)
    set_on_select(batch_tab, mode, BATCH)
    set_on_select(directory_tab, mode, DIRECTORY)
    set_on_select(scale_by_tab, resize_mode, SCALE_BY)
    set_on_select(scale_to_tab, resize_mode, SCALE_TO)
    switch.click(lambda w, h: (h, w), [resize_w, resize_h], [resize_w, resize_h], queue=False)
    return ExtrasTab(generate, output_image, gallery, html_info, image, mode, mode_tabs, fields)
