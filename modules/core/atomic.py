"""Atomic file writes: write a temp file in the target's directory, fsync it, then `os.replace`.

A reader sees either the old file or the new one, never a half-written file; a failure at any
point leaves the old file untouched and removes the temp file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

StrPath = str | os.PathLike[str]


def _fsync_dir(directory: Path) -> None:
    """Best effort: make the rename durable (POSIX only; silently skipped elsewhere)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_temp_file(directory: Path, data: bytes, name: str) -> Path:
    """Write `data` to a new hidden temp file `directory/.<name>.<random>.tmp`, flushed and
    fsynced; removed again if writing fails. The caller renames or links it into place."""
    tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
    # 0o666 minus the umask, like a normal open().
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def atomic_write_bytes(path: StrPath, data: bytes) -> None:
    """Replace `path` with `data` atomically; parent directories are created."""
    target = Path(path)
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    tmp = write_temp_file(directory, data, target.name)
    try:
        with contextlib.suppress(FileNotFoundError):  # an existing file keeps its mode
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_write_text(path: StrPath, text: str, encoding: str = "utf-8") -> None:
    """Replace `path` with `text` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: StrPath, obj: object, indent: int | None = 4) -> None:
    """Serialise `obj` (UTF-8, non-ASCII kept) and replace `path` with it atomically.

    Serialisation happens before anything touches the disk, so an unserialisable object leaves
    the old file as it was.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    atomic_write_text(path, text + "\n")
