"""The event for a user's own change of a control (not a change made by an event's output).

Gradio (6.31) sends a dropdown's `input` twice for one pick from its list; the second answer can
come back after the user has typed into a control that the handler also sets, and undo it (a
block-merge preset reset a slider typed right after picking it). A dropdown's `select` fires once
per pick. A dropdown that takes typed values (`allow_custom_value`) sends no `select` for those,
so it keeps `input` (a typed value sends it once). Radios, checkboxes and sliders send `input`
once."""

from __future__ import annotations

from typing import Any

import gradio as gr


def user_change(component: Any) -> Any:
    """`component.select` for a dropdown that only takes its choices, else `component.input`: use
    it like either (`user_change(dropdown)(fn, inputs, outputs, ...)`)."""
    if isinstance(component, gr.Dropdown) and not component.allow_custom_value:
        return component.select
    return component.input
