"""A 1280x800 screenshot of every top-level tab (for people to look at; set
`SD_WEBUI_SCREENSHOTS=<dir>` to keep them), checking on the way that each tab opens and shows
its main control with A1111's elem_id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.ui.conftest import screenshot_dirs

expect = pytest.importorskip("playwright.sync_api").expect

# tab label -> a control the tab must show (A1111's elem_id)
TABS = (
    ("txt2img", "#txt2img_generate"),
    ("img2img", "#img2img_generate"),
    ("Extras", "#extras_generate"),
    ("PNG Info", "#pnginfo_image"),
    ("Checkpoint Merger", "#tab_modelmerger"),
    ("Train", "#tab_train"),
    ("Settings", "#settings_submit"),
    ("Extensions", "#tab_extensions"),
)


def test_every_tab_opens_and_is_photographed(page: Any, tmp_path: Path) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    for number, (label, control) in enumerate(TABS, start=1):
        page.locator("#tabs").get_by_role("tab", name=label, exact=True).click()
        expect(page.locator(control).first).to_be_visible(timeout=10_000)
        page.wait_for_timeout(300)  # let the layout settle
        page.evaluate("window.scrollTo(0, 0)")
        name = f"tab_{number:02d}_{label.lower().replace(' ', '_')}.png"
        for directory in screenshot_dirs(tmp_path):
            page.screenshot(path=str(directory / name))
        assert (tmp_path / name).stat().st_size > 10_000
    assert errors == []
