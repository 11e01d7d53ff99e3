"""Upscaler models from A1111's folders (`models/ESRGAN`, `models/RealESRGAN`, `models/SwinIR`,
`models/DAT`, ...), detected and loaded through spandrel.

- The scan only lists files (`.pth`, `.pt`, `.safetensors`); no weights are read. The scale shown
  before first use is guessed from the file name (`4x_foo`, `foo_x2`, default 4, like A1111);
  the architecture and the true scale are detected when the model is first loaded, and the entry
  is updated then.
- Files are read by `checkpoint_io.read_state_dict` (checked safetensors header; pickles through
  the allow-list, never plain pickle), then handed to `spandrel.ModelLoader.load_from_state_dict`.
- Detection uses a private `spandrel.ArchRegistry`: a copy of spandrel's `MAIN_REGISTRY` plus the
  architectures of `spandrel_extra_arches`. `spandrel_extra_arches.install()` would mutate the
  global `MAIN_REGISTRY` for every user of spandrel in the process; `ArchRegistry.copy()` is
  copy-on-write, so adding to the copy leaves the global one untouched.
- Loaded models are kept on the device of the `Placement`, in half precision when the device is
  CUDA, the placement asks for fp16 (`--no-half` not given) and the model supports it. What is
  kept is registered with the shared `MemoryBudget` (kind "upscaler"), which may evict it; at
  most `cache_size` of them are kept in any case. `using()` pins a model while it runs.
"""

from __future__ import annotations

import builtins
import functools
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modules.core.errors import ModelFileError, NotFoundError
from modules.models.checkpoint_io import read_state_dict
from modules.models.loader import Placement, is_out_of_memory
from modules.models.memory import UPSCALER, MemoryBudget, module_nbytes

if TYPE_CHECKING:
    from spandrel import ArchRegistry, ImageModelDescriptor

    from modules.core.paths import Paths

log = logging.getLogger(__name__)

UPSCALER_SUFFIXES = (".pth", ".pt", ".safetensors")
BUILTIN_KIND = "builtin"
NONE, LANCZOS, NEAREST = "None", "Lanczos", "Nearest"
BUILTIN_NAMES = (NONE, LANCZOS, NEAREST)
DEFAULT_SCALE = 4
DEFAULT_CACHE_SIZE = 2

_SCALE_IN_NAME = (
    re.compile(r"(?:^|[^a-z0-9])(\d)x(?:$|[^a-z0-9])", re.IGNORECASE),  # 4x_foo, foo-2x
    re.compile(r"(?:^|[^a-z0-9])x(\d)(?:$|[^a-z0-9])", re.IGNORECASE),  # foo_x2, RealESRGAN_x4plus
    re.compile(r"^(\d)x", re.IGNORECASE),
    re.compile(r"x(\d)(?:plus|v\d)", re.IGNORECASE),
)


@dataclass(frozen=True)
class UpscalerInfo:
    """One entry of the upscaler list, with A1111's fields.

    `kind` is the A1111 folder the file came from ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", ...)
    or "builtin" for None / Lanczos / Nearest. `architecture` is spandrel's id once detected.
    """

    name: str
    model_name: str | None
    model_path: str | None
    scale: float
    kind: str
    architecture: str | None = None

    @property
    def is_builtin(self) -> bool:
        return self.kind == BUILTIN_KIND

    def as_api(self) -> dict[str, Any]:
        """The `/sdapi/v1/upscalers` item."""
        return {
            "name": self.name,
            "model_name": self.model_name,
            "model_path": self.model_path,
            "model_url": None,
            "scale": self.scale,
        }


@dataclass(frozen=True)
class LoadedUpscaler:
    """A loaded spandrel image model on its device. Call with a (1, C, H, W) tensor in [0, 1] of
    the model's dtype and device; returns (1, C, H*scale, W*scale)."""

    info: UpscalerInfo
    descriptor: ImageModelDescriptor[Any]
    device: torch.device
    dtype: torch.dtype

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.id)

    @property
    def tiling_allowed(self) -> bool:
        """False when the model tiles internally (spandrel's `ModelTiling.INTERNAL`)."""
        from spandrel import ModelTiling

        return self.descriptor.tiling != ModelTiling.INTERNAL

    @property
    def min_size(self) -> int:
        return int(self.descriptor.size_requirements.minimum)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.descriptor(image)


BUILTINS: tuple[UpscalerInfo, ...] = tuple(
    UpscalerInfo(n, None, None, DEFAULT_SCALE, BUILTIN_KIND) for n in BUILTIN_NAMES
)


def scale_from_name(stem: str) -> int:
    """A1111-style guess of the scale from a file name; 4 when the name says nothing."""
    for pattern in _SCALE_IN_NAME:
        m = pattern.search(stem)
        if m and 1 <= int(m.group(1)) <= 8:
            return int(m.group(1))
    return DEFAULT_SCALE


@functools.cache
def arch_registry() -> ArchRegistry:
    """spandrel's architectures plus spandrel_extra_arches', in a registry of our own (built on
    first use; the global `MAIN_REGISTRY` is not modified)."""
    from spandrel import MAIN_REGISTRY

    registry = MAIN_REGISTRY.copy()
    try:
        from spandrel_extra_arches import EXTRA_REGISTRY
    except ImportError:  # optional extra
        return registry
    registry.add(*EXTRA_REGISTRY.architectures("insertion"), ignore_duplicates=True)
    return registry


def load_descriptor(path: Path, placement: Placement | None = None) -> ImageModelDescriptor[Any]:
    """Read `path` safely and build its spandrel image model on the placement's device/dtype.

    Raises `ModelFileError` (naming the file) for unreadable, unsafe or unsupported files."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    placement = placement or Placement()
    state_dict = read_state_dict(path)  # ModelFileError / UnsafeModelFileError name the file
    try:
        descriptor = ModelLoader(device="cpu", registry=arch_registry()).load_from_state_dict(state_dict)
    except UnsupportedModelError as exc:
        raise ModelFileError(f"{path}: not a supported upscaler model (no known architecture matches)") from exc
    except Exception as exc:  # an architecture matched but its tensors do not fit
        if is_out_of_memory(exc) or isinstance(exc, MemoryError):
            raise  # not the file's fault: the worker answers 507 and frees the memory
        raise ModelFileError(f"{path}: cannot build upscaler model: {type(exc).__name__}: {exc}") from exc
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ModelFileError(f"{path}: {descriptor.architecture.name} is not an image-to-image model")
    dtype = torch.float32
    if placement.device.type == "cuda" and placement.dtype == torch.float16 and descriptor.supports_half:
        dtype = torch.float16
    descriptor = descriptor.to(placement.device).to(dtype).eval()
    del state_dict
    return descriptor


class UpscalerRegistry:
    """Lists built-in and file upscalers; loads file upscalers on first use and keeps them while
    the memory budget allows (at most `cache_size`). Without a `budget` it uses an unbounded one
    of its own, so only `cache_size` limits it.

    Thread-safe: the worker loads, API threads list."""

    def __init__(
        self,
        folders: dict[str, Path] | list[tuple[str, Path]],
        placement: Placement | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        budget: MemoryBudget | None = None,
    ) -> None:
        self._folders = list(folders.items()) if isinstance(folders, dict) else list(folders)
        self.placement = placement or Placement()
        self.cache_size = max(1, cache_size)
        self.budget = budget if budget is not None else MemoryBudget()
        self._lock = threading.RLock()
        self._entries: dict[str, UpscalerInfo] | None = None
        self._cache: OrderedDict[str, LoadedUpscaler] = OrderedDict()

    @classmethod
    def from_paths(cls, paths: Paths, placement: Placement | None = None, **kwargs: Any) -> UpscalerRegistry:
        """The A1111 upscaler folders of `paths`, in A1111's list order."""
        folders = [
            ("ESRGAN", paths.esrgan_dir),
            ("RealESRGAN", paths.realesrgan_dir),
            ("DAT", paths.dat_dir),
            ("SwinIR", paths.swinir_dir),
            ("BSRGAN", paths.bsrgan_dir),
            ("ScuNET", paths.scunet_dir),
        ]
        return cls(folders, placement, **kwargs)

    # -- listing ---------------------------------------------------------------------------

    def refresh(self) -> list[UpscalerInfo]:
        """Rescan the folders (file names only). Detected scales of unchanged files are kept."""
        with self._lock:
            old = self._entries or {}
            entries: dict[str, UpscalerInfo] = {b.name: b for b in BUILTINS}
            for kind, folder in self._folders:
                for path in _walk_models(folder):
                    name = path.stem
                    if name in entries:
                        name = f"{path.stem} ({kind})"
                    if name in entries:
                        continue
                    info = UpscalerInfo(name, path.stem, str(path), scale_from_name(path.stem), kind)
                    prev = old.get(name)
                    if prev is not None and prev.model_path == info.model_path and prev.architecture:
                        info = prev
                    entries[name] = info
            self._entries = entries
            live = {i.model_path for i in entries.values()}
            gone = [k for k, m in self._cache.items() if m.info.model_path not in live]
            for key in gone:
                del self._cache[key]
        for key in gone:
            self.budget.remove(_budget_key(key))
        return list(entries.values())

    def infos(self) -> list[UpscalerInfo]:
        with self._lock:
            if self._entries is None:
                return self.refresh()
            return list(self._entries.values())

    def names(self) -> list[str]:
        return [i.name for i in self.infos()]

    def realesrgan_models(self) -> list[dict[str, Any]]:
        """`GET /sdapi/v1/realesrgan-models`: `[{name, path, scale}]` of the RealESRGAN folder."""
        return [
            {"name": i.name, "path": i.model_path, "scale": i.scale} for i in self.infos() if i.kind == "RealESRGAN"
        ]

    def get(self, name: str) -> UpscalerInfo:
        """The entry called `name` (also matched case-insensitively, or by file stem). On a miss
        the folders are scanned again once, so a file dropped in since start-up is found."""
        for infos in (self.infos(), None):
            if infos is None:
                infos = self.refresh()
            for info in infos:
                if info.name == name:
                    return info
            lowered = name.lower()
            for info in infos:
                if info.name.lower() == lowered or (info.model_name or "").lower() == lowered:
                    return info
        raise NotFoundError(f"upscaler not found: {name!r}")

    # -- loading ---------------------------------------------------------------------------

    def load(self, upscaler: UpscalerInfo | str) -> LoadedUpscaler:
        """The loaded model of a file upscaler (from the LRU when cached)."""
        info = self.get(upscaler) if isinstance(upscaler, str) else upscaler
        if info.is_builtin or info.model_path is None:
            raise ValueError(f"{info.name} is a built-in upscaler: nothing to load")
        key = info.model_path
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is not None:
            self.budget.touch(_budget_key(key))
            return cached
        # read and build outside the lock: listing (API threads) must not wait behind a load
        path = Path(info.model_path)
        log.info("loading upscaler %s from %s", info.name, path)
        descriptor = load_descriptor(path, self.placement)
        info = replace(info, scale=int(descriptor.scale), architecture=str(descriptor.architecture.id))
        param = next(iter(descriptor.model.parameters()), None)
        dtype = param.dtype if param is not None else torch.float32
        loaded = LoadedUpscaler(info, descriptor, self.placement.device, dtype)
        with self._lock:
            if self._entries is not None and info.name in self._entries:
                self._entries[info.name] = info
            self._cache[key] = loaded
            self._cache.move_to_end(key)
            over = list(self._cache)[: max(0, len(self._cache) - self.cache_size)]
        # outside the lock: the budget may call back into _drop
        self.budget.add(_budget_key(key), UPSCALER, module_nbytes(descriptor.model), lambda: self._drop(key))
        for old in over:
            self.budget.evict(_budget_key(old))
        return loaded

    @contextmanager
    def using(self, upscaler: UpscalerInfo | str) -> Iterator[LoadedUpscaler]:
        """`load`, with the model pinned in the memory budget until the block ends."""
        loaded = self.load(upscaler)
        with self.budget.pinned(_budget_key(str(loaded.info.model_path))):
            yield loaded

    def _drop(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)

    def detect(self, upscaler: UpscalerInfo | str) -> UpscalerInfo:
        """Load (or reuse) the model and return its entry with architecture and true scale."""
        return self.load(upscaler).info

    def unload(self) -> None:
        with self._lock:
            keys = list(self._cache)
            self._cache.clear()
        for key in keys:
            self.budget.remove(_budget_key(key))
        if self.placement.device.type == "cuda":
            torch.cuda.empty_cache()

    # last in the class body, so that `list` in the annotations above is still the builtin
    def list(self) -> builtins.list[dict[str, Any]]:
        """`GET /sdapi/v1/upscalers`: `[{name, model_name, model_path, model_url, scale}]`."""
        return [i.as_api() for i in self.infos()]


def _budget_key(model_path: str) -> str:
    return f"{UPSCALER}:{model_path}"


def _walk_models(folder: Path) -> list[Path]:
    """Model files under `folder`, recursively, sorted; symlinked folders are not followed."""
    if not folder.is_dir():
        return []
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(UPSCALER_SUFFIXES) and not name.startswith("."):
                path = Path(root) / name
                if path.is_file():
                    found.append(path)
    return sorted(found, key=lambda p: str(p).lower())
