"""The whole Gradio page: the quicksettings row and A1111's top-level tabs (a1111.md 10), then the
wiring between tabs (send-to, the checkpoint's effect on img2img) and ui-config.json over the
built tree."""

from __future__ import annotations

import gradio as gr

from modules.services import Services
from modules.ui.extensions import build_extensions_tab
from modules.ui.extras import build_extras_tab
from modules.ui.img2img import build_img2img_tab, is_instruct_pix2pix
from modules.ui.merger import build_merger_tab
from modules.ui.pnginfo import build_pnginfo_tab
from modules.ui.quicksettings import build_quicksettings
from modules.ui.scripts import build_options_json, fire_ui_callbacks, render_extension_tab
from modules.ui.send_to import wire_send_to
from modules.ui.settings import build_settings_tab
from modules.ui.train import build_train_tab
from modules.ui.txt2img import build_txt2img_tab
from modules.ui.ui_config import apply_ui_config

# (label, elem_id suffix) in A1111's order
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


def build_blocks(services: Services) -> gr.Blocks:
    # extensions' before_ui / ui_tabs callbacks; their tabs go before Settings (A1111)
    extension_tabs = fire_ui_callbacks(services)
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as blocks:
        quick = build_quicksettings(services, blocks)

        with gr.Tabs(elem_id="tabs") as tabs:
            for label, name in TABS:
                if name == "settings":
                    for ext in extension_tabs:
                        with gr.Tab(ext.title, id=ext.elem_id, elem_id=f"tab_{ext.elem_id}"):
                            render_extension_tab(ext)
                with gr.Tab(label, id=name, elem_id=f"tab_{name}"):
                    if name == "txt2img":
                        txt2img = build_txt2img_tab(services)
                    elif name == "img2img":
                        img2img = build_img2img_tab(services)
                    elif name == "pnginfo":
                        pnginfo = build_pnginfo_tab(services)
                    elif name == "extras":
                        extras = build_extras_tab(services)
                    elif name == "settings":
                        settings = build_settings_tab(services)
                    elif name == "modelmerger":
                        build_merger_tab(services)
                    elif name == "extensions":
                        build_extensions_tab(services)
                    elif name == "train":
                        build_train_tab(services)
                    else:
                        gr.Markdown(f"**{label}** is coming: this tab is not built yet.", elem_classes="sdw-coming")
        build_options_json(services, [settings.result])  # outside the tabs: A1111's `opts` for page scripts
        wire_send_to(services, tabs, txt2img, img2img, extras, pnginfo)
        if quick.status is not None and img2img.image_cfg_scale is not None:
            # img2img's Image CFG Scale follows the checkpoint (shown for instruct-pix2pix only):
            # the load status line changes when a switch from the top bar has finished
            quick.status.change(
                lambda: gr.update(visible=is_instruct_pix2pix(services)),
                None,
                img2img.image_cfg_scale,
                queue=False,
                show_progress="hidden",
            )
        apply_ui_config(blocks, services)
    return blocks
