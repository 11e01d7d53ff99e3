"""The img2img sub-tabs in a real browser against the real server: Sketch and Inpaint sketch painted
with the mouse, Batch from a folder in the data dir into an output folder, "Resize by", "Copy
image to:", and a 1280x800 screenshot of each sub-tab."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from modules.services import Services
from tests.ui.conftest import screenshot_dirs
from tests.ui.image_editor_page import paint_and_inpaint, paint_stroke, source_image, upload_to_editor
from tests.ui.server_events import server_events_held

expect = pytest.importorskip("playwright.sync_api").expect


def _set_number(page: Any, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def _open_img2img(page: Any) -> None:
    page.locator("#tabs").get_by_role("tab", name="img2img", exact=True).click()
    page.locator("#img2img_generate").wait_for(state="visible")


def _subtab(page: Any, name: str) -> None:
    page.locator("#mode_img2img").get_by_role("tab", name=name, exact=True).click()


def _settings(page: Any, prompt: str, steps: int = 2, size: int = 64) -> None:
    page.locator("#img2img_prompt textarea").fill(prompt)
    _set_number(page, "img2img_steps", steps)
    _set_number(page, "img2img_width", size)
    _set_number(page, "img2img_height", size)
    _set_number(page, "img2img_denoising_strength", 0.5)


def _wait_done(page: Any, expected: str) -> str:
    expect(page.locator("#html_info_img2img")).to_contain_text(expected, timeout=90_000)
    expect(page.locator("#img2img_generate")).to_be_visible(timeout=10_000)
    page.locator("#img2img_gallery img").first.wait_for(state="visible")
    return str(page.locator("#html_info_img2img").inner_text())


def _shot(page: Any, tmp_path: Path, name: str, anchor: str = "#mode_img2img") -> None:
    """A 1280x800 screenshot with `anchor` (the sub-tabs) at the top of the view."""
    page.evaluate("(sel) => document.querySelector(sel).scrollIntoView({block: 'start'})", anchor)
    page.wait_for_timeout(300)
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / name))


def test_sketch_and_inpaint_sketch_generate(page: Any, tmp_path: Path) -> None:
    source = source_image(tmp_path)
    _open_img2img(page)
    tabs = page.locator("#mode_img2img").get_by_role("tab")
    expect(tabs).to_have_text(["img2img", "Sketch", "Inpaint", "Inpaint sketch", "Inpaint upload", "Batch"])

    # Sketch: colour strokes over the image, no mask
    _subtab(page, "Sketch")
    expect(page.locator("#img2img_mask_blur")).to_be_hidden()
    canvas = upload_to_editor(page, "img2img_sketch", source)
    paint_stroke(page, canvas)
    _settings(page, "a sketched scene")
    page.locator("#img2img_generate").click()
    info = _wait_done(page, "a sketched scene")
    assert "Steps: 2" in info and "Size: 64x64" in info and "Denoising strength: 0.5" in info
    assert "Mask blur" not in info
    _shot(page, tmp_path, "img2img_sketch.png")

    # Inpaint sketch: the painted strokes are the mask; "Mask transparency" is shown here only
    _subtab(page, "Inpaint sketch")
    expect(page.locator("#img2img_mask_alpha")).to_be_visible()
    expect(page.locator("#img2img_mask_blur")).to_be_visible()
    expect(page.locator("#img2img_inpainting_fill")).to_be_visible()
    canvas = upload_to_editor(page, "inpaint_sketch", source_image(tmp_path, "source-72.png", size=(72, 64)))
    page.locator("#img2img_prompt textarea").fill("a coloured patch")
    page.locator("#img2img_generate").click()  # nothing painted yet: a user error
    expect(page.get_by_text("nothing is painted").first).to_be_visible(timeout=10_000)
    page.locator(".toast-close").first.click()
    paint_stroke(page, canvas)
    page.locator("#img2img_generate").click()
    info = _wait_done(page, "a coloured patch")
    assert "Mask blur: 4" in info and "Steps: 2" in info
    _shot(page, tmp_path, "img2img_inpaint_sketch.png")

    _subtab(page, "Inpaint")
    expect(page.locator("#img2img_mask_alpha")).to_be_hidden()
    expect(page.locator("#img2img_mask_blur")).to_be_visible()
    _shot(page, tmp_path, "img2img_inpaint.png")
    _subtab(page, "Inpaint upload")
    expect(page.locator("#img_inpaint_mask")).to_be_visible()
    _shot(page, tmp_path, "img2img_inpaint_upload.png")


def test_batch_from_directory_writes_outputs_with_infotext(page: Any, ui_services: Services, tmp_path: Path) -> None:
    data = ui_services.paths.data_dir
    for name in ("one.png", "two.png"):
        source_image(data / "batch-in", name)
    _open_img2img(page)
    _settings(page, "batch of two")

    # a folder outside the data dir and the outputs folder is refused. Generate reads the sub-tabs
    # the page shows: no server answer to their selects is needed (none comes back here)
    with server_events_held(page):
        _subtab(page, "Batch")
        expect(page.locator("#img2img_batch_upload")).to_be_visible()
        page.locator("#img2img_batch_source").get_by_role("tab", name="From directory", exact=True).click()
        page.locator("#img2img_batch_input_dir textarea, #img2img_batch_input_dir input").first.fill("/etc")
        page.locator("#img2img_generate").click()
        expect(page.get_by_text("only folders inside the data dir").first).to_be_visible(timeout=10_000)
    page.locator(".toast-close").first.click()
    expect(page.locator("#img2img_mask_blur")).to_be_visible()  # masks may come from a folder

    page.locator("#img2img_batch_input_dir textarea, #img2img_batch_input_dir input").first.fill("batch-in")
    page.locator("#img2img_batch_output_dir textarea, #img2img_batch_output_dir input").first.fill("batch-out")
    ui_services.options.set("img2img_batch_show_results_limit", 1)  # the gallery shows the first only
    try:
        page.locator("#img2img_generate").click()
        info = _wait_done(page, "Processed 2/2 images")
    finally:
        ui_services.options.set("img2img_batch_show_results_limit", 32)
    assert "2 files written to batch-out." in info and "batch of two" in info
    expect(page.locator("#img2img_gallery img")).to_have_count(1, timeout=10_000)
    written = sorted((data / "batch-out").iterdir())
    assert [p.name for p in written] == ["one.png", "two.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.size == (64, 64)
            assert "batch of two" in image.info["parameters"] and "Steps: 2" in image.info["parameters"]
    _shot(page, tmp_path, "img2img_batch.png")


def test_resize_by_and_detect_size(page: Any, tmp_path: Path) -> None:
    source = source_image(tmp_path, size=(96, 72))
    _open_img2img(page)
    page.locator("#img2img_image input[type=file]").set_input_files(str(source))
    page.locator("#img2img_image img").first.wait_for(state="visible")
    _settings(page, "scaled up")

    # 📐 takes the size of the sub-tab's image
    page.locator("#img2img_detect_image_size_btn").click()
    expect(page.locator("#img2img_width input[type=number]")).to_have_value("96")
    expect(page.locator("#img2img_height input[type=number]")).to_have_value("72")
    _shot(page, tmp_path, "img2img_resize_to.png", "#resize_mode")

    page.locator("#img2img_tabs_resize").get_by_role("tab", name="Resize by", exact=True).click()
    _set_number(page, "img2img_scale", 2)
    expect(page.locator("#img2img_scale_resolution_preview")).to_contain_text("from 96x72 to 192x144")
    page.locator("#img2img_generate").click()
    info = _wait_done(page, "scaled up")
    assert "Size: 192x144" in info
    _shot(page, tmp_path, "img2img_resize_by.png", "#resize_mode")


def test_copy_image_between_sub_tabs(page: Any, tmp_path: Path) -> None:
    source = source_image(tmp_path)
    _open_img2img(page)
    page.locator("#img2img_image input[type=file]").set_input_files(str(source))
    page.locator("#img2img_image img").first.wait_for(state="visible")
    expect(page.locator("#img2img_label_copy_to_img2img")).to_contain_text("Copy image to")
    _shot(page, tmp_path, "img2img_img2img.png")

    page.locator("#img2img_copy_to_img2img").get_by_role("button", name="sketch", exact=True).click()
    expect(page.locator("#img2img_sketch")).to_be_visible()
    expect(page.locator("#img2img_image")).to_be_hidden()
    expect(page.locator("#img2img_sketch")).to_contain_text(re.compile(r"\d+%"), timeout=20_000)

    page.locator("#img2img_copy_to_sketch").get_by_role("button", name="inpaint sketch", exact=True).click()
    expect(page.locator("#inpaint_sketch")).to_be_visible()
    expect(page.locator("#img2img_mask_alpha")).to_be_visible()
    expect(page.locator("#inpaint_sketch")).to_contain_text(re.compile(r"\d+%"), timeout=20_000)

    page.locator("#img2img_copy_to_inpaint_sketch").get_by_role("button", name="inpaint", exact=True).click()
    expect(page.locator("#img2maskimg")).to_be_visible()
    expect(page.locator("#img2img_mask_alpha")).to_be_hidden()
    expect(page.locator("#img2img_mask_blur")).to_be_visible()
    canvas = page.locator("#img2maskimg canvas").first
    expect(page.locator("#img2maskimg")).to_contain_text(re.compile(r"\d+%"), timeout=20_000)
    # the copied image is there: inpainting it works without an upload
    _settings(page, "copied and inpainted")
    info = paint_and_inpaint(page, canvas, "copied and inpainted")
    assert "Mask blur: 4" in info

    page.locator("#img2img_copy_to_inpaint").get_by_role("button", name="img2img", exact=True).click()
    expect(page.locator("#img2img_image")).to_be_visible()
    expect(page.locator("#img2img_mask_blur")).to_be_hidden()
    page.locator("#img2img_image img").first.wait_for(state="visible")


def test_image_cfg_scale_only_for_instruct_pix2pix(
    page: Any, ui_services: Services, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    _open_img2img(page)
    expect(page.locator("#img2img_cfg_scale")).to_be_visible()
    expect(page.locator("#img2img_image_cfg_scale")).to_be_hidden()
    target = ui_services.paths.data_dir / "models" / "Stable-diffusion" / "ip2p.safetensors"
    shutil.copy(tiny_models["sd1-ip2p"], target)
    ui_services.registry.refresh()
    ui_services.engine.switch_model(checkpoint="ip2p.safetensors")
    try:
        # selecting the img2img tab again refreshes it
        page.locator("#tabs").get_by_role("tab", name="txt2img", exact=True).click()
        _open_img2img(page)
        expect(page.locator("#img2img_image_cfg_scale")).to_be_visible()
        assert page.locator("#img2img_image_cfg_scale input[type=number]").input_value() == "1.5"
        page.locator("#img2img_image input[type=file]").set_input_files(str(source_image(tmp_path)))
        page.locator("#img2img_image img").first.wait_for(state="visible")
        _settings(page, "make it blue")
        _set_number(page, "img2img_image_cfg_scale", 1.25)
        page.locator("#img2img_generate").click()
        info = _wait_done(page, "make it blue")
        assert "Image CFG scale: 1.25" in info
        # and on a fresh page load
        page.reload()
        _open_img2img(page)
        expect(page.locator("#img2img_image_cfg_scale")).to_be_visible()
        # switching the checkpoint from the top bar hides it at once, on the same tab
        page.locator("#setting_sd_model_checkpoint input").click()
        page.get_by_role("option", name=re.compile(r"^sd1\.safetensors")).click()
        expect(page.locator("#img2img_image_cfg_scale")).to_be_hidden(timeout=30_000)
        assert page.locator("#tab_img2img-button").get_attribute("aria-selected") == "true"
    finally:
        ui_services.engine.switch_model(checkpoint="sd1.safetensors")
    page.reload()
    _open_img2img(page)
    expect(page.locator("#img2img_image_cfg_scale")).to_be_hidden()


def test_batch_upload_shows_image_k_of_n_and_interrupt_stops_it(page: Any, tmp_path: Path) -> None:
    files = [str(source_image(tmp_path / "up", f"up{i}.png")) for i in range(3)]
    _open_img2img(page)
    _subtab(page, "Batch")
    # the sub-tab's select event has reached the server (it shows the mask options in the same
    # answer that sets the mode): under load a Generate click before then ran as plain img2img
    expect(page.locator("#img2img_mask_blur")).to_be_visible()
    page.locator("#img2img_batch_upload input[type=file]").set_input_files(files)
    # Gradio lists an uploaded file as "up2 .png" (name and extension in separate cells)
    expect(page.locator("#img2img_batch_upload")).to_contain_text(re.compile(r"up2\s*\.png"), timeout=20_000)
    expect(page.locator("#img2img_batch_upload")).not_to_contain_text("Uploading", timeout=20_000)
    # long enough per image (150 steps at 256 px) that the Interrupt lands while image 1 or 2 runs
    _settings(page, "a long batch", steps=150, size=256)
    page.locator("#img2img_generate").click()
    expect(page.locator("#img2img_progress")).to_contain_text("image 1/3", timeout=30_000)
    # on a busy CI machine the renderer can take a while to take the click while the job streams
    # its progress (the default 30 s has run out there); the job runs until it does
    page.locator("#img2img_interrupt").click(timeout=90_000)
    # stopped after the image it was on (1, or 2 when the first one was already done)
    expect(page.locator("#html_info_img2img")).to_contain_text(re.compile(r"Processed [12]/3 images"), timeout=60_000)
    expect(page.locator("#img2img_generate")).to_be_visible(timeout=10_000)
