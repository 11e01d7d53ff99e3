"""The Settings tab (a1111.md 10.7), generated from the options registry: a list of sections on
the left, one group of fields per section, each field chosen from its option's type, choices and
range, with elem_id `setting_<key>`. Options nothing acts on yet (`OptionInfo.implemented`) are
left out; frozen ones (--freeze-settings...) are shown read-only; with --hide-ui-dir-config the
folder settings (`modules.core.dir_config`) are left out and refused. "Apply settings" validates and
applies the changed values and saves config.json; "Reload UI" reloads the page. Values are filled
in by a page-load event, so a reload shows what is saved now, not what was current when the page
was built (only the fields that changed since are sent: each update is costly in the browser)."""

from __future__ import annotations

import copy
import html
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.context import Context

from modules.core.dir_config import dir_config_locked
from modules.core.errors import SdWebuiError
from modules.core.option_defaults import SECTIONS
from modules.core.option_info import OptionInfo
from modules.services import Services

log = logging.getLogger(__name__)

HIDDEN_SECTIONS = frozenset({"hidden"})
QUICKSETTINGS = frozenset({"sd_model_checkpoint"})
"""Always kept out of the Settings tab (the quicksettings row's checkpoint switcher owns it)."""

CSS = """
#settings_sections { min-width: 200px; max-width: 240px; }
#settings_sections .wrap { flex-direction: column; }
#settings_sections label { width: 100%; }

"""


def _hide_dirs(services: Services) -> bool:
    """--hide-ui-dir-config (a bare options holder without flags, as some callers pass: off)."""
    settings = getattr(services, "settings", None)
    return bool(settings is not None and settings.hide_ui_dir_config)


def quicksettings_keys(services: Services) -> list[str]:
    """The `quicksettings_list` keys shown above the tabs, in order: known, shown, once each
    (an unknown key is logged and skipped)."""
    wanted = services.options.get("quicksettings_list") or []
    infos = services.options.infos()
    out: list[str] = []
    for key in wanted if isinstance(wanted, list) else []:
        key = str(key).strip()
        info = infos.get(key)
        if info is None or info.section in HIDDEN_SECTIONS:
            log.warning("quicksettings_list: %r is not a setting that can be shown; skipped", key)
            continue
        if not info.implemented:
            log.warning("quicksettings_list: %r is not acted on yet (%s); skipped", key, info.note)
            continue
        if dir_config_locked(key, _hide_dirs(services)):
            log.warning("quicksettings_list: %r is hidden with --hide-ui-dir-config; skipped", key)
            continue
        if key not in out:
            out.append(key)
    return out


def shown_options(
    infos: Sequence[OptionInfo], quick: Collection[str] = QUICKSETTINGS, *, hide_dirs: bool = False
) -> list[OptionInfo]:
    """The Settings tab's fields: implemented (an option nothing acts on yet is not offered as if it
    worked; the API still lists and stores it), not hidden, not in the quicksettings row (`quick`:
    A1111 shows a quicksetting only above the tabs, and one page holds each `setting_<key>` elem_id
    once), not a folder setting when `hide_dirs` (--hide-ui-dir-config)."""
    return [
        i
        for i in infos
        if i.implemented
        and i.section not in HIDDEN_SECTIONS
        and i.key not in QUICKSETTINGS
        and i.key not in quick
        and not dir_config_locked(i.key, hide_dirs)
    ]


def section_label(section: str) -> str:
    return SECTIONS.get(section, section)


def _is_int(info: OptionInfo) -> bool:
    return info.type is int


def to_ui(info: OptionInfo, value: object) -> Any:
    """An option value as its component shows it."""
    if info.type is list and info.choices is None:
        items = value if isinstance(value, list | tuple) else []
        return ", ".join(str(v) for v in items)
    return value


def from_ui(info: OptionInfo, value: Any) -> object:
    """A component's value as the option's type (validation happens in `Options`)."""
    if info.type is list:
        if info.choices is None:
            text = value if isinstance(value, str) else ""
            return [part.strip() for part in text.split(",") if part.strip()]
        return list(value or [])
    if info.type is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if info.type is str and value is None:
        return ""
    return value


def make_component(info: OptionInfo, value: Any, **layout: Any) -> gr.components.Component:
    """The field for one option: checkbox, dropdown, slider, number or textbox. `layout`: extra
    keyword arguments for the component (scale, min_width...), as the quicksettings row uses."""
    elem_id = f"setting_{info.key}"
    common: dict[str, Any] = {"label": info.label, "elem_id": elem_id, "interactive": not info.readonly, **layout}
    if info.type is bool:
        return gr.Checkbox(value=bool(value), **common)
    if info.choices is not None:
        choices = info.choice_list() or []
        multi = info.type is list
        return gr.Dropdown(
            choices=[str(c) if not isinstance(c, (str, int, float)) else c for c in choices],
            value=value,
            multiselect=multi,
            allow_custom_value=callable(info.choices),
            **common,
        )
    if info.type in (int, float):
        step = info.step if info.step is not None else (1 if _is_int(info) else None)
        if info.minimum is not None and info.maximum is not None:
            return gr.Slider(
                minimum=info.minimum,
                maximum=info.maximum,
                step=step if step is not None else 0.01,
                value=value,
                **common,
            )
        return gr.Number(
            value=value,
            minimum=info.minimum,
            maximum=info.maximum,
            precision=0 if _is_int(info) else None,
            **common,
        )
    return gr.Textbox(value=to_ui(info, value), lines=1, max_lines=1 if info.type is str else 3, **common)


def changed_values(services: Services, infos: Sequence[OptionInfo], values: Sequence[Any]) -> dict[str, object]:
    """The fields whose value differs from the current one (readonly fields never count)."""
    out: dict[str, object] = {}
    for info, raw in zip(infos, values, strict=True):
        if info.readonly:
            continue
        value = from_ui(info, raw)
        if value is None:
            raise gr.Error(f"{html.escape(info.label)}: please enter a value")
        if value != services.options.get(info.key):
            out[info.key] = value
    return out


def apply_settings(services: Services, infos: Sequence[OptionInfo], values: Sequence[Any]) -> str:
    """Apply and save the changed fields; the result line shown under the buttons."""
    changes = changed_values(services, infos, values)
    if not changes:
        return "0 settings changed."
    locked = [key for key in changes if dir_config_locked(key, _hide_dirs(services))]
    if locked:
        raise gr.Error(f"not possible to change {', '.join(locked)}: restricted with --hide-ui-dir-config")
    try:
        result = services.options.apply_update(changes, ignore_unknown=True, allow_restricted=True)
    except SdWebuiError as exc:
        raise gr.Error(str(exc)) from exc
    except Exception as exc:  # an on_change callback (e.g. a checkpoint that fails to load)
        raise gr.Error(f"{type(exc).__name__}: {exc}") from exc
    services.options.save()
    changed = result.changed
    noun = "setting" if len(changed) == 1 else "settings"
    text = f"{len(changed)} {noun} changed"
    if changed:
        text += ": " + ", ".join(changed)
    restart = [k for k in changed if services.options.info(k).requires_restart]
    if restart:
        text += ". A restart is needed for: " + ", ".join(restart)
    return html.escape(text) + "."


@dataclass(frozen=True)
class BuiltField:
    """What the page's config carries for one field: the value (as the field shows it) and, for
    an option with dynamic choices, the choices, both as they were when the tab was built."""

    value: Any
    choices: tuple[Any, ...] | None


def built_field(info: OptionInfo, value: Any) -> BuiltField:
    choices = tuple(info.choice_list() or []) if callable(info.choices) else None
    return BuiltField(copy.deepcopy(to_ui(info, value)), choices)  # a copy: no list shared with the options


def current_values(services: Services, infos: Sequence[OptionInfo], built: Mapping[str, BuiltField]) -> list[Any]:
    """What the page load puts into the fields: the saved values (with fresh dynamic choices).

    A field whose value and choices are still those in `built` (what the page was built with) gets
    `gr.skip()`, which the browser does not apply: Gradio's front end walks its whole component
    tree for every field it updates; updating all of the tab's ~160 fields (each also a progress
    target, see `build_settings_tab`) made a page load 10-12 s in Chromium on a 2-core CPU
    instead of ~5 s."""
    out: list[Any] = []
    for info in infos:
        now = built_field(info, services.options.get(info.key))
        if now == built.get(info.key):
            out.append(gr.skip())
        elif now.choices is not None:
            out.append(gr.update(choices=list(now.choices), value=now.value))
        else:
            out.append(now.value)
    return out


@dataclass
class SettingsTab:
    submit: gr.Button
    restart: gr.Button
    result: gr.HTML
    fields: dict[str, gr.components.Component]


def build_settings_tab(services: Services) -> SettingsTab:
    """Build the tab inside the current `gr.Blocks` (its page-load event fills in the values)."""
    blocks = Context.root_block
    assert blocks is not None, "build_settings_tab must run inside gr.Blocks"
    infos = shown_options(
        list(services.options.infos().values()),
        quicksettings_keys(services),
        hide_dirs=_hide_dirs(services),
    )
    by_section: dict[str, list[OptionInfo]] = {}
    for info in infos:
        by_section.setdefault(info.section, []).append(info)
    sections = [s for s in SECTIONS if s in by_section] + [s for s in by_section if s not in SECTIONS]
    ordered = [info for s in sections for info in by_section[s]]
    labels = [section_label(s) for s in sections]

    fields: dict[str, gr.components.Component] = {}
    built: dict[str, BuiltField] = {}
    groups: list[gr.Column] = []
    with gr.Row(elem_id="settings_buttons"):
        submit = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
        restart = gr.Button("Reload UI", elem_id="settings_restart_gradio")
    result = gr.HTML("", min_height=0, elem_id="settings_result")
    with gr.Row(equal_height=False, elem_id="settings"):
        with gr.Column(scale=1, min_width=200):
            picker = gr.Radio(
                choices=labels, value=labels[0] if labels else None, show_label=False, elem_id="settings_sections"
            )
            gr.HTML(f"<style>{CSS}</style>", padding=False, min_height=0)
        with gr.Column(scale=5):
            for index, section in enumerate(sections):
                with gr.Column(visible=index == 0, elem_id=f"settings_section_{section}") as column:
                    gr.Markdown(f"### {html.escape(section_label(section))}")
                    for info in by_section[section]:
                        frozen = services.options.frozen_reason(info.key) is not None
                        layout = {"interactive": False} if frozen else {}
                        value = services.options.get(info.key)
                        fields[info.key] = make_component(info, value, **layout)
                        built[info.key] = built_field(info, value)
                groups.append(column)

    components = [fields[info.key] for info in ordered]

    def show_section(label: str) -> list[Any]:
        return [gr.update(visible=label == name) for name in labels]

    picker.change(show_section, picker, groups, queue=False, show_progress="hidden", show_progress_on=picker)
    submit.click(
        lambda *values: apply_settings(services, ordered, values),
        components,
        result,
        queue=False,
    )
    restart.click(None, None, None, js="() => { location.reload(); }")
    # only the fields changed since the page was built are sent, and the progress goes on one
    # component: Gradio's front end pays a walk of its whole component tree per updated field and,
    # on every later event's status change, per progress target it ever tracked
    blocks.load(
        lambda: current_values(services, ordered, built),
        None,
        components,
        queue=False,
        show_progress="hidden",
        show_progress_on=result,
    )
    return SettingsTab(submit, restart, result, fields)
