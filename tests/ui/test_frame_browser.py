"""The page frame in a real browser: the quicksettings row (listed settings applied at once, the
checkpoint switcher's status line), ui-config.json values on the page, light/dark mode (the
`ui_color_mode` option surviving a reload, and `--theme dark`); screenshots of the top bar.

The module's data dir holds a config.json with a longer `quicksettings_list` and a ui-config.json
with a changed slider (it overrides conftest's `ui_data_dir`)."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modules.app import create_app
from modules.services import Services
from tests.fixtures.module_tmp import ModuleTempDirs
from tests.ui.conftest import make_ui_data_dir, screenshot_dirs, serve

expect = pytest.importorskip("playwright.sync_api").expect

QUICKSETTINGS = ["sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "ui_color_mode"]
UI_CONFIG = {"txt2img/Sampling steps/value": 33, "txt2img/Sampling steps/maximum": 200}
DARK_LUMINANCE = 0.3


@pytest.fixture(scope="module")
def ui_data_dir(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Path:
    """Its own data dir, so its own server (the browser is still shared)."""
    root = make_ui_data_dir(tiny_models, module_tmp.mktemp("frame-data"))
    (root / "config.json").write_text(json.dumps({"quicksettings_list": QUICKSETTINGS}), encoding="utf-8")
    (root / "ui-config.json").write_text(json.dumps(UI_CONFIG), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def dark_server(ui_services: Services) -> Iterator[str]:
    """A second app over the same models, started as with `--theme dark`."""
    settings = dataclasses.replace(ui_services.settings, theme="dark")
    with serve(create_app(dataclasses.replace(ui_services, settings=settings)), "frame-test-uvicorn") as url:
        yield url


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def is_dark(page: Any) -> bool:
    """The page background's luminance (0..1) is low."""
    colour = page.evaluate("() => getComputedStyle(document.querySelector('gradio-app')).backgroundColor")
    numbers = [float(n) for n in re.findall(r"[\d.]+", colour)[:3]]
    luminance = (0.2126 * numbers[0] + 0.7152 * numbers[1] + 0.0722 * numbers[2]) / 255
    return luminance < DARK_LUMINANCE


def has_dark_class(page: Any) -> bool:
    return bool(page.evaluate("() => document.body.classList.contains('dark')"))


def pick(page: Any, elem_id: str, option: str | re.Pattern[str]) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).click()


def shoot(page: Any, tmp_path: Path, name: str) -> None:
    page.evaluate("window.scrollTo(0, 0)")
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / name), clip={"x": 0, "y": 0, "width": 1280, "height": 800})


def test_quicksettings_row_shows_the_listed_settings_and_applies_them(page: Any, ui_services: Services) -> None:
    row = page.locator("#quicksettings")
    for key in QUICKSETTINGS:
        expect(row.locator(f"#setting_{key}")).to_be_visible()
        assert page.locator(f"#setting_{key}").count() == 1  # not a second time in the Settings tab
    expect(row.locator("#refresh_sd_model_checkpoint")).to_be_visible()
    expect(row.locator("#refresh_sd_vae")).to_be_visible()
    expect(row.locator("#setting_sd_vae input")).to_have_value("Automatic")
    expect(row.locator("#setting_CLIP_stop_at_last_layers input[type=number]")).to_have_value("1")

    clip = row.locator("#setting_CLIP_stop_at_last_layers input[type=number]")
    clip.fill("2")
    clip.press("Enter")
    wait_for(lambda: ui_services.options.get("CLIP_stop_at_last_layers") == 2)

    pick(page, "setting_sd_vae", "None")
    wait_for(lambda: ui_services.options.get("sd_vae") == "None")
    wait_for(lambda: ui_services.models.vae_choice == "None")  # applied right after the option is set
    path = ui_services.options.path
    assert path is not None
    wait_for(lambda: json.loads(Path(path).read_text(encoding="utf-8")).get("sd_vae") == "None")

    # the page load shows what is set now
    page.reload()
    page.locator("#txt2img_generate").wait_for(state="visible")
    expect(page.locator("#setting_sd_vae input")).to_have_value("None")
    expect(page.locator("#setting_CLIP_stop_at_last_layers input[type=number]")).to_have_value("2")

    pick(page, "setting_sd_vae", "Automatic")
    wait_for(lambda: ui_services.options.get("sd_vae") == "Automatic")
    ui_services.options.set("CLIP_stop_at_last_layers", 1)


def test_checkpoint_switch_shows_loading_then_loaded(page: Any, ui_services: Services, tmp_path: Path) -> None:
    page.evaluate(
        """() => {
            window.__statusSeen = [];
            const target = document.querySelector('#sd_checkpoint_status');
            new MutationObserver(() => window.__statusSeen.push(target.innerText))
                .observe(target, {subtree: true, childList: true, characterData: true});
        }"""
    )
    pick(page, "setting_sd_model_checkpoint", re.compile(r"^sd2\.safetensors"))
    status = page.locator("#sd_checkpoint_status")
    expect(status).to_contain_text(re.compile(r"Loaded sd2\.safetensors in \d+\.\d s"), timeout=60_000)
    seen = page.evaluate("() => window.__statusSeen")
    assert any("Loading sd2.safetensors…" in text for text in seen), seen
    expect(page.locator("#setting_sd_model_checkpoint input")).to_be_enabled()
    expect(page.locator("#setting_sd_model_checkpoint input")).to_have_value(re.compile(r"^sd2\.safetensors"))
    active = ui_services.models.status().checkpoint
    assert active is not None and active.name == "sd2.safetensors"
    shoot(page, tmp_path, "frame-checkpoint-loaded.png")

    pick(page, "setting_sd_model_checkpoint", re.compile(r"^sd1\.safetensors"))
    expect(status).to_contain_text("Loaded sd1.safetensors in", timeout=60_000)


def test_ui_config_values_show_on_the_page_and_missing_keys_are_written(page: Any, ui_services: Services) -> None:
    steps = page.locator("#txt2img_steps input[type=number]")
    expect(steps).to_have_value("33")
    expect(page.locator("#txt2img_steps input[type=range]")).to_have_attribute("max", "200")
    saved = json.loads(ui_services.paths.ui_config_file.read_text(encoding="utf-8"))
    assert saved["txt2img/Sampling steps/value"] == 33
    assert saved["txt2img/Sampling steps/maximum"] == 200
    assert saved["txt2img/Sampling steps/minimum"] == 1
    assert saved["txt2img/Prompt/value"] == ""
    assert any(key.startswith("img2img/") for key in saved)
    assert not any(key.startswith(("settings/", "extensions/")) for key in saved)


def test_dark_mode_option_survives_a_reload(page: Any, ui_services: Services, tmp_path: Path) -> None:
    assert not has_dark_class(page) and not is_dark(page)
    shoot(page, tmp_path, "frame-light.png")

    pick(page, "setting_ui_color_mode", "Dark")
    page.wait_for_function("() => document.body.classList.contains('dark')")
    assert ui_services.options.get("ui_color_mode") == "Dark"
    page.reload()
    page.locator("#txt2img_generate").wait_for(state="visible")
    page.wait_for_function("() => document.body.classList.contains('dark')")
    assert is_dark(page)
    expect(page.locator("#setting_ui_color_mode input")).to_have_value("Dark")
    shoot(page, tmp_path, "frame-dark.png")

    # a fresh browser profile (nothing remembered) gets the server's mode too
    context = page.context.browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        fresh = context.new_page()
        fresh.goto(page.url.split("?")[0])
        fresh.wait_for_function("() => document.body.classList.contains('dark')")
        assert is_dark(fresh)
    finally:
        context.close()

    pick(page, "setting_ui_color_mode", "Auto (browser)")
    page.wait_for_function("() => !document.body.classList.contains('dark')")
    page.reload()
    page.locator("#txt2img_generate").wait_for(state="visible")
    page.wait_for_timeout(500)
    assert not has_dark_class(page) and not is_dark(page)
    assert "__theme" not in page.url


def test_theme_flag_forces_dark(browser: Any, dark_server: str, ui_services: Services, tmp_path: Path) -> None:
    ui_services.options.set("ui_color_mode", "Light")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(dark_server + "/")
        page.locator("#txt2img_generate").wait_for(state="visible")
        page.wait_for_function("() => document.body.classList.contains('dark')")
        assert is_dark(page)
        page.reload()
        page.locator("#txt2img_generate").wait_for(state="visible")
        page.wait_for_function("() => document.body.classList.contains('dark')")
        assert is_dark(page)
        expect(page.locator("#setting_ui_color_mode input")).to_be_disabled()  # the flag decides
        shoot(page, tmp_path, "frame-theme-flag-dark.png")
    finally:
        context.close()
        ui_services.options.set("ui_color_mode", "Auto (browser)")
