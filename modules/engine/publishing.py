"""Publishing a finished file in a shared output folder without ever showing a partial one.

The encoded bytes are first written completely to a hidden temp file, then published under the
chosen name with `os.link` (which refuses to replace an existing file) while a per-folder lock is
held: a thread lock plus `flock` on the folder, so other processes using this module take turns
too. Sequence numbers are therefore unique under concurrency, readers never see a partial file,
and a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from modules.core.atomic import write_temp_file
from modules.core.filenames import next_sequence_number, sequence_prefix, truncate_utf8

__all__ = ["MAX_NUMBER_TRIES", "NAME_MAX_BYTES", "directory_lock", "name_max", "publish_bytes", "publish_new"]

logger = logging.getLogger(__name__)

MAX_NUMBER_TRIES = 500
NAME_MAX_BYTES = 255

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def directory_lock(folder: Path) -> Iterator[None]:
    """Exclusive right to pick a number in `folder`: a thread lock, plus `flock` on the folder
    itself on POSIX so that other processes saving there wait too (no lock file is left)."""
    key = os.path.normcase(os.path.abspath(folder))
    with _thread_locks_guard:
        lock = _thread_locks.setdefault(key, threading.Lock())
    with lock:
        fd: int | None = None
        if os.name == "posix":
            import fcntl

            try:
                fd = os.open(folder, os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:  # e.g. a filesystem without flock: threads are still serialised
                logger.debug("no flock on %s: %s", folder, exc)
                if fd is not None:
                    os.close(fd)
                    fd = None
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # closing the descriptor releases the flock


def publish_new(tmp: Path, target: Path) -> bool:
    """Make the complete file `tmp` appear as `target` unless `target` exists; True if done.

    `os.link` is atomic and never replaces. Where hard links are not supported, the name is
    claimed with an exclusive create and then atomically replaced by the temp file.
    """
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    os.close(fd)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise
    return True


def name_max(folder: Path) -> int:
    """Longest file name (bytes) the folder's filesystem allows, at most 255."""
    try:
        return min(NAME_MAX_BYTES, os.statvfs(folder).f_namemax)
    except (AttributeError, OSError):
        return NAME_MAX_BYTES


def publish_bytes(
    folder: Path,
    data: bytes,
    *,
    basename: str,
    decoration: str,
    extension: str,
    add_number: bool,
    stem_budget: int,
    replace_existing: bool = False,
) -> Path:
    """Write `data` to a temp file in `folder`, then publish it under a free name; the final path.

    With `add_number` the name is `<number>[-]<decoration>.<extension>` with the next free
    sequence number (`basename` = "grid" gives `grid-0003`). Otherwise it is
    `<decoration>.<extension>`, replaced when `replace_existing`, else made unique with `-1`,
    `-2`, ... Stems are cut to `stem_budget` UTF-8 bytes. The temp file is always removed.
    """
    tmp = write_temp_file(folder, data, "sdwebui")
    try:
        with directory_lock(folder):
            if add_number:
                start = next_sequence_number(folder, basename)
                for offset in range(MAX_NUMBER_TRIES):
                    prefix = sequence_prefix(start + offset, basename)
                    stem = prefix + truncate_utf8(decoration, stem_budget - len(prefix.encode("utf-8")))
                    target = folder / f"{stem}.{extension}"
                    if publish_new(tmp, target):
                        return target
                raise FileExistsError(f"no free file number in {folder}")
            stem = truncate_utf8(decoration, stem_budget)
            target = folder / f"{stem}.{extension}"
            if replace_existing:
                os.replace(tmp, target)
                return target
            n = 0
            while not publish_new(tmp, target):
                n += 1
                tail = f"-{n}"
                target = folder / f"{truncate_utf8(decoration, stem_budget - len(tail))}{tail}.{extension}"
            return target
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
