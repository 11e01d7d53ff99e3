"""The Extras tab in a real browser against the real server: upscale one image with Lanczos and
check the output's real size and infotext; a screenshot for people to look at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.ui.conftest import screenshot_dirs
from tests.ui.server_events import server_events_held

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


def test_batch_from_directory_saves_results_and_refuses_outside_paths(
    page: Any, ui_data_dir: Path, tmp_path: Path
) -> None:
    source = ui_data_dir / "batch-in"
    source.mkdir(exist_ok=True)
    for name, color in (("a.png", (10, 200, 10)), ("b.png", (10, 10, 200))):
        Image.new("RGB", (32, 24), color).save(source / name)

    page.locator("#tabs").get_by_role("tab", name="Extras").click()
    page.locator("#extras_upscaler_1 input").click()
    page.get_by_role("option", name="Lanczos", exact=True).click()
    scale = page.locator("#extras_upscaling_resize input[type=number]")
    scale.fill("2")
    scale.press("Tab")

    # a folder outside the data dir and the outputs is refused. Generate reads the source tab the
    # page shows: no server answer to the tab's select is needed (none comes back here)
    with server_events_held(page):
        page.locator("#mode_extras").get_by_role("tab", name="Batch from Directory").click()
        page.locator("#extras_batch_input_dir textarea, #extras_batch_input_dir input").first.fill(str(tmp_path))
        page.locator("#extras_generate").click()
        expect(page.get_by_text("only folders inside the data dir").first).to_be_visible(timeout=30_000)

    page.locator("#extras_batch_input_dir textarea, #extras_batch_input_dir input").first.fill("batch-in")
    page.locator("#extras_batch_output_dir textarea, #extras_batch_output_dir input").first.fill("outputs/batch-out")
    page.locator("#extras_generate").click()
    expect(page.locator("#html_info_x")).to_contain_text("Postprocess upscale by: 2", timeout=60_000)
    expect(page.locator("#extras_gallery img")).to_have_count(2)
    saved = sorted((ui_data_dir / "outputs" / "batch-out").glob("*.png"))
    assert [p.name for p in saved] == ["a.png", "b.png"]
    with Image.open(saved[0]) as out:
        assert out.size == (64, 48)
        assert "Postprocess upscaler: Lanczos" in out.info["postprocessing"]
