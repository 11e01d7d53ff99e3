"""ui-config.json: A1111's key names, saved values applied to the built components (bad ones
skipped), missing keys written back, a broken file left alone; plus the theme lookups."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gradio as gr
import pytest

from modules.ui.theme import BUILT_IN_THEMES, theme_for
from modules.ui.ui_config import UiConfigResult, apply_ui_config_file, tracked_components
from tests.ui.gradio_loop import in_a_loop


def build_page(path: Path | None = None) -> tuple[gr.Blocks, dict[str, gr.components.Component]]:
    """A small page shaped like ours: a row above the tabs, top tabs with sub-tabs and accordions.
    With `path`, the file is applied inside the Blocks context, as `build_blocks` does."""
    return in_a_loop(lambda: _build_page(path))


def _build_page(path: Path | None) -> tuple[gr.Blocks, dict[str, gr.components.Component]]:
    c: dict[str, gr.components.Component] = {}
    with gr.Blocks() as blocks:
        with gr.Row():
            c["quick"] = gr.Dropdown(choices=["a", "b"], value="a", label="Stable Diffusion checkpoint")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("txt2img", id="txt2img"):
                c["prompt"] = gr.Textbox(label="Prompt")
                c["steps"] = gr.Slider(1, 150, value=20, step=1, label="Sampling steps")
                c["sampler"] = gr.Dropdown(choices=["Euler a", "DPM++ 2M"], value="DPM++ 2M", label="Sampling method")
                with gr.Accordion("Hires. fix"):
                    c["hr"] = gr.Checkbox(value=False, label="Enable")
                c["seed"] = gr.Number(value=-1, label="Seed")
                c["generate"] = gr.Button("Generate")
                c["hidden"] = gr.Textbox(label="Secret", visible=False)
                gr.Image(label="Image")  # not a tracked type
                gr.Textbox(show_label=False)  # no label: no key
            with gr.Tab("img2img", id="img2img"), gr.Tabs(), gr.Tab("Inpaint", id="inpaint"):
                c["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur")
                c["fill"] = gr.Radio(["fill", "original"], value="original", label="Masked content")
            with gr.Tab("Extras", id="extras"):
                c["resize"] = gr.Slider(1, 8, value=4, step=0.05, label="Resize")
            with gr.Tab("Settings", id="settings"):
                gr.Textbox(label="Not tracked")
        if path is not None:
            apply_ui_config_file(blocks, path)
    return blocks, c


def page_config_value(blocks: gr.Blocks, component: gr.components.Component | gr.Tabs, name: str) -> object:
    """The attribute as the page gets it (the config Gradio computed when the context exited)."""
    for comp in blocks.config["components"]:
        if comp["id"] == component._id:
            return comp["props"].get(name)
    raise AssertionError("component not in the page config")


def test_keys_use_the_tab_id_label_and_ignore_sub_tabs_settings_and_the_top_row() -> None:
    blocks, _c = build_page()
    keys = [key for key, _comp in tracked_components(blocks)]
    assert keys == [
        "txt2img/Prompt",
        "txt2img/Sampling steps",
        "txt2img/Sampling method",
        "txt2img/Enable",
        "txt2img/Seed",
        "txt2img/Generate",
        "txt2img/Secret",
        "img2img/Mask blur",
        "img2img/Masked content",
        "extras/Resize",
        "webui/Tabs@tabs",
    ]


def test_missing_file_is_written_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "ui-config.json"
    build_page(path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["txt2img/Sampling steps/value"] == 20
    assert saved["txt2img/Sampling steps/minimum"] == 1
    assert saved["txt2img/Sampling steps/maximum"] == 150
    assert saved["txt2img/Sampling steps/step"] == 1
    assert saved["txt2img/Sampling steps/visible"] is True
    assert saved["txt2img/Prompt/value"] == ""
    assert saved["txt2img/Sampling method/value"] == "DPM++ 2M"
    assert saved["txt2img/Enable/value"] is False
    assert saved["txt2img/Seed/value"] == -1
    assert saved["txt2img/Generate/visible"] is True
    assert "txt2img/Generate/value" not in saved  # buttons: visibility only
    assert "txt2img/Secret/visible" not in saved  # hidden when built: not offered
    assert saved["txt2img/Secret/value"] == ""
    assert saved["img2img/Masked content/value"] == "original"
    assert saved["extras/Resize/step"] == 0.05
    assert not any(key.startswith(("settings/", "Stable Diffusion")) for key in saved)
    assert saved["webui/Tabs@tabs/selected"] is None  # the first tab


def test_selected_tab(tmp_path: Path) -> None:
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({"webui/Tabs@tabs/selected": "img2img"}), encoding="utf-8")
    blocks, _c = build_page(path)
    assert page_config_value(blocks, tabs_of(blocks), "selected") == "img2img"
    for bad in ("nope", 7, True):
        path.write_text(json.dumps({"webui/Tabs@tabs/selected": bad}), encoding="utf-8")
        blocks, _c = build_page(path)
        assert page_config_value(blocks, tabs_of(blocks), "selected") is None


def tabs_of(blocks: gr.Blocks) -> gr.Tabs:
    found = next(comp for key, comp in tracked_components(blocks) if key == "webui/Tabs@tabs")
    assert isinstance(found, gr.Tabs)
    return found


def test_saved_values_reach_the_page_config_and_new_keys_are_added(tmp_path: Path) -> None:
    path = tmp_path / "ui-config.json"
    path.write_text(
        json.dumps(
            {
                "txt2img/Sampling steps/value": 180,
                "txt2img/Sampling steps/maximum": 200,
                "txt2img/Sampling method/value": "Euler a",
                "txt2img/Prompt/value": "a cat",
                "txt2img/Enable/value": True,
                "txt2img/Generate/visible": False,
                "img2img/Mask blur/value": 8,
                "somebody/else/value": 1,
            }
        ),
        encoding="utf-8",
    )
    blocks, c = build_page(path)
    assert c["steps"].value == 180 and c["steps"].maximum == 200
    assert page_config_value(blocks, c["steps"], "value") == 180
    assert page_config_value(blocks, c["steps"], "maximum") == 200
    assert page_config_value(blocks, c["sampler"], "value") == "Euler a"
    assert page_config_value(blocks, c["prompt"], "value") == "a cat"
    assert page_config_value(blocks, c["hr"], "value") is True
    assert page_config_value(blocks, c["generate"], "visible") is False
    assert page_config_value(blocks, c["mask_blur"], "value") == 8

    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["txt2img/Sampling steps/value"] == 180  # the user's values stay
    assert saved["somebody/else/value"] == 1  # unknown keys stay
    assert saved["txt2img/Seed/value"] == -1  # missing keys are added


def test_bad_values_are_logged_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ui-config.json"
    path.write_text(
        json.dumps(
            {
                "txt2img/Sampling steps/value": "many",
                "txt2img/Sampling steps/maximum": 300,
                "txt2img/Sampling method/value": "No such sampler",
                "txt2img/Enable/value": "yes",
                "txt2img/Seed/value": [1],
                "txt2img/Prompt/visible": "no",
                "img2img/Masked content/value": "latent noise",
                "img2img/Mask blur/value": 99,
                "extras/Resize/step": 0,
            }
        ),
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="modules.ui.ui_config"):
        _blocks, c = build_page(path)
    assert c["steps"].value == 20 and c["steps"].maximum == 300  # the good key of the two applies
    assert c["sampler"].value == "DPM++ 2M"
    assert c["hr"].value is False
    assert c["seed"].value == -1
    assert c["prompt"].visible is True
    assert c["fill"].value == "original"
    assert c["mask_blur"].value == 4  # outside 0..64
    assert c["resize"].step == 0.05
    assert "No such sampler" in caplog.text and "txt2img/Sampling steps/value" in caplog.text
    # the file keeps the user's (bad) values: nothing is silently rewritten
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["txt2img/Sampling method/value"] == "No such sampler"


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_broken_file_is_logged_and_left_alone(tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ui-config.json"
    path.write_text(text, encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="modules.ui.ui_config"):
        _blocks, c = build_page(path)
    assert c["steps"].value == 20
    assert path.read_text(encoding="utf-8") == text
    assert "ui-config.json" in caplog.text


def test_complete_file_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "ui-config.json"
    build_page(path)
    before = path.stat().st_mtime_ns
    path.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    written = path.stat().st_mtime_ns
    build_page(path)
    assert path.stat().st_mtime_ns == written
    assert written >= before


def styles_page(path: Path) -> tuple[gr.Dropdown, UiConfigResult]:
    def build() -> tuple[gr.Dropdown, UiConfigResult]:
        with gr.Blocks() as blocks, gr.Tabs(), gr.Tab("t", id="t"):
            styles = gr.Dropdown(["a", "b"], value=["a"], multiselect=True, label="Styles")
            result = apply_ui_config_file(blocks, path)
        return styles, result

    return in_a_loop(build)


def test_multiselect_dropdown_values_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({"t/Styles/value": ["b", "zzz"]}), encoding="utf-8")
    styles, result = styles_page(path)
    assert styles.value == ["a"] and result.rejected == ["t/Styles/value"]
    path.write_text(json.dumps({"t/Styles/value": ["b"]}), encoding="utf-8")
    styles, result = styles_page(path)
    assert styles.value == ["b"] and result.applied == ["t/Styles/value"]


def test_gradio_themes_are_built_in_and_unknown_names_fall_back(caplog: pytest.LogCaptureFixture) -> None:
    from modules.core.option_defaults import GRADIO_THEMES

    assert set(GRADIO_THEMES) <= set(BUILT_IN_THEMES)
    assert isinstance(theme_for("gradio/soft"), gr.themes.Soft)
    assert isinstance(theme_for("gradio/monochrome"), gr.themes.Monochrome)
    with caplog.at_level(logging.WARNING, logger="modules.ui.theme"):
        assert type(theme_for("freddyaboulton/dracula_revamped")) is gr.themes.Default
    assert "dracula" in caplog.text
