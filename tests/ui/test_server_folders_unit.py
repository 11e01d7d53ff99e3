"""Server folders named in the UI (Extras and img2img batch from a directory): only inside the data
dir or the outputs folder, images listed by name, and shown back relative, never as the absolute
server path."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from modules.core.paths import Paths
from modules.core.settings import parse_settings
from modules.ui.server_folders import folder_images, server_dir, shown_folder


@pytest.fixture()
def paths(tmp_path: Path) -> Paths:
    data = tmp_path / "data"
    data.mkdir()
    return Paths.from_settings(parse_settings(["--data-dir", str(data)], {}), data, {})


def test_relative_folders_are_inside_the_data_dir(paths: Paths) -> None:
    assert server_dir(paths, " in/a ", "Input directory") == (paths.data_dir / "in" / "a").resolve()
    outputs = paths.outputs_dir / "extras"
    assert server_dir(paths, str(outputs), "Input directory") == outputs.resolve()


@pytest.mark.parametrize("value", ["/etc", "../..", "in/../../elsewhere"])
def test_folders_outside_both_roots_are_refused(paths: Paths, value: str) -> None:
    with pytest.raises(gr.Error, match="Output directory: only folders inside the data dir"):
        server_dir(paths, value, "Output directory")


def test_an_empty_name_is_refused(paths: Paths) -> None:
    with pytest.raises(gr.Error, match="please enter a folder"):
        server_dir(paths, "  ", "Input directory")


def test_folder_images_lists_images_by_name_and_hides_the_absolute_path(paths: Paths) -> None:
    folder = paths.data_dir / "pics"
    folder.mkdir()
    for name in ("b.png", "a.JPG", "c.webp"):
        Image.new("RGB", (4, 4)).save(folder / name, format="PNG")
    (folder / "notes.txt").write_text("x")
    assert [p.name for p in folder_images(paths, folder, "Input directory")] == ["a.JPG", "b.png", "c.webp"]
    assert shown_folder(paths, folder) == "pics" and shown_folder(paths, paths.data_dir) == "."
    missing = paths.data_dir / "nope" / "deeper"
    with pytest.raises(gr.Error) as caught:
        folder_images(paths, missing, "Input directory")
    assert "Input directory not found: nope/deeper" in str(caught.value)
    assert str(paths.data_dir) not in str(caught.value)
