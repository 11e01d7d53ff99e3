"""Scripts in the page, in a real browser against a real server whose data dir holds a test-only
extension written the A1111 way (Gradio 3.41 idioms, `modules.scripts`, `modules.ui_components`,
`modules.script_callbacks`): a selectable script that fills the images with a grey level from its
slider, an always-on script in an InputAccordion that adds an infotext key, a tab (`on_ui_tabs`), a
setting (`on_ui_settings`), a route (`on_app_started`), a javascript file using A1111's page
helpers and a style.css.

One generation: the script chosen in `#script_list` with its slider set, the always-on accordion
opened with a text typed; the image is the grey level and the infotext has both scripts' keys."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from modules.core.options import Options, default_option_infos
from modules.core.paths import Paths
from modules.core.settings import parse_settings
from modules.extensions.manager import ExtensionManager
from tests.fixtures.extension_repos import make_extension_repo
from tests.fixtures.module_tmp import ModuleTempDirs
from tests.ui.conftest import make_ui_data_dir, screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect

SHOTS = Path("/tmp/scripts_shots")

SCRIPT = """
import gradio as gr
from PIL import Image

from modules import script_callbacks, scripts, shared
from modules.processing import process_images
from modules.ui_components import InputAccordion, ToolButton


class FillScript(scripts.Script):
    def title(self):
        return "Test fill"

    def ui(self, is_img2img):
        level = gr.Slider(minimum=0, maximum=255, step=1, value=128, label="Fill level", elem_id=self.elem_id("level"))
        ToolButton(value="\\U0001f504", elem_id=self.elem_id("tool"))
        return [level]

    def run(self, p, level):
        p.extra_generation_params["Test fill"] = int(level)
        processed = process_images(p)
        processed.images = [Image.new("RGB", im.size, (int(level),) * 3) for im in processed.images]
        return processed


class StampScript(scripts.Script):
    def title(self):
        return "Test stamp"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with InputAccordion(False, label="Test stamp", elem_id=self.elem_id("enabled")) as enabled:
            with gr.Row(variant="compact").style(equal_height=True):
                text = gr.Textbox(label="Stamp text", lines=1, elem_id=self.elem_id("text")).style(container=True)
                gr.Button(value="x", variant="tool", elem_id=self.elem_id("button"))
        return [enabled, text]

    def process(self, p, enabled, text):
        if enabled:
            p.extra_generation_params["Stamp"] = text


def on_ui_tabs():
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("Hello from the test extension", elem_id="sdw_test_tab_text")
    return [(tab, "Test Tab", "sdw_test_tab")]


def on_ui_settings():
    shared.opts.add_option(
        "sdw_test_option", shared.OptionInfo("abc", "Test option", section=("sdw_test", "Test extension"))
    )


def on_app_started(demo, app):
    app.add_api_route("/sdw-test/demo", lambda: {"demo": type(demo).__name__})


script_callbacks.on_app_started(on_app_started)
script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_ui_settings(on_ui_settings)
"""

JAVASCRIPT = """
onUiLoaded(function () {
    document.body.dataset.sdwTestLoaded = gradioApp().getElementById("txt2img_prompt") ? "yes" : "no";
});
onUiTabChange(function () {
    document.body.dataset.sdwTestTab = get_uiCurrentTab().textContent.trim() + "|" + get_uiCurrentTabContent().id;
});
onOptionsAvailable(function () {
    document.body.dataset.sdwTestOption = String(opts.sdw_test_option);
});
// a closing tag in a string must not end the inline script
var sdwTestTag = "</script>";
"""

STYLE = "#script_txt2img_test_fill_level { outline: 3px solid rgb(1, 2, 3); }\n"


@pytest.fixture(scope="module")
def ui_data_dir(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Path:
    """The extension is installed the way users install one: from a git repository (a local bare
    one made here) by the extension manager, before the server starts."""
    root = make_ui_data_dir(tiny_models, module_tmp.mktemp("ui-scripts"))
    files = {
        "scripts/test_scripts.py": textwrap.dedent(SCRIPT),
        "javascript/test.js": JAVASCRIPT,
        "style.css": STYLE,
    }
    bare = make_extension_repo(module_tmp.mktemp("ui-scripts-repo"), "sdw-test-scripts", files)
    settings = parse_settings(["--data-dir", str(root)], {})
    paths = Paths.from_settings(settings, root, {})
    ExtensionManager(settings, paths, Options(default_option_infos(), paths.config_file)).install_from_url(str(bare))
    assert (root / "extensions" / "sdw-test-scripts" / "scripts" / "test_scripts.py").is_file()
    return root


def _set_number(page: Any, selector: str, value: int) -> None:
    box = page.locator(f"{selector} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def test_script_dropdown_always_on_accordion_extension_tab_assets(page: Any, ui_server: str, tmp_path: Path) -> None:
    tab = page.locator("#tab_txt2img")
    # the extension's tab comes before Settings; its javascript and css are on the page
    names = page.locator("#tabs").get_by_role("tab").all_inner_texts()
    assert names.index("Test Tab") == names.index("Settings") - 1
    page.wait_for_function("() => document.body.dataset.sdwTestLoaded === 'yes'")
    page.wait_for_function("() => document.body.dataset.sdwTestOption === 'abc'")
    assert page.evaluate("() => sdwTestTag") == "</script>"

    # the selectable script's controls show only while it is chosen
    level = tab.locator("#script_txt2img_test_fill_level")
    expect(level).to_be_hidden()
    dropdown = tab.locator("#script_list input")
    assert dropdown.input_value() == "None"
    dropdown.click()
    page.get_by_role("option", name="Test fill", exact=True).click()
    expect(level).to_be_visible()
    outline = page.evaluate(
        "() => getComputedStyle(document.getElementById('script_txt2img_test_fill_level')).outlineColor"
    )
    assert outline == "rgb(1, 2, 3)"
    _set_number(page, "#script_txt2img_test_fill_level", 200)

    # the always-on script: opening its accordion ticks it
    accordion = tab.locator("#script_txt2img_test_stamp_enabled")
    accordion.get_by_text("Test stamp").first.click()
    expect(tab.locator("#script_txt2img_test_stamp_enabled-checkbox input")).to_be_checked()
    tab.locator("#script_txt2img_test_stamp_text textarea").fill("hello stamp")

    page.locator("#txt2img_prompt textarea").fill("a scripted cube")
    for elem_id, value in (("txt2img_steps", 2), ("txt2img_width", 64), ("txt2img_height", 64)):
        _set_number(page, f"#{elem_id}", value)
    page.locator("#txt2img_generate").click()
    info = page.locator("#html_info_txt2img")
    expect(info).to_contain_text("a scripted cube", timeout=60_000)
    text = info.inner_text()
    assert "Test fill: 200" in text and "Stamp: hello stamp" in text

    src = page.locator("#txt2img_gallery img").first.get_attribute("src")
    assert src
    body = page.request.get(src if src.startswith("http") else ui_server + src).body()
    with Image.open(io.BytesIO(body)) as image:
        assert image.convert("RGB").getpixel((10, 10)) == (200, 200, 200)

    for directory in [*screenshot_dirs(tmp_path), SHOTS]:
        directory.mkdir(parents=True, exist_ok=True)
        tab.locator("#txt2img_script_container").first.screenshot(path=str(directory / "txt2img_scripts.png"))
        page.screenshot(path=str(directory / "txt2img_page.png"), full_page=True)

    # on_app_started got the page's Blocks
    assert page.request.get(ui_server + "/sdw-test/demo").json() == {"demo": "Blocks"}
    page.get_by_role("tab", name="Test Tab").click()
    expect(page.locator("#sdw_test_tab_text")).to_contain_text("Hello from the test extension")
    page.wait_for_function("() => document.body.dataset.sdwTestTab === 'Test Tab|tab_sdw_test_tab'")
    page.get_by_role("tab", name="Settings").click()
    page.locator("#settings_sections").get_by_text("Test extension", exact=True).click()
    expect(page.locator("#setting_sdw_test_option input")).to_have_value("abc")
