"""`user_change`: the event that follows a user's own change of a control, once per change."""

from __future__ import annotations

import gradio as gr

from modules.ui.user_events import user_change


def _targets(blocks: gr.Blocks, component: object) -> set[str]:
    return {t[1] for fn in blocks.fns.values() for t in fn.targets if t[0] == component._id}  # type: ignore[attr-defined]


def test_a_dropdown_of_choices_follows_select_others_follow_input() -> None:
    with gr.Blocks() as blocks:
        choices = gr.Dropdown(["a", "b"], value="a")
        typed = gr.Dropdown(["a", "b"], value="a", allow_custom_value=True)
        radio = gr.Radio(["a", "b"], value="a")
        checkbox = gr.Checkbox()
        for component in (choices, typed, radio, checkbox):
            user_change(component)(lambda value: None, component, None)
    # a pick from the list sends `select` once (and `input` twice); typed values send only `input`
    assert _targets(blocks, choices) == {"select"}
    assert _targets(blocks, typed) == {"input"}
    assert _targets(blocks, radio) == {"input"}
    assert _targets(blocks, checkbox) == {"input"}
