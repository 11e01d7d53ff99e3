"""Browser helpers for the img2img image editors (Sketch, Inpaint, Inpaint sketch): a source image,
an upload into an editor that waits until the server can read it back, and strokes with the mouse."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

expect = pytest.importorskip("playwright.sync_api").expect


def source_image(folder: Path, name: str = "source.png", size: tuple[int, int] = (64, 64)) -> Path:
    """A red image with a blue square in the middle, written as `folder/name` (PNG)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    image = Image.new("RGB", size, (200, 40, 40))
    image.paste((40, 40, 200), (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    image.save(path)
    return path


def upload_to_editor(page: Any, elem_id: str, path: Path) -> Any:
    """Upload `path` into an image editor of the current img2img sub-tab; returns its canvas once
    the server has read the image from it: the resolution preview, which runs on the editor's
    upload event, shows the image's size. The canvas shows the image (and its zoom level) before
    the editor can export it: under load that takes seconds, and a Generate click before then
    finds no image. Successive uploads in a page need sources of different sizes, so that the
    preview tells them apart."""
    preview = page.locator("#img2img_scale_resolution_preview")
    if preview.count() == 0:  # on the "Resize by" tab, rendered once it has been opened
        page.locator("#img2img_tab_resize_by-button").click()
        page.locator("#img2img_tab_resize_to-button").click()  # the request still resizes to width x height
    expect(page.locator("#img2img_tab_resize_to-button")).to_have_attribute("aria-selected", "true")
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    canvas = page.locator(f"#{elem_id} canvas").first
    canvas.wait_for(state="visible")
    with Image.open(path) as image:
        width, height = image.size
    expect(preview).to_contain_text(f"from {width}x{height}", timeout=60_000)
    expect(page.locator(f"#{elem_id}")).to_contain_text(re.compile(r"\d+%"), timeout=20_000)
    return canvas


def paint_stroke(page: Any, canvas: Any) -> None:
    """A short diagonal stroke across the middle of the editor's canvas. The editor exports its
    layers when an event reads it (a Generate click), not after the stroke: the pause lets the
    canvas finish drawing the stroke under load."""
    canvas.scroll_into_view_if_needed()  # mouse events outside the viewport reach nothing
    box = canvas.bounding_box()
    assert box is not None
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(cx - 40 + 8 * i, cy + 2 * i)
    page.mouse.up()
    page.wait_for_timeout(1000)


def paint_and_inpaint(page: Any, canvas: Any, expected: str, tries: int = 3) -> str:
    """Paint a stroke on the Inpaint editor and click Generate; returns the infotext once it shows
    `expected`. For an image the server put into the editor (send to / copy to): Gradio's editor
    sets such an image up on its canvas after it shows it, and under load a stroke painted in
    between was lost ("the mask is empty", seen in CI). Then the stroke is painted again, up to
    `tries` times; an upload has the readiness signal of `upload_to_editor` instead."""
    info = page.locator("#html_info_img2img")
    empty = page.get_by_text("the mask is empty").first
    for _ in range(tries):
        paint_stroke(page, canvas)
        page.locator("#img2img_generate").click()
        expect(info.filter(has_text=expected).or_(empty)).to_be_visible(timeout=90_000)
        if not empty.is_visible():
            expect(page.locator("#img2img_generate")).to_be_visible(timeout=10_000)
            return str(info.inner_text())
        page.locator(".toast-close").first.click()
        expect(empty).to_be_hidden()
    raise AssertionError(f"no stroke reached the server in {tries} tries")
