"""The scripts part of the txt2img and img2img tabs (a1111.md 6.2, 10.1): A1111's
`#<tab>_script_container` with the always-on scripts' controls (each in its own group, always
shown), the Script dropdown `#script_list` ("None" and the selectable scripts' titles), and each
selectable script's controls in a group shown only while it is chosen.

The controls come from `ScriptRunner.layout(tab, build=...)`, which calls each script's `ui()`
here, inside the page, and records each script's argument slice. On Generate the tab's request
gets the API's shape (`script_request_fields`): `script_name` = the chosen script's name (its
title lower-cased, as API clients send it), `script_args` = its slice, `alwayson_scripts` =
`{name: {"args": slice}}` for every always-on script, so the engine runs scripts one way for both
doors. The handlers take the controls by name (`script_list`, `script_arg_<n>`: `fields`); a
control that is no input component (a layout block a script returned, or a plain value) keeps its
value as built.

Also here: what else extensions add to the page (their `on_ui_tabs` tabs, the `before_ui`
callbacks) and A1111's hidden `#settings_json` for page scripts' `opts`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import gradio as gr
from gradio.components import Component
from gradio.context import Context

from modules.core.requests import GenerationRequest
from modules.extensions.runner import TabScripts
from modules.extensions.script_base import Script
from modules.services import Services

log = logging.getLogger(__name__)

NONE = "None"
DROPDOWN_ID = "script_list"
DROPDOWN_FIELD = "script_list"

R = TypeVar("R", bound=GenerationRequest)


def arg_field(index: int) -> str:
    """The handler's name for argument `index` of the tab's script arguments."""
    return f"script_arg_{index}"


def script_request_fields(tab: TabScripts, selected: str | None, args: Sequence[Any]) -> dict[str, Any]:
    """The request fields for the tab's script values, in the API's shape: `script_name` (the
    chosen selectable script's name, None for "None"), `script_args` (its slice of `args`) and
    `alwayson_scripts` (every always-on script's slice). `args` is the tab's whole argument list
    (index 0, the selector, is not read)."""
    chosen = find_selectable(tab, selected)
    fields: dict[str, Any] = {"script_name": None, "script_args": ()}
    if chosen is not None:
        fields["script_name"] = api_name(chosen)
        fields["script_args"] = tuple(args[chosen.args_from or 0 : chosen.args_to or 0])
    fields["alwayson_scripts"] = {
        api_name(script): {"args": list(args[script.args_from or 0 : script.args_to or 0])} for script in tab.alwayson
    }
    return fields


def api_name(script: Script) -> str:
    """A script's name as API clients send it: its title, lower-cased (A1111's `script.name`)."""
    return script.name or str(script.title()).lower()


def find_selectable(tab: TabScripts, title: str | None) -> Script | None:
    """The selectable script the dropdown's value names (None for "None" or an unknown title)."""
    if not title or title == NONE:
        return None
    for script in tab.selectable:
        if script.title() == title:
            return script
    return None


def _is_input(control: Any) -> bool:
    return isinstance(control, Component) and bool(getattr(control, "is_rendered", True))


def _fixed_value(control: Any) -> Any:
    """The value of a control that cannot be an event input."""
    if isinstance(control, gr.blocks.Block):
        value = getattr(control, "value", None)
        return None if callable(value) else value
    return control


@dataclass
class ScriptSection:
    """One tab's script controls, as built."""

    tab: TabScripts | None
    dropdown: gr.Dropdown
    groups: dict[str, Any] = field(default_factory=dict)  # selectable title -> its group
    fields: dict[str, Any] = field(default_factory=dict)  # handler name -> component
    fixed: dict[int, Any] = field(default_factory=dict)  # argument index -> value (no input)

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        """The tab's whole argument list from the handler's named values."""
        if self.tab is None:
            return [0]
        args: list[Any] = [0] * len(self.tab.args)
        for index in range(1, len(args)):
            name = arg_field(index)
            args[index] = values[name] if name in values else self.fixed.get(index)
        return args

    def request_fields(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """`script_name`, `script_args`, `alwayson_scripts` for the tab's request."""
        if self.tab is None:
            return {}
        return script_request_fields(self.tab, values.get(DROPDOWN_FIELD), self.args(values))

    def apply(self, request: R, values: Mapping[str, Any]) -> R:
        """`request` with the script fields of the handler's values."""
        changes = self.request_fields(values)
        return replace(request, **changes) if changes else request


def build_script_section(services: Services, is_img2img: bool) -> ScriptSection:
    """Build the tab's script container where it is called (inside the settings column)."""
    tabname = "img2img" if is_img2img else "txt2img"
    setup = services.scripts
    with gr.Group(elem_id=f"{tabname}_script_container"):
        if setup is None:
            return ScriptSection(None, _dropdown([]))
        runner = setup.runner
        tab = runner.tab(is_img2img)
        made: list[gr.Dropdown] = []
        groups: dict[str, Any] = {}

        def build(script: Script) -> Any:
            if not script.alwayson and not made:  # A1111: always-on first, then the dropdown
                made.append(_dropdown(runner.selectable_titles(is_img2img)))
            if not script.create_group:
                return script.ui(is_img2img)
            failed: Exception | None = None
            with gr.Group(visible=bool(script.alwayson), elem_classes="sdw-script") as group:
                try:
                    controls = script.ui(is_img2img)
                except Exception as exc:  # the group is closed normally; the runner reports it
                    failed = exc
            script.group = group
            if not script.alwayson:
                groups[script.title()] = group
            if failed is not None:
                raise failed
            return controls

        runner.layout(tab, build=build)
        if not made:
            made.append(_dropdown(runner.selectable_titles(is_img2img)))
    section = ScriptSection(tab, made[0], groups)
    section.fields[DROPDOWN_FIELD] = section.dropdown
    for index, info in enumerate(tab.args[1:], start=1):
        if _is_input(info.component):
            section.fields[arg_field(index)] = info.component
        else:
            section.fixed[index] = _fixed_value(info.component)
    _wire_visibility(section)
    return section


def _dropdown(titles: Sequence[str]) -> gr.Dropdown:
    return gr.Dropdown(label="Script", choices=[NONE, *titles], value=NONE, elem_id=DROPDOWN_ID)


def _wire_visibility(section: ScriptSection) -> None:
    """Choosing a script shows its group and hides the others."""
    if not section.groups:
        return
    titles = list(section.groups)

    def select(title: str | None) -> list[Any]:
        return [gr.update(visible=title == name) for name in titles]

    section.dropdown.change(
        select, section.dropdown, list(section.groups.values()), queue=False, show_progress="hidden"
    )


# -- what extensions add to the page besides scripts ----------------------------------------------


@dataclass
class ExtensionTab:
    """A top-level tab an extension's `on_ui_tabs` callback returned."""

    blocks: Any
    title: str
    elem_id: str


def fire_ui_callbacks(services: Services) -> list[ExtensionTab]:
    """Before the page is built (A1111's order): `before_ui`, then `ui_tabs`, whose `gr.Blocks`
    are made here, outside the page, and rendered into their tabs by `render_extension_tab`. A
    callback that raises is logged by the registry and left out. (`ui_settings` has fired when
    the app was built, so extensions' options are in the Settings tab, built after this.)"""
    setup = services.scripts
    if setup is None:
        return []
    callbacks = setup.callbacks
    callbacks.fire("before_ui")
    tabs: list[ExtensionTab] = []
    for entry in callbacks.fire("ui_tabs"):
        try:
            blocks, title, elem_id = entry
        except (TypeError, ValueError):
            log.error("on_ui_tabs: expected (gr.Blocks, title, elem_id), got %r; skipped", entry)
            continue
        if not isinstance(blocks, gr.Blocks):
            log.error("on_ui_tabs: tab %r is not a gr.Blocks (%s); skipped", title, type(blocks).__name__)
            continue
        tabs.append(ExtensionTab(blocks, str(title), str(elem_id)))
    return tabs


def render_extension_tab(tab: ExtensionTab) -> None:
    """Render an extension's Blocks inside the current tab; a failure is shown there, not raised."""
    try:
        tab.blocks.render()
    except Exception as exc:
        log.exception("extension tab %r could not be shown", tab.title)
        gr.Markdown(f"This tab could not be shown: `{type(exc).__name__}: {exc}`", elem_classes="sdw-warning")


def build_options_json(services: Services, changed: Sequence[Any] = ()) -> gr.Textbox:
    """A1111's hidden `#settings_json`: every option's value as JSON, for page scripts (`opts` in
    modules/ui/js/a1111_compat.js). Made outside the tabs (their contents are rendered only when
    first shown); filled at page load and again when a component of `changed` changes (the
    Settings tab's result line after "Apply settings")."""
    box = gr.Textbox("", visible="hidden", interactive=False, elem_id="settings_json")
    root = Context.root_block
    if isinstance(root, gr.Blocks):
        root.load(lambda: options_json(services), None, box, queue=False, show_progress="hidden")
    for component in changed:
        component.change(lambda: options_json(services), None, box, queue=False, show_progress="hidden")
    return box


def options_json(services: Services) -> str:
    """Every option's current value as JSON."""
    return json.dumps({key: services.options.get(key) for key in services.options.infos()}, default=str)
