"""The Settings tab in a real browser against the real server: change two options, apply, reload
the page, and the fields and config.json both hold the new values; a screenshot for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modules.services import Services
from tests.ui.conftest import screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect


def open_settings(page: Any) -> None:
    page.locator("#tabs").get_by_role("tab", name="Settings").click()
    page.locator("#settings_submit").wait_for(state="visible")


def test_apply_reload_shows_saved_values_and_writes_config(page: Any, ui_services: Services, tmp_path: Path) -> None:
    open_settings(page)
    samples_format = page.locator("#setting_samples_format textarea, #setting_samples_format input").first
    expect(samples_format).to_have_value("png")
    quality = page.locator("#setting_jpeg_quality input[type=number]")
    expect(quality).to_have_value("80")

    samples_format.fill("jpg")
    quality.fill("90")
    quality.press("Tab")
    page.locator("#settings_submit").click()
    expect(page.locator("#settings_result")).to_contain_text("2 settings changed", timeout=30_000)

    page.locator("#settings_restart_gradio").click()
    page.wait_for_load_state("load")
    page.locator("#txt2img_generate").wait_for(state="visible")
    open_settings(page)
    expect(page.locator("#setting_samples_format textarea, #setting_samples_format input").first).to_have_value("jpg")
    expect(page.locator("#setting_jpeg_quality input[type=number]")).to_have_value("90")

    path = ui_services.options.path
    assert path is not None
    saved = json.loads(Path(path).read_text(encoding="utf-8"))
    assert saved["samples_format"] == "jpg"
    assert saved["jpeg_quality"] == 90

    page.evaluate("window.scrollTo(0, 0)")
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "settings.png"))


def test_sections_switch(page: Any) -> None:
    open_settings(page)
    page.locator("#settings_sections").get_by_text("Stable Diffusion", exact=True).click()
    expect(page.locator("#setting_CLIP_stop_at_last_layers")).to_be_visible()
    expect(page.locator("#setting_samples_format")).to_be_hidden()
    page.locator("#settings_sections").get_by_text("Saving images/grids", exact=True).click()
    expect(page.locator("#setting_samples_format")).to_be_visible()


def test_apply_settings_unit(ui_services: Services) -> None:
    """No browser: the converters, a no-op apply, and a bad value as a gr.Error (nothing applied)."""
    import gradio as gr

    from modules.ui.settings import apply_settings, from_ui, make_component, shown_options, to_ui

    infos = shown_options(list(ui_services.options.infos().values()))
    keys = [i.key for i in infos]
    assert "sd_model_checkpoint" not in keys  # in the quicksettings row
    assert all(i.section != "hidden" for i in infos)
    values = [to_ui(i, ui_services.options.get(i.key)) for i in infos]
    assert apply_settings(ui_services, infos, values) == "0 settings changed."

    quality = keys.index("jpeg_quality")
    bad = list(values)
    bad[quality] = 1000.0
    before = ui_services.options.get("jpeg_quality")
    with pytest.raises(gr.Error):
        apply_settings(ui_services, infos, bad)
    assert ui_services.options.get("jpeg_quality") == before

    hash_info = ui_services.options.info("sd_checkpoint_hash")
    with gr.Blocks():
        assert make_component(hash_info, "").interactive is False
    lists = next(i for i in infos if i.type is list and i.choices is None)
    assert from_ui(lists, " a, b ,,c") == ["a", "b", "c"]
    assert to_ui(lists, ["a", "b"]) == "a, b"
