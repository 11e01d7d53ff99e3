from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modules.core import atomic
from modules.core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_writes_bytes_text_json_and_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.bin"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"

    text_file = tmp_path / "t.txt"
    atomic_write_text(text_file, "héllo")
    assert text_file.read_text(encoding="utf-8") == "héllo"

    json_file = tmp_path / "x" / "c.json"
    atomic_write_json(json_file, {"k": "ü", "n": [1, 2]})
    raw = json_file.read_text(encoding="utf-8")
    assert "ü" in raw  # not \u-escaped, like A1111's config.json
    assert '    "k"' in raw  # indent=4 by default
    assert json.loads(raw) == {"k": "ü", "n": [1, 2]}
    assert _leftovers(tmp_path, {"a", "t.txt", "x"}) == []


def test_replaces_existing_file_and_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert (target.stat().st_mode & 0o777) == 0o640


def test_serialisation_error_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "config.json"
    target.write_text('{"old": true}')

    def boom(*args: object, **kwargs: object) -> str:
        raise RuntimeError("crash while serialising")

    monkeypatch.setattr(atomic.json, "dumps", boom)
    with pytest.raises(RuntimeError):
        atomic_write_json(target, {"new": True})
    assert target.read_text() == '{"old": true}'
    assert _leftovers(tmp_path, {"config.json"}) == []


def test_crash_mid_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "config.json"
    target.write_text("old content")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        atomic_write_text(target, "new content that never lands")
    assert target.read_text() == "old content"
    assert _leftovers(tmp_path, {"config.json"}) == []


def test_unserialisable_object_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "c.json"
    target.write_text("{}")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert target.read_text() == "{}"
    assert _leftovers(tmp_path, {"c.json"}) == []


def test_sweep_removes_only_old_leftover_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    atomic_write_json(target, {"a": 1})
    old = atomic.write_temp_file(tmp_path, b'{"a": 2', "config.json")  # what a kill -9 leaves
    fresh = atomic.write_temp_file(tmp_path, b"{}", "styles.csv")  # another process's write in progress
    lookalike = tmp_path / ".notes.tmp"
    lookalike.write_text("mine")
    os.utime(old, (1, 1))
    os.utime(lookalike, (1, 1))
    assert atomic.sweep_temp_files([tmp_path, tmp_path, tmp_path / "missing"]) == [old]
    assert not old.exists() and fresh.exists() and lookalike.exists()
    assert json.loads(target.read_text()) == {"a": 1}


def test_services_start_sweeps_the_data_dir(tmp_path: Path) -> None:
    from modules.app import build_services
    from modules.core.settings import parse_settings

    leftover = atomic.write_temp_file(tmp_path, b'{"half', "config.json")
    os.utime(leftover, (1, 1))
    services = build_services(parse_settings(["--data-dir", str(tmp_path), "--api", "--nowebui"], {}), tmp_path, {})
    try:
        assert not leftover.exists()
    finally:
        services.worker.shutdown()
