"""The ControlNet accordion in a real browser against the full app (a server of its own, its data
dir holding a tiny SD1 ControlNet): open the accordion, enable unit 0, upload a white square on
black, Control Type Canny (the preprocessor and the model follow), Allow Preview + 💥 shows the
edges, Generate gives an image whose infotext has `ControlNet 0`; on img2img the upload shows only
with "Upload independent control image"; ↙️ paste of a `ControlNet 0` line after Control Type Depth
restores the unit with canny's thresholds shown (the bug where a chained handler lost them); a long
model title shows whole in the Model dropdown; "Send to ControlNet" from the txt2img gallery and PNG
Info fills a unit; screenshots for people to look at."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.controlnet_files import write_controlnet
from tests.fixtures.module_tmp import ModuleTempDirs
from tests.ui.conftest import make_ui_data_dir, screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect

UNIT = "txt2img_controlnet_ControlNet-0"
DEPTH_MODEL = "control_v11f1p_sd15_depth"


@pytest.fixture(scope="module")
def ui_data_dir(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Path:
    root = make_ui_data_dir(tiny_models, module_tmp.mktemp("controlnet-ui-data"))
    write_controlnet(root / "models" / "ControlNet" / "control_sd15_canny.safetensors", "sd1")
    # a real model's long name (the Model dropdown shows it whole)
    write_controlnet(root / "models" / "ControlNet" / f"{DEPTH_MODEL}.safetensors", "sd1")
    return root


def _set_number(page: Any, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def _square(path: Path) -> Path:
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((255, 255, 255), (16, 16, 48, 48))
    image.save(path)
    return path


def _shown_image(page: Any, elem_id: str) -> Image.Image:
    src = page.locator(f"#{elem_id} img").first.get_attribute("src")
    assert src
    body = page.request.get(src).body()
    return Image.open(io.BytesIO(body)).convert("L")


def test_canny_unit_preview_and_generate(page: Any, tmp_path: Path) -> None:
    accordion = page.locator("#txt2img_controlnet")
    enable = page.locator(f"#{UNIT}_controlnet_enable_checkbox input")
    expect(enable).to_be_hidden()  # closed by default
    accordion.get_by_role("button", name=re.compile(r"^ControlNet\b(?! Unit)")).first.click()
    expect(enable).to_be_visible()
    expect(accordion.get_by_role("tab")).to_have_text(["ControlNet Unit 0", "ControlNet Unit 1", "ControlNet Unit 2"])
    enable.check()

    page.locator(f"#{UNIT}_input_image input[type=file]").set_input_files(str(_square(tmp_path / "square.png")))
    expect(page.locator(f"#{UNIT}_input_image img")).to_be_visible()

    # Control Type Canny: the canny preprocessor, the canny model, its two thresholds shown
    page.locator(f"#{UNIT}_controlnet_type_filter_radio").get_by_label("Canny", exact=True).check()
    expect(page.locator(f"#{UNIT}_controlnet_preprocessor_dropdown input")).to_have_value("canny")
    expect(page.locator(f"#{UNIT}_controlnet_model_dropdown input")).to_have_value(
        re.compile(r"^control_sd15_canny \[")
    )
    expect(page.locator(f"#{UNIT}_controlnet_threshold_A_slider")).to_contain_text("Low Threshold")
    expect(page.locator(f"#{UNIT}_controlnet_threshold_B_slider")).to_contain_text("High Threshold")

    # Allow Preview + 💥: the edges of the square
    page.locator(f"#{UNIT}_controlnet_preprocessor_preview_checkbox input").check()
    page.locator(f"#{UNIT}_controlnet_trigger_preprocessor").click()
    expect(page.locator(f"#{UNIT}_generated_image img")).to_be_visible(timeout=30_000)
    shown = _shown_image(page, f"{UNIT}_generated_image")
    shown.save(tmp_path / "preview.png")
    edges = np.asarray(shown) > 128
    h, w = edges.shape
    rows, cols = np.nonzero(edges)
    assert rows.size and edges.mean() < 0.1  # thin lines
    # the lines outline the square (16..48 of 64): inside and outside it, nothing
    assert abs(rows.min() / h - 0.25) < 0.05 and abs(rows.max() / h - 0.75) < 0.05
    assert abs(cols.min() / w - 0.25) < 0.05 and abs(cols.max() / w - 0.75) < 0.05
    assert not edges[h * 3 // 8 : h * 5 // 8, w * 3 // 8 : w * 5 // 8].any()

    # Generate: an image, and the unit in the infotext
    page.locator("#txt2img_prompt textarea").fill("a white box")
    _set_number(page, "txt2img_steps", 3)
    _set_number(page, "txt2img_width", 64)
    _set_number(page, "txt2img_height", 64)
    page.locator("#txt2img_generate").click()
    info = page.locator("#html_info_txt2img")
    expect(info).to_contain_text("ControlNet 0", timeout=60_000)
    expect(info).to_contain_text("Module: canny")
    expect(info).to_contain_text("control_sd15_canny")
    expect(page.locator("#txt2img_gallery img").first).to_be_visible()

    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "controlnet_txt2img.png"), full_page=True)

    # img2img: the img2img image is the control image until an independent one is asked for
    page.locator("#tabs").get_by_role("tab", name="img2img").click()
    i2i = page.locator("#img2img_controlnet")
    i2i.get_by_role("button", name=re.compile(r"^ControlNet\b(?! Unit)")).first.click()
    unit = "img2img_controlnet_ControlNet-0"
    expect(page.locator(f"#{unit}_controlnet_enable_checkbox input")).to_be_visible()
    expect(page.locator(f"#{unit}_input_image")).to_be_hidden()
    expect(page.locator(f"#{unit}_controlnet_trigger_preprocessor")).to_be_hidden()
    page.locator(f"#{unit}_controlnet_same_img2img_checkbox input").check()
    expect(page.locator(f"#{unit}_input_image")).to_be_visible()
    expect(page.locator(f"#{unit}_controlnet_trigger_preprocessor")).to_be_visible()
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "controlnet_img2img.png"), full_page=True)


def _open_unit(page: Any, tab: str = "txt2img") -> None:
    page.locator(f"#{tab}_controlnet").get_by_role("button", name=re.compile(r"^ControlNet\b(?! Unit)")).first.click()
    expect(page.locator(f"#{tab}_controlnet_ControlNet-0_controlnet_enable_checkbox input")).to_be_visible()


def test_paste_after_another_control_type_restores_the_sliders(page: Any, tmp_path: Path) -> None:
    """↙️ paste of a canny line after the user picked Depth: the preprocessor, the model and both
    thresholds (shown, with canny's labels and the pasted values), the resolution hidden under the
    pasted Pixel Perfect; nothing that the Control Type switch chained overwrites them."""
    _open_unit(page)
    types = page.locator(f"#{UNIT}_controlnet_type_filter_radio")
    types.get_by_label("Canny", exact=True).check()
    model_box = page.locator(f"#{UNIT}_controlnet_model_dropdown input")
    expect(model_box).to_have_value(re.compile(r"^control_sd15_canny \["))
    model = model_box.input_value()
    types.get_by_label("Depth", exact=True).check()
    expect(model_box).to_have_value(re.compile(rf"^{DEPTH_MODEL} \[[0-9a-f]{{8}}\]$"))
    # the long title shows whole in the box, and in the opened list
    assert model_box.evaluate("e => e.scrollWidth <= e.clientWidth"), "the Model box cuts the title"
    model_box.click()
    option = page.get_by_role("option", name=re.compile(rf"^{DEPTH_MODEL} \["))
    expect(option).to_be_visible()
    assert option.evaluate("e => e.scrollWidth <= e.clientWidth"), "the Model list cuts the title"
    for directory in screenshot_dirs(tmp_path):
        page.locator("#txt2img_controlnet").screenshot(path=str(directory / "controlnet_model_long_title.png"))
    model_box.press("Escape")
    threshold_a = page.locator(f"#{UNIT}_controlnet_threshold_A_slider")
    threshold_b = page.locator(f"#{UNIT}_controlnet_threshold_B_slider")
    expect(threshold_a).to_be_hidden()
    line = (
        f"Module: canny, Model: {model}, Weight: 0.45, Resize Mode: Resize and Fill, Processor Res: 256, "
        "Threshold A: 90, Threshold B: 180, Guidance Start: 0.1, Guidance End: 0.9, Pixel Perfect: True, "
        "Control Mode: My prompt is more important"
    )
    page.locator("#txt2img_prompt textarea").fill(f'a box\nSteps: 3, Seed: 1, Size: 64x64, ControlNet 0: "{line}"')
    page.locator("#txt2img_paste").click()
    expect(page.locator(f"#{UNIT}_controlnet_enable_checkbox input")).to_be_checked()
    expect(types.get_by_label("All", exact=True)).to_be_checked()
    expect(page.locator(f"#{UNIT}_controlnet_preprocessor_dropdown input")).to_have_value("canny")
    expect(model_box).to_have_value(model)
    expect(page.locator(f"#{UNIT}_controlnet_control_weight_slider input[type=number]")).to_have_value("0.45")
    expect(threshold_a).to_be_visible()
    expect(threshold_a).to_contain_text("Low Threshold")
    expect(threshold_a.locator("input[type=number]")).to_have_value("90")
    expect(threshold_b).to_be_visible()
    expect(threshold_b).to_contain_text("High Threshold")
    expect(threshold_b.locator("input[type=number]")).to_have_value("180")
    expect(page.locator(f"#{UNIT}_controlnet_pixel_perfect_checkbox input")).to_be_checked()
    expect(page.locator(f"#{UNIT}_controlnet_preprocessor_resolution_slider")).to_be_hidden()
    expect(
        page.locator(f"#{UNIT}_controlnet_control_mode_radio").get_by_label("My prompt is more important")
    ).to_be_checked()
    expect(page.locator(f"#{UNIT}_controlnet_resize_mode_radio").get_by_label("Resize and Fill")).to_be_checked()
    # no handler chained on the paste failed (a Control Type / preprocessor change handler that ran
    # against the Depth choices raised "Value: canny is not in the list of choices")
    expect(page.locator(".toast-body")).to_have_count(0)
    for directory in screenshot_dirs(tmp_path):
        page.locator("#txt2img_controlnet").screenshot(path=str(directory / "controlnet_paste_after_depth.png"))


def test_send_to_controlnet_from_the_gallery_and_png_info(page: Any, tmp_path: Path) -> None:
    """ "Send to ControlNet" under the txt2img gallery: the image into the unit tab last selected
    (Unit 1), Enable ticked, the accordion opened on that unit; PNG Info's "Send to img2img
    ControlNet": img2img selected, its unit 0 enabled with "Upload independent control image"
    ticked and the image shown."""
    page.locator("#txt2img_prompt textarea").fill("a grey box")
    _set_number(page, "txt2img_steps", 1)
    _set_number(page, "txt2img_width", 64)
    _set_number(page, "txt2img_height", 64)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=60_000)

    # pick Unit 1, then close the accordion: the send opens it again on Unit 1
    _open_unit(page)
    accordion = page.locator("#txt2img_controlnet")
    accordion.get_by_role("tab", name="ControlNet Unit 1").click()
    unit1 = "txt2img_controlnet_ControlNet-1"
    enable1 = page.locator(f"#{unit1}_controlnet_enable_checkbox input")
    expect(enable1).to_be_visible()
    accordion.get_by_role("button", name=re.compile(r"^ControlNet\b(?! Unit)")).first.click()
    expect(enable1).to_be_hidden()
    send = page.locator("#txt2img_send_to_controlnet")
    expect(send).to_have_text("Send to ControlNet")
    assert send.evaluate("e => e.scrollWidth <= e.clientWidth"), "the button's label overflows it"
    for directory in screenshot_dirs(tmp_path):
        page.locator("#image_buttons_txt2img").screenshot(path=str(directory / "controlnet_send_button.png"))
    send.click()
    expect(enable1).to_be_checked()
    expect(accordion.get_by_role("tab", name="ControlNet Unit 1")).to_have_attribute("aria-selected", "true")
    expect(page.locator(f"#{unit1}_input_image img")).to_be_visible()
    assert _shown_image(page, f"{unit1}_input_image").size == (64, 64)
    expect(page.locator(f"#{UNIT}_controlnet_enable_checkbox input")).not_to_be_checked()  # unit 0 untouched
    for directory in screenshot_dirs(tmp_path):
        accordion.screenshot(path=str(directory / "controlnet_sent_from_gallery.png"))

    # PNG Info -> img2img's unit 0: the independent image shown (the img2img image is not it)
    page.locator("#tabs").get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(_square(tmp_path / "square.png")))
    expect(page.locator("#pnginfo_image img")).to_be_visible()
    page.locator("#pnginfo_send_to_img2img_controlnet").click()
    unit = "img2img_controlnet_ControlNet-0"
    expect(page.locator(f"#{unit}_controlnet_enable_checkbox input")).to_be_checked()
    expect(page.locator(f"#{unit}_controlnet_same_img2img_checkbox input")).to_be_checked()
    expect(page.locator(f"#{unit}_input_image img")).to_be_visible()
    expect(page.locator(f"#{unit}_controlnet_trigger_preprocessor")).to_be_visible()
    shown = _shown_image(page, f"{unit}_input_image")
    assert shown.size == (64, 64) and shown.getpixel((32, 32)) == 255 and shown.getpixel((4, 4)) == 0
    # the upload stays: nothing chained on the ticked box cleared it
    expect(page.locator(".toast-body")).to_have_count(0)
    expect(page.locator(f"#{unit}_input_image img")).to_be_visible()
    for directory in screenshot_dirs(tmp_path):
        page.locator("#img2img_controlnet").screenshot(path=str(directory / "controlnet_sent_from_pnginfo.png"))
