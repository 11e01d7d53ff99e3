"""The Train tab in a real browser against the full app (issue 14's "Done means"): a small LoRA
training on a 6-image dataset shows its progress line moving, the loss plot and a sample image,
and the new LoRA is in txt2img's Lora cards at once (the Lora tab was open before the run, so
only the Train tab's rebuild can put it there); an embedding made in "Create embedding" is
listed for training and in img2img's Textual Inversion cards, a new hypernetwork for training;
screenshots for people to look at.

The run is held at one step (a wrapper around `TrainingRun.step_done`, in this process: the
server runs in a thread here) until the page has shown that step, so "the progress line moves"
does not depend on how fast the machine is."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modules.engine.training.session import TrainingRun
from modules.services import Services
from tests.fixtures.training_data import make_training_set
from tests.ui.conftest import screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect

LORA_NAME = "ui_test_lora"
EMBEDDING_NAME = "ui_test_embedding"
HYPERNETWORK_NAME = "ui_test_hypernetwork"
MAX_STEPS = 4
HOLD_AT = 3  # the sample of step 2 exists by then


def _open_train(page: Any, sub_tab: str) -> None:
    page.locator("#tab_train-button").click()  # (the sub-tab "Train" has the same name)
    page.locator("#train_tabs").get_by_role("tab", name=sub_tab, exact=True).click()


def _shoot(page: Any, tmp_path: Path, name: str, *, full_page: bool = False) -> None:
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / name), full_page=full_page)


def _fill(page: Any, elem_id: str, value: object) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Tab")


def _open_network_tab(page: Any, prefix: str, title: str) -> None:
    page.locator(f"#{prefix}_extra_tabs").get_by_role("tab", name=title, exact=True).click()


@pytest.fixture()
def hold(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Holds a LoRA run after step `HOLD_AT` until the event is set (or 60 s pass)."""
    release = threading.Event()
    original = TrainingRun.step_done

    def step_done(self: TrainingRun, step: int, loss: float, *, lr: float, epoch: int = 0) -> None:
        original(self, step, loss, lr=lr, epoch=epoch)
        if self.progress.kind == "lora" and step == HOLD_AT:
            release.wait(60)

    monkeypatch.setattr(TrainingRun, "step_done", step_done)
    yield release
    release.set()


@pytest.fixture()
def cleanup(ui_services: Services) -> Iterator[None]:
    """The module's app is shared: take the trained / created files away again and let the
    registries forget them."""
    yield
    paths = ui_services.paths
    for path in (
        *paths.lora_dir.glob(f"{LORA_NAME}*"),
        *paths.embeddings_dir.glob(f"{EMBEDDING_NAME}*"),
        *paths.hypernetwork_dir.glob(f"{HYPERNETWORK_NAME}*"),
    ):
        if path.is_dir():
            shutil.rmtree(path)  # the run's samples
        else:
            path.unlink()
    ui_services.networks.refresh()
    ui_services.engine.refresh_embeddings()


def test_every_sub_tab_is_photographed(page: Any, tmp_path: Path) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    for number, (sub_tab, control) in enumerate(
        (
            ("Create embedding", "#train_create_embedding"),
            ("Create hypernetwork", "#train_create_hypernetwork"),
            ("Preprocess images", "#train_run_preprocess"),
            ("Train", "#train_train_embedding"),
            ("Train LoRA", "#train_lora_train"),
        ),
        start=1,
    ):
        _open_train(page, sub_tab)
        expect(page.locator(control)).to_be_visible()
        page.wait_for_timeout(200)
        _shoot(page, tmp_path, f"train_{number}_{sub_tab.lower().replace(' ', '_')}.png", full_page=True)
    assert errors == []


def test_train_a_lora_and_find_it_in_the_cards(
    page: Any, ui_services: Services, hold: threading.Event, cleanup: None, tmp_path: Path
) -> None:
    make_training_set(ui_services.paths.data_dir / "lora_set", repeats=1)
    lora_file = ui_services.paths.lora_dir / f"{LORA_NAME}.safetensors"
    assert not lora_file.exists()

    # txt2img's Lora tab is open before the run: selecting it again is not what shows the new card
    _open_network_tab(page, "txt2img", "Lora")
    expect(page.locator("#txt2img_lora_cards")).to_be_attached()
    expect(page.locator(f"#txt2img_lora_cards .sdw-en-card[data-key='{LORA_NAME}']")).to_have_count(0)

    _open_train(page, "Train LoRA")
    _fill(page, "train_lora_name", LORA_NAME)
    _fill(page, "train_lora_data_root", "lora_set")  # relative to the data dir
    for elem_id, value in (
        ("train_lora_resolution_width", 64),
        ("train_lora_resolution_height", 64),
        ("train_lora_min_bucket_reso", 64),
        ("train_lora_max_bucket_reso", 128),
        ("train_lora_max_train_steps", MAX_STEPS),
        ("train_lora_learning_rate", "1e-3"),
        ("train_lora_seed", 1),
    ):
        _fill(page, elem_id, value)
    page.locator("#train_lora_group_samples").get_by_text("Samples and saving").click()
    for elem_id, value in (
        ("train_lora_sample_every_n_steps", 2),
        ("train_lora_sample_prompt", "a photo of a red cube"),
        ("train_lora_sample_steps", 2),
        ("train_lora_sample_width", 64),
        ("train_lora_sample_height", 64),
        ("train_lora_sample_seed", 3),
    ):
        _fill(page, elem_id, value)
    page.locator("#train_lora_train").click()

    # held at step 4: the progress line, the loss plot and the samples of steps 2 and 4
    progress = page.locator("#ti_progress")
    expect(progress).to_contain_text(f"step {HOLD_AT}/{MAX_STEPS}", timeout=60_000)
    expect(progress).to_contain_text(re.compile(r"loss \d+\.\d{4}"))
    expect(progress).to_contain_text("ETA")
    expect(page.locator("#ti_loss_plot")).to_be_visible()
    expect(page.locator("#ti_loss_plot canvas, #ti_loss_plot svg").first).to_be_visible()
    expect(page.locator("#ti_gallery img").first).to_be_visible()
    assert page.locator("#ti_gallery img").count() >= 1
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(300)  # let the plot paint
    _shoot(page, tmp_path, "train_lora_running.png")

    hold.set()
    output = page.locator("#ti_output textarea")
    expect(output).to_have_value(re.compile(rf"Training finished at {MAX_STEPS} steps\."), timeout=60_000)
    expect(output).to_have_value(re.compile(rf"LoRA saved to .*{LORA_NAME}\.safetensors"))
    expect(progress).to_contain_text(f"step {MAX_STEPS}/{MAX_STEPS}")
    assert lora_file.is_file()
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(300)
    _shoot(page, tmp_path, "train_lora_done.png")

    # back on txt2img, its Lora tab (still the selected one) has the new card
    page.locator("#tabs").get_by_role("tab", name="txt2img", exact=True).click()
    card = page.locator(f"#txt2img_lora_cards .sdw-en-card[data-key='{LORA_NAME}']")
    expect(card).to_be_visible()
    card.click()
    expect(page.locator("#txt2img_prompt textarea")).to_have_value(re.compile(rf"<lora:{LORA_NAME}:1>"))
    _shoot(page, tmp_path, "train_lora_card.png")
    # the run's other files (resume state, samples) are not LoRAs
    expect(page.locator(f"#txt2img_lora_cards .sdw-en-card[data-key^='{LORA_NAME}']")).to_have_count(1)


def test_create_an_embedding_and_a_hypernetwork_and_find_them(
    page: Any, ui_services: Services, cleanup: None, tmp_path: Path
) -> None:
    # img2img's Textual Inversion tab is open before: the new card comes from the create
    page.locator("#tabs").get_by_role("tab", name="img2img", exact=True).click()
    _open_network_tab(page, "img2img", "Textual Inversion")
    expect(page.locator("#img2img_textual_inversion_cards")).to_be_attached()

    _open_train(page, "Create embedding")
    _fill(page, "train_new_embedding_name", EMBEDDING_NAME)
    _fill(page, "train_initialization_text", "red cube")
    _fill(page, "train_nvpt", 2)
    page.locator("#train_create_embedding").click()
    output = page.locator("#ti_output textarea")
    expect(output).to_have_value(re.compile(rf"^Created: .*{EMBEDDING_NAME}\.pt$"), timeout=60_000)
    assert (ui_services.paths.embeddings_dir / f"{EMBEDDING_NAME}.pt").is_file()
    _shoot(page, tmp_path, "train_create_embedding_done.png")

    # the same name again: refused with the reason, nothing else changes
    page.locator("#train_create_embedding").click()
    expect(page.get_by_text("already exists").first).to_be_visible(timeout=30_000)

    # listed for training
    _open_train(page, "Train")
    page.locator("#train_embedding input").click()
    expect(page.get_by_role("option", name=EMBEDDING_NAME, exact=True)).to_have_count(1)
    page.keyboard.press("Escape")

    page.locator("#tabs").get_by_role("tab", name="img2img", exact=True).click()
    expect(page.locator(f"#img2img_textual_inversion_cards .sdw-en-card[data-key='{EMBEDDING_NAME}']")).to_be_visible()

    # a hypernetwork: created, listed for training
    _open_train(page, "Create hypernetwork")
    _fill(page, "train_new_hypernetwork_name", HYPERNETWORK_NAME)
    page.locator("#train_create_hypernetwork").click()
    expect(output).to_have_value(re.compile(rf"^Created: .*{HYPERNETWORK_NAME}\.pt$"), timeout=60_000)
    assert (ui_services.paths.hypernetwork_dir / f"{HYPERNETWORK_NAME}.pt").is_file()
    _open_train(page, "Train")
    page.locator("#train_hypernetwork input").click()
    expect(page.get_by_role("option", name=HYPERNETWORK_NAME, exact=True)).to_have_count(1)
    page.keyboard.press("Escape")
