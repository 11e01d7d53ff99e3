"""Extensions' preload.py: their flags join ours (A1111's `preload(parser)`), only for enabled ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modules.core.errors import SettingsError
from modules.core.settings import parse_settings
from modules.extensions.setup import extension_preloads

PRELOAD = """
def preload(parser):
    parser.add_argument("--wildcards-dir", type=str, help="directory with wildcards", default=None)
"""


def _data_dir(tmp_path: Path, disabled: list[str] | None = None) -> Path:
    ext = tmp_path / "extensions" / "wild"
    ext.mkdir(parents=True)
    (ext / "preload.py").write_text(PRELOAD)
    broken = tmp_path / "extensions" / "broken"
    broken.mkdir()
    (broken / "preload.py").write_text("raise RuntimeError('boom')\n")
    if disabled is not None:
        (tmp_path / "config.json").write_text(json.dumps({"disabled_extensions": disabled}))
    return tmp_path


def _settings(argv: list[str], data: Path) -> object:
    first = parse_settings(argv, {}, known_only=True)
    return parse_settings(argv, {}, preloads=extension_preloads(first, data, {}))


def test_an_extension_flag_is_parsed_into_extension_flags(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    argv = ["--data-dir", str(data), "--wildcards-dir", "/w"]
    settings = _settings(argv, data)
    assert settings.extension_flags == {"wildcards_dir": "/w"}  # type: ignore[attr-defined]
    # without the extension the flag is unknown, as any other
    with pytest.raises(SettingsError):
        parse_settings(argv, {})


def test_a_disabled_extension_adds_no_flags(tmp_path: Path) -> None:
    data = _data_dir(tmp_path, disabled=["wild"])
    with pytest.raises(SettingsError):
        _settings(["--data-dir", str(data), "--wildcards-dir", "/w"], data)
    settings = _settings(["--data-dir", str(data), "--disable-all-extensions"], data)
    assert settings.extension_flags == {}  # type: ignore[attr-defined]
