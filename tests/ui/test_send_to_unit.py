"""The pure parts of send-to, paste and save: which gallery image is sent or saved, with which
infotext, and which fields `send_seed` / `send_size` keep back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest
from PIL import Image

from modules.ui.paste import looks_like_infotext
from modules.ui.save import DownloadCopies, chosen_items, filename_context
from modules.ui.send_to import SEED_FIELDS, selected_image, skipped_fields

INFOTEXT = "a cat\nNegative prompt: dog\nSteps: 3, Sampler: Euler a, CFG scale: 5, Seed: 42, Size: 64x32, Model: sd1"


def _gallery(tmp_path: Path, colours: list[tuple[int, int, int]]) -> list[tuple[str, None]]:
    items = []
    for i, colour in enumerate(colours):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), colour).save(path)
        items.append((str(path), None))
    return items


def _info(first: int, infotexts: list[str]) -> str:
    return json.dumps({"index_of_first_image": first, "infotexts": infotexts})


def test_selected_image_defaults_to_the_first_image_after_the_grid(tmp_path: Path) -> None:
    gallery = _gallery(tmp_path, [(0, 0, 0), (255, 0, 0), (0, 255, 0)])
    image, text = selected_image(gallery, None, _info(1, ["grid", "one", "two"]))
    assert image.getpixel((0, 0)) == (255, 0, 0) and text == "one"
    image, text = selected_image(gallery, 2, _info(1, ["grid", "one", "two"]))
    assert image.getpixel((0, 0)) == (0, 255, 0) and text == "two"
    # a stale index (the gallery shrank) falls back to the default
    image, text = selected_image(gallery[:2], 5, _info(1, ["grid", "one"]))
    assert text == "one"


def test_selected_image_of_an_empty_gallery_is_a_user_error() -> None:
    with pytest.raises(gr.Error, match="generate one first"):
        selected_image([], None, "")


def test_selected_image_tolerates_missing_info(tmp_path: Path) -> None:
    gallery = _gallery(tmp_path, [(1, 2, 3)])
    image, text = selected_image(gallery, None, "not json")
    assert image.getpixel((0, 0)) == (1, 2, 3) and text == ""


class _Options:
    def __init__(self, **values: Any) -> None:
        self.values = values

    def get(self, key: str) -> Any:
        return self.values.get(key)


def test_skipped_fields_follow_send_seed_and_send_size() -> None:
    services: Any = SimpleNamespace(options=_Options(send_seed=True, send_size=True))
    assert skipped_fields(services) == set()
    services.options = _Options(send_seed=False, send_size=True)
    assert skipped_fields(services) == set(SEED_FIELDS)
    services.options = _Options(send_seed=True, send_size=False)
    assert skipped_fields(services) == {"width", "height"}


def test_looks_like_infotext() -> None:
    assert looks_like_infotext(INFOTEXT)
    assert not looks_like_infotext("a cat, Steps of a staircase")
    assert not looks_like_infotext("")


def test_chosen_items_for_save_and_zip() -> None:
    gallery = ["g", "a", "b"]
    info = {"index_of_first_image": 1, "infotexts": ["g", "a", "b"]}
    assert chosen_items(gallery, None, info, selected_only=True) == [(1, "a")]
    assert chosen_items(gallery, 0, info, selected_only=True) == [(0, "g")]
    assert chosen_items(gallery, None, info, selected_only=False) == [(1, "a"), (2, "b")]
    assert chosen_items(["x"], None, {}, selected_only=False) == [(0, "")]


def test_filename_context_reads_the_infotext() -> None:
    ctx = filename_context(INFOTEXT)
    assert (ctx.seed, ctx.steps, ctx.cfg, ctx.sampler, ctx.model_name) == (42, 3, 5.0, "Euler a", "sd1")
    assert ctx.prompt == "a cat" and ctx.negative_prompt == "dog"
    assert filename_context("").seed is None


def test_download_copies_are_removed_once_old(tmp_path: Path) -> None:
    source = tmp_path / "00001-42.png"
    source.write_bytes(b"png")
    now = [1000.0]
    copies = DownloadCopies(keep_s=300, clock=lambda: now[0])
    first = Path(copies([str(source)])[0])
    assert first.read_bytes() == b"png" and first.parent.name.startswith("sd-webui-download-")
    now[0] += 299
    second = Path(copies([str(source)])[0])
    assert first.exists() and second.exists()  # Gradio may still be copying the last ones
    now[0] += 2
    third = Path(copies([str(source)])[0])
    assert not first.parent.exists()  # 301 s old: gone
    assert second.exists() and third.exists()
    for path in (second, third):
        shutil.rmtree(path.parent)
