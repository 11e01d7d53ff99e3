"""The extra networks of one job: the LoRAs and hypernetworks its prompts name, and the
textual-inversion embeddings its model can use.

`ExtraNetworks.resolve(prompts)` reads the first prompt's tags (A1111), looks each network up in
the registry (by name or alias), and loads it through a RAM cache inside the one memory budget
(kind "lora" / "hypernetwork": parsed tensors, in float32, stay for the next job).
LoRAs become `NetworkPatch`es for the model lease, so an unchanged set does no work and a changed
one redoes only what changed (`models.patches`). A tag that names a missing
network, has bad numbers, or a file that cannot be read gives a warning in the result (A1111 only
logs it) and the rest of the job goes on.

Inside the lease `check(network_set, model)` matches each LoRA against the model: one that
matches no layer (a LoRA for SDXL on an SD1 model) is reported as skipped, one that matches only
partly names the keys left out. `Lora hashes` lists the LoRAs applied, as A1111 writes it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from modules.core.errors import NotFoundError
from modules.core.extra_networks import (
    HYPERNET_KIND,
    LORA_KINDS,
    HypernetArgs,
    LoraArgs,
    batch_networks,
    hashes_text,
)
from modules.models.embeddings import EmbeddingDatabase, EmbeddingSet
from modules.models.hypernetworks import (
    Hypernetwork,
    attention_widths,
    hypernetworks_applied,
    read_hypernetwork,
    unfit_message,
)
from modules.models.loader import StableDiffusionModel
from modules.models.lora_formats import NetworkWeights, read_network
from modules.models.lora_patch import NetworkPatch, match_network
from modules.models.memory import MemoryBudget, module_nbytes

if TYPE_CHECKING:
    from modules.models.network_registry import NetworkInfo, NetworkRegistry

log = logging.getLogger(__name__)

LORA = "lora"
HYPERNETWORK = "hypernetwork"


@dataclass(frozen=True)
class ActiveLora:
    mentioned: str  # the name as the prompt wrote it (A1111 writes it in `Lora hashes`)
    info: NetworkInfo
    args: LoraArgs
    patch: NetworkPatch


@dataclass(frozen=True)
class ActiveHypernetwork:
    mentioned: str
    info: NetworkInfo
    network: Hypernetwork
    strength: float


@dataclass
class NetworkSet:
    """What one pass activates."""

    loras: list[ActiveLora] = field(default_factory=list)
    hypernetworks: list[ActiveHypernetwork] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def patches(self) -> tuple[NetworkPatch, ...]:
        return tuple(lora.patch for lora in self.loras)

    @property
    def hooks(self) -> list[tuple[Hypernetwork, float]]:
        return [(h.network, h.strength) for h in self.hypernetworks]

    def same_as(self, other: NetworkSet) -> bool:
        mine = ([p.identity for p in self.patches], [(id(h.network), h.strength) for h in self.hypernetworks])
        theirs = ([p.identity for p in other.patches], [(id(h.network), h.strength) for h in other.hypernetworks])
        return mine == theirs

    def __bool__(self) -> bool:
        return bool(self.loras or self.hypernetworks)


class _Cache:
    """Parsed network files by path, registered with the memory budget (evictable unless in use)."""

    def __init__(self, budget: MemoryBudget | None, kind: str) -> None:
        self.budget = budget
        self.kind = kind
        self._lock = threading.Lock()
        self._items: dict[str, tuple[tuple[int, int], Any]] = {}

    def get(self, info: NetworkInfo, load: Callable[[], Any], nbytes: Callable[[Any], int]) -> Any:
        key = f"{self.kind}:{info.filename}"
        stamp = _stamp(info)
        with self._lock:
            held = self._items.get(key)
        if held is not None and held[0] == stamp:
            if self.budget is not None:
                self.budget.touch(key)
            return held[1]
        value = load()
        with self._lock:
            self._items[key] = (stamp, value)
        if self.budget is not None:
            self.budget.add(key, self.kind, nbytes(value), lambda: self._drop(key))
        return value

    def _drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def key_of(self, info: NetworkInfo) -> str:
        return f"{self.kind}:{info.filename}"


def _stamp(info: NetworkInfo) -> tuple[int, int]:
    try:
        stat = info.filename.stat()
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


class ExtraNetworks:
    """LoRAs, hypernetworks and embeddings for the engine (one per application)."""

    def __init__(
        self,
        registry: NetworkRegistry,
        embeddings: EmbeddingDatabase,
        *,
        budget: MemoryBudget | None = None,
        option: Callable[[str], Any] = lambda key: None,
    ) -> None:
        self.registry = registry
        self.embeddings = embeddings
        self.budget = budget
        self.option = option
        self._loras = _Cache(budget, LORA)
        self._hypernetworks = _Cache(budget, HYPERNETWORK)
        self.loads = 0  # files read (a public counter: an unchanged set reads nothing)
        self._bundled: dict[str, NetworkInfo] = {}  # LoRA name -> its file, whose embeddings are registered

    # -- before the lease --------------------------------------------------------------------

    def resolve(self, prompts: Sequence[str]) -> NetworkSet:
        """The networks the first prompt's tags name, loaded (from the cache when unchanged)."""
        found = NetworkSet()
        for params in batch_networks(prompts):
            try:
                if params.kind in LORA_KINDS:
                    self._add_lora(found, LoraArgs.parse(params))
                elif params.kind == HYPERNET_KIND:
                    self._add_hypernetwork(found, HypernetArgs.parse(params))
                else:  # A1111 logs and skips unknown kinds
                    found.warnings.append(f"unknown extra network {params.text}: skipped")
            except ValueError as exc:
                found.warnings.append(f"extra network {exc}: skipped")
        self._apply_memory_limit(found)
        return found

    def _add_lora(self, found: NetworkSet, args: LoraArgs) -> None:
        try:
            info = self.registry.find_lora(args.name)
        except NotFoundError:
            found.warnings.append(f"LoRA not found: {args.name!r} (skipped)")
            return
        if info.error:
            found.warnings.append(f"LoRA {args.name!r} cannot be used: {info.error}")
            return
        try:
            weights = self.lora_weights(info)
        except Exception as exc:  # a corrupt file never breaks the generation
            found.warnings.append(f"LoRA {args.name!r} could not be read: {exc}")
            log.warning("LoRA %s could not be read", info.filename, exc_info=True)
            return
        stamp = _stamp(info)
        identity = f"lora:{info.filename}@{stamp[0]}:{stamp[1]}:te={args.te}:unet={args.unet}:dyn={args.dyn}"
        patch = NetworkPatch(identity, weights, te_multiplier=args.te, unet_multiplier=args.unet, dyn=args.dyn)
        found.loras.append(ActiveLora(args.name, info, args, patch))

    def _add_hypernetwork(self, found: NetworkSet, args: HypernetArgs) -> None:
        try:
            info = self.registry.find_hypernetwork(args.name)
        except NotFoundError:
            found.warnings.append(f"hypernetwork not found: {args.name!r} (skipped)")
            return
        try:
            network = self._hypernetworks.get(
                info, lambda: self._read_hypernetwork(info), lambda hn: module_nbytes(*_hn_modules(hn))
            )
        except Exception as exc:
            found.warnings.append(f"hypernetwork {args.name!r} could not be read: {exc}")
            log.warning("hypernetwork %s could not be read", info.filename, exc_info=True)
            return
        found.hypernetworks.append(ActiveHypernetwork(args.name, info, network, args.strength))

    def lora_weights(self, info: NetworkInfo) -> NetworkWeights:
        return self._loras.get(info, lambda: self._read_lora(info), lambda w: int(w.nbytes))

    def _read_lora(self, info: NetworkInfo) -> NetworkWeights:
        self.loads += 1
        return read_network(info.filename)

    def _read_hypernetwork(self, info: NetworkInfo) -> Hypernetwork:
        self.loads += 1
        return read_hypernetwork(info.filename)

    def _apply_memory_limit(self, keep: NetworkSet) -> None:
        """`lora_in_memory_limit` (when > 0): at most that many parsed LoRAs besides the ones in
        use stay cached; 0 leaves it to the memory budget alone."""
        limit = int(self.option("lora_in_memory_limit") or 0)
        if limit <= 0 or self.budget is None:
            return
        in_use = {self._loras.key_of(lora.info) for lora in keep.loras}
        spare = [k for k in self.budget.keys(LORA) if k not in in_use]  # least recently used first
        for key in spare[: max(0, len(spare) - limit)]:
            self.budget.evict(key)

    def use_bundled(self, *sets: NetworkSet) -> None:
        """The embeddings bundled in the job's LoRAs are usable while those LoRAs are (A1111: a
        LoRA's bundled embeddings come and go with it; the embeddings folder wins a name clash)."""
        wanted = {
            lora.info.name: lora for found in sets for lora in found.loras if lora.patch.weights.bundled_embeddings
        }
        for source in [s for s in self._bundled if s not in wanted]:
            self.embeddings.remove_bundled(source)
            del self._bundled[source]
        for source, lora in wanted.items():
            if self._bundled.get(source) is not lora.info:
                self.embeddings.add_bundled(source, lora.patch.weights.bundled_embeddings)
                self._bundled[source] = lora.info

    def bundled_hash(self, source: str) -> str | None:
        """`TI hashes` of an embedding bundled in a LoRA: the LoRA's hash, when
        `lora_bundled_ti_to_infotext` asks for it (A1111), else none."""
        info = self._bundled.get(source)
        if info is None or self.option("lora_bundled_ti_to_infotext") is False:
            return None
        return self.registry.ensure_hash(info)

    # -- inside the lease --------------------------------------------------------------------

    def check(self, found: NetworkSet, model: StableDiffusionModel) -> tuple[list[str], dict[str, str]]:
        """Warnings for LoRAs that do not fit `model`, and the `Lora hashes` entries of those
        applied (name as mentioned -> 12 hex), when the option asks for them."""
        warnings: list[str] = []
        hashes: dict[str, str] = {}
        add_hashes = self.option("lora_add_hashes_to_infotext") is not False
        for lora in found.loras:
            match = match_network(lora.patch.weights, model)
            matched = match.matched_unet + match.matched_te
            if matched == 0:
                version = lora.info.sd_version
                warnings.append(
                    f"LoRA {lora.mentioned!r} ({version}) matches no layer of this {model.family.label} model: skipped"
                )
                continue
            if match.unmatched:
                shown = ", ".join(match.unmatched[:5]) + (" ..." if len(match.unmatched) > 5 else "")
                warnings.append(f"LoRA {lora.mentioned!r}: {len(match.unmatched)} keys matched no layer ({shown})")
            if match.unsupported:
                shown = ", ".join(match.unsupported[:5])
                warnings.append(f"LoRA {lora.mentioned!r}: layers of an unsupported type not applied ({shown})")
            if add_hashes:
                shorthash = self.registry.ensure_hash(lora.info)
                if shorthash:
                    hashes[lora.mentioned] = shorthash
        return warnings, hashes

    def embeddings_for(self, model: StableDiffusionModel) -> EmbeddingSet:
        return self.embeddings.for_model(model)


def _hn_modules(network: Hypernetwork) -> Iterator[torch.nn.Module]:
    for k, v in network.layers.values():
        yield k
        yield v


class HypernetworkHooks:
    """The hypernetworks in force on one UNet during a job; `use` swaps them (hires pass, another
    checkpoint) and `close` takes them all off."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._current: tuple[int, list[tuple[int, float]]] | None = None

    def use(self, unet: torch.nn.Module, active: Sequence[tuple[Hypernetwork, float]]) -> None:
        wanted = (id(unet), [(id(h), s) for h, s in active])
        if wanted == self._current:
            return
        self.close()
        if active:
            self._stack.enter_context(hypernetworks_applied(unet, list(active)))
            self._current = wanted

    def close(self) -> None:
        self._stack.close()
        self._stack = ExitStack()
        self._current = None


@dataclass
class JobNetworks:
    """The networks of one job as the processor uses them: the first pass's set (already in force
    through the lease), the hires pass's (the same object when the hires prompt names the same
    networks), the hypernetwork hooks, the embeddings each model may use, and the infotext."""

    service: ExtraNetworks | None = None
    first: NetworkSet = field(default_factory=NetworkSet)
    hires: NetworkSet = field(default_factory=NetworkSet)
    hooks: HypernetworkHooks = field(default_factory=HypernetworkHooks)
    lora_hashes: dict[str, str] = field(default_factory=dict)
    used_embeddings: dict[str, Any] = field(default_factory=dict)

    @property
    def hires_differs(self) -> bool:
        return self.hires is not self.first and not self.hires.same_as(self.first)

    def embeddings_for(self, model: StableDiffusionModel) -> EmbeddingSet | None:
        return self.service.embeddings_for(model) if self.service is not None else None

    def enter(self, model: StableDiffusionModel, found: NetworkSet, warnings: list[str]) -> None:
        """`found` is in force on `model` (its patches through the lease): check the LoRAs against
        the model, note their hashes, put the hypernetworks on its UNet."""
        for note in found.warnings:
            if note not in warnings:
                warnings.append(note)
        if self.service is not None and found.loras:
            notes, hashes = self.service.check(found, model)
            warnings.extend(n for n in notes if n not in warnings)
            self.lora_hashes.update(hashes)
        if found.hypernetworks:  # one made for another family changes nothing: say so in the result
            widths = attention_widths(model.unet)
            for active in found.hypernetworks:
                unfit = unfit_message(active.network, widths)
                if unfit is not None and unfit not in warnings:
                    warnings.append(unfit)
        self.hooks.use(model.unet, found.hooks)

    def leave_for_refiner(self, warnings: list[str]) -> None:
        """The SDXL refiner runs without the job's networks (they are made for the base model)."""
        if self.first or self.hires:
            note = "extra networks (LoRA, hypernetworks) are not applied to the refiner"
            if note not in warnings:
                warnings.append(note)
        self.hooks.close()

    def note_embeddings(self, used: dict[str, Any]) -> None:
        self.used_embeddings.update(used)

    def infotext(self) -> dict[str, str]:
        """`Lora hashes` and `TI hashes` as A1111 writes them (each when its option is on)."""
        out: dict[str, str] = {}
        if self.service is None:
            return out
        if self.lora_hashes:
            out["Lora hashes"] = hashes_text(self.lora_hashes)
        if self.used_embeddings and self.service.option("textual_inversion_add_hashes_to_infotext") is not False:
            hashes = {}
            for name, embedding in self.used_embeddings.items():
                source = getattr(embedding, "source", None)
                shorthash = self.service.bundled_hash(source) if source else embedding.shorthash()
                if shorthash:
                    hashes[name] = shorthash
            if hashes:
                out["TI hashes"] = hashes_text(hashes)
        return out

    def close(self) -> None:
        self.hooks.close()
