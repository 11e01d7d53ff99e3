"""Folders on the server that a user names in the UI (Extras' and img2img's batch from a
directory): relative to the data dir, and only inside the data dir or the outputs folder;
the images in them; how such a folder is shown back (relative, never the absolute path)."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from modules.core.paths import Paths

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _roots(paths: Paths) -> tuple[Path, Path]:
    return paths.data_dir.resolve(), paths.outputs_dir.resolve()


def server_dir(paths: Paths, value: str, label: str) -> Path:
    """The folder `value` names, resolved: relative to the data dir, and only inside the data dir
    or the outputs folder (anything else is a `gr.Error` naming `label`)."""
    if not value or not value.strip():
        raise gr.Error(f"{label}: please enter a folder")
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        path = paths.data_dir / path
    path = path.resolve()
    if not any(path == root or root in path.parents for root in _roots(paths)):
        raise gr.Error(f"{label}: only folders inside the data dir or the outputs folder are allowed")
    return path


def shown_folder(paths: Paths, folder: Path) -> str:
    """A server folder as the user typed it: relative to the data dir (or the outputs folder)."""
    for root in _roots(paths):
        if folder == root or root in folder.parents:
            return str(folder.relative_to(root)) or "."
    return folder.name


def folder_images(paths: Paths, folder: Path, label: str) -> list[Path]:
    """The image files directly in `folder`, sorted by name; a missing folder is a `gr.Error`."""
    if not folder.is_dir():
        raise gr.Error(f"{label} not found: {html.escape(shown_folder(paths, folder))}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
