"""The PNG Info tab (a1111.md 10.4): drop an image, see its infotext and other metadata items as
HTML; "Send to txt2img" parses the infotext (`parse_infotext`) and fills the txt2img fields
(A1111's infotext keys, a1111.md 3.3), then switches to the txt2img tab."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import gradio as gr
from PIL import Image

from modules.core.infotext import parse_infotext
from modules.engine.outputs import read_image_info
from modules.services import Services
from modules.ui.txt2img import Txt2ImgTab

NOTHING_FOUND = "<div><p>Nothing found in the image.</p></div>"

# infotext key -> txt2img field name (`txt2img.UI_FIELDS`) and how the text becomes a value
_INT, _FLOAT, _STR = int, float, str
PASTE_KEYS: tuple[tuple[str, str, Any], ...] = (
    ("Prompt", "prompt", _STR),
    ("Negative prompt", "negative_prompt", _STR),
    ("Steps", "steps", _INT),
    ("Sampler", "sampler_name", _STR),
    ("Schedule type", "scheduler", _STR),
    ("CFG scale", "cfg_scale", _FLOAT),
    ("Seed", "seed", _INT),
    ("Size-1", "width", _INT),
    ("Size-2", "height", _INT),
    ("Variation seed", "subseed", _INT),
    ("Variation seed strength", "subseed_strength", _FLOAT),
    ("Seed resize from-1", "seed_resize_from_w", _INT),
    ("Seed resize from-2", "seed_resize_from_h", _INT),
    ("Denoising strength", "denoising_strength", _FLOAT),
    ("Hires upscale", "hr_scale", _FLOAT),
    ("Hires upscaler", "hr_upscaler", _STR),
    ("Hires steps", "hr_second_pass_steps", _INT),
    ("Hires resize-1", "hr_resize_x", _INT),
    ("Hires resize-2", "hr_resize_y", _INT),
)


def _convert(kind: Any, value: object) -> object | None:
    try:
        if kind is _INT:
            return int(float(str(value)))
        if kind is _FLOAT:
            return float(str(value))
    except ValueError:
        return None
    return str(value)


def infotext_values(parsed: Mapping[str, object]) -> dict[str, object]:
    """txt2img field name -> value for the keys present in a `parse_infotext` result.

    Hires. fix is enabled when the infotext has a denoising strength and a hires upscale,
    upscaler or resize (as A1111 decides); the seed "Extra" box opens for a variation seed."""
    values: dict[str, object] = {}
    for key, name, kind in PASTE_KEYS:
        if key in parsed:
            converted = _convert(kind, parsed[key])
            if converted is not None:
                values[name] = converted
    resized = any(values.get(k) for k in ("hr_resize_x", "hr_resize_y"))
    values["enable_hr"] = "Denoising strength" in parsed and (
        "Hires upscale" in parsed or "Hires upscaler" in parsed or resized
    )
    if "Variation seed" in parsed or "Variation seed strength" in parsed:
        values["subseed_show"] = True
    return values


def _fits(component: Any, value: object) -> object | None:
    """The value clamped to a slider's range; None when a dropdown does not offer it."""
    choices = getattr(component, "choices", None)
    if isinstance(component, gr.Dropdown) and choices is not None:
        offered = {c[1] if isinstance(c, tuple) else c for c in choices}
        return value if value in offered else None
    if isinstance(component, gr.Slider) and isinstance(value, int | float) and not isinstance(value, bool):
        return min(max(value, component.minimum), component.maximum)
    return value


def paste_fields(parsed: Mapping[str, object], fields: Mapping[str, Any]) -> dict[Any, object]:
    """txt2img component -> value restored from a parsed infotext (A1111's PasteField list).

    `fields` maps `UI_FIELDS` names to components (`Txt2ImgTab.fields`); fields the infotext
    says nothing about, and values a dropdown does not offer, are left out (left unchanged)."""
    out: dict[Any, object] = {}
    for name, value in infotext_values(parsed).items():
        component = fields.get(name)
        if component is None:
            continue
        fitted = _fits(component, value)
        if fitted is not None:
            out[component] = fitted
    return out


def info_html(infotext: str | None, items: Mapping[str, object]) -> str:
    """A1111's PNG Info HTML: `parameters` first, then every other metadata item."""
    shown = {"parameters": infotext} if infotext else {}
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


def build_pnginfo_tab(services: Services, txt2img: Txt2ImgTab, tabs: gr.Tabs) -> None:
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

    image.change(read_info, image, [html_info, generation_info], queue=False, show_progress="hidden")

    targets = list(txt2img.fields.values())

    def send(infotext: str) -> dict[Any, object]:
        if not infotext:
            return {tabs: gr.Tabs(selected="txt2img")}
        skip = services.options.get("infotext_skip_pasting")
        parsed = parse_infotext(
            infotext,
            backcompat=bool(services.options.get("auto_backcompat")),
            skip_keys=skip if isinstance(skip, list | tuple) else (),
        )
        return {**paste_fields(parsed, txt2img.fields), tabs: gr.Tabs(selected="txt2img")}

    send_txt2img.click(send, generation_info, [*targets, tabs], queue=False)
