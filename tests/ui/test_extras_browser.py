"""The Extras tab in a real browser against the real server: upscale one image with Lanczos and
check the output's real size and infotext; a screenshot for people to look at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.ui.conftest import screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect


def test_single_image_lanczos_upscale_and_screenshot(page: Any, tmp_path: Path) -> None:
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 48), (200, 40, 40)).save(source)

    page.locator("#tabs").get_by_role("tab", name="Extras").click()
    page.locator("#extras_generate").wait_for(state="visible")
    assert page.locator("#extras_upscaling_resize input[type=number]").input_value() == "4"

    page.locator("#extras_image input[type=file]").set_input_files(str(source))
    page.locator("#extras_image img").first.wait_for(state="visible")

    page.locator("#extras_upscaler_1 input").click()
    page.get_by_role("option", name="Lanczos", exact=True).click()
    expect(page.locator("#extras_upscaler_1 input")).to_have_value("Lanczos")
    scale = page.locator("#extras_upscaling_resize input[type=number]")
    scale.fill("2")
    scale.press("Tab")

    page.locator("#extras_generate").click()
    expect(page.locator("#html_info_x")).to_contain_text("Postprocess upscale by: 2", timeout=60_000)
    info = page.locator("#html_info_x").inner_text()
    assert "Postprocess upscaler: Lanczos" in info

    output = page.locator("#extras_output_image img").first
    output.wait_for(state="visible")
    page.wait_for_function(
        "() => { const img = document.querySelector('#extras_output_image img');"
        " return img !== null && img.complete && img.naturalWidth > 0; }"
    )
    size = output.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size == [128, 96]

    page.evaluate("window.scrollTo(0, 0)")
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "extras.png"))
