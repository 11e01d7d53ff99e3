"""A request's `<lora:name:te:unet:dyn>` as a reversible weight patch (`patches.WeightPatch`).

`match_network` pairs each module of a parsed file with a layer of the model (`lora_keys`) and a
format (`lora_formats`), and checks the delta fits the layer; `NetworkPatch.deltas` yields one
`Delta` per matched layer weight (plus bias deltas for `diff_b` / `b_norm`), which the patcher sums
in float32 into pristine + deltas. Text-encoder layers get `te_multiplier`, UNet layers
`unet_multiplier`; a multiplier of 0 leaves that part of the model untouched.

On the CPU, where the matrix products of a high-rank LoRA dominate (a rank-128 SD1.5 LoRA over all
the layers kohya trains is ~90 GFLOP, over a second on two cores), a `DeltaCache` may keep each
layer's full float32 delta (ΔW·scale, before the multiplier) inside the memory budget: a weight
change, or going back to a LoRA used before, is then one add per weight. With a cache the weight is
always pristine + multiplier·delta (hit or miss, so the result does not depend on history);
without one (on a GPU the products are cheap) `up @ down` is fused into the sum with `addmm_`.
Deltas that depend on the weight itself (DoRA, IA3, GLoRA) are never cached.

Not applied (and reported): module keys that name no layer of this model or whose delta has
another shape (`unmatched`: e.g. a LoRA for another architecture; every key of a network with
SDXL-only layers when the model is not SDXL), and modules whose suffixes no supported format
accepts (`unsupported`, e.g. OFT). Bias deltas for a layer without a bias are dropped (A1111
would create the bias).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from modules.models.lora_formats import (
    Adapter,
    Fit,
    NetworkWeights,
    Shape,
    add_module_delta,
    make_adapter,
    module_delta_shape,
)
from modules.models.lora_keys import KeyMap, Target, is_sdxl_network
from modules.models.patches import Delta, Original

if TYPE_CHECKING:
    from modules.models.loader import StableDiffusionModel
    from modules.models.memory import MemoryBudget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchedLayer:
    """One module of the file, the layer it patches and how its delta lands there."""

    key: str
    target: Target
    adapter: Adapter
    placement: Fit
    weight_shape: Shape


@dataclass
class NetworkMatch:
    """How a network fits a model: counts of matched (applied) module keys per part, keys that
    match no layer (or a layer of another shape), matched keys of no supported format."""

    matched_unet: int = 0
    matched_te: int = 0
    unmatched: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    layers: list[MatchedLayer] = field(default_factory=list, repr=False)


def match_network(weights: NetworkWeights, model: StableDiffusionModel) -> NetworkMatch:
    """Pair the network's modules with the model's layers (no tensor math)."""
    result = NetworkMatch()
    if not model.family.is_sdxl and is_sdxl_network(weights.modules):
        result.unmatched = list(weights.modules)
        return result
    keymap = KeyMap(model)
    for key, parts in weights.modules.items():
        target = keymap.lookup(key)
        if target is None:
            result.unmatched.append(key)
            continue
        try:
            adapter = make_adapter(parts)
        except (KeyError, IndexError, RuntimeError, ValueError):  # malformed tensors
            log.debug("network %s: module %s could not be read", weights.source, key, exc_info=True)
            adapter = None
        if adapter is None:
            result.unsupported.append(key)
            continue
        weight_shape = tuple(int(n) for n in target.weight.shape)
        placement = module_delta_shape(adapter, weight_shape)
        if placement is None:
            result.unmatched.append(key)
            continue
        result.layers.append(MatchedLayer(key, target, adapter, placement, weight_shape))
        if target.is_text_encoder:
            result.matched_te += 1
        else:
            result.matched_unet += 1
    return result


_WEIGHT_FREE_KINDS = frozenset({"lora", "loha", "lokr", "full", "norm"})
"""Formats whose delta does not depend on the weight (IA3 and GLoRA read it, DoRA rescales it)."""


class DeltaCache:
    """Full float32 layer deltas of CPU-resident weights, per network file, kept for reuse (see
    the module doc). Each network is one evictable entry of the memory budget (kind
    "lora-delta"), growing as its layers are computed; eviction drops the whole network."""

    KIND = "lora-delta"

    def __init__(self, budget: MemoryBudget | None = None) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._networks: dict[int, tuple[NetworkWeights, dict[tuple[str, int | None], torch.Tensor]]] = {}
        self.computed = 0  # layer deltas computed (a public counter: a hit computes nothing)

    def get(
        self, weights: NetworkWeights, key: str, dyn: int | None, compute: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        with self._lock:
            held = self._networks.get(id(weights))
            layers = held[1] if held is not None and held[0] is weights else None
            found = layers.get((key, dyn)) if layers is not None else None
        if found is not None:
            if self.budget is not None:
                self.budget.touch(self._entry(weights))
            return found
        delta = compute()
        self.computed += 1
        with self._lock:
            held = self._networks.get(id(weights))
            if held is None or held[0] is not weights:
                held = (weights, {})
                self._networks[id(weights)] = held
            held[1][(key, dyn)] = delta
            nbytes = sum(t.numel() * t.element_size() for t in held[1].values())
        if self.budget is not None:
            self.budget.add(self._entry(weights), self.KIND, nbytes, lambda: self._drop(id(weights)))
        return delta

    def fits(self, nbytes: int) -> bool:
        """Whether a network's deltas of `nbytes` can stay in the budget at all."""
        return self.budget is None or nbytes <= self.budget.limit()

    def _entry(self, weights: NetworkWeights) -> str:
        return f"{self.KIND}:{id(weights)}:{weights.source}"

    def _drop(self, ident: int) -> None:
        with self._lock:
            self._networks.pop(ident, None)

    def clear(self) -> None:
        with self._lock:
            idents = list(self._networks)
            networks = [self._networks[i][0] for i in idents]
            self._networks.clear()
        if self.budget is not None:
            for weights in networks:
                self.budget.remove(self._entry(weights))

    def __len__(self) -> int:
        return sum(len(layers) for _w, layers in self._networks.values())


class LayerDelta:
    """One matched module's final delta for one layer weight, added straight into the sum."""

    __slots__ = ("cache", "dyn", "layer", "multiplier", "original", "shape", "weights")

    def __init__(
        self,
        layer: MatchedLayer,
        multiplier: float,
        dyn: int | None,
        original: Callable[[], torch.Tensor],
        weights: NetworkWeights | None = None,
        cache: DeltaCache | None = None,
    ) -> None:
        self.layer = layer
        self.shape = layer.weight_shape
        self.multiplier = multiplier
        self.dyn = dyn
        self.original = original
        self.weights = weights
        self.cache = cache

    def _cacheable(self, total: torch.Tensor) -> bool:
        adapter = self.layer.adapter
        return (
            self.cache is not None
            and self.weights is not None
            and total.device.type == "cpu"
            and adapter.dora_scale is None
            and adapter.kind in _WEIGHT_FREE_KINDS
        )

    def add_to(self, total: torch.Tensor) -> None:
        if self._cacheable(total):
            assert self.cache is not None and self.weights is not None

            def full() -> torch.Tensor:
                delta = torch.zeros(total.shape, dtype=torch.float32, device=total.device)
                add_module_delta(delta, self.layer.adapter, self.layer.placement, 1.0, self.original, self.dyn)
                return delta

            total.add_(self.cache.get(self.weights, self.layer.key, self.dyn, full), alpha=self.multiplier)
            return
        cached: list[torch.Tensor] = []

        def original() -> torch.Tensor:
            if not cached:
                cached.append(self.original().to(device=total.device, dtype=torch.float32))
            return cached[0]

        layer = self.layer
        add_module_delta(total, layer.adapter, layer.placement, self.multiplier, original, self.dyn)

    def __repr__(self) -> str:
        return f"LayerDelta({self.layer.key!r}, {self.layer.adapter.kind}, x{self.multiplier})"


@dataclass(frozen=True, eq=False)
class NetworkPatch:
    """A parsed network with its multipliers as a `WeightPatch`. `identity` is given by the
    caller and must change whenever the file or a multiplier does."""

    identity: str
    weights: NetworkWeights
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0
    dyn: int | None = None
    cache: DeltaCache | None = field(default=None, compare=False)

    def deltas(self, model: StableDiffusionModel, original: Original) -> Iterator[tuple[str, torch.Tensor | Delta]]:
        match = match_network(self.weights, model)
        cache = self.cache
        if cache is not None and not cache.fits(sum(4 * math.prod(layer.weight_shape) for layer in match.layers)):
            cache = None  # its deltas alone would overflow the budget: products every time, fused
        for layer in match.layers:
            target = layer.target
            multiplier = self.te_multiplier if target.is_text_encoder else self.unet_multiplier
            if multiplier == 0:
                continue
            name = target.param_name("weight")
            yield name, LayerDelta(layer, multiplier, self.dyn, _bind(original, name), self.weights, cache)
            bias_delta = layer.adapter.bias_delta()
            bias = getattr(target.module, "bias", None)
            if bias_delta is None:
                continue
            if not isinstance(bias, torch.nn.Parameter) or bias.numel() != bias_delta.numel():
                log.debug("network %s: no bias of that size for %s", self.weights.source, layer.key)
                continue
            yield target.param_name("bias"), bias_delta.to(torch.float32).reshape(bias.shape) * multiplier

    def __repr__(self) -> str:
        return f"NetworkPatch({self.identity!r}, {len(self.weights.modules)} modules)"


def _bind(original: Original, name: str) -> Callable[[], torch.Tensor]:
    return lambda: original(name)
