"""Prompt templates for embedding and hypernetwork training (A1111's `textual_inversion_templates`).

A template is a text file of prompt lines; each training image takes a random line with `[name]`
replaced by the embedding's name and `[filewords]` by the image's caption (its `.txt` file or its
file name). The bundled folder is `textual_inversion_templates/` at the repository root (A1111's
file names: none, style, style_filewords, subject, subject_filewords, hypernetwork); further
folders (a user's own) are searched after it, and a file there of the same name wins, as A1111
keys its list by file name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from modules.core.errors import UserError

BUNDLED_DIR = Path(__file__).resolve().parents[3] / "textual_inversion_templates"
DEFAULT_EMBEDDING_TEMPLATE = "style_filewords.txt"
DEFAULT_HYPERNETWORK_TEMPLATE = "hypernetwork.txt"


def template_dirs(extra: Sequence[Path] = ()) -> list[Path]:
    """The bundled folder, then `extra` (later folders win on equal file names)."""
    dirs = [BUNDLED_DIR]
    for folder in extra:
        folder = Path(folder)
        if folder.resolve() not in {d.resolve() for d in dirs}:
            dirs.append(folder)
    return dirs


def list_templates(dirs: Sequence[Path] | None = None) -> dict[str, Path]:
    """Template file name -> path, sorted by name (A1111's dropdown lists every file of the
    folders, subfolders included)."""
    found: dict[str, Path] = {}
    for root in dirs if dirs is not None else template_dirs():
        if not Path(root).is_dir():
            continue
        for folder, subdirs, files in os.walk(root, followlinks=True):
            subdirs.sort()
            for name in sorted(files):
                if name.startswith("."):
                    continue
                found[name] = Path(folder) / name
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def read_template(filename: str, dirs: Sequence[Path] | None = None) -> list[str]:
    """The prompt lines of a template (blank lines dropped); `UserError` for a missing or empty
    file (A1111: "Prompt template file ... not found")."""
    if not filename:
        raise UserError("no prompt template selected")
    templates = list_templates(dirs)
    path = templates.get(Path(filename).name)
    if path is None:
        known = ", ".join(templates) or "none"
        raise UserError(f"prompt template file {filename!r} not found (known: {known})")
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise UserError(f"prompt template file {filename!r} has no lines")
    return lines


def fill(line: str, name: str, filewords: str) -> str:
    """One template line with `[filewords]` and `[name]` substituted."""
    return line.replace("[filewords]", filewords).replace("[name]", name)
