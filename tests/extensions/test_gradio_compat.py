"""Gradio 3.41-style extension code over Gradio 6 (`modules.extensions.gradio_compat`), A1111's
`modules.ui_components` and the `modules.ui` helpers extensions import: 3.41's arguments are
translated or dropped, `.style()` / `Class.update()` / `_js=` work, the components are Gradio's
own for the page and for `isinstance`, `adapt_module` rebinds an extension's gradio globals, and
nothing writes `.pyi` files next to extension code."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import gradio
import pytest

from modules.extensions.gradio_compat import adapt_module, compat_gradio, translate_event_kwargs, translate_kwargs

gr: Any = compat_gradio


def _config(blocks: gradio.Blocks, component: Any) -> dict[str, Any]:
    [entry] = [c for c in blocks.get_config_file()["components"] if c["id"] == component._id]
    return dict(entry)


def test_gradio_341_arguments_build_gradio_6_components() -> None:
    with gradio.Blocks() as blocks:
        button = gr.Button("🔄", variant="tool", tooltip="Refresh")
        row = gr.Row(variant="compact").style(equal_height=True)
        with gr.Box() as box:
            image = gr.Image(source="upload", tool="sketch", type="pil", brush_radius=4)
        state = gr.Variable(3)
        dropdown = gr.Dropdown(["a", "b"], value="a", label="Pick").style(container=False)
        text = gr.Textbox(lines=2, show_copy_button=True)
        gallery = gr.Gallery().style(grid=[4], height="auto", full_width=True)
        upload = gr.File(type="file")
    assert isinstance(button, gradio.Button) and isinstance(box, gradio.Group) and isinstance(state, gradio.State)
    assert (button.variant, button.size, button.elem_classes) == ("secondary", "sm", ["tool"])
    assert (row.variant, row.equal_height) == ("compact", True)
    assert (image.sources, image.type) == (["upload"], "pil")
    assert (dropdown.container, dropdown.value) == (False, "a")
    assert text.buttons == ["copy"] and (gallery.columns, gallery.height) == (4, "auto")
    assert upload.type == "filepath"
    # the page sees gradio's own components, with their props
    config = _config(blocks, button)
    assert (config["type"], config["props"]["value"], config["props"]["variant"]) == ("button", "🔄", "secondary")
    assert _config(blocks, box)["type"] == "group" and _config(blocks, state)["type"] == "state"
    assert _config(blocks, dropdown)["props"]["label"] == "Pick"
    assert type(button).get_component_class_id() == gradio.Button.get_component_class_id()


def test_update_style_and_events_take_341_arguments() -> None:
    assert gr.Dropdown.update(choices=["x"], visible=False) == gradio.update(choices=["x"], visible=False)
    with gradio.Blocks() as blocks:
        button = gr.Button("Go")
        out = gr.Textbox()
        button.click(fn=None, _js="() => 'js'", inputs=[], outputs=[out], show_progress=False, api_name=False)
        gradio.on([button.click], lambda: "x", None, out)  # compat events are gradio triggers
    [js_dep, on_dep] = blocks.fns.values()
    assert js_dep.js == "() => 'js'" and js_dep.show_progress == "hidden"
    assert on_dep.targets == [(button._id, "click")]
    assert translate_event_kwargs({"_js": "f", "show_progress": True}) == {"js": "f", "show_progress": "full"}


def test_unknown_arguments_are_dropped_known_ones_kept() -> None:
    kept = translate_kwargs(gradio.Slider, {"minimum": 1, "maximum": 9, "label": "L", "made_up": 1})
    assert kept == {"minimum": 1, "maximum": 9, "label": "L"}
    assert translate_kwargs(gradio.Button, {"variant": "weird"})["variant"] == "secondary"
    assert translate_kwargs(gradio.Column, {"variant": "weird", "scale": 2}) == {"variant": "default", "scale": 2}


EXTENSION = """
import gradio as gr
from gradio import Button, Slider
import ext_helper
from ext_pkg.tab import on_tabs  # a function only: its module is reached through sys.modules

class MyButton(gr.Button):
    pass

def build():
    with gr.Row(variant="compact").style(equal_height=True):
        a = gr.Button("x", variant="tool")
        b = Button("y", variant="tool")
        c = Slider(0, 10, value=3).style(container=False)
    return a, b, c, ext_helper.make()
"""

HELPER = """
import gradio as gr

def make():
    return gr.Textbox(show_copy_button=True)
"""


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as the loader does (gradio reads a class's file through it)
    sys.path.insert(0, str(path.parent.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent.parent))
    return module


def test_adapt_module_rebinds_an_extensions_gradio_globals_and_its_helpers(tmp_path: Path) -> None:
    ext = tmp_path / "my-ext"
    (ext / "scripts").mkdir(parents=True)
    (ext / "scripts" / "thing.py").write_text(textwrap.dedent(EXTENSION), encoding="utf-8")
    (ext / "ext_helper.py").write_text(textwrap.dedent(HELPER), encoding="utf-8")
    (ext / "ext_pkg").mkdir()
    (ext / "ext_pkg" / "__init__.py").write_text("", encoding="utf-8")
    (ext / "ext_pkg" / "tab.py").write_text("import gradio as gr\n\ndef on_tabs():\n    return gr\n", encoding="utf-8")
    module = _load(ext / "scripts" / "thing.py", "sdw_test_ext_thing")
    try:
        with gradio.Blocks(), pytest.raises(AttributeError, match="style"):
            module.build()  # Gradio 6 has no .style()
        adapt_module(module)
        assert module.gr is compat_gradio and module.Button is compat_gradio.Button
        assert module.ext_helper.gr is compat_gradio  # a helper module in the extension's folder
        assert module.on_tabs() is compat_gradio  # sd-dynamic-prompts' wildcards tab is built this way
        assert module.MyButton.__mro__[1] is gradio.Button  # defined at import: left as it was
        with gradio.Blocks():
            a, b, c, text = module.build()
        assert a.elem_classes == ["tool"] and b.elem_classes == ["tool"]
        assert (c.value, c.container) == (3, False) and text.buttons == ["copy"]
    finally:
        for name in ("ext_helper", "sdw_test_ext_thing", "ext_pkg", "ext_pkg.tab"):
            sys.modules.pop(name, None)
    # gradio's own modules and ours are never touched
    assert gradio.Button is not compat_gradio.Button
    own = ModuleType("modules.something")
    own.gr = gradio  # type: ignore[attr-defined]
    adapt_module(own)
    assert own.gr is gradio  # type: ignore[attr-defined]


def test_an_extension_subclass_keeps_its_positional_value_config_and_writes_no_stub(tmp_path: Path) -> None:
    source = tmp_path / "ext_buttons.py"
    source.write_text(
        textwrap.dedent(
            """
            from modules.extensions.gradio_compat import compat_gradio as gr

            class ToolButton(gr.Button):
                def __init__(self, *args, **kwargs):
                    super().__init__(*args, variant="tool", **kwargs)
            """
        ),
        encoding="utf-8",
    )
    module = _load(source, "sdw_test_ext_buttons")
    sys.modules.pop("sdw_test_ext_buttons")
    with gradio.Blocks() as blocks:
        button = module.ToolButton("🔄", elem_id="refresh_here")
    config = _config(blocks, button)
    assert (config["type"], config["props"]["value"], config["props"]["elem_id"]) == ("button", "🔄", "refresh_here")
    assert not list(tmp_path.glob("*.pyi"))


def test_ui_components_are_a1111s() -> None:
    from modules.ui_components import (
        DropdownEditable,
        DropdownMulti,
        FormColumn,
        FormGroup,
        FormHTML,
        FormRow,
        InputAccordion,
        ResizeHandleRow,
        ToolButton,
    )

    with gradio.Blocks() as blocks:
        tool = ToolButton(value="🔄", elem_id="t", tooltip="x")
        with FormRow() as row, FormColumn(), FormGroup():
            html = FormHTML("<b>hi</b>")
        handle = ResizeHandleRow(elem_classes="mine")
        multi = DropdownMulti(choices=["a", "b"], value=["a"], label="Many")
        editable = DropdownEditable(choices=["a"], value="a")
        with InputAccordion(False, label="Feature", elem_id="feat") as enabled:
            inner = gr.Slider(0, 1, value=0.5)
            with enabled.extra():
                extra = FormHTML("x")
    assert "tool" in tool.elem_classes and _config(blocks, tool)["props"]["value"] == "🔄"
    assert _config(blocks, row)["type"] == "row" and _config(blocks, html)["type"] == "html"
    assert handle.elem_classes == ["resize-handle-row", "mine"]
    assert multi.multiselect is True and editable.allow_custom_value is True
    assert isinstance(enabled, gradio.Checkbox) and enabled.value is False
    assert (enabled.elem_id, enabled.accordion.elem_id, enabled.accordion.open) == ("feat-checkbox", "feat", False)
    assert _config(blocks, enabled)["type"] == "checkbox"
    assert inner.parent is enabled.accordion or inner.parent.parent is enabled.accordion
    assert extra.parent.elem_id == "feat-extra"
    # opening the accordion ticks the box, closing unticks it; a value set from code opens it
    links = {
        (fn.targets[0][1], fn.outputs[0]._id): fn.fn for fn in blocks.fns.values() if fn.targets and fn.fn is not None
    }
    assert links[("expand", enabled._id)]() is True
    assert links[("collapse", enabled._id)]() is False
    assert links[("change", enabled.accordion._id)](True) == gradio.update(open=True)


def test_modules_ui_offers_a1111s_helpers() -> None:
    import modules.ui as ui

    with gradio.Blocks() as blocks:
        dropdown = gradio.Dropdown(["a"], value="a", label="Model")
        calls: list[str] = []
        button = ui.create_refresh_button(dropdown, lambda: calls.append("refreshed"), {"choices": ["a", "b"]}, "r")
    assert button.elem_id == "r" and button.value == ui.refresh_symbol
    [click] = [fn for fn in blocks.fns.values() if fn.targets == [(button._id, "click")]]
    assert click.fn is not None and click.fn() == gradio.update(choices=["a", "b"])
    assert calls == ["refreshed"] and dropdown.choices == ["a", "b"]
    assert ui.gr_show(False) == gradio.update(visible=False)
    assert ui.plaintext_to_html("a<b\nc") == "<p>a&lt;b<br>\nc</p>"
