"""`ui-config.json` (a1111.md: keys `"<tab>/<label>/<field>"`): remembered UI field defaults.

Every labelled input component inside a top-level tab gets keys made of the tab's id (A1111's
interface id: `txt2img`, `img2img`, `extras`, `pnginfo`, ...; sub-tabs add nothing, so img2img's
inpaint fields are `img2img/...` too), its label (a button: its text) and a field:

* `visible` for sliders, radios, checkboxes, textboxes, numbers, dropdowns and buttons that are
  visible when built;
* `value` for all of those but buttons; `minimum`, `maximum`, `step` for sliders;
* `selected` for tabs with an elem_id, named `<tab>/Tabs@<elem_id>` (the top tabs:
  `webui/Tabs@tabs`): a tab id, a tab index or null.

Saved values replace what the UI was built with; keys the file lacks are written back with the
built values, so the file lists everything a user can change. The Settings and Extensions tabs
are not tracked (as in A1111). A broken file or a bad value (wrong type, a choice that does not
exist, a slider value out of range) is logged and skipped.

This runs inside the `gr.Blocks` context, before Gradio computes the page config when the
context exits, so changed attributes are what the page shows.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.blocks import Block, BlockContext

from modules.core.atomic import atomic_write_json
from modules.services import Services

log = logging.getLogger(__name__)

UNTRACKED_TABS = frozenset({"settings", "extensions"})
"""Top-level tab ids whose components have no ui-config keys."""

VALUE_TYPES: tuple[type[gr.components.Component], ...] = (
    gr.Slider,
    gr.Radio,
    gr.Checkbox,
    gr.Textbox,
    gr.Number,
    gr.Dropdown,
)
"""Components whose `value` (and `visible`) are tracked; buttons only have `visible`."""

SLIDER_FIELDS = ("minimum", "maximum", "step")


@dataclass
class UiConfigResult:
    """What `apply_ui_config_file` did: keys applied, values refused, keys written back."""

    applied: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    written: bool = False


def _label(block: Block) -> str | None:
    label = getattr(block, "label", None)
    if isinstance(label, str) and label:
        return label
    if type(block) is gr.Button and isinstance(block.value, str) and block.value:
        return block.value
    return None


Tracked = gr.components.Component | gr.Tabs


def _walk(block: Block, path: str) -> Iterator[tuple[str, Tracked]]:
    if isinstance(block, gr.Tabs) and block.elem_id:
        yield f"{path}/Tabs@{block.elem_id}", block  # tabs have no label: their elem_id names them
    if isinstance(block, BlockContext):
        for child in block.children:
            yield from _walk(child, path)
        return
    if not (isinstance(block, VALUE_TYPES) or type(block) is gr.Button):
        return
    label = _label(block)
    if label is not None:
        yield f"{path}/{label}", block


def _top_tabs(root: BlockContext) -> gr.Tabs | None:
    """The first `gr.Tabs` found under `root` (the page's top-level tabs)."""
    for child in root.children:
        if isinstance(child, gr.Tabs):
            return child
        if isinstance(child, BlockContext) and not isinstance(child, gr.Tab):
            found = _top_tabs(child)
            if found is not None:
                return found
    return None


def tracked_components(root: BlockContext) -> list[tuple[str, Tracked]]:
    """(`<tab>/<label>`, component) for every tracked component, in page order; the top tabs
    themselves are `webui/Tabs@<elem_id>`."""
    out: list[tuple[str, Tracked]] = []
    top = _top_tabs(root)
    if top is None:
        return out
    for tab in (child for child in top.children if isinstance(child, gr.Tab)):
        tab_id = str(tab.id) if tab.id is not None else str(tab.label)
        if tab_id in UNTRACKED_TABS:
            continue
        out.extend(_walk(tab, tab_id))
    if top.elem_id:
        out.append((f"webui/Tabs@{top.elem_id}", top))
    return out


def fields_of(component: Tracked) -> list[str]:
    """The ui-config fields of one component, in the order they are applied (range before value)."""
    if isinstance(component, gr.Tabs):
        return ["selected"]
    fields = ["visible"] if component.visible is True else []
    if isinstance(component, gr.Slider):
        fields += list(SLIDER_FIELDS)
    if isinstance(component, VALUE_TYPES):
        fields.append("value")
    return fields


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice_values(component: gr.Dropdown | gr.Radio) -> list[Any]:
    return [c[1] if isinstance(c, (tuple, list)) else c for c in component.choices or []]


def check_value(component: Tracked, name: str, value: object) -> str | None:
    """Why `value` cannot go into `component.<name>`, or None when it can."""
    if isinstance(component, gr.Tabs):
        ids = [tab.id for tab in component.children if isinstance(tab, gr.Tab)]
        if value is None or (isinstance(value, str) and value in ids):
            return None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(ids):
            return None
        return f"{value!r} is not one of the tab ids {ids}"
    if name == "visible":
        return None if isinstance(value, bool) else "expected true or false"
    if name in SLIDER_FIELDS:
        if not _is_number(value):
            return "expected a number"
        if name == "step" and value <= 0:  # type: ignore[operator]
            return "the step must be above 0"
        return None
    if isinstance(component, gr.Slider):
        if not _is_number(value):
            return "expected a number"
        if not component.minimum <= value <= component.maximum:  # type: ignore[operator]
            return f"outside {component.minimum}..{component.maximum}"
        return None
    if isinstance(component, gr.Number):
        return None if _is_number(value) else "expected a number"
    if isinstance(component, gr.Checkbox):
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(component, gr.Textbox):
        return None if isinstance(value, str) else "expected a string"
    if isinstance(component, gr.Dropdown) and component.multiselect:
        items = value if isinstance(value, list) else None
        if items is None:
            return "expected a list"
        if not component.allow_custom_value:
            bad = [item for item in items if item not in _choice_values(component)]
            if bad:
                return f"{bad[0]!r} is not one of the choices"
        return None
    if isinstance(component, (gr.Dropdown, gr.Radio)):
        if isinstance(component, gr.Dropdown) and component.allow_custom_value and isinstance(value, str):
            return None
        return None if value in _choice_values(component) else f"{value!r} is not one of the choices"
    return "not a tracked field"


def _set(component: Tracked, name: str, value: object) -> None:
    if name == "value" and isinstance(component, gr.components.Component):
        component.value = component.postprocess(value)
    else:
        setattr(component, name, value)


_UNSAVABLE = object()


def _current(component: Tracked, name: str) -> object:
    """The built value of a field as the file stores it, or `_UNSAVABLE`."""
    value = getattr(component, name)
    if value is None and name == "value" and isinstance(component, gr.Textbox):
        return ""  # an empty textbox
    if value is None and name != "selected":  # a tab selection may be null (the first tab)
        return _UNSAVABLE
    if isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return _UNSAVABLE
    return value


def read_ui_config(path: Path) -> dict[str, Any] | None:
    """The saved keys; {} when there is no file; None (logged) when it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.error("cannot read %s: %s; UI defaults are not applied", path, exc)
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        log.error("%s is not valid JSON (%s); UI defaults are not applied and the file is left as it is", path, exc)
        return None
    if not isinstance(data, dict):
        log.error("%s does not hold a JSON object; UI defaults are not applied", path)
        return None
    return data


def apply_ui_config_file(root: BlockContext, path: Path) -> UiConfigResult:
    """Apply the file at `path` to the components under `root` and write back missing keys."""
    result = UiConfigResult()
    saved = read_ui_config(path)
    if saved is None:
        return result
    additions: dict[str, object] = {}
    for base, component in tracked_components(root):
        for name in fields_of(component):
            key = f"{base}/{name}"
            if key not in saved:
                if key not in additions:
                    current = _current(component, name)
                    if current is not _UNSAVABLE:
                        additions[key] = current
                continue
            value = saved[key]
            problem = check_value(component, name, value)
            if problem is None:
                try:
                    _set(component, name, value)
                except Exception as exc:  # a component that refuses the value
                    problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                log.warning("%s: %s = %r skipped: %s", path.name, key, value, problem)
                result.rejected.append(key)
            else:
                result.applied.append(key)
    result.added = list(additions)
    if additions:
        try:
            atomic_write_json(path, {**saved, **additions})
            result.written = True
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)
    return result


def apply_ui_config(blocks: gr.Blocks, services: Services) -> None:
    """Apply `ui-config.json` (`--ui-config-file`, else `<data dir>/ui-config.json`) to the built
    components and write back the keys it lacks."""
    result = apply_ui_config_file(blocks, services.paths.ui_config_file)
    if result.applied or result.rejected:
        log.info(
            "ui-config: %d values applied, %d skipped (%s)",
            len(result.applied),
            len(result.rejected),
            services.paths.ui_config_file,
        )
