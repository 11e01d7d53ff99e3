"""Atomic file writes: write a temp file in the target's directory, fsync it, then `os.replace`.

A reader sees either the old file or the new one, never a half-written file; a failure at any
point leaves the old file untouched and removes the temp file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

StrPath = str | os.PathLike[str]

_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
"""The names `write_temp_file` gives (`.<name>.<12 hex>.tmp`)."""


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


def sweep_temp_files(directories: Iterable[Path], older_than_s: float = 60.0) -> list[Path]:
    """Remove the temp files a killed process left behind (`kill -9` between the write and the
    rename: the target itself is whole) in `directories` (not recursive); only those older than
    `older_than_s`, so another process's write in progress is left alone. Returns what went."""
    removed: list[Path] = []
    cutoff = time.time() - older_than_s
    for directory in dict.fromkeys(directories):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if not _TEMP_NAME.match(entry.name):
                continue
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                continue
    return removed
