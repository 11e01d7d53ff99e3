"""The page's Gradio theme and light/dark mode."""

from __future__ import annotations

import gradio as gr

from modules.services import Services


def ui_theme(services: Services) -> gr.themes.Base | str | None:
    """The Gradio theme to mount the page with (None: Gradio's default)."""
    return None
