"""A request's `<lora:name:te:unet:dyn>` as a reversible weight patch (`patches.WeightPatch`).

`match_network` pairs each module of a parsed file with a layer of the model (`lora_keys`) and a
format (`lora_formats`), and checks the delta fits the layer; `NetworkPatch.deltas` yields one
`Delta` per matched layer weight (plus bias deltas for `diff_b` / `b_norm`), which the patcher sums
in float32 into pristine + deltas. Text-encoder layers get `te_multiplier`, UNet layers
`unet_multiplier`; a multiplier of 0 leaves that part of the model untouched.

`up @ down` is fused into the sum with `addmm_`: no full-size delta is materialised (fresh
memory is slow to fault in; on this project's 2-core CPU the products of a rank-128 SD1.5 LoRA
over all the layers kohya trains, ~90 GFLOP, take ~0.8 s).

Not applied (and reported): module keys that name no layer of this model or whose delta has
another shape (`unmatched`: e.g. a LoRA for another architecture; every key of a network with
SDXL-only layers when the model is not SDXL), and modules whose suffixes no supported format
accepts (`unsupported`, e.g. OFT). Bias deltas for a layer without a bias are dropped (A1111
would create the bias).
"""

from __future__ import annotations

import logging
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


class LayerDelta:
    """One matched module's final delta for one layer weight, added straight into the sum."""

    __slots__ = ("dyn", "layer", "multiplier", "original", "shape")

    def __init__(
        self, layer: MatchedLayer, multiplier: float, dyn: int | None, original: Callable[[], torch.Tensor]
    ) -> None:
        self.layer = layer
        self.shape = layer.weight_shape
        self.multiplier = multiplier
        self.dyn = dyn
        self.original = original

    def add_to(self, total: torch.Tensor) -> None:
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

    def deltas(self, model: StableDiffusionModel, original: Original) -> Iterator[tuple[str, torch.Tensor | Delta]]:
        match = match_network(self.weights, model)
        for layer in match.layers:
            target = layer.target
            multiplier = self.te_multiplier if target.is_text_encoder else self.unet_multiplier
            if multiplier == 0:
                continue
            name = target.param_name("weight")
            yield name, LayerDelta(layer, multiplier, self.dyn, _bind(original, name))
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
