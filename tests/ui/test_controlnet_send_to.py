"""Send to ControlNet, at the handler level: the txt2img / img2img galleries' "Send to ControlNet"
and PNG Info's "Send to txt2img / img2img ControlNet" put the image into the unit tab last selected
(unit 0 at first) of the tab, tick Enable (on img2img "Upload independent control image" too, the
upload shown), open the accordion on that unit and select the tab; the ↙️ paste of a `ControlNet i`
line sets the unit whole in its one response (choices, sliders), and no handler of the unit is
chained on a programmatic change (they listen to the user's input only)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from PIL import Image

from modules.services import Services
from modules.ui.controlnet import ALL, SEND_LABEL, field_name
from modules.ui.extras import build_extras_tab
from modules.ui.img2img import build_img2img_tab
from modules.ui.pnginfo import build_pnginfo_tab
from modules.ui.send_to import wire_send_to
from modules.ui.txt2img import build_txt2img_tab
from tests.ui import test_controlnet_ui_unit as cn_unit
from tests.ui.test_controlnet_ui_unit import INFOTEXT, _model_title

# the services with a tiny SD1 ControlNet (the fixtures of the ControlNet UI tests)
cn_real_services = cn_unit.cn_real_services
cn_services = cn_unit.cn_services


class Built:
    def __init__(self, services: Services) -> None:
        with gr.Blocks() as self.blocks:
            with gr.Tabs(elem_id="tabs") as self.tabs:
                with gr.Tab("txt2img", id="txt2img"):
                    self.txt2img = build_txt2img_tab(services)
                with gr.Tab("img2img", id="img2img"):
                    self.img2img = build_img2img_tab(services)
                with gr.Tab("Extras", id="extras"):
                    self.extras = build_extras_tab(services)
                with gr.Tab("PNG Info", id="pnginfo"):
                    self.pnginfo = build_pnginfo_tab(services)
            wire_send_to(services, self.tabs, self.txt2img, self.img2img, self.extras, self.pnginfo)

    def by_id(self, elem_id: str) -> Any:
        [block] = [b for b in self.blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id]
        return block

    def handler(self, trigger: Any, event: str = "click") -> tuple[Callable[..., Any], list[Any], list[Any]]:
        """(fn, inputs, outputs) of the one Python handler of `trigger`'s `event`."""
        found = [
            fn
            for fn in self.blocks.fns.values()
            if fn.fn is not None and any(t[0] == trigger._id and t[1] == event for t in fn.targets)
        ]
        assert len(found) == 1, found
        return found[0].fn, list(found[0].inputs), list(found[0].outputs)

    def browser_handler(self, trigger: Any, event: str) -> tuple[str, list[Any]]:
        """(js, outputs) of the one browser-only handler (no Python function) of `trigger`'s `event`."""
        found = [
            fn
            for fn in self.blocks.fns.values()
            if fn.fn is None and fn.js and any(t[0] == trigger._id and t[1] == event for t in fn.targets)
        ]
        assert len(found) == 1, found
        return str(found[0].js), list(found[0].outputs)


@pytest.fixture()
def built(cn_services: Services) -> Built:
    return Built(cn_services)


def _gallery(tmp_path: Path) -> list[tuple[str, None]]:
    items = []
    for i, colour in enumerate([(10, 20, 30), (200, 100, 50)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 6), colour).save(path)
        items.append((str(path), None))
    return items


def _selected(update: object) -> object:
    """The tab an update of a `gr.Tabs` selects."""
    return update["selected"] if isinstance(update, dict) else getattr(update, "selected", None)


def _value(update: object) -> object:
    return update["value"] if isinstance(update, dict) else update


def test_the_gallery_buttons_are_built_after_the_send_to_extras_button(built: Built) -> None:
    for tab in (built.txt2img, built.img2img):
        assert tab.controlnet is not None
        button = tab.controlnet.send_button
        assert button is not None and button.value == SEND_LABEL
        row = tab.output_buttons.send_to_extras.parent
        assert row is not None and row.children[-1] is button and button.parent is row
    assert built.by_id("txt2img_send_to_controlnet") is built.txt2img.controlnet.send_button  # type: ignore[union-attr]


def test_txt2img_gallery_sends_the_selected_image_into_the_selected_unit(built: Built, tmp_path: Path) -> None:
    section = built.txt2img.controlnet
    assert section is not None and section.send_button is not None and section.accordion is not None
    send, inputs, outputs = built.handler(section.send_button)
    assert inputs == [built.txt2img.gallery, inputs[1], built.txt2img.generation_info, section.selected_unit]
    gallery = _gallery(tmp_path)

    # the unit tab last selected: Unit 2 (the tab's select event sets the holder in the browser)
    js, select_out = built.browser_handler(section.units[2].tab, "select")
    assert select_out == [section.selected_unit] and js == "() => 2"
    updates = send(gallery, 1, "", 2)
    assert set(updates) <= set(outputs)  # every update is an output of the event
    unit = section.units[2]
    image = updates[unit.c("image")]
    assert isinstance(image, Image.Image) and image.getpixel((0, 0)) == (200, 100, 50)  # the clicked one
    assert updates[unit.c("enabled")] is True
    assert updates[section.accordion]["open"] is True
    assert section.tabs is not None and _selected(updates[section.tabs]) == "txt2img_controlnet_unit_2"
    assert _selected(updates[built.tabs]) == "txt2img"
    assert section.units[0].c("image") not in updates

    # no unit selected yet (the state's start, or a stale value): unit 0, the first image
    for unknown in (0, None, 7):
        updates = send(gallery, None, "", unknown)
        assert isinstance(updates[section.units[0].c("image")], Image.Image)
        assert updates[section.units[0].c("enabled")] is True
    with pytest.raises(gr.Error, match="no image to send"):
        send([], None, "", 0)


def test_img2img_gallery_send_ticks_the_independent_image_and_shows_the_upload(built: Built, tmp_path: Path) -> None:
    section = built.img2img.controlnet
    assert section is not None and section.send_button is not None
    send, _, outputs = built.handler(section.send_button)
    updates = send(_gallery(tmp_path), 0, "", 0)
    assert set(updates) <= set(outputs)
    unit = section.units[0]
    assert isinstance(updates[unit.c("image")], Image.Image)
    assert updates[unit.c("enabled")] is True and updates[unit.c("independent")] is True
    for shown in (unit.image_group, unit.allow_preview, unit.trigger):
        assert updates[shown]["visible"] is True
    assert _selected(updates[built.tabs]) == "img2img"


def test_png_info_sends_its_image_to_either_tabs_unit(built: Built, tmp_path: Path) -> None:
    path = tmp_path / "dropped.png"
    Image.new("RGB", (5, 7), (1, 2, 3)).save(path)
    for tab, name in ((built.txt2img, "txt2img"), (built.img2img, "img2img")):
        section = tab.controlnet
        assert section is not None
        button = built.by_id(f"pnginfo_send_to_{name}_controlnet")
        assert button.value == f"Send to {name} ControlNet"
        send, inputs, outputs = built.handler(button)
        assert inputs == [built.pnginfo.image, section.selected_unit]
        updates = send(str(path), 1)
        assert set(updates) <= set(outputs)
        image = updates[section.units[1].c("image")]
        assert isinstance(image, Image.Image) and image.size == (5, 7)
        assert _selected(updates[built.tabs]) == name
        independent = section.fields.get(field_name(1, "independent"))
        assert (independent is not None and updates.get(independent) is True) is (name == "img2img")
        with pytest.raises(gr.Error, match="drop an image"):
            send(None, 0)


def test_paste_sets_the_unit_whole_in_one_response(built: Built, cn_services: Services) -> None:
    """↙️ after the user's Control Type Depth: "All", every choice, canny's sliders shown with their
    labels, ranges and the pasted values, the resolution hidden under the pasted Pixel Perfect;
    a unit whose preprocessor has no sliders gets them hidden (the pasted values kept)."""
    tab = built.txt2img
    section = tab.controlnet
    assert section is not None
    title = _model_title(cn_services)
    paste, inputs, outputs = built.handler(tab.row.paste)
    assert inputs == [tab.row.prompt]
    updates = paste(INFOTEXT.format(title=title))
    assert set(updates) <= set(outputs)
    unit = section.units[0]
    assert updates[unit.type_filter] == ALL
    module = updates[unit.c("module")]
    assert module["value"] == "canny" and ("canny", "canny") in module["choices"]
    assert len(module["choices"]) == len(section.preprocessors)
    model = updates[unit.c("model")]
    assert model["value"] == title and model["choices"] == ["None", title]
    resolution, low, high = (updates[unit.c(n)] for n in ("processor_res", "threshold_a", "threshold_b"))
    assert resolution["visible"] is False and resolution["value"] == 256  # Pixel Perfect: True
    assert (low["visible"], low["label"], low["minimum"], low["maximum"], low["value"]) == (
        True,
        "Low Threshold",
        1,
        255,
        90,
    )
    assert (high["visible"], high["label"], high["value"]) == (True, "High Threshold", 180)
    assert updates[unit.c("pixel_perfect")] is True and _value(updates[unit.c("weight")]) == 0.6
    invert = section.units[1]
    a, b = updates[invert.c("threshold_a")], updates[invert.c("threshold_b")]
    assert (a["visible"], a["value"], b["visible"], b["value"]) == (False, 0.5, False, 0.5)
    assert updates[invert.c("pixel_perfect")] is False
    assert not any(c in updates for c in section.units[2].fields.values())


def test_the_units_handlers_follow_the_users_input_only(built: Built) -> None:
    """No handler of a unit runs on a programmatic change (a paste, a send-to): the Control Type,
    Preprocessor, Pixel Perfect and "Upload independent control image" react to `input` (the
    Preprocessor dropdown to `select`: Gradio sends a dropdown's `input` twice per pick)."""
    for section in (built.txt2img.controlnet, built.img2img.controlnet):
        assert section is not None
        for unit in section.units:
            watched = [unit.type_filter, unit.c("module"), unit.c("pixel_perfect")]
            if section.is_img2img:
                watched.append(unit.c("independent"))
            ids = {c._id for c in watched}
            events = {
                (t[0], t[1]) for fn in built.blocks.fns.values() if fn.fn is not None for t in fn.targets if t[0] in ids
            }
            assert events, "the unit's controls are wired"
            expected = {(c._id, "select" if c is unit.c("module") else "input") for c in watched}
            assert events == expected, events
