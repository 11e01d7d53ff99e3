"""One memory budget for every model kept around for reuse.

The checkpoint RAM cache, separate VAEs, upscaler models, face restorers and TAESD decoders all
register what they keep with one `MemoryBudget`: an entry is a key, a kind, its size in bytes and
an `evict` callback that makes the owner drop it. The budget is a single least-recently-used list
across kinds.

- The limit (bytes, or a callable read at each check, e.g. the `sd_checkpoint_cache_bytes`
  option) bounds the bytes of the *evictable* entries: what is held only in case it is needed
  again. Pinned entries (the active checkpoint, the VAE attached to it, anything in use) are
  listed and counted in `used_bytes` but are never evicted and do not count against the limit,
  as the active checkpoint never counted against the RAM cache before.
- An entry that alone is larger than the limit is evicted as soon as it is unpinned.
- `evict` callbacks run without the budget's lock held (an owner may call back into the budget);
  they must only drop the owner's reference (taking, at most, the owner's own short lock).
- `snapshot()` is lock-free: a tuple replaced whole after every change.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

UNLIMITED = 1 << 62

CHECKPOINT = "checkpoint"
VAE = "vae"
UPSCALER = "upscaler"
FACE_RESTORER = "face-restorer"
TAESD = "taesd"


@dataclass(frozen=True)
class HeldModel:
    """What the budget holds for one entry (a row of the status)."""

    key: str
    kind: str
    nbytes: int
    pinned: bool


@dataclass
class _Entry:
    kind: str
    nbytes: int
    evict: Callable[[], None] | None
    pins: int = 0


class MemoryBudget:
    """A byte-bounded LRU of model entries of every kind (thread-safe)."""

    def __init__(self, limit: Callable[[], int] | int = UNLIMITED) -> None:
        self._limit = limit
        self._lock = threading.RLock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._snapshot: tuple[HeldModel, ...] = ()
        self.evictions = 0  # public counter, for tests and logs

    # -- reading (lock-free) ----------------------------------------------------------------

    def set_limit(self, limit: Callable[[], int] | int) -> None:
        """A new limit (bytes, or a callable read at each check), enforced at once."""
        self._limit = limit
        self.enforce()

    def limit(self) -> int:
        value = self._limit() if callable(self._limit) else self._limit
        return max(0, int(value))

    def snapshot(self) -> tuple[HeldModel, ...]:
        """Every entry, least recently used first."""
        return self._snapshot

    def used_bytes(self) -> int:
        return sum(e.nbytes for e in self._snapshot)

    def evictable_bytes(self) -> int:
        return sum(e.nbytes for e in self._snapshot if not e.pinned)

    def holds(self, key: str) -> bool:
        return any(e.key == key for e in self._snapshot)

    def keys(self, kind: str | None = None) -> tuple[str, ...]:
        return tuple(e.key for e in self._snapshot if kind is None or e.kind == kind)

    # -- changing ---------------------------------------------------------------------------

    def add(
        self,
        key: str,
        kind: str,
        nbytes: int,
        evict: Callable[[], None] | None,
        *,
        pinned: bool = False,
    ) -> None:
        """Register (or replace) `key` as the most recently used entry, then enforce the limit.
        `evict` is required for an entry that may become evictable."""
        if evict is None and not pinned:
            raise ValueError(f"{key}: an unpinned entry needs an evict callback")
        with self._lock:
            old = self._entries.pop(key, None)
            pins = 1 if pinned else 0
            if old is not None and pinned:
                pins = max(pins, old.pins)
            self._entries[key] = _Entry(kind, max(0, int(nbytes)), evict or (old.evict if old else None), pins)
            self._publish()
        self.enforce()

    def remove(self, key: str) -> bool:
        """Forget `key` without calling its evict callback (its owner took it back)."""
        with self._lock:
            found = self._entries.pop(key, None) is not None
            if found:
                self._publish()
            return found

    def touch(self, key: str) -> None:
        """Mark `key` as just used (no-op for an unknown key)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self._publish()

    def pin(self, key: str) -> bool:
        """Keep `key` from being evicted until `unpin` (pins nest). False when it is not held."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            entry.pins += 1
            self._entries.move_to_end(key)
            self._publish()
            return True

    def unpin(self, key: str) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry.pins = max(0, entry.pins - 1)
            self._entries.move_to_end(key)
            self._publish()
        self.enforce()

    @contextmanager
    def pinned(self, key: str) -> Iterator[bool]:
        """Keep `key` from being evicted while the block runs; yields False (and pins nothing)
        when it is not held (already evicted: the caller's own reference still works)."""
        held = self.pin(key)
        try:
            yield held
        finally:
            if held:
                self.unpin(key)

    def evict(self, key: str) -> bool:
        """Drop `key` now through its callback, pinned or not (an owner's own cap, a cache clear)."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self._publish()
        self._run_evict(key, entry)
        return True

    def evict_kind(self, kind: str) -> int:
        """Drop every unpinned entry of `kind`; returns how many."""
        with self._lock:
            victims = [(k, e) for k, e in self._entries.items() if e.kind == kind and e.pins == 0]
            for key, _ in victims:
                del self._entries[key]
            self._publish()
        for key, entry in victims:
            self._run_evict(key, entry)
        return len(victims)

    def enforce(self) -> list[str]:
        """Evict least recently used unpinned entries until their bytes fit the limit."""
        limit = self.limit()
        with self._lock:
            victims: list[tuple[str, _Entry]] = []
            evictable = sum(e.nbytes for e in self._entries.values() if e.pins == 0)
            for key, entry in list(self._entries.items()):
                if evictable <= limit:
                    break
                if entry.pins:
                    continue
                del self._entries[key]
                evictable -= entry.nbytes
                victims.append((key, entry))
            if victims:
                self._publish()
        for key, entry in victims:
            self._run_evict(key, entry)
        return [key for key, _ in victims]

    # -- internals --------------------------------------------------------------------------

    def _run_evict(self, key: str, entry: _Entry) -> None:
        self.evictions += 1
        log.info("memory budget: dropped %s %s (%.1f MiB)", entry.kind, key, entry.nbytes / 2**20)
        if entry.evict is not None:
            entry.evict()

    def _publish(self) -> None:
        self._snapshot = tuple(HeldModel(k, e.kind, e.nbytes, e.pins > 0) for k, e in self._entries.items())


def module_nbytes(*modules: object) -> int:
    """Bytes of the parameters and buffers of torch modules (shared tensors counted once).
    Typed `object`: diffusers' and spandrel's modules are `torch.nn.Module`s their stubs hide."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"not a torch module: {type(module).__name__}")
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total
