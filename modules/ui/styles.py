"""Prompt styles in the generation tabs (a1111.md 10.1, `styles.csv` through `StyleDatabase`):
📋 applies the selected styles to the prompt boxes; 🖌️ opens the style editor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.core.errors import SdWebuiError
from modules.services import Services

if TYPE_CHECKING:
    from modules.ui.common import PromptRow


def apply_styles(services: Services, prompt: str, negative: str, names: list[str] | None) -> tuple[str, str, Any]:
    """The selected styles written into the prompts (A1111's 📋); the selection is cleared so the
    styles are not applied a second time at generation."""
    try:
        new_prompt, new_negative = services.styles.apply(prompt or "", negative or "", names or ())
    except SdWebuiError as exc:
        raise gr.Error(str(exc)) from exc
    return new_prompt, new_negative, gr.update(value=[])


def build_styles_dialog(prefix: str, services: Services, row: PromptRow) -> None:
    """Wire 📋 (apply) and build the 🖌️ style editor for one tab's prompt row."""
    row.style_apply.click(
        lambda p, n, names: apply_styles(services, p, n, names),
        [row.prompt, row.negative, row.styles],
        [row.prompt, row.negative, row.styles],
        queue=False,
    )
