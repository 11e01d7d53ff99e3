"""The one owner of loaded models.

- One active checkpoint on the device; recently used ones kept in a RAM cache bounded in bytes
  (`cache_bytes`), so switching back is a move, not a load (on a CPU, not even that).
- Everything else borrows the active model through `lease()`, a `with` block during which it
  cannot be switched away.
- A load that fails leaves the previous model active and working; the error says why and is kept
  in `last_error`.
- VAEs swap without reloading the checkpoint; the checkpoint's own ("baked") VAE comes back for
  "None" / when the separate one is dropped.
- Hashing is never on the switch path: a checkpoint's sha256 is computed on a background thread
  after its first load and reported through `on_hash`.
- Each load is logged split into read / build / move times.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from modules.core.errors import ModelLoadError, NotFoundError, SdWebuiError
from modules.models.families import ModelFamily
from modules.models.loader import (
    Placement,
    StableDiffusionModel,
    load_diffusers_folder,
    load_single_file,
    load_vae_file,
)
from modules.models.registry import CheckpointInfo, ModelRegistry

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None
    return trim


def release_freed_heap() -> None:
    """Hand freed heap memory back to the OS. glibc keeps freed blocks under its (growing) mmap
    threshold in its arenas, so without this a dropped model's weights stay in RSS and every
    switch can look like a leak; with tcmalloc preloaded (webui.sh does when it finds it) this
    is a harmless no-op on glibc's own, empty, heap."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


VAE_AUTOMATIC = "Automatic"
VAE_NONE = "None"
_VAE_CACHE_SIZE = 2


@dataclass(frozen=True)
class ActiveModel:
    info: CheckpointInfo
    model: StableDiffusionModel


@dataclass(frozen=True)
class ManagerStatus:
    """A snapshot that can be read at any time without waiting for a lease."""

    checkpoint: CheckpointInfo | None
    vae: Path | None
    loading: str | None
    last_error: str | None
    cached: tuple[str, ...]
    cache_bytes_used: int


class ModelManager:
    def __init__(
        self,
        registry: ModelRegistry,
        placement: Placement,
        *,
        cache_bytes: Callable[[], int] | int = 0,
        default_sd2_prediction: Callable[[], str] | str = "v_prediction",
        forced_vae: Path | None = None,
        background_hashing: bool = True,
    ) -> None:
        self.registry = registry
        self.placement = placement
        self._cache_bytes = cache_bytes
        self._sd2_default = default_sd2_prediction
        self.forced_vae = forced_vae
        self.background_hashing = background_hashing
        self._lock = threading.RLock()
        self._active: ActiveModel | None = None
        self._ram: OrderedDict[str, StableDiffusionModel] = OrderedDict()
        self._ram_sizes: dict[str, int] = {}
        self._ram_snapshot: tuple[tuple[str, ...], int] = ((), 0)  # replaced whole, read lock-free
        self._vae_cache: OrderedDict[tuple[Path, str], torch.nn.Module] = OrderedDict()
        self._vae_choice = VAE_AUTOMATIC
        self._loading: str | None = None
        self.last_error: str | None = None
        self._hash_threads: list[threading.Thread] = []
        self.on_loaded: list[Callable[[CheckpointInfo], None]] = []
        self.on_hash: list[Callable[[CheckpointInfo], None]] = []

    # -- status (lock-free reads) ----------------------------------------------------------

    @property
    def active(self) -> ActiveModel | None:
        return self._active

    def status(self) -> ManagerStatus:
        active = self._active
        cached, cached_bytes = self._ram_snapshot
        return ManagerStatus(
            checkpoint=active.info if active else None,
            vae=active.model.vae_source if active else None,
            loading=self._loading,
            last_error=self.last_error,
            cached=cached,
            cache_bytes_used=cached_bytes,
        )

    # -- checkpoints -----------------------------------------------------------------------

    def resolve(self, checkpoint: str | CheckpointInfo | None) -> CheckpointInfo:
        if isinstance(checkpoint, CheckpointInfo):
            return checkpoint
        if checkpoint:
            return self.registry.find_checkpoint(checkpoint)
        if self._active is not None:
            return self._active.info
        found = self.registry.checkpoints()
        if not found:
            dirs = ", ".join(str(d) for d in self.registry.checkpoint_dirs)
            raise NotFoundError(f"no checkpoints found: put .safetensors or .ckpt files in {dirs}")
        return found[0]

    def load(self, checkpoint: str | CheckpointInfo | None = None) -> CheckpointInfo:
        """Make `checkpoint` the active model (default: keep the active one, else the first found)."""
        info = self.resolve(checkpoint)
        with self._lock:
            active = self._active
            if active is not None and active.info.filename == info.filename:
                return active.info
            self._switch_to(info)
        return info

    def _switch_to(self, info: CheckpointInfo) -> None:
        key = str(info.filename)
        cached = self._take_from_cache(key)
        self._loading = info.name
        started = time.perf_counter()
        dropped = False
        try:
            model = cached if cached is not None else self._load_from_disk(info)
            previous = self._active
            kept = previous is None or self._park(previous)
            try:
                self._apply_vae(model, info)
                if model.device != self.placement.device:
                    model.to_device(self.placement.device)
            except BaseException:
                if previous is not None:  # put the previous model back where it was
                    self._take_from_cache(str(previous.info.filename))
                    previous.model.to_device(self.placement.device)
                    self._active = previous
                if cached is not None:
                    self._cache(key, cached)
                raise
            self._active = ActiveModel(info, model)
            dropped = not kept
            previous = None  # the last reference to a dropped model: free it below
            self.last_error = None
        except SdWebuiError as exc:
            self.last_error = f"loading {info.name} failed: {exc}"
            log.error("%s; %s", self.last_error, self._keeping())
            raise ModelLoadError(self.last_error) from exc
        except (RuntimeError, OSError, ValueError, MemoryError) as exc:
            self.last_error = f"loading {info.name} failed: {type(exc).__name__}: {exc}"
            log.exception("%s; %s", self.last_error, self._keeping())
            raise ModelLoadError(self.last_error) from exc
        finally:
            self._loading = None
        if dropped:
            self._collect()
        self._evict()
        how = "from RAM cache" if cached is not None else f"from disk ({model.timings})"
        log.info("switched to %s [%s] %s in %.3fs", info.name, model.family.label, how, time.perf_counter() - started)
        for callback in self.on_loaded:
            callback(info)
        self._hash_later(info)

    def _keeping(self) -> str:
        return f"keeping {self._active.info.name}" if self._active else "no model loaded"

    def _load_from_disk(self, info: CheckpointInfo) -> StableDiffusionModel:
        # Build on the CPU first; the device only sees the new model once it is complete.
        cpu = Placement(
            device=torch.device("cpu"),
            dtype=self.placement.dtype,
            vae_dtype=self.placement.vae_dtype,
            text_encoder_dtype=self.placement.text_encoder_dtype,
        )
        if info.is_folder:
            model = load_diffusers_folder(info.filename, cpu)
        else:
            sd2 = self._sd2_default() if callable(self._sd2_default) else self._sd2_default
            model = load_single_file(info.filename, cpu, default_sd2_prediction=sd2)
        log.info("loaded %s from disk: %s", info.name, model.timings)
        return model

    def _park(self, active: ActiveModel) -> bool:
        """Move the outgoing model to the RAM cache; False if it does not fit the budget (the
        caller then drops its last reference and collects)."""
        self._active = None
        size = active.model.nbytes()
        if not 0 < size <= self._budget():
            return False
        if self.placement.device.type != "cpu":
            active.model.to_device(torch.device("cpu"))
            self._empty_device_cache()
        self._cache(str(active.info.filename), active.model, size)
        return True

    def _cache(self, key: str, model: StableDiffusionModel, size: int | None = None) -> None:
        self._ram[key] = model
        self._ram_sizes[key] = model.nbytes() if size is None else size
        self._publish_cache()

    def _publish_cache(self) -> None:
        self._ram_snapshot = (tuple(self._ram), sum(self._ram_sizes.values()))

    def _budget(self) -> int:
        value = self._cache_bytes() if callable(self._cache_bytes) else self._cache_bytes
        return max(0, int(value))

    def _evict(self) -> None:
        budget = self._budget()
        dropped = False
        while self._ram and sum(self._ram_sizes.values()) > budget:
            name, _ = self._ram.popitem(last=False)
            self._ram_sizes.pop(name, None)
            self._publish_cache()
            dropped = True
            log.info("dropped %s from the RAM cache", name)
        if dropped:
            self._collect()

    def _take_from_cache(self, key: str) -> StableDiffusionModel | None:
        self._ram_sizes.pop(key, None)
        model = self._ram.pop(key, None)
        self._publish_cache()
        return model

    def _collect(self) -> None:
        """Free what dropped models held. Only called when something was dropped: a full
        garbage collection costs hundreds of milliseconds with large models alive."""
        gc.collect()
        release_freed_heap()
        self._empty_device_cache()

    @staticmethod
    def _empty_device_cache() -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def unload(self) -> None:
        """Drop the active model from the device (A1111's unload-checkpoint); it stays in the RAM
        cache when it fits, so `reload()` is quick."""
        with self._lock:
            if self._active is not None and not self._park(self._active):
                self._collect()

    def reload(self) -> CheckpointInfo | None:
        """Load the most recently used checkpoint again (A1111's reload-checkpoint)."""
        with self._lock:
            if self._active is not None:
                return self._active.info
            if not self._ram:
                return None
            key = next(reversed(self._ram))
            info = next((c for c in self.registry.checkpoints() if str(c.filename) == key), None)
            if info is None:
                self._take_from_cache(key)
                return None
            self._switch_to(info)
            return info

    def clear_cache(self) -> None:
        with self._lock:
            self._ram.clear()
            self._ram_sizes.clear()
            self._publish_cache()
            self._vae_cache.clear()
            self._collect()

    @contextmanager
    def lease(self, checkpoint: str | CheckpointInfo | None = None) -> Iterator[StableDiffusionModel]:
        """Borrow the model for a job: switch to `checkpoint` if given (or load the default), and
        hold it active until the block ends."""
        with self._lock:
            self.load(checkpoint)
            assert self._active is not None
            yield self._active.model

    # -- VAEs ------------------------------------------------------------------------------

    @property
    def vae_choice(self) -> str:
        return self._vae_choice

    def set_vae(self, choice: str) -> None:
        """`Automatic` (same-name VAE next to the checkpoint, else the baked one), `None` (the
        checkpoint's own) or a VAE name from the registry."""
        if choice not in (VAE_AUTOMATIC, VAE_NONE):
            self.registry.find_vae(choice)  # NotFoundError before anything changes
        with self._lock:
            old = self._vae_choice
            self._vae_choice = choice
            if self._active is not None:
                try:
                    self._apply_vae(self._active.model, self._active.info)
                except BaseException:
                    self._vae_choice = old
                    raise

    def _vae_path_for(self, info: CheckpointInfo) -> Path | None:
        if self.forced_vae is not None:
            return self.forced_vae
        if self._vae_choice == VAE_NONE:
            return None
        if self._vae_choice == VAE_AUTOMATIC:
            return self.registry.vae_near_checkpoint(info)
        return self.registry.find_vae(self._vae_choice).filename

    def _apply_vae(self, model: StableDiffusionModel, info: CheckpointInfo) -> None:
        path = self._vae_path_for(info)
        if path == model.vae_source:
            return
        if path is None:
            assert model.baked_vae is not None
            model.vae, model.baked_vae, model.vae_source = model.baked_vae, None, None
            model.vae.to(device=self.placement.device)
            log.info("VAE: using the checkpoint's own")
            return
        vae = self._get_vae(path, model.family)
        if model.baked_vae is None:
            model.baked_vae = model.vae
            model.baked_vae.to(device="cpu")
        elif model.vae is not model.baked_vae:
            model.vae.to(device="cpu")
        model.vae = vae.to(device=self.placement.device)  # type: ignore[assignment]
        model.vae_source = path
        log.info("VAE: using %s", path.name)

    def _get_vae(self, path: Path, family: ModelFamily) -> torch.nn.Module:
        key = (path, family.id)
        vae = self._vae_cache.pop(key, None)
        if vae is None:
            started = time.perf_counter()
            vae = load_vae_file(path, family, self.placement)
            log.info("loaded VAE %s in %.2fs", path.name, time.perf_counter() - started)
        self._vae_cache[key] = vae
        while len(self._vae_cache) > _VAE_CACHE_SIZE:
            self._vae_cache.popitem(last=False)
        return vae

    # -- hashing ---------------------------------------------------------------------------

    def _hash_later(self, info: CheckpointInfo) -> None:
        if info.sha256 or info.is_folder or not self.registry.hashing:
            if info.sha256:
                for callback in self.on_hash:
                    callback(info)
            return
        if not self.background_hashing:
            self._hash_now(info)
            return
        thread = threading.Thread(target=self._hash_now, args=(info,), name=f"hash {info.name}", daemon=True)
        self._hash_threads = [t for t in self._hash_threads if t.is_alive()] + [thread]
        thread.start()

    def _hash_now(self, info: CheckpointInfo) -> None:
        try:
            started = time.perf_counter()
            self.registry.ensure_hash(info)
            log.info("hashed %s: %s in %.1fs", info.name, info.shorthash, time.perf_counter() - started)
        except OSError as exc:
            log.warning("could not hash %s: %s", info.name, exc)
            return
        for callback in self.on_hash:
            callback(info)

    def wait_for_hashes(self, timeout: float | None = None) -> None:
        for thread in list(self._hash_threads):
            thread.join(timeout)
