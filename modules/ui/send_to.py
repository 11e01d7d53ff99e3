"""Moving images and parameters between tabs (A1111's "send to" buttons and ↙️ paste), and the
gallery's 💾 / 🗃️ buttons (`modules.ui.save`), which share the gallery-selection state.

- Under the txt2img and img2img galleries: 🖼️ img2img, 🎨️ inpaint, 📐 extras send the selected
  image, and (for img2img / inpaint) its generation parameters, to that tab and switch to it;
  "Send to ControlNet" puts the selected image into the tab's own ControlNet unit (the unit tab
  last selected, unit 0 at first) as its control image (`ControlNetSection.send_image_updates`).
- PNG Info: Send to txt2img / img2img / inpaint / extras, from the dropped image and its infotext;
  "Send to txt2img ControlNet" / "Send to img2img ControlNet" the image alone into that tab's unit.
- ↙️ in a prompt row: the parameters typed (pasted) into the prompt box, or those of the last
  generation (`params.txt`) when the box is empty, restored into the tab's fields.

`send_seed` / `send_size` (Settings > User interface) decide whether the seed and the size travel.
The handlers are queued without a concurrency limit: they never wait behind a generation, and
their `gr.Error`s reach the page as toasts (unqueued events show none).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gradio as gr
from PIL import Image

from modules.core.errors import SdWebuiError
from modules.services import Services
from modules.ui.common import open_image, parse_generation_info
from modules.ui.controlnet import ControlNetSection
from modules.ui.extras import SINGLE, ExtrasTab
from modules.ui.img2img import Img2ImgTab
from modules.ui.img2img_editor import editor_value
from modules.ui.img2img_modes import IMG2IMG, INPAINT
from modules.ui.paste import looks_like_infotext, parse_for_paste, paste_fields
from modules.ui.pnginfo import PngInfoTab
from modules.ui.save import DownloadCopies, chosen_items, save_images
from modules.ui.txt2img import Txt2ImgTab

SEED_FIELDS = ("seed", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "subseed_show")
SIZE_FIELDS = ("width", "height")


def skipped_fields(services: Services) -> set[str]:
    """Fields the user asked not to send (`send_seed`, `send_size` off)."""
    skip: set[str] = set()
    if not services.options.get("send_seed"):
        skip.update(SEED_FIELDS)
    if not services.options.get("send_size"):
        skip.update(SIZE_FIELDS)
    return skip


def selected_image(gallery: Sequence[Any] | None, index: int | None, info: str) -> tuple[Image.Image, str]:
    """(image, its infotext) for the gallery's selected item: the clicked one, else the first
    image (after a leading grid). Raises `gr.Error` when the gallery is empty."""
    if not gallery:
        raise gr.Error("There is no image to send: generate one first")
    [(chosen, infotext)] = chosen_items(gallery, index, parse_generation_info(info), selected_only=True)
    return open_image(gallery[chosen]), infotext


def restore_updates(
    services: Services,
    text: str,
    fields: Mapping[str, Any],
    controlnet: ControlNetSection | None,
    skip: set[str] | None = None,
) -> dict[Any, object]:
    """Updates restoring the infotext `text` into a tab's `fields`; the ControlNet units' made
    whole (`ControlNetSection.paste_updates`: choices, sliders and their values in this one
    response)."""
    updates = paste_fields(parse_for_paste(services, text), fields, skip or ())
    return controlnet.paste_updates(updates) if controlnet is not None else updates


def parameter_updates(
    services: Services,
    infotext: str,
    fields: Mapping[str, Any],
    image: Image.Image | None = None,
    controlnet: ControlNetSection | None = None,
) -> dict[Any, object]:
    """Updates restoring `infotext` into `fields`; with `image` and `send_size` on, the size is the
    image's own (what img2img should produce from it)."""
    skip = skipped_fields(services)
    updates = restore_updates(services, infotext, fields, controlnet, skip) if infotext else {}
    if image is not None and "width" not in skip:
        for name, value in (("width", image.width), ("height", image.height)):
            if name in fields:
                updates[fields[name]] = value
    return updates


def to_img2img(
    services: Services, target: Img2ImgTab, image: Image.Image, infotext: str, mode: int
) -> dict[Any, object]:
    """Updates that put `image` (and its parameters) into img2img's `mode` sub-tab and select it."""
    updates: dict[Any, object] = parameter_updates(services, infotext, target.fields, image, target.controlnet)
    if mode == INPAINT:
        updates[target.inpaint_editor] = editor_value(image)
    else:
        updates[target.init_image] = image
    updates.update(target.select_mode(mode))
    return updates


def to_extras(target: ExtrasTab, image: Image.Image) -> dict[Any, object]:
    return {target.image: image, target.mode: SINGLE, target.mode_tabs: gr.Tabs(selected="extras_single_tab")}


QUIET: dict[str, Any] = {"concurrency_limit": None, "show_progress": "hidden"}
"""The send-to and paste events: no progress shown. Each also names its own button as where the
progress would go (`show_progress_on`): Gradio's front end otherwise tracks a loading status for
every output (80-90 fields here) and, on every status change of any later event in the page,
re-applies each tracked status by walking its whole component tree, which made every click in a
page that had pasted once seconds slower."""


def _scroll_to(elem_id: str) -> str:
    """Page JS that scrolls `#elem_id` into view (after a send-to opened it)."""
    return f"() => {{ document.getElementById({elem_id!r})?.scrollIntoView({{block: 'start'}}); }}"


def wire_send_to_controlnet(
    services: Services, tabs: gr.Tabs, source: Txt2ImgTab | Img2ImgTab, selected: gr.State
) -> None:
    """The gallery's "Send to ControlNet": its selected image into its own tab's ControlNet unit."""
    section = source.controlnet
    if section is None or section.send_button is None or section.selected_unit is None:
        return
    target = section.tab_name

    def send(gallery: Any, index: int | None, info: str, unit: object) -> dict[Any, object]:
        image, _infotext = selected_image(gallery, index, info)
        return {**section.send_image_updates(image, unit), tabs: gr.Tabs(selected=target)}

    section.send_button.click(
        send,
        [source.gallery, selected, source.generation_info, section.selected_unit],
        [*section.send_outputs, tabs],
        **QUIET,
        show_progress_on=section.send_button,
    ).then(None, js=_scroll_to(f"{target}_controlnet"))


def add_pnginfo_controlnet_buttons(
    tabs: gr.Tabs, pnginfo: PngInfoTab, sections: Sequence[ControlNetSection | None]
) -> list[gr.Button]:
    """PNG Info's "Send to txt2img ControlNet" / "Send to img2img ControlNet" (a row under its
    "Send to" buttons, one per tab with ControlNet units): the dropped image into that tab's unit."""
    built = [s for s in sections if s is not None and s.units and s.selected_unit is not None]
    row = getattr(pnginfo.send_extras, "parent", None)
    column = getattr(row, "parent", None)
    if not built or column is None:
        return []
    parent = column.parent
    with column, gr.Row():  # entering a built block again makes the current context its parent: undone below
        buttons = [
            gr.Button(f"Send to {s.tab_name} ControlNet", elem_id=f"pnginfo_send_to_{s.tab_name}_controlnet")
            for s in built
        ]
    column.parent = parent
    for section, button in zip(built, buttons, strict=True):
        assert section.selected_unit is not None

        def send(path: str | None, unit: object, section: ControlNetSection = section) -> dict[Any, object]:
            if not path:
                raise gr.Error("Please drop an image first")
            image = open_image(path)
            return {**section.send_image_updates(image, unit), tabs: gr.Tabs(selected=section.tab_name)}

        button.click(
            send,
            [pnginfo.image, section.selected_unit],
            [*section.send_outputs, tabs],
            **QUIET,
            show_progress_on=button,
        ).then(None, js=_scroll_to(f"{section.tab_name}_controlnet"))
    return buttons


def _img2img_outputs(target: Img2ImgTab) -> list[Any]:
    return [
        *target.fields.values(),
        target.init_image,
        target.inpaint_editor,
        *target.mode_outputs,
    ]


def wire_send_to(
    services: Services,
    tabs: gr.Tabs,
    txt2img: Txt2ImgTab,
    img2img: Img2ImgTab,
    extras: ExtrasTab,
    pnginfo: PngInfoTab,
) -> None:
    img2img_outputs = [*dict.fromkeys(_img2img_outputs(img2img))]
    extras_outputs = [extras.image, extras.mode, extras.mode_tabs]
    txt2img_outputs = list(txt2img.fields.values())
    download_copies = DownloadCopies()  # the 💾 / 🗃️ download box's files

    # --- from the galleries -------------------------------------------------------------
    for source in (txt2img, img2img):
        selected = gr.State(None)

        def on_select(evt: gr.SelectData) -> int:
            return int(evt.index) if isinstance(evt.index, int) else 0

        source.gallery.select(on_select, None, selected, queue=False, show_progress="hidden")
        source.gallery.change(lambda: None, None, selected, queue=False, show_progress="hidden")
        buttons = source.output_buttons
        gallery_inputs = [source.gallery, selected, source.generation_info]

        def send_img2img(gallery: Any, index: int | None, info: str, mode: int = IMG2IMG) -> dict[Any, object]:
            image, infotext = selected_image(gallery, index, info)
            return {**to_img2img(services, img2img, image, infotext, mode), tabs: gr.Tabs(selected="img2img")}

        def send_inpaint(gallery: Any, index: int | None, info: str) -> dict[Any, object]:
            return send_img2img(gallery, index, info, INPAINT)

        def send_extras(gallery: Any, index: int | None, info: str) -> dict[Any, object]:
            image, _infotext = selected_image(gallery, index, info)
            return {**to_extras(extras, image), tabs: gr.Tabs(selected="extras")}

        def save(gallery: Any, index: int | None, info: str, make_zip: bool = False) -> Any:
            try:
                written = save_images(services, gallery, index, info, make_zip=make_zip)
            except (OSError, SdWebuiError) as exc:
                raise gr.Error(f"Could not save: {exc}") from exc
            return gr.update(value=download_copies(written), visible=True)

        def save_zip(gallery: Any, index: int | None, info: str) -> Any:
            return save(gallery, index, info, make_zip=True)

        buttons.save.click(save, gallery_inputs, buttons.download, concurrency_limit=None, show_progress="hidden")
        buttons.save_zip.click(
            save_zip, gallery_inputs, buttons.download, concurrency_limit=None, show_progress="hidden"
        )
        for button, fn, outputs in (
            (buttons.send_to_img2img, send_img2img, img2img_outputs),
            (buttons.send_to_inpaint, send_inpaint, img2img_outputs),
            (buttons.send_to_extras, send_extras, extras_outputs),
        ):
            button.click(fn, gallery_inputs, [*outputs, tabs], **QUIET, show_progress_on=button)
        wire_send_to_controlnet(services, tabs, source, selected)

    # --- from PNG Info --------------------------------------------------------------------
    def png_to_txt2img(infotext: str) -> dict[Any, object]:
        updates = parameter_updates(services, infotext, txt2img.fields, controlnet=txt2img.controlnet)
        return {**updates, tabs: gr.Tabs(selected="txt2img")}

    def png_to_img2img(path: str | None, infotext: str, mode: int = IMG2IMG) -> dict[Any, object]:
        if not path:
            raise gr.Error("Please drop an image first")
        image = open_image(path)
        return {**to_img2img(services, img2img, image, infotext, mode), tabs: gr.Tabs(selected="img2img")}

    def png_to_inpaint(path: str | None, infotext: str) -> dict[Any, object]:
        return png_to_img2img(path, infotext, INPAINT)

    def png_to_extras(path: str | None) -> dict[Any, object]:
        if not path:
            raise gr.Error("Please drop an image first")
        image = open_image(path)
        return {**to_extras(extras, image), tabs: gr.Tabs(selected="extras")}

    png_inputs = [pnginfo.image, pnginfo.generation_info]
    png_sends: list[tuple[gr.Button, Callable[..., dict[Any, object]], list[Any], list[Any]]] = [
        (pnginfo.send_txt2img, png_to_txt2img, [pnginfo.generation_info], txt2img_outputs),
        (pnginfo.send_img2img, png_to_img2img, png_inputs, img2img_outputs),
        (pnginfo.send_inpaint, png_to_inpaint, png_inputs, img2img_outputs),
        (pnginfo.send_extras, png_to_extras, [pnginfo.image], extras_outputs),
    ]
    for png_button, png_fn, png_in, png_out in png_sends:
        png_button.click(png_fn, png_in, [*png_out, tabs], **QUIET, show_progress_on=png_button)
    add_pnginfo_controlnet_buttons(tabs, pnginfo, [txt2img.controlnet, img2img.controlnet])

    # --- ↙️ paste in each prompt row -------------------------------------------------------
    for tab in (txt2img, img2img):
        fields = tab.fields

        def paste(
            prompt: str, fields: Mapping[str, Any] = fields, controlnet: ControlNetSection | None = tab.controlnet
        ) -> dict[Any, object]:
            text = prompt or ""
            if not text.strip():
                params_file = services.paths.params_file
                text = params_file.read_text(encoding="utf-8") if params_file.is_file() else ""
                if not text:
                    raise gr.Error("Nothing to paste: the prompt is empty and there is no last generation")
            elif not looks_like_infotext(text):
                raise gr.Error("The prompt holds no generation parameters to read (no 'Steps: ...' line)")
            return restore_updates(services, text, fields, controlnet)

        tab.row.paste.click(paste, tab.row.prompt, list(fields.values()), **QUIET, show_progress_on=tab.row.paste)
