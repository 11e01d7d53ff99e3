"""The PNG Info tab (a1111.md 10.4): drop an image, see its infotext and other metadata items as
HTML; the "Send to" buttons (wired in `modules.ui.send_to`) restore the parameters into txt2img
or img2img, or take the image to img2img, inpaint or extras."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass

import gradio as gr
from PIL import Image

from modules.engine.image_metadata import read_image_info
from modules.services import Services

NOTHING_FOUND = "<div><p>Nothing found in the image.</p></div>"


def info_html(infotext: str | None, items: Mapping[str, object]) -> str:
    """A1111's PNG Info HTML: `parameters` first, then every other metadata item."""
    shown: dict[str, object] = {"parameters": infotext} if infotext else {}
    shown.update({k: v for k, v in items.items() if isinstance(v, str | int | float)})
    if not shown:
        return NOTHING_FOUND
    parts = []
    for key, value in shown.items():
        text = "<br>".join(html.escape(line) for line in str(value).split("\n"))
        parts.append(f"<div class='sdw-pnginfo-item'><p><b>{html.escape(str(key))}</b></p><p>{text}</p></div>")
    return "".join(parts)


def read_info(path: str | None) -> tuple[str, str]:
    """(HTML, infotext) of an uploaded image file; empty when there is none."""
    if not path:
        return "", ""
    try:
        with Image.open(path) as image:
            infotext, items = read_image_info(image)
    except OSError:
        return NOTHING_FOUND, ""
    return info_html(infotext, items), infotext or ""


@dataclass
class PngInfoTab:
    image: gr.Image
    generation_info: gr.Textbox
    send_txt2img: gr.Button
    send_img2img: gr.Button
    send_inpaint: gr.Button
    send_extras: gr.Button


def build_pnginfo_tab(services: Services) -> PngInfoTab:
    with gr.Row(equal_height=False, elem_id="pnginfo_row"):
        with gr.Column(variant="panel"):
            image = gr.Image(
                label="Source", type="filepath", sources=["upload", "clipboard"], height=360, elem_id="pnginfo_image"
            )
        with gr.Column(variant="panel"):
            html_info = gr.HTML("", elem_id="html_info_x_pnginfo")
            generation_info = gr.Textbox(visible="hidden", elem_id="pnginfo_generation_info", interactive=False)
            with gr.Row():
                send_txt2img = gr.Button("Send to txt2img", elem_id="txt2img_tab")
                send_img2img = gr.Button("Send to img2img", elem_id="img2img_tab")
            with gr.Row():
                send_inpaint = gr.Button("Send to inpaint", elem_id="inpaint_tab")
                send_extras = gr.Button("Send to extras", elem_id="extras_tab")

    image.change(read_info, image, [html_info, generation_info], queue=False, show_progress="hidden")
    return PngInfoTab(image, generation_info, send_txt2img, send_img2img, send_inpaint, send_extras)
