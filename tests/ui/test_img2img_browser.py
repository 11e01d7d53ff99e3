"""The img2img tab in a real browser against the real server: img2img from an uploaded image,
inpainting with a mask painted by the mouse on the editor canvas, and a screenshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.ui.conftest import screenshot_dirs
from tests.ui.image_editor_page import paint_stroke, source_image, upload_to_editor

expect = pytest.importorskip("playwright.sync_api").expect


def _set_number(page: Any, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def _settings(page: Any, prompt: str) -> None:
    page.locator("#img2img_prompt textarea").fill(prompt)
    _set_number(page, "img2img_steps", 3)
    _set_number(page, "img2img_width", 64)
    _set_number(page, "img2img_height", 64)
    _set_number(page, "img2img_denoising_strength", 0.5)


def _wait_done(page: Any, expected: str) -> str:
    expect(page.locator("#html_info_img2img")).to_contain_text(expected, timeout=60_000)
    expect(page.locator("#img2img_generate")).to_be_visible(timeout=10_000)
    page.locator("#img2img_gallery img").first.wait_for(state="visible")
    return str(page.locator("#html_info_img2img").inner_text())


def test_img2img_inpaint_and_screenshot(page: Any, tmp_path: Path) -> None:
    source = source_image(tmp_path)
    page.locator("#tabs").get_by_role("tab", name="img2img", exact=True).click()
    page.locator("#img2img_generate").wait_for(state="visible")
    assert page.locator("#img2img_denoising_strength input[type=number]").input_value() == "0.75"
    expect(page.locator("#img2img_mask_blur")).to_be_hidden()

    # 1. a user error: no image
    page.locator("#img2img_generate").click()
    expect(page.get_by_text("Please upload an image for img2img").first).to_be_visible(timeout=10_000)
    page.locator(".toast-close").first.click()  # the toast lies over the Generate button
    expect(page.locator("#img2img_generate")).to_be_visible()

    # 2. img2img: an image and its infotext
    page.locator("#img2img_image input[type=file]").set_input_files(str(source))
    page.locator("#img2img_image img").first.wait_for(state="visible")
    _settings(page, "a red square")
    page.locator("#img2img_generate").click()
    info = _wait_done(page, "Denoising strength: 0.5")
    assert "Steps: 3" in info and "Size: 64x64" in info and "a red square" in info
    assert "Mask blur" not in info

    # 3. Inpaint: paint a stroke on the editor canvas
    page.locator("#mode_img2img").get_by_role("tab", name="Inpaint", exact=True).click()
    expect(page.locator("#img2img_mask_blur")).to_be_visible()
    # a source of another size than step 2's, so that the resolution preview tells them apart
    canvas = upload_to_editor(page, "img2maskimg", source_image(tmp_path, "source-72.png", size=(72, 64)))
    paint_stroke(page, canvas)
    page.locator("#img2img_prompt textarea").fill("a green blob")
    page.locator("#img2img_generate").click()
    info = _wait_done(page, "a green blob")
    assert "Mask blur: 4" in info and "Denoising strength: 0.5" in info

    page.evaluate("window.scrollTo(0, 0)")
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "img2img.png"))
