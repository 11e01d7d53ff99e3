"""Restoring generation parameters into a tab's fields (A1111's paste fields, a1111.md 3.3): the
infotext of a PNG, of a gallery image or typed into the prompt box, parsed with `parse_infotext`
and mapped onto the components by field name."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import gradio as gr

from modules.core.infotext import parse_infotext
from modules.services import Services


def parse_for_paste(services: Services, infotext: str) -> dict[str, object]:
    """`parse_infotext` with the user's options (`auto_backcompat`, `infotext_skip_pasting`)."""
    skip = services.options.get("infotext_skip_pasting")
    return dict(
        parse_infotext(
            infotext,
            backcompat=bool(services.options.get("auto_backcompat")),
            skip_keys=skip if isinstance(skip, list | tuple) else (),
        )
    )


def looks_like_infotext(text: str) -> bool:
    """True when `text` carries generation parameters (a `Steps: ` parameter line), not just a prompt."""
    last = text.strip().split("\n")[-1] if text.strip() else ""
    return "Steps: " in last


# infotext key -> field name (the tabs' `UI_FIELDS`) and how the text becomes a value
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
    ("Mask blur", "mask_blur", _INT),
    ("Image CFG scale", "image_cfg_scale", _FLOAT),
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


def paste_fields(
    parsed: Mapping[str, object], fields: Mapping[str, Any], skip: Collection[str] = ()
) -> dict[Any, object]:
    """txt2img component -> value restored from a parsed infotext (A1111's PasteField list).

    `fields` maps `UI_FIELDS` names to components (`Txt2ImgTab.fields`, `Img2ImgTab.fields`);
    fields the infotext says nothing about, fields in `skip`, and values a dropdown does not offer
    are left out (left unchanged)."""
    out: dict[Any, object] = {}
    for name, value in infotext_values(parsed).items():
        component = fields.get(name)
        if component is None or name in skip:
            continue
        fitted = _fits(component, value)
        if fitted is not None:
            out[component] = fitted
    return out
