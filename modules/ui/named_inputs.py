"""Event handlers take their inputs by name, not by position.

A tab builds one `dict[str, Component]` of the controls a handler reads (`fields`) and hands
Gradio the set of those components (`inputs_of(fields)`). Given a *set* of inputs, Gradio calls
the handler with ONE dict `{component: value}`; `values_of(fields, data)` turns it back into
`{name: value}`. Adding a control (say a script's) is one more entry in `fields`, with no list
order to keep in step with a function signature.

    fields = {"prompt": row.prompt, "steps": steps}
    button.click(lambda data: run(values_of(fields, data)), inputs_of(fields), outputs)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradio.blocks import Block
from gradio.components import Component

Fields = Mapping[str, Component]


def inputs_of(fields: Fields) -> set[Block]:
    """The event's `inputs`: a set, so the handler receives one `{component: value}` dict."""
    return set(fields.values())


def values_of(fields: Fields, data: Mapping[Component, Any]) -> dict[str, Any]:
    """`{name: value}` for every field, from the dict Gradio passed the handler."""
    return {name: data[component] for name, component in fields.items()}
