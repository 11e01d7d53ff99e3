"""The Gradio UI (`modules.ui.blocks` builds the page, `modules.ui.mount` serves it).

This package's own namespace is also what A1111 extension code reaches as `modules.ui`: the few
helpers they import from there (`create_refresh_button`, `gr_show`, `plaintext_to_html` and the
tool-button symbols) are defined here; the page itself never uses them. Gradio is imported only
when one is called."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

random_symbol = "\U0001f3b2\ufe0f"  # 🎲️
reuse_symbol = "\u267b\ufe0f"  # ♻️
paste_symbol = "\u2199\ufe0f"  # ↙
refresh_symbol = "\U0001f504"  # 🔄
save_style_symbol = "\U0001f4be"  # 💾
apply_style_symbol = "\U0001f4cb"  # 📋
clear_prompt_symbol = "\U0001f5d1\ufe0f"  # 🗑️
extra_networks_symbol = "\U0001f3b4"  # 🎴
switch_values_symbol = "\U000021c5"  # ⇅
restore_progress_symbol = "\U0001f300"  # 🌀
detect_image_size_symbol = "\U0001f4d0"  # 📐
folder_symbol = "\U0001f4c2"  # 📂


def gr_show(visible: bool = True) -> Any:
    """A1111's `gr_show`: an update that shows (or hides) a component."""
    import gradio as gr

    return gr.update(visible=visible)


def plaintext_to_html(text: str, classname: str | None = None) -> str:
    """A1111's `plaintext_to_html`: text as paragraphs, escaped."""
    content = "<br>\n".join(html.escape(line) for line in text.split("\n"))
    return f"<p class='{classname}'>{content}</p>" if classname else f"<p>{content}</p>"


def create_refresh_button(
    refresh_component: Any,
    refresh_method: Callable[[], Any],
    refreshed_args: dict[str, Any] | Callable[[], dict[str, Any]],
    elem_id: str | None,
) -> Any:
    """A1111's 🔄 button for extension UIs: clicking runs `refresh_method()`, then sets
    `refreshed_args` (a dict, or a function returning one, e.g. `{"choices": [...]}`) on the
    component(s)."""
    import gradio as gr

    from modules.extensions.gradio_compat import compat_gradio

    components = list(refresh_component) if isinstance(refresh_component, list) else [refresh_component]

    def refresh() -> Any:
        refresh_method()
        args = refreshed_args() if callable(refreshed_args) else refreshed_args
        for key, value in (args or {}).items():
            for component in components:
                setattr(component, key, value)
        updates = [gr.update(**(args or {})) for _ in components]
        return updates if len(updates) > 1 else updates[0]

    button = compat_gradio.Button(
        value=refresh_symbol,
        elem_id=elem_id,
        variant="tool",
        scale=0,
        elem_classes=["sdw-refresh"],
    )
    button.click(fn=refresh, inputs=[], outputs=components)
    return button
