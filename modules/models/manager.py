"""The one owner of loaded models.

- One active checkpoint on the device; recently used ones kept in a RAM cache, so switching back
  is a move, not a load (on a CPU, not even that). The cache is bounded by the shared
  `MemoryBudget` (`memory.py`), which also holds separate VAEs, upscalers, face restorers and
  TAESD decoders; the active checkpoint and the VAE attached to it are pinned there.
- Everything else borrows the active model through `lease(spec)`, a `with` block during which
  the spec's checkpoint, VAE and weight patches are in force and cannot be switched away. The
  spec in force is `leased_spec` (None outside a lease). A nested lease puts the outer spec back
  when it ends. Weights stay patched after a lease (an unchanged set costs nothing next time)
  and are restored to pristine before a model is parked in the RAM cache; a model taken from
  the cache is pristine.
- A spec's VAE is per lease: `set_vae(choice)` only changes the default choice (`vae_choice`,
  the `sd_vae` option) used when a spec names none. A VAE change that is not needed costs nothing.
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

from modules.core.errors import ModelLoadError, NotFoundError, SdWebuiError, UserError
from modules.core.jobs import VAE_AUTOMATIC, VAE_NONE
from modules.models import offload
from modules.models.families import ModelFamily
from modules.models.fast_paths import move_model, park_model
from modules.models.loader import (
    Placement,
    StableDiffusionModel,
    is_out_of_memory,
    load_diffusers_folder,
    load_single_file,
    load_vae_file,
)
from modules.models.memory import CHECKPOINT, VAE, HeldModel, MemoryBudget, module_nbytes
from modules.models.patches import WeightPatcher
from modules.models.registry import CheckpointInfo, ModelRegistry
from modules.models.spec import ModelSpec

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


class ModelFileLoadError(ModelLoadError, UserError):
    """Loading failed because of the file (corrupt, truncated, unsafe, tensors that do not fit):
    a `ModelLoadError` (the previous model stays active) that adapters answer as a 4xx, from
    whatever route asked for the model (options, a job's override, hires or refiner checkpoint)."""


_CHECKPOINT_KEY = "checkpoint:"
_VAE_KEY = "vae:"


@dataclass(frozen=True)
class ActiveModel:
    info: CheckpointInfo
    model: StableDiffusionModel
    patcher: WeightPatcher = field(compare=False)


@dataclass(frozen=True)
class ManagerStatus:
    """A snapshot that can be read at any time without waiting for a lease."""

    checkpoint: CheckpointInfo | None
    vae: Path | None
    loading: str | None
    last_error: str | None
    cached: tuple[str, ...]  # checkpoint files parked in the RAM cache, least recently used first
    cache_bytes_used: int  # their bytes
    patches: tuple[str, ...] = ()  # identities of the weight patches in force on the active model
    held: tuple[HeldModel, ...] = ()  # everything the memory budget holds, every kind, LRU first
    budget_bytes: int = 0  # the budget's limit on what is held for reuse (unpinned entries)


def own_nbytes(model: StableDiffusionModel) -> int:
    """Bytes of a checkpoint's own components (its baked VAE, not a separate one attached)."""
    return module_nbytes(model.unet, *model.text_encoders, model.baked_vae or model.vae)


def _moved(vae: AutoencoderKL, device: torch.device | str) -> AutoencoderKL:
    """`vae` moved to `device` in place (as a plain nn.Module: diffusers wraps ModelMixin.to in a
    way type checkers misread)."""
    module: torch.nn.Module = vae
    module.to(device=device)
    return vae


class ModelManager:
    def __init__(
        self,
        registry: ModelRegistry,
        placement: Placement,
        *,
        cache_bytes: Callable[[], int] | int = 0,
        budget: MemoryBudget | None = None,
        default_sd2_prediction: Callable[[], str] | str = "v_prediction",
        forced_vae: Path | None = None,
        background_hashing: bool = True,
        memory_mode: str = "normal",
        move: offload.Move = offload.move_module,
        offload_device: torch.device | None = None,
    ) -> None:
        self.registry = registry
        self.placement = placement
        self.budget = budget if budget is not None else MemoryBudget(cache_bytes)  # cache_bytes only without one
        self._sd2_default = default_sd2_prediction
        self.forced_vae = forced_vae
        self.background_hashing = background_hashing
        self.memory_mode = memory_mode  # "normal", "medvram", "medvram-sdxl", "lowvram"
        self._move = move  # how an offloaded model's parts move (tests observe it)
        self._offload_device = offload_device  # where they move to: the placement's device unless a test says
        self._lock = threading.RLock()
        self._active: ActiveModel | None = None
        # What the budget's evict callbacks touch; guarded by its own short lock so that an
        # eviction from another thread never waits behind a lease.
        self._cache_lock = threading.Lock()
        self._ram: OrderedDict[str, StableDiffusionModel] = OrderedDict()
        self._sizes: dict[str, int] = {}  # checkpoint key -> own_nbytes, reset on each load from disk
        self._vae_cache: dict[tuple[Path, str], AutoencoderKL] = {}
        self._vae_choice = VAE_AUTOMATIC
        self._leased_spec: ModelSpec | None = None
        self._loading: str | None = None
        self.last_error: str | None = None
        self._hash_threads: list[threading.Thread] = []
        self.on_loaded: list[Callable[[CheckpointInfo], None]] = []
        self.on_hash: list[Callable[[CheckpointInfo], None]] = []

    # -- status (lock-free reads) ----------------------------------------------------------

    @property
    def active(self) -> ActiveModel | None:
        return self._active

    @property
    def patcher(self) -> WeightPatcher | None:
        """The weight patcher of the active model (a fresh one each time a model becomes active:
        a model only becomes active pristine)."""
        active = self._active
        return active.patcher if active is not None else None

    @property
    def leased_spec(self) -> ModelSpec | None:
        """The spec in force during the current lease, resolved: `checkpoint` is the
        `CheckpointInfo`, `vae` the choice applied ("Automatic" / "None" / a name); None outside
        a lease."""
        return self._leased_spec

    def status(self) -> ManagerStatus:
        active = self._active
        held = self.budget.snapshot()
        parked = [h for h in held if h.kind == CHECKPOINT and not h.pinned and h.key.startswith(_CHECKPOINT_KEY)]
        return ManagerStatus(
            checkpoint=active.info if active else None,
            vae=active.model.vae_source if active else None,
            loading=self._loading,
            last_error=self.last_error,
            cached=tuple(h.key.removeprefix(_CHECKPOINT_KEY) for h in parked),
            cache_bytes_used=sum(h.nbytes for h in parked),
            patches=active.patcher.identities if active else (),
            held=held,
            budget_bytes=self.budget.limit(),
        )

    # -- leases ----------------------------------------------------------------------------

    @contextmanager
    def lease(self, spec: ModelSpec | str | CheckpointInfo | None = None) -> Iterator[StableDiffusionModel]:
        """Borrow the model for a job with `spec` in force (a checkpoint alias or info stands for
        a spec with just that checkpoint; None for the default spec: the active checkpoint, the
        default VAE choice, no patches). The model stays active until the block ends."""
        wanted = ModelSpec.of(spec)
        with self._lock:
            outer = self._leased_spec
            in_force = self._establish(wanted)
            self._leased_spec = in_force
            # A nested lease of another checkpoint (a hires checkpoint, the SDXL refiner) parks the
            # outer job's model in the RAM cache: keep it pinned there, the job returns to it.
            outer_key = None
            outer_file = outer.checkpoint.filename if outer and isinstance(outer.checkpoint, CheckpointInfo) else None
            if outer_file is not None and outer_file != in_force.checkpoint.filename:  # type: ignore[union-attr]
                key = _CHECKPOINT_KEY + str(outer_file)
                outer_key = key if self.budget.pin(key) else None
            try:
                assert self._active is not None
                yield self._active.model
            finally:
                self._leased_spec = outer
                if outer_key is not None:
                    self.budget.unpin(outer_key)
                if outer is not None and outer != in_force:
                    self._establish(outer)

    def _establish(self, spec: ModelSpec) -> ModelSpec:
        choice = spec.vae if spec.vae is not None else self._vae_choice
        self._check_vae_choice(choice)  # NotFoundError before anything changes
        info = self.resolve(spec.checkpoint)
        active = self._active
        if active is None or active.info.filename != info.filename:
            self._switch_to(info, choice)
        else:
            self._apply_vae(active.model, active.info, choice, active.patcher)
        active = self._active
        assert active is not None
        try:
            if active.patcher.apply(spec.patches):
                log.info("weight patches in force: %s", ", ".join(active.patcher.identities) or "none")
        except (RuntimeError, MemoryError) as exc:
            if is_out_of_memory(exc) or isinstance(exc, MemoryError):
                raise  # the weights are pristine again (WeightPatcher.apply); the worker answers 507
            raise ModelLoadError(f"applying weight patches failed: {type(exc).__name__}: {exc}") from exc
        return replace(spec, checkpoint=active.info, vae=choice)

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
        """Make `checkpoint` the active model (default: keep the active one, else the first found),
        with the default VAE choice."""
        info = self.resolve(checkpoint)
        with self._lock:
            active = self._active
            if active is not None and active.info.filename == info.filename:
                return active.info
            self._switch_to(info, self._vae_choice)
        return info

    def _switch_to(self, info: CheckpointInfo, vae_choice: str) -> None:
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
                self._apply_vae(model, info, vae_choice, None)
                self._place(model)
            except BaseException:
                if previous is not None:  # put the previous model back where it was
                    self._take_from_cache(str(previous.info.filename))
                    self._place(previous.model)
                    self._activate(previous)
                    self._reattach_vae(previous)
                if cached is not None:
                    self._unplace(cached)  # back in the cache without hooks, on the CPU
                    self._cache(key, cached)
                raise
            self._activate(ActiveModel(info, model, WeightPatcher(model)))
            dropped = not kept
            previous = None  # the last reference to a dropped model: free it below
            self.last_error = None
        except SdWebuiError as exc:
            self.last_error = f"loading {info.name} failed: {exc}"
            log.error("%s; %s", self.last_error, self._keeping())
            if isinstance(exc, UserError):  # a bad file (or name): the client's to fix, a 4xx
                raise ModelFileLoadError(self.last_error, status_code=exc.status_code) from exc
            raise ModelLoadError(self.last_error) from exc
        except (RuntimeError, OSError, ValueError, MemoryError) as exc:
            self.last_error = f"loading {info.name} failed: {type(exc).__name__}: {exc}"
            if is_out_of_memory(exc) or isinstance(exc, MemoryError):
                log.error("%s; %s", self.last_error, self._keeping())
                raise  # the worker frees memory and answers 507; the file is not at fault
            log.exception("%s; %s", self.last_error, self._keeping())
            raise ModelLoadError(self.last_error) from exc
        finally:
            self._loading = None
        if dropped:
            self._collect()
        how = "from RAM cache" if cached is not None else f"from disk ({model.timings})"
        log.info("switched to %s [%s] %s in %.3fs", info.name, model.family.label, how, time.perf_counter() - started)
        for callback in self.on_loaded:
            callback(info)
        self._hash_later(info)

    def _activate(self, active: ActiveModel) -> None:
        """`active` becomes the active model, pinned in the budget."""
        self._active = active
        key = str(active.info.filename)
        self.budget.add(
            _CHECKPOINT_KEY + key, CHECKPOINT, self._own_size(key, active.model), self._evictor(key), pinned=True
        )

    def _reattach_vae(self, active: ActiveModel) -> None:
        try:
            self._apply_vae(active.model, active.info, self._vae_choice, active.patcher)
        except (SdWebuiError, RuntimeError, OSError, ValueError) as exc:
            log.warning("keeping %s with its own VAE: %s", active.info.name, exc)

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
        self._sizes.pop(str(info.filename), None)  # a new load: count it again
        return model

    def _park(self, active: ActiveModel) -> bool:
        """Move the outgoing model, unpatched and with its own VAE, to the RAM cache; False if it
        does not fit the budget (the caller then drops its last reference and collects)."""
        self._active = None
        restored = active.patcher.restore()
        if restored:
            log.info("restored %d patched weights of %s", restored, active.info.name)
        self._unplace(active.model)
        self._detach_vae(active.model, active.model.device)
        key = str(active.info.filename)
        size = self._own_size(key, active.model)  # its own VAE is back in place: nothing separate counted
        if not 0 < size <= self.budget.limit():
            self.budget.remove(_CHECKPOINT_KEY + key)
            return False
        if self.placement.device.type != "cpu":
            active.model.to_device(torch.device("cpu"))
            park_model(active.model, self.placement.device)  # CUDA: pinned, for non-blocking moves back
            self._empty_device_cache()
        self._cache(key, active.model, size)
        return True

    def _place(self, model: StableDiffusionModel) -> None:
        """Put `model` where it runs: on the device, or, under a memory mode, on the CPU with the
        hooks that bring each part in when it runs (`modules.models.offload`)."""
        target = self._offload_device or self.placement.device
        mode = offload.offload_mode_for(self.memory_mode, model.family.is_sdxl, target)
        if mode is None:
            if model.device != self.placement.device:
                move_model(model, self.placement.device)
            return
        self._unplace(model)
        offload.Offloader(model, target, mode, move=self._move, execution_device=self.placement.device).install()

    def _unplace(self, model: StableDiffusionModel) -> None:
        """Remove `model`'s memory-mode hooks, if any (its parts go back to the CPU)."""
        if model.offloader is not None:
            model.offloader.uninstall()

    def _own_size(self, key: str, model: StableDiffusionModel) -> int:
        """`own_nbytes(model)` of checkpoint `key`, counted once per load from disk: walking every
        tensor of an SDXL model takes milliseconds, and sizes never change while it stays loaded
        (patches keep shapes and dtypes)."""
        size = self._sizes.get(key)
        if size is None:
            size = self._sizes[key] = own_nbytes(model)
        return size

    def _cache(self, key: str, model: StableDiffusionModel, size: int | None = None) -> None:
        with self._cache_lock:
            self._ram[key] = model
            self._ram.move_to_end(key)
        nbytes = self._own_size(key, model) if size is None else size
        self.budget.add(_CHECKPOINT_KEY + key, CHECKPOINT, nbytes, self._evictor(key))

    def _evictor(self, key: str) -> Callable[[], None]:
        def evict() -> None:
            with self._cache_lock:
                model = self._ram.pop(key, None)
            if model is not None:
                del model
                self._collect()

        return evict

    def _take_from_cache(self, key: str) -> StableDiffusionModel | None:
        with self._cache_lock:
            model = self._ram.pop(key, None)
        if model is not None:
            self.budget.remove(_CHECKPOINT_KEY + key)
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
            with self._cache_lock:
                key = next(reversed(self._ram), None)
            if key is None:
                return None
            info = next((c for c in self.registry.checkpoints() if str(c.filename) == key), None)
            if info is None:
                self._take_from_cache(key)
                return None
            self._switch_to(info, self._vae_choice)
            return info

    def clear_cache(self) -> None:
        """Drop every parked checkpoint and every separate VAE not in use."""
        with self._lock:
            self.budget.evict_kind(CHECKPOINT)
            self.budget.evict_kind(VAE)
            self._collect()

    # -- VAEs ------------------------------------------------------------------------------

    @property
    def vae_choice(self) -> str:
        """The default VAE choice (leases whose spec names no VAE use it)."""
        return self._vae_choice

    def set_vae(self, choice: str) -> None:
        """Change the default choice: `Automatic` (same-name VAE next to the checkpoint, else the
        baked one), `None` (the checkpoint's own) or a VAE name from the registry. Outside a lease
        the active model gets it at once; inside one, the lease's spec stays in force."""
        self._check_vae_choice(choice)  # NotFoundError before anything changes
        with self._lock:
            old = self._vae_choice
            self._vae_choice = choice
            active = self._active
            if active is not None and self._leased_spec is None:
                try:
                    self._apply_vae(active.model, active.info, choice, active.patcher)
                except BaseException:
                    self._vae_choice = old
                    raise

    def _check_vae_choice(self, choice: str) -> None:
        if choice not in (VAE_AUTOMATIC, VAE_NONE):
            self.registry.find_vae(choice)

    def _vae_path_for(self, info: CheckpointInfo, choice: str) -> Path | None:
        if self.forced_vae is not None:
            return self.forced_vae
        if choice == VAE_NONE:
            return None
        if choice == VAE_AUTOMATIC:
            return self.registry.vae_near_checkpoint(info)
        return self.registry.find_vae(choice).filename

    def _apply_vae(
        self, model: StableDiffusionModel, info: CheckpointInfo, choice: str, patcher: WeightPatcher | None
    ) -> None:
        path = self._vae_path_for(info, choice)
        if path == model.vae_source:
            return
        vae = self._get_vae(path, model.family) if path is not None else None  # pinned; may raise
        if patcher is not None:
            patcher.restore("vae.")  # patches on the outgoing VAE are undone; the next apply redoes them
        offloaded = model.offloader
        if offloaded is not None:  # the hooks are redone over the new VAE below
            offloaded.uninstall()
        try:
            own = self._detach_vae(model, model.device if vae is None and offloaded is None else "cpu")
            if vae is None:
                log.info("VAE: using the checkpoint's own")
                return
            assert path is not None
            target = self.placement.device if offloaded is None else torch.device("cpu")
            model.vae, model.baked_vae, model.vae_source = _moved(vae, target), own, path
            log.info("VAE: using %s", path.name)
        finally:
            if offloaded is not None:
                self._place(model)

    def _detach_vae(self, model: StableDiffusionModel, own_device: torch.device | str) -> AutoencoderKL:
        """Put the checkpoint's own VAE back in place (on `own_device`); a separate one goes back
        to the VAE cache (unpinned, on the CPU). Returns the own VAE."""
        if model.baked_vae is None:
            return model.vae
        separate, source = model.vae, model.vae_source
        model.vae, model.baked_vae, model.vae_source = model.baked_vae, None, None
        _moved(model.vae, own_device)
        _moved(separate, "cpu")
        if source is not None:
            self.budget.unpin(self._vae_key(source, model.family))
        return model.vae

    @staticmethod
    def _vae_key(path: Path, family: ModelFamily) -> str:
        return f"{_VAE_KEY}{path}:{family.id}"

    def _get_vae(self, path: Path, family: ModelFamily) -> AutoencoderKL:
        """The VAE for `path` and `family`, from the cache or the file, pinned in the budget."""
        key = (path, family.id)
        with self._cache_lock:
            vae = self._vae_cache.get(key)
        if vae is None:
            started = time.perf_counter()
            vae = load_vae_file(path, family, self.placement)
            log.info("loaded VAE %s in %.2fs", path.name, time.perf_counter() - started)
        with self._cache_lock:
            self._vae_cache[key] = vae

        def evict() -> None:
            with self._cache_lock:
                self._vae_cache.pop(key, None)

        self.budget.add(self._vae_key(path, family), VAE, module_nbytes(vae), evict, pinned=True)
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
