"""`ui-config.json` (a1111.md: keys `"<tab>/<label>/<field>"`): remembered UI field defaults."""

from __future__ import annotations

import gradio as gr

from modules.services import Services


def apply_ui_config(blocks: gr.Blocks, services: Services) -> None:
    """Apply `ui-config.json` to the built components and write back the keys it lacks.
    (Being built in this session; until then the UI keeps its built-in defaults.)"""
