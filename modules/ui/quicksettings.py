"""The quicksettings row above the tabs (a1111.md 10): the checkpoint dropdown with its refresh
button, switching through the model manager."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.core.errors import SdWebuiError
from modules.services import Services


def checkpoint_titles(services: Services) -> list[str]:
    return [c.title for c in services.registry.checkpoints()]


def current_checkpoint(services: Services) -> str | None:
    status = services.models.status()
    return status.checkpoint.title if status.checkpoint else None


def build_quicksettings(services: Services, blocks: gr.Blocks) -> None:
    with gr.Row(elem_id="quicksettings", equal_height=False):
        checkpoint = gr.Dropdown(
            label="Stable Diffusion checkpoint",
            choices=checkpoint_titles(services),
            value=current_checkpoint(services),
            allow_custom_value=True,
            elem_id="setting_sd_model_checkpoint",
            scale=4,
        )
        refresh = gr.Button("↻", elem_id="refresh_sd_model_checkpoint", size="sm", scale=0, min_width=42)

    def switch(title: str | None) -> Any:
        if title and title != current_checkpoint(services):
            try:
                services.options.set("sd_model_checkpoint", title)
            except SdWebuiError as exc:
                raise gr.Error(str(exc)) from exc
        return gr.update(value=current_checkpoint(services))

    def refresh_list() -> Any:
        services.registry.refresh()
        return gr.update(choices=checkpoint_titles(services), value=current_checkpoint(services))

    checkpoint.input(switch, checkpoint, checkpoint, concurrency_id="model_switch")
    refresh.click(refresh_list, None, checkpoint, queue=False)
    # the checkpoint may have loaded (and been hashed) after the page was built
    blocks.load(refresh_list, None, checkpoint, queue=False)
