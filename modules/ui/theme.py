"""The page's Gradio theme (`gradio_theme`) and light/dark mode (`--theme`, else `ui_color_mode`).

Themes are Gradio's built-in classes, looked up by A1111's hub names ("gradio/soft"...); nothing
is downloaded. Light/dark is applied in the browser by `js/theme.js`: the page-load event of the
quicksettings row hands it the mode (`color_mode`), and the script remembers it for the next load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gradio as gr

from modules.services import Services

log = logging.getLogger(__name__)

BUILT_IN_THEMES: dict[str, Callable[[], gr.themes.Base]] = {
    "Default": gr.themes.Default,
    "gradio/base": gr.themes.Base,
    "gradio/default": gr.themes.Default,
    "gradio/glass": gr.themes.Glass,
    "gradio/monochrome": gr.themes.Monochrome,
    "gradio/soft": gr.themes.Soft,
    "gradio/citrus": gr.themes.Citrus,
    "gradio/ocean": gr.themes.Ocean,
    "gradio/origin": gr.themes.Origin,
}
"""`gradio_theme` value -> Gradio's theme class (A1111 names them by their hub repository)."""

COLOR_MODES = {"Auto (browser)": "auto", "Light": "light", "Dark": "dark"}
"""`ui_color_mode` choice -> the mode `theme.js` applies."""


def theme_for(name: str) -> gr.themes.Base:
    """The built-in theme called `name`; an unknown name (a hub theme we cannot fetch offline) is
    logged and gives the default theme."""
    factory = BUILT_IN_THEMES.get(name)
    if factory is None:
        log.warning("gradio_theme %r is not a built-in Gradio theme (no downloads): using Default", name)
        factory = gr.themes.Default
    return factory()


def ui_theme(services: Services) -> gr.themes.Base:
    """The Gradio theme to mount the page with."""
    return theme_for(str(services.options.get("gradio_theme") or "Default"))


def color_mode(services: Services) -> str:
    """ "light", "dark" or "auto": the `--theme` flag wins, else the `ui_color_mode` option."""
    forced = services.settings.theme
    if forced in ("light", "dark"):
        return forced
    choice = services.options.get("ui_color_mode") if "ui_color_mode" in services.options else None
    return COLOR_MODES.get(str(choice), "auto")


APPLY_MODE_JS = "(mode) => { window.sdwColorMode?.apply(mode); return []; }"
"""Event `js` that hands the mode (a hidden textbox's value) to `theme.js`."""
