"""The txt2img tab in a real browser against the real server: generate, interrupt, switch the
checkpoint from the top bar, and a screenshot for people to look at."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from modules.services import Services
from tests.ui.conftest import screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect


def _set_number(page: Any, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def _generate(page: Any, prompt: str, *, steps: int, size: int = 64, batch_count: int = 1) -> None:
    page.locator("#txt2img_prompt textarea").fill(prompt)
    _set_number(page, "txt2img_steps", steps)
    _set_number(page, "txt2img_width", size)
    _set_number(page, "txt2img_height", size)
    _set_number(page, "txt2img_batch_count", batch_count)
    page.locator("#txt2img_generate").click()


def _wait_done(page: Any, expected: str) -> str:
    """Wait for the infotext of this run (the run clears the old one first); return it."""
    expect(page.locator("#html_info_txt2img")).to_contain_text(expected, timeout=60_000)
    expect(page.locator("#txt2img_generate")).to_be_visible(timeout=10_000)
    return str(page.locator("#html_info_txt2img").inner_text())


def test_generate_interrupt_switch_checkpoint_and_screenshot(page: Any, ui_services: Services, tmp_path: Path) -> None:
    # the page shows A1111's defaults and the active checkpoint
    assert page.locator("#tabs").get_by_role("tab").all_inner_texts()[:8] == [
        "txt2img",
        "img2img",
        "Extras",
        "PNG Info",
        "Checkpoint Merger",
        "Train",
        "Settings",
        "Extensions",
    ]
    checkpoint = page.locator("#setting_sd_model_checkpoint input")
    assert checkpoint.input_value().startswith("sd1.safetensors")
    assert page.locator("#txt2img_steps input[type=number]").input_value() == "20"

    # 1. a quick generation: an image and its infotext
    _generate(page, "a red cube on a table", steps=3)
    info = _wait_done(page, "a red cube on a table")
    assert "Steps: 3" in info and "a red cube on a table" in info and "Size: 64x64" in info
    assert "Model: sd1" in info
    page.locator("#txt2img_gallery img").first.wait_for(state="visible")
    assert re.fullmatch(r"\d+/75", page.locator("#txt2img_token_counter").inner_text().strip())
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "txt2img.png"), full_page=True)

    # 2. a long run, interrupted: it stops early and still shows what it made
    first_src = page.locator("#txt2img_gallery img").first.get_attribute("src")
    _generate(page, "a long run", steps=150, batch_count=50)
    # a live preview replaces the last result in the gallery while the job runs
    page.wait_for_function(
        "(old) => { const img = document.querySelector('#txt2img_gallery img');"
        " return img !== null && img.getAttribute('src') !== old; }",
        arg=first_src,
        timeout=30_000,
    )
    # the progress bar shows the running job (so the interrupt reaches it, not an idle worker)
    expect(page.locator("#txt2img_progress .sdw-progress-text")).to_contain_text("step", timeout=30_000)
    # on a busy CI machine the renderer can take a while to take the click while the job streams
    # its progress (the default 30 s has run out there); the job runs until it does
    page.locator("#txt2img_interrupt").click(timeout=90_000)
    _wait_done(page, "Interrupted")
    assert page.locator("#txt2img_gallery img").count() >= 1
    assert ui_services.worker.current is None

    # 3. switch to sd2 from the top bar, generate again with it
    checkpoint.click()
    page.get_by_role("option", name=re.compile(r"^sd2\.safetensors")).click()
    page.wait_for_function("() => document.querySelector('#setting_sd_model_checkpoint input').value.startsWith('sd2')")
    _generate(page, "a blue sphere", steps=3)
    info = _wait_done(page, "a blue sphere")
    assert "Model: sd2" in info and "Steps: 3" in info and "a blue sphere" in info
    active = ui_services.models.status().checkpoint
    assert active is not None and active.name.startswith("sd2")
