"""The ControlNet accordion in a real browser against the full app (a server of its own, its data
dir holding a tiny SD1 ControlNet): open the accordion, enable unit 0, upload a white square on
black, Control Type Canny (the preprocessor and the model follow), Allow Preview + 💥 shows the
edges, Generate gives an image whose infotext has `ControlNet 0`; ↙️ paste of a `ControlNet 0` line
restores the unit; on img2img the upload shows only with "Upload independent control image";
screenshots for people to look at."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.controlnet_files import write_controlnet
from tests.ui.conftest import make_ui_data_dir, screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect

UNIT = "txt2img_controlnet_ControlNet-0"


@pytest.fixture(scope="module")
def ui_data_dir(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_ui_data_dir(tiny_models, tmp_path_factory.mktemp("controlnet-ui-data"))
    write_controlnet(root / "models" / "ControlNet" / "control_sd15_canny.safetensors", "sd1")
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
