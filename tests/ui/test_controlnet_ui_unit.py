"""The ControlNet accordion's values as the request's `controlnet_units` (enabled units only, each
with `source` "ControlNet Unit i"; on img2img the img2img image unless an independent one is
uploaded), through the txt2img and img2img Generate handlers, and an infotext's `ControlNet i`
lines restored into the units' controls by paste."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from PIL import Image

from modules.app import build_services
from modules.core.controlnet import ControlNetUnit, infotext_params
from modules.core.errors import SdWebuiError
from modules.core.infotext import parse_infotext
from modules.core.requests import Img2ImgRequest, Txt2ImgRequest
from modules.core.settings import parse_settings
from modules.services import Services
from modules.ui.controlnet import field_name, paste_values, slider_updates, units_from_ui
from modules.ui.img2img import build_img2img_tab
from modules.ui.img2img_modes import IMG2IMG
from modules.ui.paste import paste_fields
from modules.ui.txt2img import build_txt2img_tab
from tests.fixtures.controlnet_files import write_controlnet
from tests.ui.test_img2img_modes_unit import DEFAULTS as IMG2IMG_DEFAULTS
from tests.ui.test_named_handlers_unit import RecordingEngine, _handler
from tests.ui.test_ui_api_parity import DEFAULTS as TXT2IMG_DEFAULTS

BLACK_SQUARE = Image.new("RGB", (32, 24), (0, 0, 0))


def unit_values(index: int, **changes: Any) -> dict[str, Any]:
    """A unit's controls as the page sends them (the built defaults, canny-like values)."""
    values: dict[str, Any] = {
        "enabled": False,
        "image": None,
        "low_vram": False,
        "pixel_perfect": False,
        "module": "none",
        "model": "None",
        "weight": 1.0,
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "processor_res": 512,
        "threshold_a": -1,
        "threshold_b": -1,
        "control_mode": "Balanced",
        "resize_mode": "Crop and Resize",
        "hr_option": "Both",
        "independent": False,
        **changes,
    }
    return {field_name(index, name): value for name, value in values.items()}


def test_enabled_units_become_the_request_units_in_order() -> None:
    values = {
        **unit_values(
            0,
            enabled=True,
            image=BLACK_SQUARE,
            module="canny",
            model="cn [0123abcd]",
            weight=0.55,
            guidance_start=0.1,
            guidance_end=0.8,
            processor_res=256.0,
            threshold_a=90.0,
            threshold_b=180.0,
            pixel_perfect=True,
            low_vram=True,
            control_mode="ControlNet is more important",
            resize_mode="Resize and Fill",
            hr_option="Low res only",
        ),
        **unit_values(1, image=BLACK_SQUARE, module="canny", model="cn [0123abcd]"),  # not enabled: dropped
        **unit_values(2, enabled=True, image=BLACK_SQUARE, module="invert", model="other"),
    }
    first, third = units_from_ui(values, 3, is_img2img=False)
    assert first == ControlNetUnit(
        enabled=True,
        module="canny",
        model="cn [0123abcd]",
        weight=0.55,
        image=first.image,
        resize_mode="Resize and Fill",
        low_vram=True,
        processor_res=256,
        threshold_a=90.0,
        threshold_b=180.0,
        guidance_start=0.1,
        guidance_end=0.8,
        pixel_perfect=True,
        control_mode="ControlNet is more important",
        hr_option="Low res only",
    )
    assert isinstance(first.image, Image.Image) and first.image.size == (32, 24)
    assert type(first.processor_res) is int
    assert (first.source, third.source) == ("ControlNet Unit 0", "ControlNet Unit 2")
    assert (third.module, third.model) == ("invert", "other")
    assert units_from_ui({**values, **unit_values(0), **unit_values(2)}, 3, is_img2img=False) == ()


def test_an_enabled_unit_without_its_image_is_a_user_error() -> None:
    values = {**unit_values(0, enabled=True, module="canny", model="cn")}
    with pytest.raises(gr.Error, match="ControlNet Unit 0: upload a control image"):
        units_from_ui(values, 1, is_img2img=False)
    # img2img with an independent image asked for: the same
    with pytest.raises(gr.Error, match="ControlNet Unit 0"):
        units_from_ui({**values, field_name(0, "independent"): True}, 1, is_img2img=True)


def test_img2img_units_use_the_img2img_image_unless_an_independent_one_is_uploaded() -> None:
    values = {
        **unit_values(0, enabled=True, image=BLACK_SQUARE, module="canny", model="cn"),  # image left from before
        **unit_values(1, enabled=True, image=BLACK_SQUARE, module="canny", model="cn", independent=True),
    }
    same, independent = units_from_ui(values, 2, is_img2img=True)
    assert same.image is None and same.image_inputs() == ()  # the engine takes the img2img image
    assert isinstance(independent.image, Image.Image)


def test_the_sliders_follow_the_preprocessor(cn_services: Services) -> None:
    assert cn_services.controlnet is not None
    canny = next(info for info in cn_services.controlnet.preprocessors() if info.name == "canny")
    resolution, low, high = slider_updates(canny, False, reset=True)
    assert resolution["visible"] and resolution["value"] == 512
    assert (low["label"], low["value"], low["minimum"], low["maximum"]) == ("Low Threshold", 100, 1, 255)
    assert (high["label"], high["value"]) == ("High Threshold", 200)
    # Pixel Perfect hides the resolution; a change that is no pick keeps the values
    resolution, low, _ = slider_updates(canny, True, reset=False)
    assert not resolution["visible"] and "value" not in low
    invert = next(info for info in cn_services.controlnet.preprocessors() if info.name == "invert")
    _, a, b = slider_updates(invert, False, reset=True)
    assert (a["visible"], a["value"], b["visible"], b["value"]) == (False, -1, False, -1)


# -- the tabs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cn_real_services() -> Iterator[Services]:
    """The app's services over a data dir with one tiny SD1 ControlNet in models/ControlNet."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_controlnet(data / "models" / "ControlNet" / "control_sd15_canny.safetensors", "sd1")
        built = build_services(parse_settings(["--data-dir", str(data)], {}), data, {})
        yield built
        built.worker.shutdown()


@pytest.fixture()
def cn_services(cn_real_services: Services) -> Services:
    return dataclasses.replace(cn_real_services, engine=RecordingEngine())  # type: ignore[arg-type]


def _model_title(services: Services) -> str:
    assert services.controlnet is not None
    [title] = [name for name in services.controlnet.list_models() if name != "None"]
    assert title.startswith("control_sd15_canny [")
    return title


def _run(run: Any, fields: dict[str, Any], values: dict[str, Any], inputs: list[Any]) -> None:
    data = {fields[name]: value for name, value in values.items()}
    assert set(data) == set(inputs)
    list(run(data))


def _defaults(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: component.value for name, component in fields.items()}


def test_txt2img_generate_sends_the_enabled_units(cn_services: Services) -> None:
    with gr.Blocks() as blocks:
        tab = build_txt2img_tab(cn_services)
    section = tab.controlnet
    assert section is not None and section.accordion is not None and len(section.units) == 3
    assert section.accordion.elem_id == "txt2img_controlnet" and section.accordion.open is False
    assert tab.scripts is not None
    title = _model_title(cn_services)
    request_fields = {k: v for k, v in tab.fields.items() if k in TXT2IMG_DEFAULTS}
    fields = {**request_fields, **tab.scripts.fields, **section.fields}
    built = _defaults(section.fields)
    assert built[field_name(0, "model")] == "None" and built[field_name(0, "enabled")] is False
    run, inputs = _handler(blocks, tab.gallery)
    unit = {
        field_name(0, "enabled"): True,
        field_name(0, "image"): BLACK_SQUARE,
        field_name(0, "module"): "canny",
        field_name(0, "model"): title,
        field_name(0, "weight"): 0.7,
    }
    values = {**TXT2IMG_DEFAULTS, **_defaults(tab.scripts.fields), **built, **unit}
    _run(run, fields, values, inputs)
    [request] = cn_services.engine.requests  # type: ignore[attr-defined]
    assert isinstance(request, Txt2ImgRequest)
    [sent] = request.controlnet_units
    assert (sent.enabled, sent.module, sent.model, sent.weight, sent.source) == (
        True,
        "canny",
        title,
        0.7,
        "ControlNet Unit 0",
    )
    assert sent.image.size == (32, 24)

    # nothing enabled: no units
    _run(run, fields, {**values, field_name(0, "enabled"): False}, inputs)
    assert cn_services.engine.requests[-1].controlnet_units == ()  # type: ignore[attr-defined]


def test_img2img_generate_uses_the_img2img_image_and_checks_units_first(cn_services: Services) -> None:
    with gr.Blocks() as blocks, gr.Tab("img2img"):
        tab = build_img2img_tab(cn_services)
    section = tab.controlnet
    assert section is not None and section.accordion is not None
    assert section.accordion.elem_id == "img2img_controlnet"
    assert tab.scripts is not None
    title = _model_title(cn_services)
    request_fields = {k: v for k, v in tab.fields.items() if k in IMG2IMG_DEFAULTS or k in ("mode", "init_image")}
    fields = {**request_fields, **tab.batch_fields, **tab.scripts.fields, **section.fields}
    batch = {
        "batch_source": "upload",
        "batch_files": None,
        "batch_input_dir": "",
        "batch_output_dir": "",
        "batch_inpaint_mask_dir": "",
    }
    unit = {field_name(1, "enabled"): True, field_name(1, "module"): "canny", field_name(1, "model"): title}
    image = Image.new("RGB", (40, 24), (200, 30, 30))
    values = {
        **IMG2IMG_DEFAULTS,
        "mode": IMG2IMG,
        "init_image": image,
        **batch,
        **_defaults(tab.scripts.fields),
        **_defaults(section.fields),
        **unit,
    }
    run, inputs = _handler(blocks, tab.gallery)
    _run(run, fields, values, inputs)
    [request] = cn_services.engine.requests  # type: ignore[attr-defined]
    assert isinstance(request, Img2ImgRequest)
    [sent] = request.controlnet_units
    assert sent.source == "ControlNet Unit 1" and sent.image is None  # the engine uses init_images[0]
    assert request.init_images[0].size == (40, 24)

    # the check before Generate: an independent image asked for and missing is refused
    checks = [fn for fn in blocks.fns.values() if fn.inputs_as_dict and not fn.outputs and tab.row.prompt in fn.inputs]
    assert len(checks) == 1 and checks[0].fn is not None
    bad = {**values, field_name(1, "independent"): True}
    with pytest.raises(gr.Error, match="ControlNet Unit 1: upload a control image"):
        checks[0].fn({fields[name]: value for name, value in bad.items()})


INFOTEXT = (
    "a house\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, "
    'ControlNet 0: "Module: canny, Model: {title}, Weight: 0.6, Resize Mode: Resize and Fill, '
    "Processor Res: 256, Threshold A: 90, Threshold B: 180, Guidance Start: 0.1, Guidance End: 0.9, "
    'Pixel Perfect: True, Control Mode: My prompt is more important", '
    'ControlNet 1: "Module: invert, Model: None, Weight: 1.0, Resize Mode: Crop and Resize, Processor Res: 512, '
    "Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, "
    'Control Mode: Balanced"'
)


def test_paste_restores_the_units_from_the_infotext(cn_services: Services) -> None:
    title = _model_title(cn_services)
    parsed = parse_infotext(INFOTEXT.format(title=title))
    values = paste_values(parsed)
    assert values[field_name(0, "enabled")] is True
    assert values[field_name(0, "module")] == "canny" and values[field_name(0, "model")] == title
    assert values[field_name(0, "weight")] == 0.6 and values[field_name(0, "processor_res")] == 256
    assert values[field_name(0, "control_mode")] == "My prompt is more important"
    assert values[field_name(0, "type_filter")] == "All"  # the dropdowns offer every choice again
    assert values[field_name(1, "module")] == "invert"
    assert not any(name.startswith("controlnet_2_") for name in values)  # no line: left as it is

    with gr.Blocks():
        tab = build_txt2img_tab(cn_services)
    updates = paste_fields(parsed, tab.fields)
    restored = {name: updates[c] for name, c in tab.fields.items() if c in updates}
    assert restored["steps"] == 3
    for name, value in {
        "enabled": True,
        "module": "canny",
        "model": title,
        "weight": 0.6,
        "resize_mode": "Resize and Fill",
        "processor_res": 256,
        "threshold_a": 90,
        "threshold_b": 180,
        "guidance_start": 0.1,
        "guidance_end": 0.9,
        "pixel_perfect": True,
        "control_mode": "My prompt is more important",
    }.items():
        assert restored[field_name(0, name)] == value, name
    assert restored[field_name(1, "enabled")] is True and restored[field_name(1, "model")] == "None"
    assert field_name(2, "enabled") not in restored

    # what the engine writes for the units reads back the same
    unit = ControlNetUnit(enabled=True, module="canny", model=title, weight=0.6, processor_res=256, threshold_a=90)
    line = infotext_params([unit])
    again = paste_values(
        parse_infotext("x\nSteps: 3, Seed: 1, Size: 64x64, ControlNet 0: " + '"' + line["ControlNet 0"] + '"')
    )
    assert again[field_name(0, "model")] == title and again[field_name(0, "threshold_a")] == 90


def test_no_controlnet_service_builds_no_accordion(cn_services: Services) -> None:
    services = dataclasses.replace(cn_services, controlnet=None)
    with gr.Blocks():
        tab = build_txt2img_tab(services)
    assert tab.controlnet is not None and tab.controlnet.accordion is None and tab.controlnet.fields == {}
    request = Txt2ImgRequest(prompt="x")
    assert tab.controlnet.apply(request, {}) is request


def test_the_hires_option_shows_while_hires_fix_is_on(cn_services: Services) -> None:
    with gr.Blocks() as blocks:
        tab = build_txt2img_tab(cn_services)
    assert tab.controlnet is not None
    radios = [unit.hr_option for unit in tab.controlnet.units]
    assert all(radio.visible is False for radio in radios)
    enable_hr = tab.fields["enable_hr"]
    [event] = [fn for fn in blocks.fns.values() if list(fn.outputs) == radios and enable_hr in fn.inputs]
    assert event.fn is not None
    assert [update["visible"] for update in event.fn(True)] == [True] * 3
    assert [update["visible"] for update in event.fn(False)] == [False] * 3


@pytest.mark.parametrize("module", ["reference_only", "reference_adain", "reference_adain+attn"])
def test_a_model_free_preprocessor_goes_with_the_model_none(cn_services: Services, module: str) -> None:
    """Control Type "Reference" picks a reference preprocessor and leaves the Model "None"; the
    unit the UI makes of it (model "None") is not refused for its model by the engine's check
    before queueing, as a canny unit without a model is."""
    with gr.Blocks() as blocks:
        tab = build_txt2img_tab(cn_services)
    assert tab.controlnet is not None and cn_services.controlnet is not None
    unit = tab.controlnet.units[0]
    [pick] = [
        fn
        for fn in blocks.fns.values()
        if fn.fn is not None and any(t[0] == unit.type_filter._id and t[1] == "input" for t in fn.targets)
    ]
    module_update, model_update, *_ = pick.fn("Reference", False)  # type: ignore[misc]
    assert module_update["value"] == "reference_only" and model_update["value"] == "None"
    assert (module, module) in module_update["choices"]
    assert tab.controlnet.preprocessors[module].model_free

    values = unit_values(0, enabled=True, image=BLACK_SQUARE, module=module, model=model_update["value"])
    [sent] = units_from_ui(values, 1, is_img2img=False)
    assert sent.model == "None"
    try:  # the reference modes may not be built into the engine yet: then refused for that only
        cn_services.controlnet.check(Txt2ImgRequest(prompt="x", controlnet_units=(sent,)))  # type: ignore[attr-defined]
    except SdWebuiError as exc:
        assert "model" not in str(exc).lower(), exc
    canny = dataclasses.replace(sent, module="canny")
    with pytest.raises(SdWebuiError, match="choose a ControlNet model"):
        cn_services.controlnet.check(Txt2ImgRequest(prompt="x", controlnet_units=(canny,)))  # type: ignore[attr-defined]
