"""A1111's `modules.script_callbacks` for extension code (a facade: internal packages never import
it). Every `on_<kind>(callback, *, name=None)` registers with the app's `CallbackRegistry`
(`modules.extensions.callbacks`), recording the script file that called it; see that module for
which kinds this engine calls and when.
"""

from __future__ import annotations

import sys
from typing import Any

from modules.extensions import runtime
from modules.extensions.callbacks import (
    CALLBACK_KINDS,
    NOT_CALLED,
    AfterCFGCallbackParams,
    BeforeTokenCounterParams,
    CallbackRegistry,
    CFGDenoisedParams,
    CFGDenoiserParams,
    ExtraNoiseParams,
    ImageGridLoopParams,
    ImageSaveParams,
    ScriptCallback,
    UiTrainTabParams,
)

__all__ = [
    "CALLBACK_KINDS",
    "NOT_CALLED",
    "AfterCFGCallbackParams",
    "BeforeTokenCounterParams",
    "CFGDenoisedParams",
    "CFGDenoiserParams",
    "ExtraNoiseParams",
    "ImageGridLoopParams",
    "ImageSaveParams",
    "ScriptCallback",
    "UiTrainTabParams",
    "on_after_component",
    "on_app_started",
    "on_before_component",
    "on_before_image_saved",
    "on_before_reload",
    "on_before_token_counter",
    "on_before_ui",
    "on_cfg_after_cfg",
    "on_cfg_denoised",
    "on_cfg_denoiser",
    "on_extra_noise",
    "on_image_grid",
    "on_image_saved",
    "on_infotext_pasted",
    "on_list_optimizers",
    "on_list_unets",
    "on_model_loaded",
    "on_script_unloaded",
    "on_ui_settings",
    "on_ui_tabs",
    "on_ui_train_tabs",
    "remove_callbacks_for_function",
    "remove_current_script_callbacks",
]


def registry() -> CallbackRegistry:
    """The app's callback registry (the installed script environment's)."""
    env = runtime.environment()
    if env.callbacks is None:
        raise RuntimeError("the script API is not set up: the script environment has no callback registry")
    return env.callbacks


def _caller_file() -> str:
    """The file of the first frame outside this module (the script registering a callback)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back  # type: ignore[assignment]
    return frame.f_code.co_filename if frame is not None else "unknown file"


def _add(kind: str, callback: Any, name: str | None) -> None:
    registry().add(kind, callback, name=name, filename=_caller_file())


def remove_current_script_callbacks() -> None:
    """Remove every callback the calling script file registered."""
    filename = _caller_file()
    if filename != "unknown file":
        registry().remove_script(filename)


def remove_callbacks_for_function(callback_func: Any) -> None:
    registry().remove_function(callback_func)


def on_app_started(callback: Any, *, name: str | None = None) -> None:
    """`callback(demo, app)` once the app is built: `demo` the Gradio Blocks (None without the
    UI), `app` the FastAPI app (add routes here)."""
    _add("app_started", callback, name)


def on_before_reload(callback: Any, *, name: str | None = None) -> None:
    _add("before_reload", callback, name)


def on_model_loaded(callback: Any, *, name: str | None = None) -> None:
    """`callback(sd_model)` after a checkpoint was loaded (`shared.sd_model`'s view of it)."""
    _add("model_loaded", callback, name)


def on_ui_tabs(callback: Any, *, name: str | None = None) -> None:
    """`callback()` returns None or `[(blocks, title, elem_id), ...]`: new top-level tabs."""
    _add("ui_tabs", callback, name)


def on_ui_train_tabs(callback: Any, *, name: str | None = None) -> None:
    _add("ui_train_tabs", callback, name)


def on_ui_settings(callback: Any, *, name: str | None = None) -> None:
    """`callback()` adds options with `shared.opts.add_option(key, shared.OptionInfo(...))`."""
    _add("ui_settings", callback, name)


def on_before_image_saved(callback: Any, *, name: str | None = None) -> None:
    """`callback(ImageSaveParams)` before an image is written; change `image` or
    `pnginfo["parameters"]` to change what is saved."""
    _add("before_image_saved", callback, name)


def on_image_saved(callback: Any, *, name: str | None = None) -> None:
    """`callback(ImageSaveParams)` after an image was written (`filename` is the file)."""
    _add("image_saved", callback, name)


def on_extra_noise(callback: Any, *, name: str | None = None) -> None:
    _add("extra_noise", callback, name)


def on_cfg_denoiser(callback: Any, *, name: str | None = None) -> None:
    """`callback(CFGDenoiserParams)` before every UNet call of sampling."""
    _add("cfg_denoiser", callback, name)


def on_cfg_denoised(callback: Any, *, name: str | None = None) -> None:
    """`callback(CFGDenoisedParams)` after every UNet call of sampling."""
    _add("cfg_denoised", callback, name)


def on_cfg_after_cfg(callback: Any, *, name: str | None = None) -> None:
    _add("cfg_after_cfg", callback, name)


def on_before_component(callback: Any, *, name: str | None = None) -> None:
    _add("before_component", callback, name)


def on_after_component(callback: Any, *, name: str | None = None) -> None:
    _add("after_component", callback, name)


def on_image_grid(callback: Any, *, name: str | None = None) -> None:
    """`callback(ImageGridLoopParams)` before `modules.images.image_grid` lays out a grid."""
    _add("image_grid", callback, name)


def on_infotext_pasted(callback: Any, *, name: str | None = None) -> None:
    """`callback(infotext, params)` may change the parsed params of a pasted infotext."""
    _add("infotext_pasted", callback, name)


def on_script_unloaded(callback: Any, *, name: str | None = None) -> None:
    _add("script_unloaded", callback, name)


def on_before_ui(callback: Any, *, name: str | None = None) -> None:
    _add("before_ui", callback, name)


def on_list_optimizers(callback: Any, *, name: str | None = None) -> None:
    _add("list_optimizers", callback, name)


def on_list_unets(callback: Any, *, name: str | None = None) -> None:
    _add("list_unets", callback, name)


def on_before_token_counter(callback: Any, *, name: str | None = None) -> None:
    _add("before_token_counter", callback, name)


# A1111's `<kind>_callback(...)` functions that call the registered callbacks


def app_started_callback(demo: Any, app: Any) -> None:
    registry().fire("app_started", demo, app)


def model_loaded_callback(sd_model: Any) -> None:
    registry().fire("model_loaded", sd_model)


def ui_tabs_callback() -> list[Any]:
    return registry().fire("ui_tabs")


def ui_settings_callback() -> None:
    registry().fire("ui_settings")


def before_image_saved_callback(params: ImageSaveParams) -> None:
    registry().fire("before_image_saved", params)


def image_saved_callback(params: ImageSaveParams) -> None:
    registry().fire("image_saved", params)


def image_grid_callback(params: ImageGridLoopParams) -> None:
    registry().fire("image_grid", params)


def infotext_pasted_callback(infotext: str, params: dict[str, Any]) -> None:
    registry().fire("infotext_pasted", infotext, params)


def before_token_counter_callback(params: BeforeTokenCounterParams) -> None:
    registry().fire("before_token_counter", params)


def __getattr__(name: str) -> Any:
    if name == "callback_map":  # A1111's dict of the live lists, `callbacks_<kind>`
        return registry().callback_map
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
