"""Moving work between tabs in a real browser: generate in txt2img, send the image to img2img and
run there (with Ctrl+Enter), send to inpaint and paint, send to extras; PNG Info's four send
buttons; ↙️ paste; and the keyboard shortcuts (Esc interrupts, Ctrl+Up weights a word)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from modules.services import Services
from tests.ui.conftest import screenshot_dirs
from tests.ui.image_editor_page import paint_and_inpaint

expect = pytest.importorskip("playwright.sync_api").expect


def _set_number(page: Any, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def _number(page: Any, elem_id: str) -> str:
    return str(page.locator(f"#{elem_id} input[type=number]").input_value())


def _txt2img(page: Any, prompt: str, *, steps: int = 2, size: int = 64, seed: int = 1234) -> str:
    page.locator("#tabs").get_by_role("tab", name="txt2img", exact=True).click()
    page.locator("#txt2img_prompt textarea").fill(prompt)
    _set_number(page, "txt2img_steps", steps)
    _set_number(page, "txt2img_width", size)
    _set_number(page, "txt2img_height", size)
    _set_number(page, "txt2img_seed", seed)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#html_info_txt2img")).to_contain_text(prompt, timeout=60_000)
    expect(page.locator("#txt2img_generate")).to_be_visible(timeout=10_000)
    page.locator("#txt2img_gallery img").first.wait_for(state="visible")
    return str(page.locator("#html_info_txt2img").inner_text())


def _wait_img2img(page: Any, expected: str) -> str:
    expect(page.locator("#html_info_img2img")).to_contain_text(expected, timeout=60_000)
    expect(page.locator("#img2img_generate")).to_be_visible(timeout=10_000)
    return str(page.locator("#html_info_img2img").inner_text())


def test_send_txt2img_result_to_img2img_inpaint_and_extras(page: Any, tmp_path: Path) -> None:
    _txt2img(page, "a red cube on a table", steps=2, seed=4321)

    # 🖼️ to img2img: the image, the prompt, steps, seed and (send_size) the image's size travel
    page.locator("#txt2img_send_to_img2img").click()
    expect(page.locator("#img2img_generate")).to_be_visible()
    page.locator("#img2img_image img").first.wait_for(state="visible")
    assert page.locator("#img2img_prompt textarea").input_value() == "a red cube on a table"
    assert _number(page, "img2img_steps") == "2"
    assert _number(page, "img2img_seed") == "4321"
    assert _number(page, "img2img_width") == "64" and _number(page, "img2img_height") == "64"
    expect(page.locator("#img2img_mask_blur")).to_be_hidden()

    # ... and run it there, with Ctrl+Enter from the prompt box
    page.locator("#img2img_prompt textarea").fill("a red cube on a table, oil painting")
    page.locator("#img2img_prompt textarea").press("Control+Enter")
    info = _wait_img2img(page, "oil painting")
    assert "Denoising strength: 0.75" in info and "Size: 64x64" in info and "Seed: 4321" in info
    page.locator("#img2img_gallery img").first.wait_for(state="visible")

    # 🎨️ from img2img's own gallery to inpaint: the editor holds the image; paint and inpaint
    page.locator("#img2img_send_to_inpaint").click()
    expect(page.locator("#img2img_mask_blur")).to_be_visible()
    expect(page.locator("#img2maskimg")).to_contain_text(re.compile(r"\d+%"), timeout=20_000)
    page.locator("#img2img_prompt textarea").fill("a green blob")
    info = paint_and_inpaint(page, page.locator("#img2maskimg canvas").first, "a green blob")
    assert "Mask blur: 4" in info

    # 📐 from txt2img to extras: the single-image input holds the image
    page.locator("#tabs").get_by_role("tab", name="txt2img", exact=True).click()
    page.locator("#txt2img_send_to_extras").click()
    expect(page.locator("#extras_image img").first).to_be_visible(timeout=10_000)
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "send_to_extras.png"))


def test_send_seed_and_size_options_are_honoured(page: Any, ui_services: Services) -> None:
    ui_services.options.set("send_seed", False)
    ui_services.options.set("send_size", False)
    try:
        _txt2img(page, "a lone tree", steps=2, seed=777)
        page.locator("#tabs").get_by_role("tab", name="img2img", exact=True).click()
        _set_number(page, "img2img_seed", -1)
        _set_number(page, "img2img_width", 512)
        page.locator("#tabs").get_by_role("tab", name="txt2img", exact=True).click()
        page.locator("#txt2img_send_to_img2img").click()
        page.locator("#img2img_image img").first.wait_for(state="visible")
        assert page.locator("#img2img_prompt textarea").input_value() == "a lone tree"
        assert _number(page, "img2img_seed") == "-1"
        assert _number(page, "img2img_width") == "512"
    finally:
        ui_services.options.set("send_seed", True)
        ui_services.options.set("send_size", True)


def _saved_png(services: Services, prompt_word: str) -> Path:
    pngs = sorted(services.paths.outputs_dir.rglob("*.png"), key=lambda p: p.stat().st_mtime)
    for png in reversed(pngs):
        with Image.open(png) as image:
            if prompt_word in str(image.info.get("parameters", "")):
                return png
    raise AssertionError(f"no saved PNG for {prompt_word!r}")


def test_pnginfo_send_buttons(page: Any, ui_services: Services, tmp_path: Path) -> None:
    _txt2img(page, "a purple lamp", steps=3, seed=99)
    png = _saved_png(ui_services, "a purple lamp")

    def drop() -> None:
        page.locator("#tabs").get_by_role("tab", name="PNG Info", exact=True).click()
        page.locator("#pnginfo_image input[type=file]").set_input_files(str(png))
        expect(page.locator("#html_info_x_pnginfo")).to_contain_text("a purple lamp", timeout=10_000)

    drop()
    page.locator("#img2img_tab").click()  # "Send to img2img"
    page.locator("#img2img_image img").first.wait_for(state="visible")
    assert page.locator("#img2img_prompt textarea").input_value() == "a purple lamp"
    assert _number(page, "img2img_steps") == "3" and _number(page, "img2img_seed") == "99"

    drop()
    page.locator("#inpaint_tab").click()  # "Send to inpaint"
    expect(page.locator("#img2img_mask_blur")).to_be_visible()
    expect(page.locator("#img2maskimg")).to_contain_text(re.compile(r"\d+%"), timeout=20_000)

    drop()
    page.locator("#extras_tab").click()  # "Send to extras"
    expect(page.locator("#extras_image img").first).to_be_visible(timeout=10_000)


def test_paste_button_reads_parameters_from_the_prompt_box(page: Any) -> None:
    infotext = (
        "a castle on a hill\nNegative prompt: fog\n"
        "Steps: 17, Sampler: Euler a, Schedule type: Karras, CFG scale: 5.5, Seed: 2468, Size: 128x192"
    )
    page.locator("#txt2img_prompt textarea").fill(infotext)
    page.locator("#txt2img_paste").click()
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("a castle on a hill")
    assert page.locator("#txt2img_neg_prompt textarea").input_value() == "fog"
    assert _number(page, "txt2img_steps") == "17"
    assert _number(page, "txt2img_cfg_scale") == "5.5"
    assert _number(page, "txt2img_seed") == "2468"
    assert _number(page, "txt2img_width") == "128" and _number(page, "txt2img_height") == "192"
    assert page.locator("#txt2img_sampling input").input_value() == "Euler a"
    assert page.locator("#txt2img_scheduler input").input_value() == "Karras"

    # a plain prompt is not parameters: a clear message, nothing changed
    page.locator("#txt2img_prompt textarea").fill("just a prompt")
    page.locator("#txt2img_paste").click()
    expect(page.get_by_text("no generation parameters").first).to_be_visible(timeout=10_000)
    assert _number(page, "txt2img_steps") == "17"


def test_paste_with_an_empty_prompt_restores_the_last_generation(page: Any) -> None:
    _txt2img(page, "the last one", steps=3, seed=1357)
    page.locator("#txt2img_prompt textarea").fill("")
    _set_number(page, "txt2img_steps", 40)
    page.locator("#txt2img_paste").click()
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("the last one")
    assert _number(page, "txt2img_steps") == "3" and _number(page, "txt2img_seed") == "1357"


def test_keyboard_esc_interrupts_and_ctrl_up_weights_a_word(page: Any, ui_services: Services) -> None:
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a red cube")
    # caret inside "red": Ctrl+Up wraps the word, twice raises, Ctrl+Down twice removes the brackets
    prompt.evaluate("el => el.setSelectionRange(3, 3)")
    prompt.press("Control+ArrowUp")
    expect(prompt).to_have_value("a (red:1.1) cube")
    prompt.press("Control+ArrowUp")
    expect(prompt).to_have_value("a (red:1.2) cube")
    prompt.press("Control+ArrowDown")
    prompt.press("Control+ArrowDown")
    expect(prompt).to_have_value("a red cube")

    # a long run started with Ctrl+Enter, stopped with Esc
    _set_number(page, "txt2img_steps", 150)
    _set_number(page, "txt2img_width", 64)
    _set_number(page, "txt2img_height", 64)
    _set_number(page, "txt2img_batch_count", 50)
    prompt.press("Control+Enter")
    expect(page.locator("#txt2img_interrupt")).to_be_visible(timeout=10_000)
    expect(page.locator("#txt2img_progress .sdw-progress-text")).to_contain_text("step", timeout=30_000)
    page.keyboard.press("Escape")
    expect(page.locator("#html_info_txt2img")).to_contain_text("Interrupted", timeout=60_000)
    expect(page.locator("#txt2img_generate")).to_be_visible(timeout=10_000)
    assert ui_services.worker.current is None


def test_save_and_zip_buttons_write_to_log_images(page: Any, ui_services: Services) -> None:
    import zipfile

    _set_number(page, "txt2img_batch_size", 2)
    try:
        _txt2img(page, "a saved pair", steps=2, seed=55)
    finally:
        _set_number(page, "txt2img_batch_size", 1)
    folder = ui_services.paths.output_path("log/images")
    before = set(folder.glob("*.png")) if folder.is_dir() else set()

    # 💾 with `save_selected_only`: the clicked image (the second of the batch) and a log.csv row
    page.locator("#txt2img_gallery .thumbnail-item").nth(2).click()  # grid, image 1, image 2
    page.locator("#save_txt2img").click()
    expect(page.locator("#download_files_txt2img")).to_be_visible(timeout=10_000)
    expect(page.locator("#download_files_txt2img")).to_contain_text(".png")
    new = set(folder.glob("*.png")) - before
    assert len(new) == 1
    with Image.open(next(iter(new))) as saved:
        assert "Seed: 56" in str(saved.info.get("parameters"))
    log = (folder / "log.csv").read_text(encoding="utf-8")
    assert log.startswith("prompt,seed,width,height") and "a saved pair,56,64,64" in log

    # 🗃️: both images in one zip
    page.locator("#save_zip_txt2img").click()
    expect(page.locator("#download_files_txt2img")).to_contain_text(".zip", timeout=10_000)
    archive = max(folder.glob("*.zip"), key=lambda p: p.stat().st_mtime)
    with zipfile.ZipFile(archive) as zf:
        assert len(zf.namelist()) == 2
