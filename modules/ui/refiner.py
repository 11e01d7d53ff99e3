"""The SDXL refiner's checkbox-accordion, shared by txt2img and img2img (A1111's Refiner script,
a1111.md 10.1/10.2): `#<tab>_enable` with its Enable box `#<tab>_enable-checkbox`, the checkpoint
`#<tab>_checkpoint` with 🔄 `#<tab>_checkpoint_refresh`, and Switch at `#<tab>_switch_at`.

`refiner_request_values` turns the three controls into the request's `refiner_checkpoint` /
`refiner_switch_at` (unticked or no checkpoint: no refiner), as A1111's `ScriptRefiner.setup`
does; the converters of both tabs call it, so the UI and the API agree on the request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.core.errors import SdWebuiError
from modules.services import Services

SWITCH_AT_DEFAULT = 0.8
NO_CHECKPOINT = ("", "None")
"""Dropdown values that mean "no refiner checkpoint chosen" (A1111 starts the dropdown at '')."""


def checkpoint_titles(services: Services) -> list[str]:
    """The checkpoint dropdowns' choices: every checkpoint's title ("name [shorthash]")."""
    return [info.title for info in services.registry.checkpoints()]


def checkpoint_title(services: Services, value: str | None) -> str | None:
    """The title of the checkpoint `value` names (any A1111 alias: title, short title, file name,
    hash), as the dropdowns offer it; None when it names none (or is empty)."""
    if not value or value in NO_CHECKPOINT:
        return None
    try:
        return services.registry.find_checkpoint(value).title
    except SdWebuiError:
        return None


def refresh_checkpoint_choices(services: Services, value: str | None, first: tuple[str, ...] = ()) -> dict[str, Any]:
    """A refresh button's update for a checkpoint dropdown: the folder scanned again, the choices
    (`first`, then the titles) and the chosen checkpoint kept under its current title (a hash
    computed meanwhile changes a title); a value in `first` stays, one that is gone is cleared."""
    services.registry.refresh()
    keep = value if value in first else checkpoint_title(services, value)
    fallback = first[0] if first else None
    return gr.update(choices=[*first, *checkpoint_titles(services)], value=keep if keep is not None else fallback)


def refiner_request_values(
    enable_refiner: bool, refiner_checkpoint: str | None, refiner_switch_at: float
) -> tuple[str | None, float | None]:
    """(request `refiner_checkpoint`, `refiner_switch_at`): both None unless the box is ticked and
    a checkpoint is chosen (A1111's `ScriptRefiner.setup`)."""
    if not enable_refiner or refiner_checkpoint is None or refiner_checkpoint in NO_CHECKPOINT:
        return None, None
    return refiner_checkpoint, float(refiner_switch_at)


@dataclass
class RefinerSection:
    """The refiner's controls; `fields` names them by the converters' keywords."""

    accordion: gr.Accordion
    enable: gr.Checkbox
    checkpoint: gr.Dropdown
    refresh: gr.Button
    switch_at: gr.Slider

    @property
    def fields(self) -> dict[str, Any]:
        return {
            "enable_refiner": self.enable,
            "refiner_checkpoint": self.checkpoint,
            "refiner_switch_at": self.switch_at,
        }


def build_refiner(prefix: str, services: Services) -> RefinerSection:
    """The Refiner checkbox-accordion of tab `prefix` (closed, unticked, no checkpoint chosen),
    built where it is called, with its 🔄 wired."""
    with gr.Accordion("Refiner", open=False, elem_id=f"{prefix}_enable") as accordion:
        enable = gr.Checkbox(label="Enable", value=False, elem_id=f"{prefix}_enable-checkbox")
        with gr.Row(equal_height=True, elem_classes="sdw-refiner-row"):
            checkpoint = gr.Dropdown(
                label="Checkpoint",
                choices=checkpoint_titles(services),
                value=None,
                elem_id=f"{prefix}_checkpoint",
                scale=4,
            )
            refresh = gr.Button(
                "🔄",
                elem_id=f"{prefix}_checkpoint_refresh",
                size="sm",
                min_width=40,
                scale=0,
                elem_classes="sdw-small-refresh",
            )
            switch_at = gr.Slider(
                0.01,
                1.0,
                value=SWITCH_AT_DEFAULT,
                step=0.01,
                label="Switch at",
                elem_id=f"{prefix}_switch_at",
                scale=4,
            )
    refresh.click(lambda value: refresh_checkpoint_choices(services, value), checkpoint, checkpoint, queue=False)
    return RefinerSection(accordion, enable, checkpoint, refresh, switch_at)
