"""The checkpoints and VAEs on disk, with A1111's names, titles, hashes and lookup aliases.

A checkpoint's `name` is its path relative to the folder it was found in (`sub/model.safetensors`),
its title `name [shorthash]` once the AutoV2 hash (first 10 hex of the file's sha256) is known.
Hashes are computed lazily (`ensure_hash`) and cached in `cache.json` under `checkpoint/<name>`,
so scanning never reads whole files; the old 8-hex hash reads only 64 KiB per file.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modules.core.errors import NotFoundError
from modules.core.hashes import HashCache, old_model_hash

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
_VAE_MARK = ".vae"


@dataclass
class CheckpointInfo:
    """One checkpoint file or diffusers folder."""

    filename: Path
    name: str
    is_folder: bool = False
    sha256: str | None = None
    old_hash: str = ""

    @property
    def model_name(self) -> str:
        stem = self.name if self.is_folder else self.name.rsplit(".", 1)[0]
        return stem.replace("/", "_").replace("\\", "_")

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def cache_key(self) -> str:
        return f"checkpoint/{self.name}"

    @property
    def config_yaml(self) -> Path | None:
        path = self.filename.with_suffix(".yaml")
        return path if path.is_file() else None

    def aliases(self) -> list[str]:
        """Every string A1111 accepts for this checkpoint (title, names, hashes...)."""
        stem = self.name.rsplit(".", 1)[0] if not self.is_folder else self.name
        found = [self.title, self.name, self.model_name, stem, self.filename.name, str(self.filename)]
        if self.old_hash:
            found += [self.old_hash, f"{self.name} [{self.old_hash}]"]
        if self.sha256:
            short = self.sha256[:10]
            found += [self.sha256, short, f"{self.name} [{short}]", f"{stem} [{short}]"]
        return found


@dataclass
class VaeInfo:
    filename: Path
    name: str  # relative to its folder, as shown in the `sd_vae` setting
    sha256: str | None = None

    @property
    def cache_key(self) -> str:
        return f"vae/{self.name}"


@dataclass
class _Index:
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    vaes: list[VaeInfo] = field(default_factory=list)


class ModelRegistry:
    """Scans checkpoint and VAE folders; thread-safe; `refresh()` rescans."""

    def __init__(
        self,
        checkpoint_dirs: Sequence[Path],
        vae_dirs: Sequence[Path],
        hash_cache: HashCache,
        *,
        extra_checkpoints: Sequence[Path] = (),
        hashing: bool = True,
    ) -> None:
        self.checkpoint_dirs = tuple(checkpoint_dirs)
        self.vae_dirs = tuple(vae_dirs)
        self.extra_checkpoints = tuple(extra_checkpoints)
        self.hash_cache = hash_cache
        self.hashing = hashing
        self._lock = threading.RLock()
        self._index = _Index()
        self._scanned = False

    # -- scanning --------------------------------------------------------------------------

    def refresh(self) -> None:
        checkpoints: dict[str, CheckpointInfo] = {}
        for root in self.checkpoint_dirs:
            for path, is_folder in _walk_checkpoints(root):
                name = path.relative_to(root).as_posix()
                checkpoints.setdefault(name, self._checkpoint_info(path, name, is_folder))
        for path in self.extra_checkpoints:
            if path.exists():
                checkpoints.setdefault(path.name, self._checkpoint_info(path, path.name, path.is_dir()))
            else:
                log.warning("checkpoint %s (from --ckpt) does not exist", path)
        vaes: dict[str, VaeInfo] = {}
        for root in self.vae_dirs:
            for path in _walk_files(root, VAE_SUFFIXES):
                name = path.relative_to(root).as_posix()
                vaes.setdefault(name, VaeInfo(path, name, self.hash_cache.get("hashes", f"vae/{name}", path)))
        with self._lock:
            self._index = _Index(
                checkpoints=sorted(checkpoints.values(), key=lambda c: c.name.lower()),
                vaes=sorted(vaes.values(), key=lambda v: v.name.lower()),
            )
            self._scanned = True
        log.info("found %d checkpoints and %d VAEs", len(checkpoints), len(vaes))

    def _checkpoint_info(self, path: Path, name: str, is_folder: bool) -> CheckpointInfo:
        info = CheckpointInfo(filename=path, name=name, is_folder=is_folder)
        if not is_folder:
            info.old_hash = old_model_hash(path)
            info.sha256 = self.hash_cache.get("hashes", info.cache_key, path)
        return info

    def _current(self) -> _Index:
        if not self._scanned:
            self.refresh()
        return self._index

    # -- queries ---------------------------------------------------------------------------

    def checkpoints(self) -> list[CheckpointInfo]:
        return list(self._current().checkpoints)

    def vaes(self) -> list[VaeInfo]:
        return list(self._current().vaes)

    def find_checkpoint(self, query: str) -> CheckpointInfo:
        """By any A1111 alias: title, name, model name, stem, short/full/old hash, `name [hash]`."""
        query = query.strip()
        candidates = self.checkpoints()
        for info in candidates:
            if query in info.aliases():
                return info
        # A title whose hash part is stale (file changed) still names the file.
        if query.endswith("]") and " [" in query:
            bare = query.rsplit(" [", 1)[0]
            for info in candidates:
                if bare in (info.name, info.model_name):
                    return info
        raise NotFoundError(f"checkpoint not found: {query!r}")

    def find_vae(self, query: str) -> VaeInfo:
        for info in self.vaes():
            if query in (info.name, info.filename.name, str(info.filename), info.filename.stem):
                return info
        raise NotFoundError(f"VAE not found: {query!r}")

    def vae_near_checkpoint(self, checkpoint: CheckpointInfo) -> Path | None:
        """A1111's "Automatic": `<stem>.vae.{pt,safetensors,ckpt}` beside the checkpoint, else a VAE
        in the VAE folders with the checkpoint's stem as its name."""
        if checkpoint.is_folder:
            return None
        stem = checkpoint.filename.name.rsplit(".", 1)[0]
        for suffix in VAE_SUFFIXES:
            candidate = checkpoint.filename.with_name(stem + _VAE_MARK + suffix)
            if candidate.is_file():
                return candidate
        for info in self.vaes():
            if info.filename.name.rsplit(".", 1)[0] in (stem, stem + _VAE_MARK):
                return info.filename
        return None

    # -- hashes ----------------------------------------------------------------------------

    def ensure_hash(self, info: CheckpointInfo) -> str | None:
        """The full sha256 of a checkpoint, computing and caching it if needed (slow: whole file)."""
        if info.sha256 or info.is_folder or not self.hashing:
            return info.sha256
        info.sha256 = self.hash_cache.sha256("hashes", info.cache_key, info.filename)
        return info.sha256

    def ensure_vae_hash(self, info: VaeInfo) -> str | None:
        if info.sha256 or not self.hashing:
            return info.sha256
        info.sha256 = self.hash_cache.sha256("hashes", info.cache_key, info.filename)
        return info.sha256


def _walk(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """os.walk following symlinks, each real directory once (symlink loops are skipped)."""
    if not root.is_dir():
        return
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        yield Path(dirpath), dirnames, sorted(filenames)


def _walk_checkpoints(root: Path) -> Iterable[tuple[Path, bool]]:
    for dirpath, dirnames, filenames in _walk(root):
        if "model_index.json" in filenames and "unet" in dirnames:
            dirnames[:] = []  # a diffusers folder: its weight files are not separate checkpoints
            yield dirpath, True
            continue
        for filename in filenames:
            lower = filename.lower()
            if lower.endswith(CHECKPOINT_SUFFIXES) and _VAE_MARK + "." not in lower:
                yield dirpath / filename, False


def _walk_files(root: Path, suffixes: tuple[str, ...]) -> Iterable[Path]:
    for dirpath, _dirnames, filenames in _walk(root):
        for filename in filenames:
            if filename.lower().endswith(suffixes):
                yield dirpath / filename
