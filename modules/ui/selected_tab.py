"""Which tab of a `gr.Tabs` is selected, held in the page: a hidden value that the tab's
`select` sets in the browser, with no server round trip.

A `gr.State` set by a server event on `select` races the next click: a Generate (or an upload
into the new tab's editor) sent before the select's answer came back ran with the previous tab.
A1111 reads the selected tab in the browser at click time; this does the same, so every event
that takes the holder as an input gets the tab the user sees. The holder's `change` fires after
each select, for events that follow the tab (the img2img resolution preview, visibility)."""

from __future__ import annotations

import json

import gradio as gr

TabHolder = gr.Number | gr.Textbox


def selected_tab_holder(initial: int | str, elem_id: str) -> TabHolder:
    """A hidden, non-interactive value starting at `initial`: an integer (`gr.Number`) or a
    string (`gr.Textbox`). In the DOM, so its `change` fires; unlabelled, so ui-config.json does
    not track it."""
    if isinstance(initial, str):
        return gr.Textbox(initial, visible="hidden", interactive=False, elem_id=elem_id, container=False)
    return gr.Number(initial, precision=0, visible="hidden", interactive=False, elem_id=elem_id, container=False)


def set_on_select(tab: gr.Tab, holder: TabHolder, value: int | str) -> None:
    """Selecting `tab` sets `holder` to `value` in the browser (a JS-only event)."""
    tab.select(None, None, holder, js=f"() => {json.dumps(value)}", queue=False, show_progress="hidden")
