"""The img2img tab: sub-tabs img2img, Inpaint (paint the mask with a brush) and Inpaint upload
(image + mask), A1111's controls (labels, UI defaults and elem_ids, a1111.md 10.2) bound to one
converter (`img2img_request_from_ui`) and `EngineService.submit`, with progress polled from the
worker like the txt2img tab."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from PIL import Image

from modules.core.requests import Img2ImgRequest
from modules.engine.samplers import list_samplers
from modules.services import Services
from modules.ui.common import (
    OutputButtons,
    PromptRow,
    build_output_buttons,
    build_prompt_row,
    follow,
    gallery_items,
    result_of,
    submit,
    wire_generate,
)
from modules.ui.txt2img import (
    DEFAULT_SAMPLER,
    _scheduler_choices,
    info_html,
    progress_html,
    token_counter_html,
)

# sub-tab numbers as A1111 counts them (Sketch 1, Inpaint sketch 3 and Batch 5 are not built)
IMG2IMG, INPAINT, INPAINT_UPLOAD = 0, 2, 4
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
FILL_MODES = ("fill", "original", "latent noise", "latent nothing")
INPAINT_AREAS = ("Whole picture", "Only masked")


def _rgb(image: Image.Image) -> Image.Image:
    """An upload as RGB; transparent parts become white (A1111 flattens the same way)."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def editor_value(image: Image.Image) -> dict[str, Any]:
    """An ImageEditor value with `image` as the background and nothing painted (send to inpaint)."""
    return {"background": image, "layers": [], "composite": image}


def editor_image_and_mask(editor: dict[str, Any] | None) -> tuple[Image.Image, Image.Image]:
    """The ImageEditor's value as (image, mask): the background is the image; the mask is white
    wherever any painted layer is not transparent."""
    background = (editor or {}).get("background")
    if background is None:
        raise gr.Error("Please upload an image to inpaint")
    mask = Image.new("L", background.size, 0)
    for layer in (editor or {}).get("layers") or ():
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != mask.size:
            alpha = alpha.resize(mask.size)
        mask.paste(255, mask=alpha.point(lambda a: 255 if a > 0 else 0))
    if mask.getbbox() is None:
        raise gr.Error("Please paint the area to inpaint (the mask is empty)")
    return _rgb(background), mask


def img2img_request_from_ui(
    *,
    mode: int,
    init_image: Image.Image | None,
    inpaint_editor: dict[str, Any] | None,
    inpaint_base: Image.Image | None,
    inpaint_mask: Image.Image | None,
    prompt: str,
    negative_prompt: str,
    styles: list[str] | tuple[str, ...] | None,
    resize_mode: int,
    mask_blur: float,
    mask_mode: int,
    inpainting_fill: int,
    inpaint_full_res: int,
    inpaint_full_res_padding: float,
    sampler_name: str,
    scheduler: str,
    steps: float,
    width: float,
    height: float,
    n_iter: float,
    batch_size: float,
    cfg_scale: float,
    denoising_strength: float,
    seed: float,
) -> Img2ImgRequest:
    """The UI's values as a request; the sub-tab decides where the image and mask come from.
    Raises `gr.Error` when an image (or the mask) is missing."""
    mask: Image.Image | None = None
    if mode == INPAINT:
        image, mask = editor_image_and_mask(inpaint_editor)
    elif mode == INPAINT_UPLOAD:
        if inpaint_base is None:
            raise gr.Error("Please upload an image to inpaint")
        if inpaint_mask is None:
            raise gr.Error("Please upload a mask")
        image, mask = _rgb(inpaint_base), _rgb(inpaint_mask).convert("L")
    else:
        if init_image is None:
            raise gr.Error("Please upload an image for img2img")
        image = _rgb(init_image)
    return Img2ImgRequest(
        prompt=prompt or "",
        negative_prompt=negative_prompt or "",
        styles=tuple(styles or ()),
        init_images=(image,),
        mask=mask,
        resize_mode=int(resize_mode),
        mask_blur=int(mask_blur),
        inpainting_mask_invert=int(mask_mode),
        inpainting_fill=int(inpainting_fill),
        inpaint_full_res=bool(inpaint_full_res),
        inpaint_full_res_padding=int(inpaint_full_res_padding),
        sampler_name=sampler_name or None,
        scheduler=scheduler or None,
        steps=int(steps),
        width=int(width),
        height=int(height),
        n_iter=int(n_iter),
        batch_size=int(batch_size),
        cfg_scale=float(cfg_scale),
        denoising_strength=float(denoising_strength),
        seed=int(seed),
    )


# the converter's keyword names, in the order the tab passes its input components
UI_FIELDS = (
    "mode",
    "init_image",
    "inpaint_editor",
    "inpaint_base",
    "inpaint_mask",
    "prompt",
    "negative_prompt",
    "styles",
    "resize_mode",
    "mask_blur",
    "mask_mode",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "sampler_name",
    "scheduler",
    "steps",
    "width",
    "height",
    "n_iter",
    "batch_size",
    "cfg_scale",
    "denoising_strength",
    "seed",
)


# sub-tab number -> the gr.Tab id in `mode_img2img`
SUBTAB_IDS = {
    IMG2IMG: "img2img_img2img_tab",
    INPAINT: "img2img_inpaint_tab",
    INPAINT_UPLOAD: "img2img_inpaint_upload_tab",
}


@dataclass
class Img2ImgTab:
    row: PromptRow
    gallery: gr.Gallery
    html_info: gr.HTML
    generation_info: gr.Textbox
    output_buttons: OutputButtons
    init_image: gr.Image
    inpaint_editor: gr.ImageEditor
    mode: gr.State
    mode_tabs: gr.Tabs
    inpaint_controls: gr.Group
    # the input components by `UI_FIELDS` name (the send-to buttons fill them)
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def mode_outputs(self) -> list[Any]:
        """The components `select_mode` updates (an event's outputs)."""
        return [self.mode, self.mode_tabs, self.inpaint_controls]

    def select_mode(self, number: int) -> dict[Any, Any]:
        """Updates that switch to sub-tab `number`, as clicking its tab does (call it in an event
        handler only: it makes a `gr.Tabs` update)."""
        return {
            self.mode: number,
            self.mode_tabs: gr.Tabs(selected=SUBTAB_IDS[number]),
            self.inpaint_controls: gr.update(visible=number != IMG2IMG),
        }


def build_img2img_tab(services: Services) -> Img2ImgTab:
    samplers = [s.name for s in list_samplers() if s.available]
    sampler_default = DEFAULT_SAMPLER if DEFAULT_SAMPLER in samplers else (samplers[0] if samplers else None)
    mode = gr.State(IMG2IMG)

    row = build_prompt_row("img2img", services)
    prompt, negative, style_dropdown = row.prompt, row.negative, row.styles

    with gr.Row(elem_id="img2img_settings_and_results", equal_height=False):
        with gr.Column(scale=1, elem_id="img2img_settings"):
            with gr.Tabs(elem_id="mode_img2img") as mode_tabs:
                with gr.Tab("img2img", id="img2img_img2img_tab", elem_id="img2img_img2img_tab") as img2img_tab:
                    init_image = gr.Image(
                        label="Image for img2img",
                        type="pil",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        height=360,
                        elem_id="img2img_image",
                    )
                with gr.Tab("Inpaint", id="img2img_inpaint_tab", elem_id="img2img_inpaint_tab") as inpaint_tab:
                    inpaint_editor = gr.ImageEditor(
                        label="Image for inpainting with mask",
                        type="pil",
                        image_mode="RGBA",
                        sources=["upload", "clipboard"],
                        height=360,
                        brush=gr.Brush(default_size="auto", colors=[("#ffffff", 0.7)], color_mode="fixed"),
                        eraser=gr.Eraser(default_size="auto"),
                        layers=False,
                        transforms=(),
                        format="png",
                        elem_id="img2maskimg",
                    )
                with gr.Tab(
                    "Inpaint upload", id="img2img_inpaint_upload_tab", elem_id="img2img_inpaint_upload_tab"
                ) as upload_tab:
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
            resize_mode = gr.Radio(
                label="Resize mode",
                choices=list(RESIZE_MODES),
                value=RESIZE_MODES[0],
                type="index",
                elem_id="resize_mode",
            )
            with gr.Group(visible=False, elem_id="inpaint_controls") as inpaint_controls:
                mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
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
                    label="Schedule type", choices=_scheduler_choices(), value="Automatic", elem_id="img2img_scheduler"
                )
                steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="img2img_steps")
            with gr.Row(equal_height=True):
                with gr.Column(scale=4, min_width=200):
                    width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="img2img_width")
                    height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="img2img_height")
                swap = gr.Button("⇅", elem_id="img2img_res_switch_btn", size="sm", min_width=40, scale=0)
                with gr.Column(scale=2, min_width=160):
                    n_iter = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id="img2img_batch_count")
                    batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="img2img_batch_size")
            cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id="img2img_cfg_scale")
            denoise = gr.Slider(
                0, 1, value=0.75, step=0.01, label="Denoising strength", elem_id="img2img_denoising_strength"
            )
            with gr.Row(equal_height=True, elem_id="img2img_seed_row"):
                seed = gr.Number(label="Seed", value=-1, precision=0, elem_id="img2img_seed", scale=4)
                random_seed = gr.Button("⚄", elem_id="img2img_random_seed", size="sm", min_width=40, scale=0)
                reuse_seed = gr.Button("♻️", elem_id="img2img_reuse_seed", size="sm", min_width=40, scale=0)
        with gr.Column(scale=1, elem_id="img2img_results"):
            progress = gr.HTML("", elem_id="img2img_progress")
            gallery = gr.Gallery(
                label="Output",
                show_label=False,
                columns=4,
                height=420,
                object_fit="contain",
                format="png",
                interactive=False,
                elem_id="img2img_gallery",
            )
            output_buttons = build_output_buttons("img2img")
            html_info = gr.HTML("", elem_id="html_info_img2img")
            generation_info = gr.Textbox(
                label="Generation info", visible="hidden", elem_id="generation_info_img2img", interactive=False
            )
    last_seed = gr.State(-1)

    inputs = [
        mode,
        init_image,
        inpaint_editor,
        inpaint_base,
        inpaint_mask,
        prompt,
        negative,
        style_dropdown,
        resize_mode,
        mask_blur,
        mask_mode,
        inpainting_fill,
        inpaint_full_res,
        padding,
        sampler,
        scheduler,
        steps,
        width,
        height,
        n_iter,
        batch_size,
        cfg,
        denoise,
        seed,
    ]
    assert len(inputs) == len(UI_FIELDS)

    def run(*values: Any) -> Iterator[tuple[Any, ...]]:
        request = img2img_request_from_ui(**dict(zip(UI_FIELDS, values, strict=True)))
        job = submit(services, request)
        yield progress_html(services.worker.progress(with_preview=False)), gr.skip(), "", "", gr.skip()
        for shown, preview in follow(services, job, progress_html):
            yield shown, preview, gr.skip(), gr.skip(), gr.skip()
        result = result_of(job)
        images, info = gallery_items(services, request, result)
        yield "", images, info_html(result), info, (result.seeds[0] if result.seeds else -1)

    def check(*values: Any) -> None:
        """User errors (no image, empty mask) before the buttons change: an error here leaves
        Generate as it is."""
        img2img_request_from_ui(**dict(zip(UI_FIELDS, values, strict=True)))

    wire_generate(services, row, run, inputs, [progress, gallery, html_info, generation_info, last_seed], check=check)

    def select_mode(number: int) -> Callable[[], tuple[int, Any]]:
        return lambda: (number, gr.update(visible=number != IMG2IMG))

    img2img_tab.select(select_mode(IMG2IMG), None, [mode, inpaint_controls], queue=False)
    inpaint_tab.select(select_mode(INPAINT), None, [mode, inpaint_controls], queue=False)
    upload_tab.select(select_mode(INPAINT_UPLOAD), None, [mode, inpaint_controls], queue=False)

    swap.click(lambda w, h: (h, w), [width, height], [width, height], queue=False)
    random_seed.click(lambda: -1, None, seed, queue=False)
    reuse_seed.click(lambda s: s, last_seed, seed, queue=False)

    def counter(positive: bool) -> Callable[[str, float], str]:
        return lambda text, n: token_counter_html(text, n, is_positive=positive)

    prompt.change(counter(True), [prompt, steps], row.token_counter, queue=False, show_progress="hidden")
    negative.change(counter(False), [negative, steps], row.neg_counter, queue=False, show_progress="hidden")

    fields = dict(zip(UI_FIELDS, inputs, strict=True))
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
    )
