"""The extra-networks panel in a real browser against the real server (issue 12's "Done means"):
open the Lora tab, click a card, the tag appears in the prompt (a second click removes it),
generate, the infotext shows `Lora hashes`; search and sort; the 🛠 editor writes `x.json`; an
embedding goes into the prompt box in use; img2img's panel writes into its own prompt; a checkpoint
card switches the checkpoint; a screenshot of the panel for people to look at."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from modules.services import Services
from tests.fixtures import embedding_files as ef
from tests.fixtures.module_tmp import ModuleTempDirs
from tests.ui.conftest import make_ui_data_dir, screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect

TOKEN_EMBEDDING = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
TE_LAYER = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.{}_proj.weight"


def write_kohya_lora(checkpoint: Path, target: Path, *, rank: int = 2, seed: int = 3) -> Path:
    """A kohya LoRA on the first text-encoder layer's q/k/v projections of `checkpoint`."""
    tensors: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(seed)
    with safe_open(str(checkpoint), framework="pt") as f:
        for proj in ("q", "k", "v"):
            out_features, in_features = f.get_slice(TE_LAYER.format(proj)).get_shape()
            key = f"lora_te_text_model_encoder_layers_0_self_attn_{proj}_proj"
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator)
            tensors[f"{key}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator)
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata={"ss_network_dim": str(rank), "ss_network_module": "networks.lora"})
    return target


@pytest.fixture(scope="module")
def ui_data_dir(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Path:
    """The tiny sd1/sd2 checkpoints, two LoRAs for sd1 (one with a preview, one in a subfolder)
    and an embedding for sd1."""
    root = make_ui_data_dir(tiny_models, module_tmp.mktemp("ui-extra-networks"))
    lora = root / "models" / "Lora"
    write_kohya_lora(tiny_models["sd1"], lora / "x.safetensors")
    write_kohya_lora(tiny_models["sd1"], lora / "styles" / "bluish.safetensors", seed=4)
    image = Image.new("RGB", (480, 720), (190, 60, 50))
    image.paste((240, 210, 80), (120, 240, 360, 480))
    image.save(lora / "x.png")
    (lora / "x.txt").write_text("A test LoRA with a preview", encoding="utf-8")
    with safe_open(str(tiny_models["sd1"]), framework="pt") as f:  # the tiny text encoder's width
        width = f.get_slice(TOKEN_EMBEDDING).get_shape()[1]
    ef.write_a1111_pt(root / "embeddings" / "tiny_negative.pt", ef.vectors(1, width))
    return root


def _prompt(page: Any) -> Any:
    return page.locator("#txt2img_prompt textarea")


def _card(page: Any, page_name: str, key: str) -> Any:
    return page.locator(f"#txt2img_{page_name}_cards .sdw-en-card[data-key='{key}']")


def _open_tab(page: Any, title: str) -> None:
    page.locator("#txt2img_extra_tabs").get_by_role("tab", name=title, exact=True).click()


def _set_number(page: Any, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def test_lora_card_toggles_the_tag_and_generation_writes_lora_hashes(
    page: Any, ui_services: Services, tmp_path: Path
) -> None:
    # the Generation tab holds the settings; the network tabs sit next to it
    tabs = page.locator("#txt2img_extra_tabs")
    for title in ("Generation", "Textual Inversion", "Hypernetworks", "Checkpoints", "Lora"):
        expect(tabs.get_by_role("tab", name=title, exact=True)).to_be_visible()
    expect(page.locator("#txt2img_steps")).to_be_visible()

    _open_tab(page, "Lora")
    card = _card(page, "lora", "x")
    expect(card).to_be_visible()
    expect(_card(page, "lora", "bluish")).to_be_visible()
    expect(card.locator("img.preview")).to_have_js_property("complete", True)
    assert card.locator("img.preview").evaluate("img => img.naturalWidth") > 0  # the thumbnail was served
    expect(card).to_contain_text("A test LoRA with a preview")
    expect(page.locator("#txt2img_lora_extra_search")).to_be_visible()
    page.wait_for_timeout(300)  # let the thumbnails paint before the screenshot
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "extra_networks_lora.png"), full_page=True)

    # click: the tag with the default multiplier; click again: gone; once more for the generation
    _prompt(page).fill("a red cube")
    card.click()
    expect(_prompt(page)).to_have_value("a red cube <lora:x:1>")
    card.click()
    expect(_prompt(page)).to_have_value("a red cube")
    card.click()
    expect(_prompt(page)).to_have_value("a red cube <lora:x:1>")

    _open_tab(page, "Generation")
    _set_number(page, "txt2img_steps", 2)
    _set_number(page, "txt2img_width", 64)
    _set_number(page, "txt2img_height", 64)
    page.locator("#txt2img_generate").click()
    info = page.locator("#html_info_txt2img")
    expect(info).to_contain_text("Steps: 2", timeout=120_000)
    expect(info).to_contain_text("a red cube <lora:x:1>")
    expect(info).to_contain_text(re.compile(r'Lora hashes: "x: [0-9a-f]{12}"'))


def test_search_sort_and_the_metadata_editor(page: Any, ui_services: Services, ui_data_dir: Path) -> None:
    _open_tab(page, "Lora")
    cards = page.locator("#txt2img_lora_cards .sdw-en-card")
    expect(cards).to_have_count(2)
    # search by folder; the directory button does the same
    page.locator("#txt2img_lora_extra_search").fill("styles")
    expect(_card(page, "lora", "x")).to_be_hidden()
    expect(_card(page, "lora", "bluish")).to_be_visible()
    page.locator("#txt2img_lora_extra_search").fill("")
    expect(_card(page, "lora", "x")).to_be_visible()
    page.locator("#txt2img_lora_dirs .sdw-en-dir[data-path='styles']").click()
    expect(_card(page, "lora", "x")).to_be_hidden()
    expect(page.locator("#txt2img_lora_extra_search")).to_have_value("styles")
    page.locator("#txt2img_lora_dirs .sdw-en-dir-all").click()
    expect(_card(page, "lora", "x")).to_be_visible()
    # sort by name, then descending
    page.locator("#txt2img_lora_extra_sort_name").click()
    assert cards.evaluate_all("els => els.map(e => e.dataset.key)") == ["bluish", "x"]
    page.locator("#txt2img_lora_extra_sort_dir").click()
    assert cards.evaluate_all("els => els.map(e => e.dataset.key)") == ["x", "bluish"]

    # 🛠: activation text and weight saved in x.json; the card then inserts them
    _card(page, "lora", "x").hover()
    _card(page, "lora", "x").locator(".sdw-en-edit").click()
    editor = page.locator("#txt2img_lora_edit_user_metadata")
    expect(editor).to_be_visible()
    expect(editor.locator("#txt2img_lora_edit_description textarea")).to_have_value("A test LoRA with a preview")
    editor.locator("#txt2img_lora_edit_activation input, #txt2img_lora_edit_activation textarea").first.fill(
        "red style"
    )
    weight = editor.locator("#txt2img_lora_edit_weight input[type=number]")
    weight.fill("0.65")
    weight.press("Tab")
    editor.locator("#txt2img_lora_edit_save").click()
    expect(editor).to_be_hidden()
    saved = json.loads((ui_data_dir / "models" / "Lora" / "x.json").read_text(encoding="utf-8"))
    assert saved["activation text"] == "red style" and saved["preferred weight"] == 0.65
    _prompt(page).fill("")
    _card(page, "lora", "x").click()
    expect(_prompt(page)).to_have_value("<lora:x:0.65> red style")
    _card(page, "lora", "x").click()
    expect(_prompt(page)).to_have_value("")


def test_embedding_goes_to_the_box_in_use_and_a_checkpoint_card_switches(page: Any, ui_services: Services) -> None:
    _open_tab(page, "Textual Inversion")
    card = _card(page, "textual_inversion", "tiny_negative")
    expect(card).to_be_visible()
    negative = page.locator("#txt2img_neg_prompt textarea")
    negative.fill("ugly")
    negative.focus()
    card.click()
    expect(negative).to_have_value("ugly tiny_negative")
    expect(_prompt(page)).to_have_value("")

    # img2img has the same panel, writing into its own prompt
    page.locator("#tabs").get_by_role("tab", name="img2img", exact=True).click()
    page.locator("#img2img_extra_tabs").get_by_role("tab", name="Lora", exact=True).click()
    page.locator("#img2img_lora_cards .sdw-en-card[data-key='bluish']").click()
    expect(page.locator("#img2img_prompt textarea")).to_have_value("<lora:bluish:1>")
    expect(_prompt(page)).to_have_value("")
    page.locator("#tabs").get_by_role("tab", name="txt2img", exact=True).click()

    _open_tab(page, "Checkpoints")
    sd2 = page.locator("#txt2img_checkpoints_cards .sdw-en-card", has_text="sd2")
    expect(sd2).to_be_visible()
    sd2.click()
    expect(page.locator("#setting_sd_model_checkpoint input")).to_have_value(re.compile(r"^sd2\.safetensors"))
    assert ui_services.engine.model_status().checkpoint_name == "sd2.safetensors"
