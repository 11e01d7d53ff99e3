"""The PNG Info tab in a real browser: upload a PNG with a known infotext (nothing is generated),
its parameters appear, and "Send to txt2img" restores them in the txt2img fields; a screenshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from PIL import Image

from modules.core.infotext import parse_infotext
from modules.engine.image_metadata import encode_image
from modules.ui.paste import infotext_values, paste_fields
from modules.ui.pnginfo import info_html
from tests.ui.conftest import screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect

INFOTEXT = (
    "a castle\nNegative prompt: blurry\n"
    "Steps: 7, Sampler: Euler, Schedule type: Karras, CFG scale: 5.5, Seed: 4242, Size: 64x96, Model: sd1"
)


def test_paste_fields_maps_infotext_keys_to_txt2img_components() -> None:
    parsed = parse_infotext(
        INFOTEXT + ", Variation seed: 9, Variation seed strength: 0.25, Denoising strength: 0.4, "
        "Hires upscale: 1.5, Hires steps: 5, Hires upscaler: Latent (bicubic)"
    )
    values = infotext_values(parsed)
    assert values["prompt"] == "a castle" and values["negative_prompt"] == "blurry"
    assert values["steps"] == 7 and values["cfg_scale"] == 5.5 and values["seed"] == 4242
    assert (values["width"], values["height"]) == (64, 96)
    assert values["sampler_name"] == "Euler" and values["scheduler"] == "Karras"
    assert values["subseed"] == 9 and values["subseed_strength"] == 0.25 and values["subseed_show"] is True
    assert values["enable_hr"] is True and values["hr_scale"] == 1.5 and values["hr_second_pass_steps"] == 5
    assert values["hr_upscaler"] == "Latent (bicubic)" and values["denoising_strength"] == 0.4
    assert infotext_values(parse_infotext(INFOTEXT))["enable_hr"] is False

    with gr.Blocks():
        fields = {
            "prompt": gr.Textbox(),
            "steps": gr.Slider(1, 150),
            "width": gr.Slider(64, 2048),
            "sampler_name": gr.Dropdown(choices=["DPM++ 2M"], value="DPM++ 2M"),
        }
    pasted = paste_fields(parse_infotext("x\nSteps: 900, Sampler: Euler, Size: 64x96"), fields)
    # a slider value is clamped to its range; a sampler the dropdown lacks is left unchanged
    assert pasted == {fields["prompt"]: "x", fields["steps"]: 150, fields["width"]: 64}


def test_info_html_lists_parameters_then_other_items() -> None:
    text = info_html("a <b>\nSteps: 1", {"Software": "me"})
    assert text.index("parameters") < text.index("Software") and "a &lt;b&gt;<br>Steps: 1" in text
    assert "Nothing found" in info_html(None, {})


def _number(page: Any, elem_id: str) -> str:
    return str(page.locator(f"#{elem_id} input[type=number]").first.input_value())


def test_upload_shows_parameters_and_sends_to_txt2img(page: Any, tmp_path: Path) -> None:
    png = tmp_path / "castle.png"
    png.write_bytes(encode_image(Image.new("RGB", (64, 96), (120, 90, 200)), ".png", infotext=INFOTEXT))

    page.locator("#tabs").get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(png))
    info = page.locator("#html_info_x_pnginfo")
    expect(info).to_contain_text("parameters", timeout=30_000)
    expect(info).to_contain_text("a castle")
    expect(info).to_contain_text("Steps: 7, Sampler: Euler")
    expect(page.locator("#txt2img_tab")).to_be_visible()
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "pnginfo.png"))

    page.locator("#txt2img_tab").click()
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("a castle", timeout=15_000)
    expect(page.locator("#txt2img_prompt textarea")).to_be_visible()
    expect(page.locator("#txt2img_neg_prompt textarea")).to_have_value("blurry")
    assert _number(page, "txt2img_steps") == "7"
    assert _number(page, "txt2img_cfg_scale") == "5.5"
    assert _number(page, "txt2img_seed") == "4242"
    assert _number(page, "txt2img_width") == "64"
    assert _number(page, "txt2img_height") == "96"
    assert page.locator("#txt2img_sampling input").input_value() == "Euler"
