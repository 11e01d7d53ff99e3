"""The styles editor in a real browser against the real server: create a style in txt2img's 🖌️
dialog, find it in styles.csv, the REST API and img2img's dropdown, apply it with 📋, generate
with it selected, delete it; a screenshot of the open dialog for people to look at."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from modules.services import Services
from tests.ui.conftest import screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect

STYLE = 'Masterpiece, "UI" test'


def _set_number(page: Any, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def _pick(page: Any, dropdown_id: str, option: str) -> None:
    page.locator(f"#{dropdown_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


def _api_styles(base: str) -> list[dict[str, str]]:
    with urllib.request.urlopen(base + "/sdapi/v1/prompt-styles", timeout=10) as response:
        return list(json.load(response))


def test_create_apply_generate_and_delete_a_style(
    page: Any, ui_services: Services, ui_server: str, tmp_path: Path
) -> None:
    csv_path = ui_services.styles.files[0]
    dialog = page.locator("#txt2img_styles_dialog")
    expect(dialog).to_be_hidden()

    # 1. 🖌️ opens the editor; a typed new name offers Save but not Delete
    page.locator("#txt2img_styles_edit_button").click()
    expect(dialog).to_be_visible()
    name_box = page.locator("#txt2img_styles_edit_select input")
    name_box.fill(STYLE)
    name_box.press("Enter")
    expect(page.locator("#txt2img_edit_style_save")).to_be_visible()
    expect(page.locator("#txt2img_edit_style_delete")).to_be_hidden()
    page.locator("#txt2img_edit_style_prompt textarea").fill("{prompt}, masterpiece")
    page.locator("#txt2img_edit_style_neg_prompt textarea").fill("lowres")
    page.wait_for_timeout(300)  # let the dialog settle before the screenshot
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "styles_dialog.png"))

    # 2. Save writes styles.csv; the API lists the style; Delete is now offered
    page.locator("#txt2img_edit_style_save").click()
    expect(page.locator("#txt2img_edit_style_delete")).to_be_visible()
    text = csv_path.read_text(encoding="utf-8-sig")
    assert '"Masterpiece, ""UI"" test","{prompt}, masterpiece",lowres' in text
    assert {"name": STYLE, "prompt": "{prompt}, masterpiece", "negative_prompt": "lowres"} in _api_styles(ui_server)

    # 3. Close hides the editor; img2img's dropdown offers the new style
    page.locator("#txt2img_edit_style_close").click()
    expect(dialog).to_be_hidden()
    page.locator("#tabs").get_by_role("tab", name="img2img").click()
    page.locator("#img2img_styles input").click()
    expect(page.get_by_role("option", name=STYLE, exact=True)).to_be_visible()
    page.keyboard.press("Escape")
    page.locator("#tabs").get_by_role("tab", name="txt2img").click()

    # 4. select it in the main dropdown and 📋: the prompts are merged, the selection cleared
    page.locator("#txt2img_prompt textarea").fill("a cat")
    page.locator("#txt2img_neg_prompt textarea").fill("ugly")
    _pick(page, "txt2img_styles", STYLE)
    expect(page.locator("#txt2img_styles")).to_contain_text(STYLE)
    page.locator("#txt2img_style_apply").click()
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("a cat, masterpiece")
    expect(page.locator("#txt2img_neg_prompt textarea")).to_have_value("ugly, lowres")
    expect(page.locator("#txt2img_styles")).not_to_contain_text(STYLE)

    # 5. generate with the style selected: the infotext shows the merged prompt
    page.locator("#txt2img_prompt textarea").fill("a red cube")
    page.locator("#txt2img_neg_prompt textarea").fill("")
    _pick(page, "txt2img_styles", STYLE)
    _set_number(page, "txt2img_steps", 2)
    _set_number(page, "txt2img_width", 64)
    _set_number(page, "txt2img_height", 64)
    page.locator("#txt2img_generate").click()
    info = page.locator("#html_info_txt2img")
    expect(info).to_contain_text("a red cube, masterpiece", timeout=60_000)
    expect(info).to_contain_text("Negative prompt: lowres")
    expect(info).to_contain_text("Steps: 2")

    # 6. delete it from the editor (after the confirm): gone from styles.csv, the API, the dropdowns
    page.locator("#txt2img_styles_edit_button").click()
    expect(dialog).to_be_visible()
    _pick(page, "txt2img_styles_edit_select", STYLE)
    expect(page.locator("#txt2img_edit_style_prompt textarea")).to_have_value("{prompt}, masterpiece")
    page.once("dialog", lambda confirm: confirm.accept())
    page.locator("#txt2img_edit_style_delete").click()
    expect(page.locator("#txt2img_edit_style_delete")).to_be_hidden()
    expect(page.locator("#txt2img_edit_style_prompt textarea")).to_have_value("")
    assert STYLE not in [s.name for s in ui_services.styles.styles()]
    assert "Masterpiece" not in csv_path.read_text(encoding="utf-8-sig")
    assert STYLE not in [s["name"] for s in _api_styles(ui_server)]
    expect(page.locator("#txt2img_styles")).not_to_contain_text(STYLE)
    page.locator("#txt2img_edit_style_close").click()
    page.locator("#tabs").get_by_role("tab", name="img2img").click()
    page.locator("#img2img_styles input").click()
    expect(page.get_by_role("option", name=re.compile("Masterpiece"))).to_have_count(0)


def test_empty_name_is_refused_and_refresh_reads_the_file(page: Any, ui_services: Services) -> None:
    csv_path = ui_services.styles.files[0]
    page.locator("#txt2img_styles_edit_button").click()
    # Save is not offered without a name
    expect(page.locator("#txt2img_edit_style_save")).to_be_hidden()
    # a style written to styles.csv by hand appears after 🔄
    csv_path.write_text("name,prompt,negative_prompt\nHand made,by hand,\n", encoding="utf-8")
    page.locator("#refresh_txt2img_styles").click()
    _pick(page, "txt2img_styles_edit_select", "Hand made")
    expect(page.locator("#txt2img_edit_style_prompt textarea")).to_have_value("by hand")
    # 📝 copies the main prompts into the style
    page.locator("#txt2img_edit_style_close").click()
    page.locator("#txt2img_prompt textarea").fill("copied prompt")
    page.locator("#txt2img_neg_prompt textarea").fill("copied negative")
    page.locator("#txt2img_styles_edit_button").click()
    page.locator("#txt2img_style_copy").click()
    expect(page.locator("#txt2img_edit_style_prompt textarea")).to_have_value("copied prompt")
    expect(page.locator("#txt2img_edit_style_neg_prompt textarea")).to_have_value("copied negative")
    # a name of spaces only is refused when typed (Save hidden) and the file stays as it was
    name_box = page.locator("#txt2img_styles_edit_select input")
    name_box.fill("   ")
    name_box.press("Enter")
    expect(page.locator("#txt2img_edit_style_save")).to_be_hidden()
    assert csv_path.read_text(encoding="utf-8-sig") == "name,prompt,negative_prompt\nHand made,by hand,\n"
