"""Model file hashes (A1111/Civitai conventions) and the `cache.json` hash cache.

* `sha256_file`: full-file SHA-256 (AutoV2 = first 10 hex, Lora/TI shorthash = first 12).
* `old_model_hash`: A1111's legacy 8-hex checkpoint hash (AutoV1).
* `addnet_hash_safetensors`: SHA-256 of a safetensors file's tensor data (kohya "addnet" hash).
* `HashCache`: A1111's `cache.json` sections, entries `{"mtime", "sha256", "size"}`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from modules.core.atomic import atomic_write_json
from modules.core.errors import ModelFileError

logger = logging.getLogger(__name__)

BLOCK_SIZE = 1024 * 1024
OLD_HASH_OFFSET = 0x100000
OLD_HASH_LENGTH = 0x10000

SECTION_HASHES = "hashes"
SECTION_ADDNET = "hashes-addnet"
SECTION_SAFETENSORS_METADATA = "safetensors-metadata"

StrPath = str | os.PathLike[str]


def _hash_stream(handle: BinaryIO, block: int) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(block), b""):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: StrPath, block: int = BLOCK_SIZE) -> str:
    """Full-file SHA-256, lowercase hex (64 chars)."""
    with open(path, "rb") as handle:
        return _hash_stream(handle, block)


def old_model_hash(path: StrPath) -> str:
    """A1111's old checkpoint hash: SHA-256 of 0x10000 bytes at offset 0x100000, first 8 hex.

    Files shorter than the offset hash the empty string (as A1111 does); "NOFILE" if missing.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(OLD_HASH_OFFSET)
            data = handle.read(OLD_HASH_LENGTH)
    except FileNotFoundError:
        return "NOFILE"
    return hashlib.sha256(data).hexdigest()[:8]


def addnet_hash_safetensors(path: StrPath, block: int = BLOCK_SIZE) -> str:
    """SHA-256 of everything after the 8-byte length and the JSON header (metadata edits keep it)."""
    p = Path(path)
    with open(p, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelFileError(f"{p.name}: not a safetensors file (shorter than 8 bytes)")
        (header_size,) = struct.unpack("<Q", prefix)
        if 8 + header_size > size:
            raise ModelFileError(f"{p.name}: safetensors header length {header_size} is larger than the file")
        handle.seek(8 + header_size)
        return _hash_stream(handle, block)


def hash_for_section(section: str) -> Callable[[Path], str]:
    """The hash function a cache section stores: addnet hash for "hashes-addnet", else sha256."""
    return addnet_hash_safetensors if section == SECTION_ADDNET else sha256_file


class HashCache:
    """A1111-compatible `cache.json` for file hashes (and other per-file cached values).

    Layout: `{"hashes": {"checkpoint/<name>": {"mtime": float, "sha256": hex, "size": int}},
    "hashes-addnet": {...}, "safetensors-metadata": {...}}`. An entry is stale when the file's
    mtime or size differs (entries written by A1111 carry no size; their mtime alone counts).
    Thread-safe; writes re-read the file and merge, so other processes' entries survive.
    The file is read lazily on first use; a corrupt file counts as empty (with a warning).
    """

    def __init__(self, cache_file: Path) -> None:
        self.cache_file = cache_file
        self._lock = threading.RLock()
        self._data: dict[str, dict[str, Any]] | None = None
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}

    # --- reading ---

    def get(self, section: str, key: str, path: StrPath) -> str | None:
        """The cached sha256 for `key` if still fresh for `path`; never computes."""
        entry = self._fresh_entry(section, key, Path(path))
        value = entry.get("sha256") if entry else None
        return value if isinstance(value, str) else None

    def get_value(self, section: str, key: str, path: StrPath) -> object | None:
        """A generic cached value (stored by `set_value`) if still fresh for `path`."""
        entry = self._fresh_entry(section, key, Path(path))
        return entry.get("value") if entry else None

    def _fresh_entry(self, section: str, key: str, path: Path) -> dict[str, Any] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        with self._lock:
            entry = self._loaded().get(section, {}).get(key)
        if not isinstance(entry, dict):
            return None
        mtime = entry.get("mtime")
        if not isinstance(mtime, (int, float)) or mtime != stat.st_mtime:
            return None
        size = entry.get("size")
        if size is not None and size != stat.st_size:
            return None
        return entry

    # --- computing and writing ---

    def sha256(self, section: str, key: str, path: StrPath) -> str:
        """The hash for `key`, computed (outside the lock) and persisted if missing or stale.

        Section "hashes-addnet" stores the addnet hash, other sections the full-file sha256.
        Raises OSError if the file cannot be read.
        """
        p = Path(path)
        cached = self.get(section, key, p)
        if cached is not None:
            return cached
        with self._key_lock(section, key):
            cached = self.get(section, key, p)  # another thread may have just computed it
            if cached is not None:
                return cached
            before = p.stat()
            value = hash_for_section(section)(p)
            after = p.stat()
            if (before.st_mtime, before.st_size) != (after.st_mtime, after.st_size):
                logger.warning("%s changed while hashing; not caching its hash", p)
                return value
            self._store(section, key, {"mtime": after.st_mtime, "sha256": value, "size": after.st_size})
            return value

    def set_value(self, section: str, key: str, path: StrPath, value: object) -> None:
        """Cache a JSON-serialisable value for `path` (e.g. its safetensors metadata)."""
        stat = Path(path).stat()
        self._store(section, key, {"mtime": stat.st_mtime, "value": value, "size": stat.st_size})

    def _store(self, section: str, key: str, entry: dict[str, Any]) -> None:
        with self._lock, _file_lock(self.cache_file):
            merged = self._read_file()
            merged.setdefault(section, {})[key] = entry
            try:
                atomic_write_json(self.cache_file, merged, indent=4)
            except OSError as exc:
                logger.warning("cannot write hash cache %s: %s", self.cache_file, exc)
            self._data = merged

    def _key_lock(self, section: str, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault((section, key), threading.Lock())

    def _loaded(self) -> dict[str, dict[str, Any]]:
        if self._data is None:
            self._data = self._read_file()
        return self._data

    def _read_file(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.cache_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            logger.warning("cannot read hash cache %s (%s); starting empty", self.cache_file, exc)
            return {}
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            logger.warning("hash cache %s is corrupt (%s); starting empty", self.cache_file, exc)
            return {}
        if not isinstance(obj, dict):
            logger.warning("hash cache %s is not a JSON object; starting empty", self.cache_file)
            return {}
        return {name: section for name, section in obj.items() if isinstance(section, dict)}


@contextlib.contextmanager
def _file_lock(cache_file: Path) -> Iterator[None]:
    """Inter-process lock on `<cache_file>.lock` (POSIX flock; a no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        handle = open(cache_file.with_name(cache_file.name + ".lock"), "a+b")  # noqa: SIM115
    except OSError as exc:
        logger.debug("no lock file for %s: %s", cache_file, exc)
        yield
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
