"""LoRAs baked into a single-file checkpoint, one file tensor at a time.

`BakePlan(shapes, source, [(network, weight), ...])` pairs each network with a skeleton of the
checkpoint (`checkpoint_layers`: meta tensors, built from the shapes alone) through the run-time
patch code itself: `lora_patch.NetworkPatch(...).deltas` (the same `match_network`, the same
text-encoder / UNet multipliers, the same bias rule, the same `LayerDelta` math), and records, for
every file key, which parameter deltas land in it (and in which rows: OpenCLIP's fused q/k/v).
Nothing is computed then. The merge loop asks, per output key, `plan.touches(key)` and
`plan.apply(key, tensor)`: the deltas of that key alone are computed, in float32, and added to
the tensor's float32 copy, so memory stays one tensor plus one delta. The result equals what a
`WeightPatcher` makes of the loaded checkpoint with the same networks (pristine + the deltas in
network order; deltas that read the weight, DoRA / IA3 / GLoRA, read the pristine file tensor).

A weight is one number (both multipliers, like `<lora:name:w>`) or a `(te, unet)` pair.
`plan.report` counts what each network matched and lists what it could not place (unmatched and
unsupported module keys, bias deltas with no bias to go to), for the caller to warn about.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modules.core.errors import ModelFileError
from modules.models import families as fam
from modules.models.checkpoint_layers import CheckpointLayers, FileSlot, LayerParam, Shapes
from modules.models.lora_formats import NetworkWeights
from modules.models.lora_patch import NetworkPatch, match_network
from modules.models.patches import Delta

log = logging.getLogger(__name__)

Weight = float | tuple[float, float]
"""One number for both multipliers, or (text encoder, UNet)."""


def multipliers(weight: Weight) -> tuple[float, float]:
    """(te, unet) multipliers of a weight."""
    if isinstance(weight, tuple):
        te, unet = weight
        return float(te), float(unet)
    return float(weight), float(weight)


@dataclass
class NetworkBakeReport:
    """What one network matched in the checkpoint (counts of module keys) and what it could not
    place: `unmatched` (no layer, or a layer of another shape), `unsupported` (no known format),
    `dropped_bias` (a bias delta for a layer without a bias of that size; run time drops it too)."""

    source: str
    te_multiplier: float
    unet_multiplier: float
    matched_unet: int = 0
    matched_te: int = 0
    unmatched: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    dropped_bias: list[str] = field(default_factory=list)

    @property
    def matched(self) -> int:
        return self.matched_unet + self.matched_te


@dataclass
class BakeReport:
    networks: list[NetworkBakeReport] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every module of every network was placed."""
        return all(not (n.unmatched or n.unsupported or n.dropped_bias) for n in self.networks)

    def warnings(self) -> list[str]:
        """One line per problem, for the user (empty when `complete` and every network matched)."""
        lines: list[str] = []
        for n in self.networks:
            if n.matched == 0:
                lines.append(f"{n.source}: no module of this network fits the checkpoint; nothing baked")
            if n.unmatched:
                lines.append(
                    f"{n.source}: {len(n.unmatched)} modules match no layer of the checkpoint "
                    f"(e.g. {', '.join(n.unmatched[:3])})"
                )
            if n.unsupported:
                lines.append(
                    f"{n.source}: {len(n.unsupported)} modules are of no supported format "
                    f"(e.g. {', '.join(n.unsupported[:3])})"
                )
            if n.dropped_bias:
                lines.append(
                    f"{n.source}: {len(n.dropped_bias)} bias deltas have no bias to go to "
                    f"(e.g. {', '.join(n.dropped_bias[:3])})"
                )
        return lines


@dataclass
class _Item:
    """One delta for one parameter: a `LayerDelta` or a bias tensor (multiplier applied)."""

    network: int
    delta: torch.Tensor | Delta


@dataclass
class _ParamPlan:
    param: LayerParam
    slot: FileSlot
    shape: tuple[int, ...]
    items: list[_Item] = field(default_factory=list)


class BakePlan:
    """Which deltas land in which file tensor (see the module doc). Built once per bake."""

    def __init__(
        self,
        shapes: Shapes,
        source: Path,
        networks: Sequence[tuple[NetworkWeights, Weight]],
        *,
        family: fam.ModelFamily | None = None,
        layers: CheckpointLayers | None = None,
    ) -> None:
        self.layers = layers or CheckpointLayers(shapes, source, family)
        self.shapes = shapes
        self.report = BakeReport()
        self._by_key: dict[str, dict[str, _ParamPlan]] = {}
        self._pristine: dict[str, Callable[[], torch.Tensor]] = {}
        model = self.layers.model
        params = {p.param_name: (p, slot) for p, slot in self.layers.items()}
        for index, (weights, weight) in enumerate(networks):
            te, unet = multipliers(weight)
            self.report.networks.append(self._report(weights, te, unet))
            patch = NetworkPatch(f"bake:{index}", weights, te, unet)
            for name, delta in patch.deltas(model, self._original):
                found = params.get(name)
                if found is None:  # pragma: no cover - every targetable layer maps (CheckpointLayers)
                    raise ModelFileError(f"{source}: {name} has no place in the file")
                param, slot = found
                by_param = self._by_key.setdefault(slot.key, {})
                plan = by_param.get(name)
                if plan is None:
                    plan = by_param[name] = _ParamPlan(param, slot, self.layers.param_shape(param))
                if tuple(delta.shape) != plan.shape:  # pragma: no cover - match_network checked it
                    raise ModelFileError(f"{weights.source}: {name}: delta {tuple(delta.shape)} for {plan.shape}")
                plan.items.append(_Item(index, delta))

    def _report(self, weights: NetworkWeights, te: float, unet: float) -> NetworkBakeReport:
        match = match_network(weights, self.layers.model)
        report = NetworkBakeReport(
            weights.source, te, unet, match.matched_unet, match.matched_te, match.unmatched, match.unsupported
        )
        for layer in match.layers:
            bias_delta = layer.adapter.bias_delta()
            if bias_delta is None:
                continue
            bias = getattr(layer.target.module, "bias", None)
            if not isinstance(bias, torch.nn.Parameter) or bias.numel() != bias_delta.numel():
                report.dropped_bias.append(layer.key)
        return report

    # -- what the merge loop calls ---------------------------------------------------------------

    @property
    def keys(self) -> frozenset[str]:
        """Every file key some delta lands in."""
        return frozenset(self._by_key)

    def touches(self, file_key: str) -> bool:
        return file_key in self._by_key

    def apply(self, file_key: str, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (the checkpoint's `file_key`) plus every delta for it, as a new float32
        tensor (`tensor` itself is only read). A key no delta lands in comes back as a float32
        copy."""
        expected = self.shapes.get(file_key)
        if expected is not None and tuple(tensor.shape) != tuple(int(n) for n in expected):
            raise ModelFileError(f"{file_key}: tensor {tuple(tensor.shape)} is not the planned {tuple(expected)}")
        total = tensor.detach().to(dtype=torch.float32, copy=True).contiguous()
        for plan in self._by_key.get(file_key, {}).values():
            self._apply_param(plan, tensor, total)
        return total

    def _apply_param(self, plan: _ParamPlan, pristine: torch.Tensor, total: torch.Tensor) -> None:
        name = plan.param.param_name
        slot = plan.slot
        part = slot.view(total)
        view = part.reshape(plan.shape) if part.is_contiguous() else part.contiguous().reshape(plan.shape)
        cached: list[torch.Tensor] = []

        def original() -> torch.Tensor:
            if not cached:
                cached.append(slot.view(pristine).to(torch.float32).reshape(plan.shape))
            return cached[0]

        self._pristine[name] = original
        try:
            for item in plan.items:
                if isinstance(item.delta, torch.Tensor):
                    view += item.delta.to(device=view.device, dtype=torch.float32)
                else:
                    item.delta.add_to(view)
        finally:
            del self._pristine[name]
        if view.data_ptr() != part.data_ptr() or not part.is_contiguous():
            part.copy_(view.reshape(part.shape))

    def _original(self, name: str) -> torch.Tensor:
        """The pristine weight of a parameter, while its key is being applied (what
        `LayerDelta` asks for: DoRA, IA3 and GLoRA deltas depend on the weight)."""
        getter = self._pristine.get(name)
        if getter is None:
            raise RuntimeError(f"{name}: the pristine weight is only known while its file key is applied")
        return getter()

    def stats(self) -> Mapping[str, int]:
        """Counts for logs: file keys touched, parameter deltas planned."""
        return {
            "keys": len(self._by_key),
            "deltas": sum(len(p.items) for params in self._by_key.values() for p in params.values()),
        }
