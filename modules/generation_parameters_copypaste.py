"""A1111's old name for `modules.infotext_utils` (a facade: internal packages never import it)."""

from __future__ import annotations

from modules.infotext_utils import (
    ParamBinding,
    PasteField,
    add_paste_fields,
    bind_buttons,
    connect_paste_params_buttons,
    create_buttons,
    parse_generation_parameters,
    paste_fields,
    quote,
    register_paste_params_button,
    registered_param_bindings,
    reset,
    unquote,
)

__all__ = [
    "ParamBinding",
    "PasteField",
    "add_paste_fields",
    "bind_buttons",
    "connect_paste_params_buttons",
    "create_buttons",
    "parse_generation_parameters",
    "paste_fields",
    "quote",
    "register_paste_params_button",
    "registered_param_bindings",
    "reset",
    "unquote",
]
