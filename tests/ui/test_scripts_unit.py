"""The scripts part of the generation tabs without a browser: the Script dropdown and the script
controls as built (`modules.ui.scripts`), the request fields they give (the API's shape, equal to
what the API's converter makes from the same values), the extension callbacks fired around the
page build, the page's extension assets and A1111's `#settings_json`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest

from modules.api.images import DecodeOptions
from modules.api.schemas_generation import Txt2ImgPayload, to_txt2img
from modules.extensions.loading import PageAssets
from modules.extensions.runner import ScriptClass, ScriptRunner
from modules.extensions.script_base import AlwaysVisible, Script
from modules.ui.img2img_request import SCRIPT_FIELDS, request_for_image
from modules.ui.mount import page_css, page_head
from modules.ui.scripts import (
    DROPDOWN_FIELD,
    NONE,
    arg_field,
    build_options_json,
    build_script_section,
    fire_ui_callbacks,
    options_json,
    script_request_fields,
)
from modules.ui.txt2img import txt2img_request_from_ui
from tests.ui.test_img2img_modes_unit import DEFAULTS as IMG2IMG_DEFAULTS
from tests.ui.test_ui_api_parity import DEFAULTS as TXT2IMG_DEFAULTS


class Fill(Script):
    def title(self) -> str:
        return "Test Fill"

    def ui(self, is_img2img: bool) -> Any:
        return [gr.Slider(0, 255, value=128, step=1, label="Level"), gr.Checkbox(False, label="Invert")]


class Stamp(Script):
    def title(self) -> str:
        return "Test Stamp"

    def show(self, is_img2img: bool) -> Any:
        return AlwaysVisible

    def ui(self, is_img2img: bool) -> Any:
        with gr.Accordion("Stamp"):
            enabled = gr.Checkbox(False, label="Enabled")
            text = gr.Textbox("", label="Text")
        return [enabled, text, "a plain value"]


class Img2ImgOnly(Script):
    def title(self) -> str:
        return "Only img2img"

    def show(self, is_img2img: bool) -> Any:
        return is_img2img

    def ui(self, is_img2img: bool) -> Any:
        return [gr.Number(3, label="Loops")]


class Broken(Script):
    def title(self) -> str:
        return "Broken"

    def ui(self, is_img2img: bool) -> Any:
        gr.Markdown("made before the error")
        raise RuntimeError("no ui today")


def _runner(*classes: type[Script]) -> ScriptRunner:
    here = Path(__file__)
    return ScriptRunner([ScriptClass(cls, here, here.parent, "test-ext") for cls in classes])


def _services(runner: ScriptRunner | None) -> Any:
    return SimpleNamespace(scripts=None if runner is None else SimpleNamespace(runner=runner))


def _build(runner: ScriptRunner | None, is_img2img: bool = False) -> tuple[gr.Blocks, Any]:
    with gr.Blocks() as blocks:
        section = build_script_section(_services(runner), is_img2img)
    return blocks, section


def _walk(block: Any) -> list[Any]:
    """`block` and everything inside it, in page order."""
    out = [block]
    for child in getattr(block, "children", []):
        out.extend(_walk(child))
    return out


def test_the_dropdown_lists_none_and_the_tabs_selectable_scripts_after_the_always_on_controls() -> None:
    runner = _runner(Fill, Stamp, Img2ImgOnly)
    blocks, txt2img = _build(runner)
    assert txt2img.dropdown.elem_id == "script_list" and txt2img.dropdown.label == "Script"
    assert [c[0] for c in txt2img.dropdown.choices] == [NONE, "Test Fill"]
    assert txt2img.dropdown.value == NONE
    # A1111's argument layout: 0 = selector, then the always-on script, then the selectable ones
    tab = runner.txt2img
    assert [(s.title(), s.args_from, s.args_to) for s in tab.alwayson + tab.selectable] == [
        ("Test Stamp", 1, 4),
        ("Test Fill", 4, 6),
    ]
    # the always-on controls come before the dropdown in the page, the selectable ones after it
    order = _walk(next(b for b in blocks.blocks.values() if b.elem_id == "txt2img_script_container"))
    stamp_group, fill_group = tab.alwayson[0].group, tab.selectable[0].group
    assert order.index(stamp_group) < order.index(txt2img.dropdown) < order.index(fill_group)
    # each selectable script's group is hidden until chosen; the always-on group is shown
    assert set(txt2img.groups) == {"Test Fill"} and txt2img.groups["Test Fill"].visible is False
    assert runner.txt2img.alwayson[0].group.visible is True
    # the handler's named inputs: the dropdown and every control; a plain value stays as it was
    assert set(txt2img.fields) == {DROPDOWN_FIELD, *(arg_field(i) for i in (1, 2, 4, 5))}
    assert txt2img.fixed == {3: "a plain value"}

    _blocks, img2img = _build(runner, is_img2img=True)
    assert [c[0] for c in img2img.dropdown.choices] == [NONE, "Test Fill", "Only img2img"]


def test_choosing_a_script_shows_its_group_only() -> None:
    blocks, section = _build(_runner(Fill, Img2ImgOnly), is_img2img=True)
    [change] = [fn for fn in blocks.fns.values() if section.dropdown in fn.inputs]
    assert change.fn is not None
    shown = [update["visible"] for update in change.fn("Only img2img")]
    assert shown == [False, True]
    assert [update["visible"] for update in change.fn(NONE)] == [False, False]


def test_a_script_whose_ui_raises_is_left_out_and_the_rest_is_built() -> None:
    runner = _runner(Broken, Fill)
    _blocks, section = _build(runner)
    assert [c[0] for c in section.dropdown.choices] == [NONE, "Broken", "Test Fill"]
    broken = runner.txt2img.selectable[0]
    assert (broken.args_from, broken.args_to) == (1, 1)
    assert section.request_fields({DROPDOWN_FIELD: "Test Fill", arg_field(1): 9, arg_field(2): True}) == {
        "script_name": "test fill",
        "script_args": (9, True),
        "alwayson_scripts": {},
    }


def test_request_fields_are_the_apis_shape() -> None:
    runner = _runner(Fill, Stamp)
    _blocks, section = _build(runner)
    values = {
        DROPDOWN_FIELD: "Test Fill",
        arg_field(1): True,
        arg_field(2): "hello",
        arg_field(4): 200.0,
        arg_field(5): True,
    }
    assert section.args(values) == [0, True, "hello", "a plain value", 200.0, True]
    assert section.request_fields(values) == {
        "script_name": "test fill",
        "script_args": (200.0, True),
        "alwayson_scripts": {"test stamp": {"args": [True, "hello", "a plain value"]}},
    }
    # "None": no selectable script, the always-on ones still get their values
    fields = section.request_fields({**values, DROPDOWN_FIELD: NONE})
    assert (fields["script_name"], fields["script_args"]) == (None, ())
    assert fields["alwayson_scripts"] == {"test stamp": {"args": [True, "hello", "a plain value"]}}
    # an unknown title (a stale page) is no script
    assert script_request_fields(runner.txt2img, "Gone", section.args(values))["script_name"] is None


def test_the_ui_request_with_scripts_equals_the_apis() -> None:
    runner = _runner(Fill, Stamp)
    _blocks, section = _build(runner)
    values = {DROPDOWN_FIELD: "Test Fill", arg_field(1): True, arg_field(2): "hi", arg_field(4): 7, arg_field(5): False}
    ui_values = {**TXT2IMG_DEFAULTS, "steps": 3.0, "width": 64.0, "height": 64.0}
    from_ui = section.apply(txt2img_request_from_ui(**ui_values), values)
    api_values = {k: v for k, v in TXT2IMG_DEFAULTS.items() if k not in ("enable_refiner", "refiner_checkpoint")}
    api_values.pop("refiner_switch_at")
    for key in ("hr_checkpoint_name", "hr_sampler_name", "hr_scheduler"):
        api_values.pop(key)
    payload = Txt2ImgPayload(
        **{**api_values, "steps": 3, "width": 64, "height": 64},
        script_name="test fill",
        script_args=[7, False],
        alwayson_scripts={"test stamp": {"args": [True, "hi", "a plain value"]}},
        save_images=True,
    )
    from_api = to_txt2img(payload, DecodeOptions(max_pixels=1 << 24, allow_urls=False))
    assert from_ui == from_api
    # and the runner reads the same full argument list from it as the page had
    assert runner.script_args_for(from_ui) == [1, True, "hi", "a plain value", 7, False]


def test_img2img_batch_requests_carry_the_script_fields() -> None:
    from PIL import Image

    image = Image.new("RGB", (64, 64))
    fields = {"script_name": "test fill", "script_args": (5,), "alwayson_scripts": {"x": {"args": [1]}}}
    request = request_for_image({**IMG2IMG_DEFAULTS, SCRIPT_FIELDS: fields}, image, None)
    assert (request.script_name, request.script_args, request.alwayson_scripts) == (
        "test fill",
        (5,),
        {"x": {"args": [1]}},
    )
    assert request_for_image(IMG2IMG_DEFAULTS, image, None).script_name is None


def test_without_scripts_the_tab_has_a_dropdown_with_none_only() -> None:
    _blocks, section = _build(None)
    assert [c[0] for c in section.dropdown.choices] == [NONE]
    assert section.request_fields({DROPDOWN_FIELD: NONE}) == {}


class FakeCallbacks:
    def __init__(self, tabs: list[Any]) -> None:
        self.fired: list[str] = []
        self.tabs = tabs

    def fire(self, kind: str, *args: Any) -> list[Any]:
        self.fired.append(kind)
        return self.tabs if kind == "ui_tabs" else []


def test_ui_callbacks_fire_before_the_page_and_bad_tabs_are_left_out() -> None:
    with gr.Blocks() as good:
        gr.Markdown("hi")
    callbacks = FakeCallbacks([(good, "Good", "good_tab"), ("not blocks", "Bad", "bad"), ("too short",)])
    services = SimpleNamespace(scripts=SimpleNamespace(callbacks=callbacks))
    tabs = fire_ui_callbacks(services)  # type: ignore[arg-type]
    assert callbacks.fired == ["before_ui", "ui_tabs"]  # ui_settings fired when the app was built
    assert [(t.blocks, t.title, t.elem_id) for t in tabs] == [(good, "Good", "good_tab")]
    assert fire_ui_callbacks(SimpleNamespace(scripts=None)) == []  # type: ignore[arg-type]


def test_page_assets_are_inline_after_ours_and_cannot_close_their_tag(tmp_path: Path) -> None:
    js = tmp_path / "a.js"
    js.write_text('var t = "</script><b>";', encoding="utf-8")
    mjs = tmp_path / "b.mjs"
    mjs.write_text("export const x = 1;", encoding="utf-8")
    css = tmp_path / "style.css"
    css.write_text("/* </style> */ .ext { color: red; }", encoding="utf-8")
    missing = tmp_path / "gone.js"
    head = page_head(PageAssets(scripts=[js, missing], module_scripts=[mjs], styles=[css]))
    assert head.index("function gradioApp()") < head.index('var t = "<\\/script><b>";')
    assert '<script type="module">\nexport const x = 1;\n</script>' in head
    assert head.count("</script>") == head.count("<script")
    style = page_css(PageAssets(styles=[css]))
    assert style.endswith("/* <\\/style> */ .ext { color: red; }")
    assert page_head() == page_head(PageAssets())


def test_settings_json_holds_every_options_value() -> None:
    from modules.core.options import Options, default_option_infos

    options = Options(default_option_infos(), None)
    services: Any = SimpleNamespace(options=options)
    data = json.loads(options_json(services))
    assert set(data) == set(options.infos()) and data["samples_format"] == options.get("samples_format")
    with gr.Blocks() as blocks:
        result = gr.HTML("")
        box = build_options_json(services, [result])
    assert box.elem_id == "settings_json" and box.visible == "hidden"
    fns = [fn for fn in blocks.fns.values() if box in fn.outputs]
    assert len(fns) == 2  # page load, and the Settings result line changing
    assert fns[0].fn is not None and json.loads(fns[0].fn())["samples_format"] == data["samples_format"]


@pytest.mark.parametrize("title", [None, "", NONE])
def test_no_selection_is_no_script(title: str | None) -> None:
    runner = _runner(Fill)
    _blocks, section = _build(runner)
    assert section.request_fields({DROPDOWN_FIELD: title})["script_name"] is None
