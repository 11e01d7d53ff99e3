"""A1111's `modules.infotext_utils` for extension code (a facade: internal packages never import
it): `PasteField`, `ParamBinding`, `parse_generation_parameters` (over `modules.core.infotext`),
`quote` / `unquote`.

The page's paste buttons are built by the UI itself: buttons an extension registers with
`register_paste_params_button` / `bind_buttons` are recorded and logged once, but not connected.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from modules.core.infotext import parse_infotext
from modules.extensions import runtime

log = logging.getLogger(__name__)


class ParamBinding:
    def __init__(
        self,
        paste_button: Any,
        tabname: str,
        source_text_component: Any = None,
        source_image_component: Any = None,
        source_tabname: str | None = None,
        override_settings_component: Any = None,
        paste_field_names: list[str] | None = None,
    ) -> None:
        self.paste_button = paste_button
        self.tabname = tabname
        self.source_text_component = source_text_component
        self.source_image_component = source_image_component
        self.source_tabname = source_tabname
        self.override_settings_component = override_settings_component
        self.paste_field_names = paste_field_names or []


class PasteField(tuple[Any, Any]):
    """`(component, target)`: the infotext key (`label`) or function (`function`) that fills the
    component when an infotext is pasted; `api` is the request field it stands for."""

    def __new__(cls, component: Any, target: Any, *, api: str | None = None) -> PasteField:
        return super().__new__(cls, (component, target))

    def __init__(self, component: Any, target: Any, *, api: str | None = None) -> None:
        super().__init__()
        self.api = api
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None


paste_fields: dict[str, dict[str, Any]] = {}
registered_param_bindings: list[ParamBinding] = []
_warned: set[str] = set()


def reset() -> None:
    paste_fields.clear()
    registered_param_bindings.clear()


def quote(text: Any) -> Any:
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> Any:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def _option(key: str, default: Any) -> Any:
    env = runtime.maybe_environment()
    if env is None or key not in env.options:
        return default
    return env.options.get(key)


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None) -> dict[str, Any]:
    """The infotext `x` as a dict (A1111's keys and string values; `Size-1`/`Size-2` ...);
    `skip_fields` defaults to the `infotext_skip_pasting` option."""
    if skip_fields is None:
        skip = _option("infotext_skip_pasting", [])
        skip_fields = [str(k) for k in skip] if isinstance(skip, list) else []
    return parse_infotext(x, backcompat=bool(_option("auto_backcompat", True)), skip_keys=skip_fields)


def _not_connected(what: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning("%s: extension paste buttons are recorded but not connected in this UI", what)


def add_paste_fields(tabname: str, init_img: Any, fields: Any, override_settings_component: Any = None) -> None:
    fields = [f if isinstance(f, PasteField) else PasteField(*f) for f in (fields or [])]
    paste_fields[tabname] = {
        "init_img": init_img,
        "fields": fields,
        "override_settings_component": override_settings_component,
    }
    _not_connected("add_paste_fields")


def register_paste_params_button(binding: ParamBinding) -> None:
    registered_param_bindings.append(binding)
    _not_connected("register_paste_params_button")


def create_buttons(tabs_list: list[str]) -> dict[str, Any]:
    import gradio as gr

    return {tab: gr.Button(f"Send to {tab}", elem_id=f"{tab}_tab") for tab in tabs_list}


def bind_buttons(buttons: dict[str, Any], send_image: Any, send_generate_info: Any) -> None:
    for tabname, button in buttons.items():
        source_tabname = send_generate_info if isinstance(send_generate_info, str) else None
        source_text = None if isinstance(send_generate_info, str) else send_generate_info
        register_paste_params_button(
            ParamBinding(
                paste_button=button,
                tabname=tabname,
                source_text_component=source_text,
                source_image_component=send_image,
                source_tabname=source_tabname,
            )
        )


def connect_paste_params_buttons() -> None:
    _not_connected("connect_paste_params_buttons")
