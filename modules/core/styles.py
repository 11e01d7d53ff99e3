"""Prompt styles (`styles.csv`) (A1111 semantics).

styles.csv: UTF-8 with BOM, header `name,prompt,negative_prompt` (old `text` column accepted for
the prompt), rows whose name starts with `#` ignored; several files may be given (`--styles-file`,
globs allowed; the first file is the one saved to). A style's `{prompt}` placeholder is replaced
by the user prompt; without one, the style text is appended with ", " (empty parts dropped).
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from modules.core.atomic import atomic_write_text
from modules.core.errors import NotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""
    path: Path | None = None


def merge_style(style_text: str, prompt: str) -> str:
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt, style_text) if part)


class StyleDatabase:
    """Styles from one or more CSV files; thread-safe; saved atomically to the first file."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)
        self._lock = threading.Lock()
        self._styles: dict[str, PromptStyle] = {}
        self.reload()

    def _expanded(self) -> list[Path]:
        out: list[Path] = []
        for entry in self.files:
            matches = sorted(glob.glob(str(entry))) if any(c in str(entry) for c in "*?[") else [str(entry)]
            out.extend(Path(m) for m in matches)
        return out

    def reload(self) -> None:
        styles: dict[str, PromptStyle] = {}
        for path in self._expanded():
            if not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("cannot read styles file %s: %s", path, exc)
                continue
            for row in csv.DictReader(io.StringIO(text)):
                name = (row.get("name") or "").strip()
                if not name or name.startswith("#"):
                    continue
                prompt = row.get("prompt") if row.get("prompt") is not None else row.get("text", "")
                styles.setdefault(name, PromptStyle(name, prompt or "", row.get("negative_prompt") or "", path))
        with self._lock:
            self._styles = styles

    def styles(self) -> list[PromptStyle]:
        with self._lock:
            return list(self._styles.values())

    def get(self, name: str) -> PromptStyle:
        with self._lock:
            style = self._styles.get(name)
        if style is None:
            raise NotFoundError(f"style not found: {name!r}")
        return style

    def apply(self, prompt: str, negative_prompt: str, names: Iterable[str]) -> tuple[str, str]:
        """Apply the named styles in order (unknown names are an error, not silently skipped)."""
        for name in names:
            style = self.get(name)
            prompt = merge_style(style.prompt, prompt)
            negative_prompt = merge_style(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt

    def _target(self) -> Path:
        expanded = self._expanded()
        return expanded[0] if expanded else self.files[0]

    def _write(self, path: Path) -> None:
        """Rewrite `path` with the styles that live in it (new styles live in the first file)."""
        target = self._target()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["name", "prompt", "negative_prompt"], lineterminator="\n")
        writer.writeheader()
        for s in self.styles():
            if (s.path or target) == path:
                writer.writerow({"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt})
        atomic_write_text(path, "\ufeff" + buffer.getvalue())

    def save(self, style: PromptStyle) -> None:
        """Add or replace a style, atomically rewriting the file it lives in: an existing style's
        own file (one of several `--styles-file`s), else the first file."""
        with self._lock:
            old = self._styles.get(style.name)
            path = style.path or (old.path if old is not None else None) or self._target()
            self._styles[style.name] = PromptStyle(style.name, style.prompt, style.negative_prompt, path)
        self._write(path)

    def delete(self, name: str) -> None:
        """Remove a style, rewriting the file it came from."""
        with self._lock:
            style = self._styles.pop(name, None)
        if style is None:
            raise NotFoundError(f"style not found: {name!r}")
        if self.files:
            self._write(style.path or self._target())

    def save_all(self) -> None:
        """Rewrite the first styles file."""
        self._write(self._target())
