"""Hires. fix and Refiner on txt2img (and the Refiner on img2img) in a real browser: the controls
with A1111's elem_ids and defaults, the hires rows the options show, ↙️ paste of an infotext with
the hires and refiner keys, and a screenshot for people to look at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modules.services import Services
from tests.ui.conftest import screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect

ROW_SAMPLER, ROW_PROMPTS = "#txt2img_hires_fix_row3", "#txt2img_hires_fix_row4"


def _open(page: Any, accordion: str) -> None:
    """Expand a closed accordion by its header (the first button in it)."""
    page.locator(f"#{accordion} button").first.click()


def _dropdown(page: Any, elem_id: str) -> Any:
    return page.locator(f"#{elem_id} input").first


def _option_names(options: Any) -> list[str]:
    """The names of an open dropdown's options (each option's label, without the ✓ of the chosen one)."""
    return [str(name) for name in options.evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")]


def _number(page: Any, elem_id: str) -> Any:
    return page.locator(f"#{elem_id} input[type=number]").first


def _checkbox(page: Any, elem_id: str) -> Any:
    return page.locator(f"#{elem_id} input[type=checkbox]")


def _set_show_options(services: Services, on: bool) -> None:
    for key in ("hires_fix_show_sampler", "hires_fix_show_prompts"):
        services.options.set(key, on)


def test_hires_and_refiner_controls_defaults_and_screenshot(page: Any, ui_services: Services, tmp_path: Path) -> None:
    _set_show_options(ui_services, True)
    page.reload()  # the rows follow the options at page load
    page.locator("#txt2img_generate").wait_for(state="visible")

    _open(page, "txt2img_hr")
    _checkbox(page, "txt2img_hr-checkbox").check()
    expect(page.locator("#txtimg_hr_finalres")).to_contain_text("from 512x512 to 1024x1024")
    expect(_dropdown(page, "txt2img_hr_upscaler")).to_have_value("Latent")
    assert _number(page, "txt2img_hires_steps").input_value() == "0"
    assert _number(page, "txt2img_denoising_strength").input_value() == "0.7"
    assert _number(page, "txt2img_hr_scale").input_value() == "2"
    expect(page.locator(ROW_SAMPLER)).to_be_visible()
    expect(page.locator(ROW_PROMPTS)).to_be_visible()
    expect(_dropdown(page, "hr_checkpoint")).to_have_value("Use same checkpoint")
    expect(page.locator("#hr_checkpoint_refresh")).to_be_visible()
    expect(_dropdown(page, "hr_sampler")).to_have_value("Use same sampler")
    expect(_dropdown(page, "hr_scheduler")).to_have_value("Use same scheduler")
    expect(page.locator("#hires_prompt textarea")).to_have_value("")
    expect(page.locator("#hires_neg_prompt textarea")).to_have_value("")

    # the upscaler list: latent modes, then None / Lanczos / Nearest (and model upscalers)
    _dropdown(page, "txt2img_hr_upscaler").click()
    options = page.get_by_role("option")
    expect(options.first).to_be_visible()
    names = _option_names(options)
    assert names[:9] == [
        "Latent",
        "Latent (antialiased)",
        "Latent (bicubic)",
        "Latent (bicubic antialiased)",
        "Latent (nearest)",
        "Latent (nearest-exact)",
        "None",
        "Lanczos",
        "Nearest",
    ]
    page.keyboard.press("Escape")

    _open(page, "txt2img_enable")
    _checkbox(page, "txt2img_enable-checkbox").check()
    expect(_dropdown(page, "txt2img_checkpoint")).to_have_value("")
    expect(page.locator("#txt2img_checkpoint_refresh")).to_be_visible()
    assert _number(page, "txt2img_switch_at").input_value() == "0.8"
    slider = page.locator("#txt2img_switch_at input[type=range]")
    assert (slider.get_attribute("min"), slider.get_attribute("max"), slider.get_attribute("step")) == (
        "0.01",
        "1",
        "0.01",
    )
    _dropdown(page, "txt2img_checkpoint").click()
    refiners = page.get_by_role("option")
    expect(refiners.first).to_be_visible()
    assert any(name.startswith("sd2.safetensors") for name in _option_names(refiners))
    page.keyboard.press("Escape")

    page.locator("#txt2img_hr").scroll_into_view_if_needed()
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "hires_refiner.png"), full_page=True)

    # img2img has its own Refiner accordion
    page.locator("#tabs").get_by_role("tab", name="img2img").click()
    _open(page, "img2img_enable")
    expect(_checkbox(page, "img2img_enable-checkbox")).not_to_be_checked()
    expect(_dropdown(page, "img2img_checkpoint")).to_be_visible()
    expect(page.locator("#img2img_checkpoint_refresh")).to_be_visible()
    assert _number(page, "img2img_switch_at").input_value() == "0.8"


def test_paste_fills_hires_and_refiner_and_shows_the_rows(page: Any, ui_services: Services) -> None:
    _set_show_options(ui_services, False)
    page.reload()
    page.locator("#txt2img_generate").wait_for(state="visible")
    _open(page, "txt2img_hr")
    expect(page.locator(ROW_SAMPLER)).to_be_hidden()
    expect(page.locator(ROW_PROMPTS)).to_be_hidden()

    sd2 = ui_services.registry.find_checkpoint("sd2.safetensors")
    short = f"sd2 [{sd2.shorthash}]" if sd2.shorthash else "sd2"
    infotext = (
        "a cat\nSteps: 5, Sampler: DPM++ 2M, Schedule type: Automatic, CFG scale: 7, Seed: 3, Size: 64x64, "
        f"Denoising strength: 0.5, Hires upscale: 1.5, Hires upscaler: Lanczos, Hires checkpoint: {short}, "
        "Hires sampler: Euler a, Hires schedule type: Karras, Hires prompt: sharp cat, "
        f"Hires negative prompt: soft, Refiner: {short}, Refiner switch at: 0.65"
    )
    page.locator("#txt2img_prompt textarea").fill(infotext)
    page.locator("#txt2img_paste").click()

    expect(page.locator("#txt2img_prompt textarea")).to_have_value("a cat", timeout=15_000)
    expect(_checkbox(page, "txt2img_hr-checkbox")).to_be_checked()
    expect(_dropdown(page, "txt2img_hr_upscaler")).to_have_value("Lanczos")
    expect(_dropdown(page, "hr_checkpoint")).to_have_value(sd2.title)
    expect(_dropdown(page, "hr_sampler")).to_have_value("Euler a")
    expect(_dropdown(page, "hr_scheduler")).to_have_value("Karras")
    expect(page.locator("#hires_prompt textarea")).to_have_value("sharp cat")
    expect(page.locator("#hires_neg_prompt textarea")).to_have_value("soft")
    # the rows the options hide are shown for what the infotext set
    expect(page.locator(ROW_SAMPLER)).to_be_visible()
    expect(page.locator(ROW_PROMPTS)).to_be_visible()

    _open(page, "txt2img_enable")
    expect(_checkbox(page, "txt2img_enable-checkbox")).to_be_checked()
    expect(_dropdown(page, "txt2img_checkpoint")).to_have_value(sd2.title)
    expect(_number(page, "txt2img_switch_at")).to_have_value("0.65")
