"""Restoring generation parameters into a tab's fields (A1111's paste fields, a1111.md 3.3): the
infotext of a PNG, of a gallery image or typed into the prompt box, parsed with `parse_infotext`
and mapped onto the components by field name through the one field table (`modules.core.fields`),
which the API's `infotext` field reads too. `<lora:NAME:` tags of a pasted prompt are renamed to
the local LoRA whose hash `Lora hashes` gives for NAME (A1111's Lora `infotext_pasted`).

As A1111: the hires checkpoint, sampler, schedule type and prompts go back to "Use same ..." / empty
when an infotext does not set them (or names the first pass's own sampler or schedule), the Refiner
box is ticked exactly when the infotext has a refiner, and checkpoint names in an infotext (A1111
writes short titles, "name [hash]") are looked up and restored as the dropdowns' titles."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import gradio as gr

from modules.core.extra_networks import restore_lora_names
from modules.core.fields import values_from_infotext
from modules.core.infotext import parse_infotext
from modules.services import Services
from modules.ui.controlnet import paste_values as controlnet_paste_values
from modules.ui.refiner import checkpoint_title
from modules.ui.txt2img import SAME_CHECKPOINT, SAME_SAMPLER, SAME_SCHEDULER

CHECKPOINT_KEYS = ("Hires checkpoint", "Refiner")
"""Infotext keys that name a checkpoint (restored as the checkpoint's title)."""


def parse_for_paste(services: Services, infotext: str) -> dict[str, object]:
    """`parse_infotext` with the user's options (`auto_backcompat`, `infotext_skip_pasting`); the
    checkpoints it names (`CHECKPOINT_KEYS`) as the titles the dropdowns offer, when found."""
    skip = services.options.get("infotext_skip_pasting")
    parsed = dict(
        parse_infotext(
            infotext,
            backcompat=bool(services.options.get("auto_backcompat")),
            skip_keys=skip if isinstance(skip, list | tuple) else (),
        )
    )
    for key in CHECKPOINT_KEYS:
        title = checkpoint_title(services, str(parsed[key])) if key in parsed else None
        if title is not None:
            parsed[key] = title
    lora_hashes = parsed.get("Lora hashes")
    if isinstance(lora_hashes, str) and lora_hashes:
        parsed["Prompt"] = restore_lora_names(str(parsed.get("Prompt", "")), lora_hashes, _local_lora(services))
    return parsed


def _local_lora(services: Services) -> Callable[[str], str | None]:
    """The name to write for a LoRA known by its shorthash here (A1111's `infotext_pasted`)."""

    def alias(shorthash: str) -> str | None:
        info = services.networks.lora_by_shorthash(shorthash)
        if info is None:
            return None
        return info.name if services.options.get("lora_preferred_name") == "Filename" else info.alias

    return alias


def looks_like_infotext(text: str) -> bool:
    """True when `text` carries generation parameters (a `Steps: ` parameter line), not just a prompt."""
    last = text.strip().split("\n")[-1] if text.strip() else ""
    return "Steps: " in last


def infotext_values(parsed: Mapping[str, object]) -> dict[str, object]:
    """Field name (the tabs' field names: the converters' keywords) -> value for the keys present in a `parse_infotext`
    result, as the field table in `modules.core.fields` maps them.

    Hires. fix is enabled when the infotext has a denoising strength and a hires upscale,
    upscaler or resize (as A1111 decides); the seed "Extra" box opens for a variation seed; the
    hires choices not set are "Use same ..." and the hires prompts empty; `enable_refiner` is
    whether the infotext has a refiner; each `ControlNet i` line restores ControlNet unit i
    (`modules.ui.controlnet.paste_values`)."""
    values = values_from_infotext(parsed)
    # A1111's get_hr_sampler_and_scheduler: the first pass's own sampler/schedule is "Use same"
    for name, same, first_pass in (
        ("hr_checkpoint_name", SAME_CHECKPOINT, None),
        ("hr_sampler_name", SAME_SAMPLER, parsed.get("Sampler")),
        ("hr_scheduler", SAME_SCHEDULER, parsed.get("Schedule type")),
    ):
        if name not in values or values[name] == first_pass:
            values[name] = same
    values.setdefault("hr_prompt", "")
    values.setdefault("hr_negative_prompt", "")
    values["enable_refiner"] = "Refiner" in parsed
    resized = any(values.get(k) for k in ("hr_resize_x", "hr_resize_y"))
    values["enable_hr"] = "Denoising strength" in parsed and (
        "Hires upscale" in parsed or "Hires upscaler" in parsed or resized
    )
    if "Variation seed" in parsed or "Variation seed strength" in parsed:
        values["subseed_show"] = True
    values.update(controlnet_paste_values(parsed))  # `ControlNet i` lines -> unit i's controls
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

    `fields` maps the tabs' field names to components (`Txt2ImgTab.fields`, `Img2ImgTab.fields`);
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
