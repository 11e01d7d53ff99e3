"""The img2img tab: layout and wiring. A1111's six sub-tabs (img2img, Sketch, Inpaint, Inpaint
sketch, Inpaint upload, Batch) and controls (labels, UI defaults and elem_ids, a1111.md 10.2),
named by the keywords of one converter (`img2img_request_from_ui`) and submitted to the engine
(`services.engine.submit`), progress followed through the job's handle like the txt2img tab.

The pieces live next door: `img2img_modes` (sub-tab numbers and ids), `img2img_editor` (editor
values -> image and mask, copy image to), `img2img_request` (the converter, sizes) and
`img2img_batch` (the Batch sub-tab: one job per image)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from gradio.context import Context

from modules.services import Services
from modules.ui.common import (
    OutputButtons,
    PromptRow,
    build_prompt_row,
    build_results_column,
    build_seed_section,
    run_generation,
    sampler_choices,
    scheduler_choices,
    wire_generate,
)
from modules.ui.controlnet import ControlNetSection, add_send_button, build_controlnet_section
from modules.ui.extra_networks import extra_networks_tabs
from modules.ui.img2img_batch import BATCH_FROM_DIR, BATCH_UPLOAD, batch_plan, run_batch
from modules.ui.img2img_editor import COPY_TARGETS, image_of_mode, image_to_copy
from modules.ui.img2img_interrogate import InterrogateButtons, add_interrogate_buttons, wire_interrogate_buttons
from modules.ui.img2img_modes import (
    BATCH,
    IMG2IMG,
    INPAINT,
    INPAINT_MODES,
    INPAINT_SKETCH,
    INPAINT_UPLOAD,
    SKETCH,
    SUBTAB_IDS,
)
from modules.ui.img2img_request import (
    RESIZE_BY,
    RESIZE_TO,
    SCRIPT_FIELDS,
    img2img_request_from_ui,
    resolution_preview,
)
from modules.ui.named_inputs import inputs_of, values_of
from modules.ui.refiner import build_refiner
from modules.ui.scripts import ScriptSection, build_script_section
from modules.ui.selected_tab import TabHolder, selected_tab_holder, set_on_select
from modules.ui.token_counter import wire_token_counters

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
FILL_MODES = ("fill", "original", "latent noise", "latent nothing")
INPAINT_AREAS = ("Whole picture", "Only masked")
SKETCH_COLORS = ("#ffffff", "#000000", "#ff0000", "#ffa500", "#ffff00", "#00ff00", "#0000ff", "#800080")


def is_instruct_pix2pix(services: Services) -> bool:
    """Whether the active checkpoint is an instruct-pix2pix ("edit") model (Image CFG Scale)."""
    return services.engine.model_status().variant == "ip2p"


@dataclass
class Img2ImgTab:
    row: PromptRow
    gallery: gr.Gallery
    html_info: gr.HTML
    generation_info: gr.Textbox
    output_buttons: OutputButtons
    init_image: gr.Image
    inpaint_editor: gr.ImageEditor
    mode: TabHolder  # the selected sub-tab's number (`img2img_modes`)
    mode_tabs: gr.Tabs
    inpaint_controls: gr.Group
    # the input components by converter keyword, plus "subseed_show" and the ControlNet units'
    # (`controlnet_<i>_<name>`): send-to and paste fill them
    fields: dict[str, Any] = field(default_factory=dict)
    mask_alpha: gr.Slider | None = None
    sketch: gr.ImageEditor | None = None
    inpaint_sketch: gr.ImageEditor | None = None
    image_cfg_scale: gr.Slider | None = None
    # the Batch sub-tab's components by `batch_plan` keyword
    batch_fields: dict[str, Any] = field(default_factory=dict)
    scripts: ScriptSection | None = None
    interrogate: InterrogateButtons | None = None  # 📎 / 📦
    controlnet: ControlNetSection | None = None

    @property
    def mode_outputs(self) -> list[Any]:
        """The components `select_mode` updates (an event's outputs)."""
        outputs: list[Any] = [self.mode, self.mode_tabs, self.inpaint_controls]
        return outputs + ([self.mask_alpha] if self.mask_alpha is not None else [])

    def select_mode(self, number: int) -> dict[Any, Any]:
        """Updates that switch to sub-tab `number`, as clicking its tab does (call it in an event
        handler only: it makes a `gr.Tabs` update)."""
        return mode_switch_updates(self.mode, self.mode_tabs, self.inpaint_controls, self.mask_alpha, number)


def mask_controls_visible(number: int) -> tuple[Any, Any]:
    """(the mask options, "Mask transparency") shown or hidden for sub-tab `number`: the mask
    options in the inpaint sub-tabs, the transparency in Inpaint sketch only."""
    return gr.update(visible=number in INPAINT_MODES), gr.update(visible=number == INPAINT_SKETCH)


def mode_switch_updates(
    mode: TabHolder, mode_tabs: gr.Tabs, inpaint_controls: gr.Group, mask_alpha: gr.Slider | None, number: int
) -> dict[Any, Any]:
    """An event's updates that select sub-tab `number` and show its mask controls in the same
    answer (the holder's `change` would show them one round trip later)."""
    controls, alpha = mask_controls_visible(number)
    updates: dict[Any, Any] = {
        mode: number,
        mode_tabs: gr.Tabs(selected=SUBTAB_IDS[number]),
        inpaint_controls: controls,
    }
    if mask_alpha is not None:
        updates[mask_alpha] = alpha
    return updates


def _copy_row(name: str) -> dict[int, gr.Button]:
    """A sub-tab's "Copy image to:" row (`#img2img_copy_to_<name>`)."""
    with gr.Row(elem_id=f"img2img_copy_to_{name}", elem_classes="img2img-copy-to", equal_height=True):
        gr.HTML("Copy image to:", elem_id=f"img2img_label_copy_to_{name}", elem_classes="img2img-copy-label")
        return {target: gr.Button(text, size="sm", min_width=40, scale=0) for target, text, _ in COPY_TARGETS}


def _editor(label: str, elem_id: str, brush: gr.Brush) -> gr.ImageEditor:
    return gr.ImageEditor(
        label=label,
        type="pil",
        image_mode="RGBA",
        sources=["upload", "clipboard"],
        height=360,
        brush=brush,
        eraser=gr.Eraser(default_size="auto"),
        layers=False,
        transforms=(),
        format="png",
        elem_id=elem_id,
    )


def _sketch_brush(services: Services, option: str) -> gr.Brush:
    default = services.options.get(option) if option in services.options else SKETCH_COLORS[0]
    color = str(default or SKETCH_COLORS[0])
    colors = [color, *[c for c in SKETCH_COLORS if c != color.lower()]]
    return gr.Brush(default_size="auto", colors=list(colors), default_color=color, color_mode="defaults")


@dataclass
class ImageSources:
    """The six sub-tabs (`mode_img2img`) and their inputs: where a request's image comes from."""

    mode_tabs: gr.Tabs
    subtabs: dict[int, gr.Tab]
    copy_buttons: dict[int, dict[int, gr.Button]]  # source sub-tab -> target sub-tab -> button
    init_image: gr.Image
    sketch: gr.ImageEditor
    inpaint_editor: gr.ImageEditor
    inpaint_sketch: gr.ImageEditor
    inpaint_base: gr.Image
    inpaint_mask: gr.Image
    batch_upload_tab: gr.Tab
    batch_dir_tab: gr.Tab
    batch_files: gr.File
    batch_input_dir: gr.Textbox
    batch_output_dir: gr.Textbox
    batch_mask_dir: gr.Textbox


def _subtab(label: str, number: int) -> gr.Tab:
    return gr.Tab(label, id=SUBTAB_IDS[number], elem_id=SUBTAB_IDS[number])


def _build_image_sources(services: Services) -> ImageSources:
    """img2img, Sketch, Inpaint, Inpaint sketch, Inpaint upload and Batch, with A1111's ids."""
    copy_buttons: dict[int, dict[int, gr.Button]] = {}
    subtabs: dict[int, gr.Tab] = {}
    with gr.Tabs(elem_id="mode_img2img") as mode_tabs:
        with _subtab("img2img", IMG2IMG) as subtabs[IMG2IMG]:
            init_image = gr.Image(
                label="Image for img2img",
                type="pil",
                image_mode=None,
                sources=["upload", "clipboard"],
                height=360,
                elem_id="img2img_image",
            )
            copy_buttons[IMG2IMG] = _copy_row("img2img")
        with _subtab("Sketch", SKETCH) as subtabs[SKETCH]:
            sketch = _editor(
                "Image for img2img",
                "img2img_sketch",
                _sketch_brush(services, "img2img_sketch_default_brush_color"),
            )
            copy_buttons[SKETCH] = _copy_row("sketch")
        with _subtab("Inpaint", INPAINT) as subtabs[INPAINT]:
            inpaint_editor = _editor(
                "Image for inpainting with mask",
                "img2maskimg",
                gr.Brush(default_size="auto", colors=[("#ffffff", 0.7)], color_mode="fixed"),
            )
            copy_buttons[INPAINT] = _copy_row("inpaint")
        with _subtab("Inpaint sketch", INPAINT_SKETCH) as subtabs[INPAINT_SKETCH]:
            inpaint_sketch = _editor(
                "Color sketch inpainting",
                "inpaint_sketch",
                _sketch_brush(services, "img2img_inpaint_sketch_default_brush_color"),
            )
            copy_buttons[INPAINT_SKETCH] = _copy_row("inpaint_sketch")
        with _subtab("Inpaint upload", INPAINT_UPLOAD) as subtabs[INPAINT_UPLOAD]:
            inpaint_base = gr.Image(
                label="Image for img2img",
                type="pil",
                image_mode=None,
                sources=["upload", "clipboard"],
                height=240,
                elem_id="img_inpaint_base",
            )
            inpaint_mask = gr.Image(
                label="Mask",
                type="pil",
                image_mode=None,
                sources=["upload", "clipboard"],
                height=240,
                elem_id="img_inpaint_mask",
            )
        with (
            _subtab("Batch", BATCH) as subtabs[BATCH],
            gr.Tabs(elem_id="img2img_batch_source"),
        ):
            with gr.Tab(
                "Upload", id="img2img_batch_upload_tab", elem_id="img2img_batch_upload_tab"
            ) as batch_upload_tab:
                batch_files = gr.File(
                    label="Files",
                    file_count="multiple",
                    file_types=["image"],
                    elem_id="img2img_batch_upload",
                )
            with gr.Tab(
                "From directory", id="img2img_batch_from_dir_tab", elem_id="img2img_batch_from_dir_tab"
            ) as batch_dir_tab:
                gr.HTML(
                    "<p class='sdw-hint'>Process images in a folder on the server: folders are relative "
                    "to the data dir and must be inside it or inside the outputs folder. Leave the "
                    "output directory empty to save to the usual outputs folder. With a mask "
                    "directory, each image is inpainted with the mask of the same name.</p>",
                    elem_id="img2img_batch_hint",
                )
                batch_input_dir = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir")
                batch_output_dir = gr.Textbox(label="Output directory", elem_id="img2img_batch_output_dir")
                batch_mask_dir = gr.Textbox(
                    label="Inpaint batch mask directory (required for inpaint batch processing only)",
                    elem_id="img2img_batch_inpaint_mask_dir",
                )
    return ImageSources(
        mode_tabs,
        subtabs,
        copy_buttons,
        init_image,
        sketch,
        inpaint_editor,
        inpaint_sketch,
        inpaint_base,
        inpaint_mask,
        batch_upload_tab,
        batch_dir_tab,
        batch_files,
        batch_input_dir,
        batch_output_dir,
        batch_mask_dir,
    )


def build_img2img_tab(services: Services) -> Img2ImgTab:
    parent_tab = Context.block  # the top-level img2img tab this is built in
    root = Context.root_block
    samplers, sampler_default = sampler_choices()
    # the selected sub-tabs, held in the page (`selected_tab`): a click reads the tab the user sees
    mode = selected_tab_holder(IMG2IMG, "img2img_selected_mode")
    selected_scale_tab = selected_tab_holder(RESIZE_TO, "img2img_selected_scale_tab")
    batch_source = selected_tab_holder(BATCH_UPLOAD, "img2img_selected_batch_source")

    row = build_prompt_row("img2img", services)
    prompt, negative, style_dropdown = row.prompt, row.negative, row.styles
    interrogate = add_interrogate_buttons(row)

    # the settings go into the "Generation" tab, the extra-network tabs next to it (A1111)
    with (
        extra_networks_tabs("img2img", services, prompt, negative),
        gr.Row(elem_id="img2img_settings_and_results", equal_height=False),
    ):
        with gr.Column(scale=1, elem_id="img2img_settings"):
            sources = _build_image_sources(services)
            mode_tabs, subtabs, copy_buttons = sources.mode_tabs, sources.subtabs, sources.copy_buttons
            init_image, sketch, inpaint_editor = sources.init_image, sources.sketch, sources.inpaint_editor
            inpaint_sketch, inpaint_base, inpaint_mask = (
                sources.inpaint_sketch,
                sources.inpaint_base,
                sources.inpaint_mask,
            )
            batch_files, batch_input_dir = sources.batch_files, sources.batch_input_dir
            batch_output_dir, batch_mask_dir = sources.batch_output_dir, sources.batch_mask_dir
            resize_mode = gr.Radio(
                label="Resize mode",
                choices=list(RESIZE_MODES),
                value=RESIZE_MODES[0],
                type="index",
                elem_id="resize_mode",
            )
            with gr.Group(visible=False, elem_id="inpaint_controls") as inpaint_controls:
                with gr.Row():
                    mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
                    mask_alpha = gr.Slider(
                        0, 100, value=0, step=1, label="Mask transparency", visible=False, elem_id="img2img_mask_alpha"
                    )
                with gr.Row():
                    mask_mode = gr.Radio(
                        label="Mask mode",
                        choices=list(MASK_MODES),
                        value=MASK_MODES[0],
                        type="index",
                        elem_id="img2img_mask_mode",
                    )
                    inpainting_fill = gr.Radio(
                        label="Masked content",
                        choices=list(FILL_MODES),
                        value="original",
                        type="index",
                        elem_id="img2img_inpainting_fill",
                    )
                with gr.Row():
                    inpaint_full_res = gr.Radio(
                        label="Inpaint area",
                        choices=list(INPAINT_AREAS),
                        value=INPAINT_AREAS[0],
                        type="index",
                        elem_id="img2img_inpaint_full_res",
                    )
                    padding = gr.Slider(
                        0,
                        256,
                        value=32,
                        step=4,
                        label="Only masked padding, pixels",
                        elem_id="img2img_inpaint_full_res_padding",
                    )
            with gr.Row(elem_id="img2img_sampler_row"):
                sampler = gr.Dropdown(
                    label="Sampling method", choices=samplers, value=sampler_default, elem_id="img2img_sampling"
                )
                scheduler = gr.Dropdown(
                    label="Schedule type", choices=scheduler_choices(), value="Automatic", elem_id="img2img_scheduler"
                )
                steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="img2img_steps")
            refiner = build_refiner("img2img", services)
            with gr.Row(equal_height=False, elem_id="img2img_dimensions_row"):
                with gr.Column(scale=4, min_width=240), gr.Tabs(elem_id="img2img_tabs_resize"):
                    with (
                        gr.Tab("Resize to", id="img2img_tab_resize_to", elem_id="img2img_tab_resize_to") as to_tab,
                        gr.Row(equal_height=True),
                    ):
                        with gr.Column(scale=4, min_width=200):
                            width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="img2img_width")
                            height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="img2img_height")
                        with gr.Column(scale=0, min_width=48, elem_id="img2img_dimensions_tools"):
                            swap = gr.Button("⇅", elem_id="img2img_res_switch_btn", size="sm", min_width=40)
                            detect = gr.Button("📐", elem_id="img2img_detect_image_size_btn", size="sm", min_width=40)
                    with gr.Tab("Resize by", id="img2img_tab_resize_by", elem_id="img2img_tab_resize_by") as by_tab:
                        scale_by = gr.Slider(0.05, 4, value=1, step=0.05, label="Scale", elem_id="img2img_scale")
                        scale_preview = gr.HTML("", elem_id="img2img_scale_resolution_preview")
                with gr.Column(scale=2, min_width=160, elem_id="img2img_column_batch"):
                    n_iter = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id="img2img_batch_count")
                    batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="img2img_batch_size")
            with gr.Row(elem_id="img2img_cfg_row"):
                cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id="img2img_cfg_scale")
                image_cfg = gr.Slider(
                    0,
                    3,
                    value=1.5,
                    step=0.05,
                    label="Image CFG Scale",
                    visible=is_instruct_pix2pix(services),
                    elem_id="img2img_image_cfg_scale",
                )
            denoise = gr.Slider(
                0, 1, value=0.75, step=0.01, label="Denoising strength", elem_id="img2img_denoising_strength"
            )
            seeds = build_seed_section("img2img")
            seed, extra, subseed = seeds.seed, seeds.extra, seeds.subseed
            subseed_strength, resize_w, resize_h = seeds.subseed_strength, seeds.resize_w, seeds.resize_h
            controlnet = build_controlnet_section(services, is_img2img=True, size=(width, height))
            scripts = build_script_section(services, is_img2img=True)
        results = build_results_column("img2img")
    progress, gallery, html_info = results.progress, results.gallery, results.html_info
    generation_info, output_buttons = results.generation_info, results.output_buttons
    add_send_button(controlnet, output_buttons.send_to_extras)  # "Send to ControlNet" after 📐
    last_seeds = seeds.last_seeds

    # the controls by the converter's keywords (and the Batch sub-tab's by `batch_plan`'s): the
    # handlers get their values by these names
    request_fields: dict[str, Any] = {
        "mode": mode,
        "init_image": init_image,
        "sketch": sketch,
        "inpaint_editor": inpaint_editor,
        "inpaint_sketch": inpaint_sketch,
        "inpaint_base": inpaint_base,
        "inpaint_mask": inpaint_mask,
        "mask_alpha": mask_alpha,
        "prompt": prompt,
        "negative_prompt": negative,
        "styles": style_dropdown,
        "resize_mode": resize_mode,
        "mask_blur": mask_blur,
        "inpainting_mask_invert": mask_mode,
        "inpainting_fill": inpainting_fill,
        "inpaint_full_res": inpaint_full_res,
        "inpaint_full_res_padding": padding,
        "sampler_name": sampler,
        "scheduler": scheduler,
        "steps": steps,
        **refiner.fields,
        "selected_scale_tab": selected_scale_tab,
        "width": width,
        "height": height,
        "scale_by": scale_by,
        "n_iter": n_iter,
        "batch_size": batch_size,
        "cfg_scale": cfg,
        "image_cfg_scale": image_cfg,
        "denoising_strength": denoise,
        "seed": seed,
        "subseed": subseed,
        "subseed_strength": subseed_strength,
        "seed_resize_from_w": resize_w,
        "seed_resize_from_h": resize_h,
    }
    batch_fields: dict[str, Any] = {
        "batch_source": batch_source,
        "batch_files": batch_files,
        "batch_input_dir": batch_input_dir,
        "batch_output_dir": batch_output_dir,
        "batch_inpaint_mask_dir": batch_mask_dir,
    }

    def split(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the converter's values, `batch_plan`'s values)."""
        return {k: values[k] for k in request_fields}, {k: values[k] for k in batch_fields}

    def run(values: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
        ui, batch = split(values)
        if int(ui["mode"]) == BATCH:
            request_fields_of_scripts = {**scripts.request_fields(values), **controlnet.request_fields(values)}
            with_scripts = {**ui, SCRIPT_FIELDS: request_fields_of_scripts}
            yield from run_batch(services, with_scripts, batch_plan(services, **batch), row.stop_requested)
            return
        request = scripts.apply(img2img_request_from_ui(**ui), values)
        yield from run_generation(services, controlnet.apply(request, values))

    def check(values: dict[str, Any]) -> None:
        """User errors (no image, empty mask, a refused folder) before the buttons change: an
        error here leaves Generate as it is."""
        ui, batch = split(values)
        controlnet.request_fields(values)  # a unit enabled without its image
        if int(ui["mode"]) == BATCH:
            batch_plan(services, **batch)
        else:
            img2img_request_from_ui(**ui)

    outputs = [progress, gallery, html_info, generation_info, last_seeds]
    generate_fields = {**request_fields, **batch_fields, **scripts.fields, **controlnet.fields}
    wire_generate(services, row, run, generate_fields, outputs, check=check)

    # -- sub-tabs, copy image to, resize ---------------------------------------------------
    for number, subtab in subtabs.items():
        set_on_select(subtab, mode, number)
    set_on_select(sources.batch_upload_tab, batch_source, BATCH_UPLOAD)
    set_on_select(sources.batch_dir_tab, batch_source, BATCH_FROM_DIR)

    mode.change(
        lambda number: mask_controls_visible(int(number or IMG2IMG)),
        mode,
        [inpaint_controls, mask_alpha],
        queue=False,
        show_progress="hidden",
    )

    # the image each sub-tab shows, by `image_of_mode`'s parameter names
    image_fields: dict[str, Any] = {
        "mode": mode,
        "init_image": init_image,
        "sketch": sketch,
        "inpaint_editor": inpaint_editor,
        "inpaint_sketch": inpaint_sketch,
        "inpaint_base": inpaint_base,
    }
    wire_interrogate_buttons(services, interrogate, image_fields, batch_fields, prompt)
    targets = {IMG2IMG: init_image, SKETCH: sketch, INPAINT: inpaint_editor, INPAINT_SKETCH: inpaint_sketch}
    mode_updates = [mode, mode_tabs, inpaint_controls, mask_alpha]

    def copy_image(source: int, target: int) -> Callable[[Any], dict[Any, Any]]:
        def copy(value: Any) -> dict[Any, Any]:
            switch = mode_switch_updates(mode, mode_tabs, inpaint_controls, mask_alpha, target)
            return {targets[target]: image_to_copy(source, value, target), **switch}

        return copy

    for source, buttons in copy_buttons.items():
        for target, button in buttons.items():
            button.click(copy_image(source, target), targets[source], [targets[target], *mode_updates], queue=False)

    def current_size(data: dict[Any, Any]) -> tuple[int, int] | None:
        values = values_of(image_fields, data)
        values["mode"] = int(values["mode"])
        image = image_of_mode(**values)
        return None if image is None else (image.width, image.height)

    def detect_size(data: dict[Any, Any]) -> tuple[int, int]:
        size = current_size(data)
        if size is None:
            raise gr.Error("There is no image in this sub-tab to take the size from")
        # within the sliders' range (64..2048)
        return min(max(size[0], 64), 2048), min(max(size[1], 64), 2048)

    preview_fields = {**image_fields, "scale_by": scale_by}

    def preview(data: dict[Any, Any]) -> str:
        return resolution_preview(current_size(data), float(values_of(preview_fields, data)["scale_by"]))

    gr.on(
        [
            scale_by.change,
            by_tab.select,
            mode.change,
            init_image.change,
            # not the editors' `change`: reading an editor (an input here) makes it upload its
            # layers, which is a change, so the preview re-ran every second after one stroke
            *(event for editor in (sketch, inpaint_editor, inpaint_sketch) for event in (editor.upload, editor.clear)),
            inpaint_base.change,
        ],
        preview,
        inputs_of(preview_fields),
        scale_preview,
        queue=False,
        show_progress="hidden",
    )
    set_on_select(to_tab, selected_scale_tab, RESIZE_TO)
    set_on_select(by_tab, selected_scale_tab, RESIZE_BY)
    detect.click(detect_size, inputs_of(image_fields), [width, height], queue=False)
    swap.click(lambda w, h: (h, w), [width, height], [width, height], queue=False)

    # -- Image CFG Scale only for instruct-pix2pix models -----------------------------------
    def image_cfg_visibility() -> Any:
        return gr.update(visible=is_instruct_pix2pix(services))

    triggers = [root.load] if isinstance(root, gr.Blocks) else []
    if isinstance(parent_tab, gr.Tab):
        triggers.append(parent_tab.select)
    if triggers:
        gr.on(triggers, image_cfg_visibility, None, image_cfg, queue=False, show_progress="hidden")

    wire_token_counters(services, row, steps)

    # the ControlNet units' fields too: a paste restores them
    fields = {**request_fields, "subseed_show": extra, **controlnet.paste_fields}
    return Img2ImgTab(
        row,
        gallery,
        html_info,
        generation_info,
        output_buttons,
        init_image,
        inpaint_editor,
        mode,
        mode_tabs,
        inpaint_controls,
        fields,
        mask_alpha=mask_alpha,
        sketch=sketch,
        inpaint_sketch=inpaint_sketch,
        image_cfg_scale=image_cfg,
        batch_fields=batch_fields,
        scripts=scripts,
        interrogate=interrogate,
        controlnet=controlnet,
    )
