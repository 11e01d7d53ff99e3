"""The Checkpoint Merger tab in a real browser against the full app: A1111's defaults, an error
for a missing model, a weighted-sum merge of two tiny SD 1.x checkpoints at 0.5, the result text,
the new checkpoint in the top-bar dropdown after 🔄; a screenshot for people to look at."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from modules.models.checkpoint_io import read_state_dict
from tests.fixtures.ldm_checkpoints import write_checkpoint
from tests.fixtures.module_tmp import ModuleTempDirs
from tests.ui.conftest import make_ui_data_dir, screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect

UNET_W = "model.diffusion_model.out.2.weight"


@pytest.fixture(scope="module")
def ui_data_dir(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Path:
    """The tiny sd1 and sd2 plus a second SD 1.x checkpoint with other weights, in a data dir of
    its own (so a server of its own: the merger's dropdowns list the checkpoints found at start)."""
    root = make_ui_data_dir(tiny_models, module_tmp.mktemp("merger-data"))
    write_checkpoint(root / "models" / "Stable-diffusion" / "other.safetensors", "sd1", seed=1)
    return root


def _pick(page: Any, elem_id: str, option: str | re.Pattern[str]) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).first.click()


def test_merge_two_checkpoints_and_screenshot(page: Any, ui_data_dir: Path, tmp_path: Path) -> None:
    sd = ui_data_dir / "models" / "Stable-diffusion"
    page.locator("#tabs").get_by_role("tab", name="Checkpoint Merger").click()
    merge = page.locator("#modelmerger_merge")
    merge.wait_for(state="visible")

    # A1111's defaults
    expect(page.locator("#modelmerger_interp_amount input[type=number]")).to_have_value("0.3")
    expect(page.locator("#modelmerger_interp_method").get_by_label("Weighted sum")).to_be_checked()
    expect(page.locator("#modelmerger_checkpoint_format").get_by_label("safetensors")).to_be_checked()
    expect(page.locator("#modelmerger_config_method").get_by_label("A, B or C")).to_be_checked()
    expect(page.locator("#modelmerger_save_as_half input")).not_to_be_checked()
    expect(page.locator("#modelmerger_bake_in_vae input")).to_have_value("None")
    expect(page.locator("#modelmerger_interp_description")).to_contain_text("A * (1 - M) + B * M")

    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "merger_idle.png"))

    # no model chosen: an error, nothing written
    merge.click()
    expect(page.get_by_text("requires a primary model").first).to_be_visible(timeout=30_000)

    # Add difference without C: refused
    page.locator("#modelmerger_interp_method").get_by_label("Add difference").check()
    expect(page.locator("#modelmerger_interp_description")).to_contain_text("A + (B - C) * M")
    _pick(page, "modelmerger_primary_model_name", re.compile(r"^sd1\.safetensors"))
    _pick(page, "modelmerger_secondary_model_name", re.compile(r"^other\.safetensors"))
    merge.click()
    expect(page.get_by_text("requires a tertiary model").first).to_be_visible(timeout=30_000)

    page.locator("#modelmerger_interp_method").get_by_label("Weighted sum").check()

    # Metadata: closed by default; reading the chosen checkpoints' metadata fills the JSON box
    save_metadata = page.locator("#modelmerger_save_metadata input")
    expect(save_metadata).to_be_hidden()
    page.get_by_role("button", name=re.compile("^Metadata")).click()
    expect(save_metadata).to_be_checked()
    expect(page.locator("#modelmerger_add_recipe input")).to_be_checked()
    expect(page.locator("#modelmerger_copy_metadata input")).to_be_checked()
    page.locator("#modelmerger_read_metadata").click()
    expect(page.locator("#modelmerger_metadata_json textarea")).to_have_value(re.compile(r'"format": "pt"'))
    amount = page.locator("#modelmerger_interp_amount input[type=number]")
    amount.fill("0.5")
    amount.press("Tab")
    page.locator("#modelmerger_custom_name textarea, #modelmerger_custom_name input").first.fill("merged_ui")
    merge.click()

    result = page.locator("#modelmerger_result")
    expect(result).to_contain_text("Checkpoint saved to", timeout=60_000)
    expect(result).to_contain_text("merged_ui.safetensors")
    out = read_state_dict(sd / "merged_ui.safetensors")
    a, b = read_state_dict(sd / "sd1.safetensors"), read_state_dict(sd / "other.safetensors")
    assert torch.equal(out[UNET_W], a[UNET_W] * 0.5 + b[UNET_W] * 0.5)

    page.evaluate("window.scrollTo(0, 0)")
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "merger.png"))
        page.screenshot(path=str(directory / "merger_full.png"), full_page=True)

    # the same name again: refused
    merge.click()
    expect(page.get_by_text("already exists").first).to_be_visible(timeout=30_000)

    # the top-bar checkpoint dropdown lists the new file after 🔄
    page.locator("#refresh_sd_model_checkpoint").click()
    page.locator("#setting_sd_model_checkpoint input").click()
    expect(page.get_by_role("option", name=re.compile(r"^merged_ui\.safetensors"))).to_have_count(1)
    page.keyboard.press("Escape")


def test_block_merge_with_a_preset_and_screenshot(page: Any, ui_data_dir: Path, tmp_path: Path) -> None:
    """Merge by block: the sliders follow A's blocks (13 in the tiny SD 1.x: IN00-IN05, M00,
    OUT00-OUT05), a preset sets them, one slider is moved by hand, the file follows the sliders."""
    sd = ui_data_dir / "models" / "Stable-diffusion"
    page.locator("#tabs").get_by_role("tab", name="Checkpoint Merger").click()
    merge = page.locator("#modelmerger_merge")
    merge.wait_for(state="visible")
    expect(page.locator("#modelmerger_interrupt")).to_be_visible()
    _pick(page, "modelmerger_primary_model_name", re.compile(r"^sd1\.safetensors"))
    _pick(page, "modelmerger_secondary_model_name", re.compile(r"^other\.safetensors"))

    page.get_by_role("button", name=re.compile("^Merge by block")).click()
    expect(page.locator("#modelmerger_blocks_note")).to_contain_text("13 blocks", timeout=20_000)
    expect(page.locator("#modelmerger_block_IN06")).to_be_hidden()  # not in the tiny model
    expect(page.locator("#modelmerger_block_OUT05")).to_be_visible()
    page.locator("#modelmerger_use_blocks input").check()
    # the pick sends one event: Gradio's dropdown `input` came twice, and under load the second
    # answer reset IN03 after it was typed below
    preset_events: list[str] = []

    def count_preset_events(request: Any) -> None:
        if request.method == "POST" and "/run/predict" in request.url and "GRAD_V" in (request.post_data or ""):
            preset_events.append(request.url)

    page.on("request", count_preset_events)
    _pick(page, "modelmerger_block_preset", "GRAD_V")
    expect(page.locator("#modelmerger_block_IN00 input[type=number]")).to_have_value("1", timeout=20_000)
    expect(page.locator("#modelmerger_block_M00 input[type=number]")).to_have_value("0")
    page.wait_for_timeout(500)  # a second event would have been sent with the first
    page.remove_listener("request", count_preset_events)
    assert len(preset_events) == 1, preset_events
    in03 = page.locator("#modelmerger_block_IN03 input[type=number]")
    in03.fill("0.25")
    in03.press("Tab")
    base = page.locator("#modelmerger_base_alpha input[type=number]")
    base.fill("0.1")
    base.press("Tab")
    page.locator("#modelmerger_custom_name textarea, #modelmerger_custom_name input").first.fill("blocks_ui")
    page.evaluate("window.scrollTo(0, 0)")
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / "merger_blocks.png"), full_page=True)
    merge.click()

    result = page.locator("#modelmerger_result")
    expect(result).to_contain_text("blocks_ui.safetensors", timeout=60_000)
    out = read_state_dict(sd / "blocks_ui.safetensors")
    a, b = read_state_dict(sd / "sd1.safetensors"), read_state_dict(sd / "other.safetensors")
    grad_v = [abs(1 - 2 * i / 12) for i in range(13)]  # GRAD_V over 13 blocks
    grad_v[3] = 0.25
    for key, alpha in (
        ("model.diffusion_model.input_blocks.0.0.weight", grad_v[0]),
        ("model.diffusion_model.input_blocks.3.0.op.weight", grad_v[3]),
        ("model.diffusion_model.middle_block.0.in_layers.2.weight", grad_v[6]),
        ("model.diffusion_model.output_blocks.5.0.in_layers.2.weight", grad_v[12]),
        (UNET_W, 0.1),  # `out`: the base alpha
    ):
        torch.testing.assert_close(out[key], a[key] * (1 - alpha) + b[key] * alpha, rtol=0, atol=1e-6)
