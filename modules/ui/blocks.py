"""The whole Gradio page: the quicksettings row (checkpoint switcher) and A1111's top-level tabs
(a1111.md 10). txt2img, Extras and PNG Info are built; the other tabs exist with a short note."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.core.errors import SdWebuiError
from modules.services import Services
from modules.ui.extras import build_extras_tab
from modules.ui.img2img import build_img2img_tab
from modules.ui.pnginfo import build_pnginfo_tab
from modules.ui.settings import build_settings_tab
from modules.ui.txt2img import build_txt2img_tab

# (label, elem_id suffix) in A1111's order; txt2img and extras are built, the rest are placeholders for now
TABS = (
    ("txt2img", "txt2img"),
    ("img2img", "img2img"),
    ("Extras", "extras"),
    ("PNG Info", "pnginfo"),
    ("Checkpoint Merger", "modelmerger"),
    ("Train", "train"),
    ("Settings", "settings"),
    ("Extensions", "extensions"),
)

CSS = """
#quicksettings { gap: 4px; align-items: flex-end; max-width: 560px; }
#refresh_sd_model_checkpoint { max-width: 42px; min-width: 42px; height: 42px; }
.token-counter { text-align: right; font-size: 0.8em; opacity: 0.7; margin-bottom: -8px; }
.token-counter > div, .token-counter span { padding: 0 !important; min-height: 0 !important; }
#txt2img_generate, #txt2img_interrupt, #txt2img_skip { min-height: 72px; }
#txt2img_generate_box { flex-wrap: nowrap; }
#txt2img_sampler_row > * { min-width: 160px !important; }
#txt2img_seed_row button { align-self: center; max-height: 42px; }
.sdw-progress { position: relative; height: 22px; border-radius: 6px; overflow: hidden;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.sdw-progress-bar { position: absolute; left: 0; top: 0; bottom: 0; background: var(--color-accent); opacity: .55; }
.sdw-progress-text { position: relative; padding-left: 8px; font-size: 0.85em; }
#html_info_txt2img .infotext { font-size: 0.9em; word-break: break-word; }
.sdw-warning { color: var(--error-text-color, #c00); }
.sdw-coming { padding: 24px; opacity: 0.75; }
"""


def checkpoint_titles(services: Services) -> list[str]:
    return [c.title for c in services.registry.checkpoints()]


def current_checkpoint(services: Services) -> str | None:
    status = services.models.status()
    return status.checkpoint.title if status.checkpoint else None


def build_blocks(services: Services) -> gr.Blocks:
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as blocks:
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

        with gr.Tabs(elem_id="tabs") as tabs:
            for label, name in TABS:
                with gr.Tab(label, id=name, elem_id=f"tab_{name}"):
                    if name == "txt2img":
                        txt2img = build_txt2img_tab(services)
                    elif name == "img2img":
                        build_img2img_tab(services)
                    elif name == "pnginfo":
                        build_pnginfo_tab(services, txt2img, tabs)
                    elif name == "extras":
                        build_extras_tab(services)
                    elif name == "settings":
                        build_settings_tab(services)
                    else:
                        gr.Markdown(f"**{label}** is coming: this tab is not built yet.", elem_classes="sdw-coming")
    return blocks
