"""The img2img tab: A1111's six sub-tabs (img2img, Sketch, Inpaint, Inpaint sketch, Inpaint
upload, Batch), its controls (labels, UI defaults and elem_ids, a1111.md 10.2) bound to one
converter (`img2img_request_from_ui`) and `EngineService.submit`, with progress polled from the
worker like the txt2img tab. Batch runs one request per input image, one job after another."""

from __future__ import annotations

import dataclasses
import html
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.context import Context
from PIL import Image

from modules.core.atomic import atomic_write_bytes
from modules.core.requests import Img2ImgRequest
from modules.core.results import Result
from modules.engine.outputs import encode_image
from modules.engine.samplers import list_samplers
from modules.services import Services
from modules.ui.common import (
    OutputButtons,
    PromptRow,
    build_prompt_row,
    build_results_column,
    build_seed_section,
    follow,
    gallery_items,
    open_image,
    result_of,
    submit,
    wire_generate,
)
from modules.ui.extras import IMAGE_SUFFIXES, server_dir
from modules.ui.token_counter import wire_token_counters
from modules.ui.txt2img import (
    DEFAULT_SAMPLER,
    _scheduler_choices,
    info_html,
    progress_html,
)

# sub-tab numbers as A1111 counts them (its `mode` / `tabnum`)
IMG2IMG, SKETCH, INPAINT, INPAINT_SKETCH, INPAINT_UPLOAD, BATCH = 0, 1, 2, 3, 4, 5
INPAINT_MODES = (INPAINT, INPAINT_SKETCH, INPAINT_UPLOAD, BATCH)  # where the inpaint controls show
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
FILL_MODES = ("fill", "original", "latent noise", "latent nothing")
INPAINT_AREAS = ("Whole picture", "Only masked")
RESIZE_TO, RESIZE_BY = 0, 1  # the `#img2img_tabs_resize` tabs
BATCH_UPLOAD, BATCH_FROM_DIR = "upload", "from dir"  # the `#img2img_batch_source` tabs
SKETCH_COLORS = ("#ffffff", "#000000", "#ff0000", "#ffa500", "#ffff00", "#00ff00", "#0000ff", "#800080")

EditorValue = Mapping[str, Any]


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


def _layers(editor: EditorValue | None, size: tuple[int, int]) -> list[Image.Image]:
    """The editor's painted layers as RGBA images of `size`."""
    out = []
    for layer in (editor or {}).get("layers") or ():
        if layer is None:
            continue
        rgba = layer.convert("RGBA")
        out.append(rgba if rgba.size == size else rgba.resize(size))
    return out


def painted_mask(editor: EditorValue | None, size: tuple[int, int]) -> Image.Image:
    """White wherever any painted layer is not transparent ("L", `size`)."""
    mask = Image.new("L", size, 0)
    for layer in _layers(editor, size):
        mask.paste(255, mask=layer.getchannel("A").point(lambda a: 255 if a > 0 else 0))
    return mask


def editor_composite(editor: EditorValue | None, opacity: float = 1.0) -> Image.Image | None:
    """What the editor shows, as RGB: the background with the painted layers over it (their alpha
    scaled by `opacity`); the editor's own composite when the strokes are fully opaque. None when
    no image was uploaded."""
    background = (editor or {}).get("background")
    if background is None:
        return None
    composite = (editor or {}).get("composite")
    if opacity >= 1.0 and composite is not None:
        return _rgb(composite if composite.size == background.size else composite.resize(background.size))
    canvas = _rgb(background).convert("RGBA")
    for layer in _layers(editor, canvas.size):
        if opacity < 1.0:
            layer.putalpha(layer.getchannel("A").point(lambda a: round(a * max(opacity, 0.0))))
        canvas.alpha_composite(layer)
    return canvas.convert("RGB")


def editor_image_and_mask(editor: EditorValue | None) -> tuple[Image.Image, Image.Image]:
    """The Inpaint editor's value as (image, mask): the background is the image; the mask is white
    wherever any painted layer is not transparent."""
    background = (editor or {}).get("background")
    if background is None:
        raise gr.Error("Please upload an image to inpaint")
    mask = painted_mask(editor, background.size)
    if mask.getbbox() is None:
        raise gr.Error("Please paint the area to inpaint (the mask is empty)")
    return _rgb(background), mask


def inpaint_sketch_image_and_mask(editor: EditorValue | None, mask_alpha: float) -> tuple[Image.Image, Image.Image]:
    """The Inpaint sketch editor's value as (image, mask): the image is the background with the
    colour strokes over it ("Mask transparency" % makes the strokes that much more transparent);
    the mask is wherever something was painted."""
    image = editor_composite(editor, 1.0 - float(mask_alpha) / 100.0)
    if image is None:
        raise gr.Error("Please upload an image to sketch on")
    mask = painted_mask(editor, image.size)
    if mask.getbbox() is None:
        raise gr.Error("Please paint over the area to inpaint (nothing is painted)")
    return image, mask


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """ "Resize by": the image's size times `scale`, rounded down to multiples of 8 (as A1111)."""
    w, h = int(width * scale), int(height * scale)
    return w - w % 8, h - h % 8


def resolution_preview(size: tuple[int, int] | None, scale: float) -> str:
    """`#img2img_scale_resolution_preview`: "from WxH to WxH" for the current image."""
    if size is None:
        return ""
    tw, th = scaled_size(size[0], size[1], scale)
    return (
        f"<span>from <span class='resolution'>{size[0]}x{size[1]}</span> "
        f"to <span class='resolution'>{tw}x{th}</span></span>"
    )


def image_of_mode(
    mode: int,
    init_image: Image.Image | None,
    sketch: EditorValue | None,
    inpaint_editor: EditorValue | None,
    inpaint_sketch: EditorValue | None,
    inpaint_base: Image.Image | None,
) -> Image.Image | None:
    """The image sub-tab `mode` works from (before any painting): used by 📐, "Resize by"'s preview
    and "Copy image to". Sketches count their strokes (A1111's sketch tools bake them in)."""
    if mode == IMG2IMG:
        return init_image
    if mode in (SKETCH, INPAINT_SKETCH):
        return editor_composite(sketch if mode == SKETCH else inpaint_sketch)
    if mode == INPAINT:
        return (inpaint_editor or {}).get("background")
    if mode == INPAINT_UPLOAD:
        return inpaint_base
    return None


def request_for_image(values: Mapping[str, Any], image: Image.Image, mask: Image.Image | None) -> Img2ImgRequest:
    """A request from the tab's values for one (image, mask); "Resize by" sizes it from `image`."""
    width, height = int(values["width"]), int(values["height"])
    if int(values["selected_scale_tab"]) == RESIZE_BY:
        width, height = scaled_size(image.width, image.height, float(values["scale_by"]))
        if width < 8 or height < 8:
            raise gr.Error(f"Resize by {values['scale_by']} makes the image too small ({width}x{height})")
    return Img2ImgRequest(
        prompt=values["prompt"] or "",
        negative_prompt=values["negative_prompt"] or "",
        styles=tuple(values["styles"] or ()),
        init_images=(image,),
        mask=mask,
        resize_mode=int(values["resize_mode"]),
        mask_blur=int(values["mask_blur"]),
        inpainting_mask_invert=int(values["inpainting_mask_invert"]),
        inpainting_fill=int(values["inpainting_fill"]),
        inpaint_full_res=bool(values["inpaint_full_res"]),
        inpaint_full_res_padding=int(values["inpaint_full_res_padding"]),
        sampler_name=values["sampler_name"] or None,
        scheduler=values["scheduler"] or None,
        steps=int(values["steps"]),
        width=width,
        height=height,
        n_iter=int(values["n_iter"]),
        batch_size=int(values["batch_size"]),
        cfg_scale=float(values["cfg_scale"]),
        image_cfg_scale=float(values["image_cfg_scale"]),
        denoising_strength=float(values["denoising_strength"]),
        seed=int(values["seed"]),
        subseed=int(values["subseed"]),
        subseed_strength=float(values["subseed_strength"]),
        seed_resize_from_w=int(values["seed_resize_from_w"]),
        seed_resize_from_h=int(values["seed_resize_from_h"]),
    )


def img2img_request_from_ui(
    *,
    mode: int,
    init_image: Image.Image | None,
    sketch: EditorValue | None,
    inpaint_editor: EditorValue | None,
    inpaint_sketch: EditorValue | None,
    inpaint_base: Image.Image | None,
    inpaint_mask: Image.Image | None,
    mask_alpha: float,
    prompt: str,
    negative_prompt: str,
    styles: list[str] | tuple[str, ...] | None,
    resize_mode: int,
    mask_blur: float,
    inpainting_mask_invert: int,
    inpainting_fill: int,
    inpaint_full_res: int,
    inpaint_full_res_padding: float,
    sampler_name: str,
    scheduler: str,
    steps: float,
    selected_scale_tab: int,
    width: float,
    height: float,
    scale_by: float,
    n_iter: float,
    batch_size: float,
    cfg_scale: float,
    image_cfg_scale: float,
    denoising_strength: float,
    seed: float,
    subseed: float,
    subseed_strength: float,
    seed_resize_from_w: float,
    seed_resize_from_h: float,
) -> Img2ImgRequest:
    """The UI's values as a request; the sub-tab decides where the image and mask come from.
    Raises `gr.Error` when an image (or the mask) is missing. Batch (mode 5) makes one request
    per image: see `batch_items` and `request_for_image`."""
    values = dict(locals())
    mask: Image.Image | None = None
    if mode == INPAINT:
        image, mask = editor_image_and_mask(inpaint_editor)
    elif mode == INPAINT_SKETCH:
        image, mask = inpaint_sketch_image_and_mask(inpaint_sketch, mask_alpha)
    elif mode == INPAINT_UPLOAD:
        if inpaint_base is None:
            raise gr.Error("Please upload an image to inpaint")
        if inpaint_mask is None:
            raise gr.Error("Please upload a mask")
        image, mask = _rgb(inpaint_base), _rgb(inpaint_mask).convert("L")
    elif mode == SKETCH:
        sketched = editor_composite(sketch)
        if sketched is None:
            raise gr.Error("Please upload an image to sketch on")
        image = sketched
    elif mode == BATCH:
        raise gr.Error("Batch makes one request per image (batch_items)")
    else:
        if init_image is None:
            raise gr.Error("Please upload an image for img2img")
        image = _rgb(init_image)
    return request_for_image(values, image, mask)


# the converter's keyword names, in the order the tab passes its input components
UI_FIELDS = (
    "mode",
    "init_image",
    "sketch",
    "inpaint_editor",
    "inpaint_sketch",
    "inpaint_base",
    "inpaint_mask",
    "mask_alpha",
    "prompt",
    "negative_prompt",
    "styles",
    "resize_mode",
    "mask_blur",
    "inpainting_mask_invert",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "sampler_name",
    "scheduler",
    "steps",
    "selected_scale_tab",
    "width",
    "height",
    "scale_by",
    "n_iter",
    "batch_size",
    "cfg_scale",
    "image_cfg_scale",
    "denoising_strength",
    "seed",
    "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
)
# the Batch sub-tab's inputs, passed after `UI_FIELDS`
BATCH_FIELDS = ("batch_source", "batch_files", "batch_input_dir", "batch_output_dir", "batch_inpaint_mask_dir")


# -- Batch -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchItem:
    """One input image of a batch and its mask file (from the mask directory), if any."""

    path: Path
    mask_path: Path | None = None


@dataclass(frozen=True)
class BatchPlan:
    items: tuple[BatchItem, ...]
    output_dir: Path | None = None  # None: the normal outputs folder


def _folder_images(folder: Path, label: str) -> list[Path]:
    if not folder.is_dir():
        raise gr.Error(f"{label} not found: {html.escape(str(folder))}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _upload_path(item: Any) -> Path:
    path = getattr(item, "path", None) or (item.get("path") if isinstance(item, dict) else item)
    return Path(str(path))


def batch_plan(
    services: Services,
    *,
    batch_source: str,
    batch_files: Sequence[Any] | None,
    batch_input_dir: str,
    batch_output_dir: str,
    batch_inpaint_mask_dir: str,
) -> BatchPlan:
    """The Batch sub-tab's inputs as a list of images (and masks) to process. Server folders must be
    inside the data dir or the outputs folder (`server_dir`); no images is an error. With a mask
    directory each image takes the mask with its file stem (or the only mask there is)."""
    if batch_source != BATCH_FROM_DIR:
        files = [_upload_path(f) for f in batch_files or () if f is not None]
        if not files:
            raise gr.Error("Please upload the images to process")
        return BatchPlan(tuple(BatchItem(p) for p in files))
    input_dir = server_dir(services, batch_input_dir, "Input directory")
    images = _folder_images(input_dir, "Input directory")
    if not images:
        raise gr.Error(f"Input directory has no images ({', '.join(IMAGE_SUFFIXES)})")
    output_dir = server_dir(services, batch_output_dir, "Output directory") if batch_output_dir.strip() else None
    masks: dict[str, Path] = {}
    single_mask: Path | None = None
    if batch_inpaint_mask_dir.strip():
        mask_dir = server_dir(services, batch_inpaint_mask_dir, "Inpaint batch mask directory")
        found = _folder_images(mask_dir, "Inpaint batch mask directory")
        if not found:
            raise gr.Error("Inpaint batch mask directory has no images")
        single_mask = found[0] if len(found) == 1 else None
        masks = {p.stem: p for p in found}
    items = []
    for path in images:
        mask = single_mask or masks.get(path.stem)
        if masks and mask is None:
            raise gr.Error(
                f"No mask for {html.escape(path.name)} in the inpaint batch mask directory (same name needed)"
            )
        items.append(BatchItem(path, mask))
    return BatchPlan(tuple(items), output_dir)


def save_batch_outputs(result: Result, stem: str, folder: Path) -> list[Path]:
    """The batch results of one input as PNGs with their infotext (`parameters`), named after the
    input (`stem.png`, or `stem-1.png`... when it made several), each written atomically."""
    written = []
    for i, image in enumerate(result.images):
        infotext = result.infotexts[i] if i < len(result.infotexts) else None
        path = folder / (f"{stem}.png" if len(result.images) == 1 else f"{stem}-{i + 1}.png")
        atomic_write_bytes(path, encode_image(image, "png", infotext=infotext))
        written.append(path)
    return written


def batch_progress_html(index: int, total: int, progress: Mapping[str, Any]) -> str:
    return f"<div class='sdw-batch-progress'>image {index}/{total}</div>" + progress_html(dict(progress))


def merge_results(results: Sequence[Result]) -> Result:
    """The batch's results as one (the gallery and its generation info)."""
    merged = Result()
    for result in results:
        for name in ("images", "infotexts", "seeds", "subseeds", "prompts", "negative_prompts", "params", "warnings"):
            getattr(merged, name).extend(getattr(result, name))
        merged.elapsed += result.elapsed
        merged.interrupted = merged.interrupted or result.interrupted
    if results:
        merged.width, merged.height = results[-1].width, results[-1].height
        merged.job_timestamp = results[-1].job_timestamp
    return merged


def limit_results(result: Result, limit: int) -> Result:
    """The first `limit` images (and their infotexts, seeds...); all of them when `limit` is -1."""
    if limit < 0 or len(result.images) <= limit:
        return result
    cut = {
        name: getattr(result, name)[:limit]
        for name in ("images", "infotexts", "seeds", "subseeds", "prompts", "negative_prompts", "params")
    }
    return dataclasses.replace(result, **cut)


def _shown(services: Services, folder: Path) -> str:
    """A server folder as the user typed it: relative to the data dir (or the outputs folder)."""
    for root in (services.paths.data_dir.resolve(), services.paths.outputs_dir.resolve()):
        if folder == root or root in folder.parents:
            return str(folder.relative_to(root)) or "."
    return folder.name


def run_batch(
    services: Services, values: Mapping[str, Any], plan: BatchPlan, stop: threading.Event | None = None
) -> Iterator[tuple[Any, ...]]:
    """Each image as its own request, one job after another (Interrupt stops the batch, also
    when it comes between two jobs: `stop`); yields (progress, gallery, info html, generation
    info, last seed) like the single-image run."""
    total = len(plan.items)
    results: list[Result] = []
    first: Img2ImgRequest | None = None
    written = 0
    for index, item in enumerate(plan.items, start=1):
        image = _rgb(open_image(item.path))
        mask = _rgb(open_image(item.mask_path)).convert("L") if item.mask_path is not None else None
        request = dataclasses.replace(
            request_for_image(values, image, mask),
            do_not_save_grid=True,
            do_not_save_samples=plan.output_dir is not None,
        )
        first = first or request
        job = submit(services, request)

        def render(data: dict[str, Any], index: int = index) -> str:
            return batch_progress_html(index, total, data)

        yield render(services.engine.progress(with_preview=False)), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        for shown, preview in follow(services, job, render):
            yield shown, preview, gr.skip(), gr.skip(), gr.skip()
        result = result_of(job)
        if plan.output_dir is not None:
            written += len(save_batch_outputs(result, item.path.stem, plan.output_dir))
        results.append(result)
        if result.interrupted or job.interrupted or (stop is not None and stop.is_set()):
            break
    merged = merge_results(results)
    limit = services.options.get("img2img_batch_show_results_limit")
    shown_result = limit_results(merged, int(limit) if isinstance(limit, int | float) else -1)
    assert first is not None
    images, info = gallery_items(services, first, shown_result)
    where = f"; {written} files written to {html.escape(_shown(services, plan.output_dir))}" if plan.output_dir else ""
    summary = f"<p class='sdw-batch-summary'>Processed {len(results)}/{total} images{where}.</p>"
    yield "", images, summary + info_html(merged), info, (merged.seeds[0] if merged.seeds else -1)


# -- the tab -----------------------------------------------------------------------------------

# sub-tab number -> the gr.Tab id (and elem_id) in `mode_img2img`, A1111's names
SUBTAB_IDS = {
    IMG2IMG: "img2img_img2img_tab",
    SKETCH: "img2img_img2img_sketch_tab",
    INPAINT: "img2img_inpaint_tab",
    INPAINT_SKETCH: "img2img_inpaint_sketch_tab",
    INPAINT_UPLOAD: "img2img_inpaint_upload_tab",
    BATCH: "img2img_batch_tab",
}
# "Copy image to:" targets: (sub-tab, button text, elem_id suffix)
COPY_TARGETS = (
    (IMG2IMG, "img2img", "img2img"),
    (SKETCH, "sketch", "sketch"),
    (INPAINT, "inpaint", "inpaint"),
    (INPAINT_SKETCH, "inpaint sketch", "inpaint_sketch"),
)


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
    mode: gr.State
    mode_tabs: gr.Tabs
    inpaint_controls: gr.Group
    # the input components by `UI_FIELDS` name, plus "subseed_show" (the send-to buttons fill them)
    fields: dict[str, Any] = field(default_factory=dict)
    mask_alpha: gr.Slider | None = None
    sketch: gr.ImageEditor | None = None
    inpaint_sketch: gr.ImageEditor | None = None
    image_cfg_scale: gr.Slider | None = None
    # the Batch sub-tab's components by `BATCH_FIELDS` name
    batch_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def mode_outputs(self) -> list[Any]:
        """The components `select_mode` updates (an event's outputs)."""
        outputs: list[Any] = [self.mode, self.mode_tabs, self.inpaint_controls]
        return outputs + ([self.mask_alpha] if self.mask_alpha is not None else [])

    def select_mode(self, number: int) -> dict[Any, Any]:
        """Updates that switch to sub-tab `number`, as clicking its tab does (call it in an event
        handler only: it makes a `gr.Tabs` update)."""
        updates: dict[Any, Any] = {
            self.mode: number,
            self.mode_tabs: gr.Tabs(selected=SUBTAB_IDS[number]),
            self.inpaint_controls: gr.update(visible=number in INPAINT_MODES),
        }
        if self.mask_alpha is not None:
            updates[self.mask_alpha] = gr.update(visible=number == INPAINT_SKETCH)
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


def build_img2img_tab(services: Services) -> Img2ImgTab:
    parent_tab = Context.block  # the top-level img2img tab this is built in
    root = Context.root_block
    samplers = [s.name for s in list_samplers() if s.available]
    sampler_default = DEFAULT_SAMPLER if DEFAULT_SAMPLER in samplers else (samplers[0] if samplers else None)
    mode = gr.State(IMG2IMG)
    selected_scale_tab = gr.State(RESIZE_TO)
    batch_source = gr.State(BATCH_UPLOAD)

    row = build_prompt_row("img2img", services)
    prompt, negative, style_dropdown = row.prompt, row.negative, row.styles
    copy_buttons: dict[int, dict[int, gr.Button]] = {}
    subtabs: dict[int, gr.Tab] = {}

    with gr.Row(elem_id="img2img_settings_and_results", equal_height=False):
        with gr.Column(scale=1, elem_id="img2img_settings"):
            with gr.Tabs(elem_id="mode_img2img") as mode_tabs:
                with gr.Tab("img2img", id=SUBTAB_IDS[IMG2IMG], elem_id=SUBTAB_IDS[IMG2IMG]) as subtabs[IMG2IMG]:
                    init_image = gr.Image(
                        label="Image for img2img",
                        type="pil",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        height=360,
                        elem_id="img2img_image",
                    )
                    copy_buttons[IMG2IMG] = _copy_row("img2img")
                with gr.Tab("Sketch", id=SUBTAB_IDS[SKETCH], elem_id=SUBTAB_IDS[SKETCH]) as subtabs[SKETCH]:
                    sketch = _editor(
                        "Image for img2img",
                        "img2img_sketch",
                        _sketch_brush(services, "img2img_sketch_default_brush_color"),
                    )
                    copy_buttons[SKETCH] = _copy_row("sketch")
                with gr.Tab("Inpaint", id=SUBTAB_IDS[INPAINT], elem_id=SUBTAB_IDS[INPAINT]) as subtabs[INPAINT]:
                    inpaint_editor = _editor(
                        "Image for inpainting with mask",
                        "img2maskimg",
                        gr.Brush(default_size="auto", colors=[("#ffffff", 0.7)], color_mode="fixed"),
                    )
                    copy_buttons[INPAINT] = _copy_row("inpaint")
                with gr.Tab(
                    "Inpaint sketch", id=SUBTAB_IDS[INPAINT_SKETCH], elem_id=SUBTAB_IDS[INPAINT_SKETCH]
                ) as subtabs[INPAINT_SKETCH]:
                    inpaint_sketch = _editor(
                        "Color sketch inpainting",
                        "inpaint_sketch",
                        _sketch_brush(services, "img2img_inpaint_sketch_default_brush_color"),
                    )
                    copy_buttons[INPAINT_SKETCH] = _copy_row("inpaint_sketch")
                with gr.Tab(
                    "Inpaint upload", id=SUBTAB_IDS[INPAINT_UPLOAD], elem_id=SUBTAB_IDS[INPAINT_UPLOAD]
                ) as subtabs[INPAINT_UPLOAD]:
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
                    gr.Tab("Batch", id=SUBTAB_IDS[BATCH], elem_id=SUBTAB_IDS[BATCH]) as subtabs[BATCH],
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
                    label="Schedule type", choices=_scheduler_choices(), value="Automatic", elem_id="img2img_scheduler"
                )
                steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="img2img_steps")
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
        results = build_results_column("img2img")
    progress, gallery, html_info = results.progress, results.gallery, results.html_info
    generation_info, output_buttons = results.generation_info, results.output_buttons
    last_seeds = seeds.last_seeds

    inputs = [
        mode,
        init_image,
        sketch,
        inpaint_editor,
        inpaint_sketch,
        inpaint_base,
        inpaint_mask,
        mask_alpha,
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
        selected_scale_tab,
        width,
        height,
        scale_by,
        n_iter,
        batch_size,
        cfg,
        image_cfg,
        denoise,
        seed,
        subseed,
        subseed_strength,
        resize_w,
        resize_h,
    ]
    assert len(inputs) == len(UI_FIELDS)
    batch_inputs = [batch_source, batch_files, batch_input_dir, batch_output_dir, batch_mask_dir]
    assert len(batch_inputs) == len(BATCH_FIELDS)

    def split(values: Sequence[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        n = len(UI_FIELDS)
        return dict(zip(UI_FIELDS, values[:n], strict=True)), dict(zip(BATCH_FIELDS, values[n:], strict=True))

    def run(*values: Any) -> Iterator[tuple[Any, ...]]:
        ui, batch = split(values)
        if int(ui["mode"]) == BATCH:
            yield from run_batch(services, ui, batch_plan(services, **batch), row.stop_requested)
            return
        request = img2img_request_from_ui(**ui)
        job = submit(services, request)
        yield progress_html(services.engine.progress(with_preview=False)), gr.skip(), "", "", gr.skip()
        for shown, preview in follow(services, job, progress_html):
            yield shown, preview, gr.skip(), gr.skip(), gr.skip()
        result = result_of(job)
        images, info = gallery_items(services, request, result)
        seeds = (result.seeds[0] if result.seeds else -1, result.subseeds[0] if result.subseeds else -1)
        yield "", images, info_html(result), info, seeds

    def check(*values: Any) -> None:
        """User errors (no image, empty mask, a refused folder) before the buttons change: an
        error here leaves Generate as it is."""
        ui, batch = split(values)
        if int(ui["mode"]) == BATCH:
            batch_plan(services, **batch)
        else:
            img2img_request_from_ui(**ui)

    all_inputs = [*inputs, *batch_inputs]
    outputs = [progress, gallery, html_info, generation_info, last_seeds]
    wire_generate(services, row, run, all_inputs, outputs, check=check)

    # -- sub-tabs, copy image to, resize ---------------------------------------------------
    def select_mode(number: int) -> Callable[[], tuple[int, Any, Any]]:
        return lambda: (
            number,
            gr.update(visible=number in INPAINT_MODES),
            gr.update(visible=number == INPAINT_SKETCH),
        )

    for number, subtab in subtabs.items():
        subtab.select(select_mode(number), None, [mode, inpaint_controls, mask_alpha], queue=False)
    batch_upload_tab.select(lambda: BATCH_UPLOAD, None, batch_source, queue=False)
    batch_dir_tab.select(lambda: BATCH_FROM_DIR, None, batch_source, queue=False)

    image_inputs = [mode, init_image, sketch, inpaint_editor, inpaint_sketch, inpaint_base]
    targets = {IMG2IMG: init_image, SKETCH: sketch, INPAINT: inpaint_editor, INPAINT_SKETCH: inpaint_sketch}
    mode_updates = [mode, mode_tabs, inpaint_controls, mask_alpha]

    def copy_image(source: int, target: int) -> Callable[[Any], dict[Any, Any]]:
        def copy(value: Any) -> dict[Any, Any]:
            images: dict[int, Any] = {source: value}
            image = image_of_mode(
                source, images.get(IMG2IMG), images.get(SKETCH), images.get(INPAINT), images.get(INPAINT_SKETCH), None
            )
            if image is None:
                raise gr.Error("There is no image to copy: upload one first")
            image = _rgb(image)
            return {
                targets[target]: image if target == IMG2IMG else editor_value(image),
                mode: target,
                mode_tabs: gr.Tabs(selected=SUBTAB_IDS[target]),
                inpaint_controls: gr.update(visible=target in INPAINT_MODES),
                mask_alpha: gr.update(visible=target == INPAINT_SKETCH),
            }

        return copy

    for source, buttons in copy_buttons.items():
        for target, button in buttons.items():
            button.click(copy_image(source, target), targets[source], [targets[target], *mode_updates], queue=False)

    def current_size(number: int, *images: Any) -> tuple[int, int] | None:
        image = image_of_mode(int(number), *images)
        return None if image is None else (image.width, image.height)

    def detect_size(number: int, *images: Any) -> tuple[int, int]:
        size = current_size(number, *images)
        if size is None:
            raise gr.Error("There is no image in this sub-tab to take the size from")
        # within the sliders' range (64..2048)
        return min(max(size[0], 64), 2048), min(max(size[1], 64), 2048)

    def preview(number: int, *rest: Any) -> str:
        return resolution_preview(current_size(number, *rest[:-1]), float(rest[-1]))

    gr.on(
        [
            scale_by.change,
            by_tab.select,
            mode.change,
            init_image.change,
            sketch.change,
            inpaint_editor.change,
            inpaint_sketch.change,
            inpaint_base.change,
        ],
        preview,
        [*image_inputs, scale_by],
        scale_preview,
        queue=False,
        show_progress="hidden",
    )
    to_tab.select(lambda: RESIZE_TO, None, selected_scale_tab, queue=False)
    by_tab.select(lambda: RESIZE_BY, None, selected_scale_tab, queue=False)
    detect.click(detect_size, image_inputs, [width, height], queue=False)
    swap.click(lambda w, h: (h, w), [width, height], [width, height], queue=False)

    # -- Image CFG Scale only for instruct-pix2pix models -----------------------------------
    def image_cfg_visibility() -> Any:
        return gr.update(visible=is_instruct_pix2pix(services))

    triggers = [root.load] if isinstance(root, gr.Blocks) else []
    if isinstance(parent_tab, gr.Tab):
        triggers.append(parent_tab.select)
    if triggers:
        gr.on(triggers, image_cfg_visibility, None, image_cfg, queue=False, show_progress="hidden")

    # -- seeds ---------------------------------------------------------------------------

    wire_token_counters(services, row, steps)

    fields = {**dict(zip(UI_FIELDS, inputs, strict=True)), "subseed_show": extra}
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
        batch_fields=dict(zip(BATCH_FIELDS, batch_inputs, strict=True)),
    )
