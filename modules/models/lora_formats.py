"""LoRA / LyCORIS files: parse a state dict into per-module weights, and the delta math per format.

A network file holds, per targeted layer ("module key"), a few tensors named by a suffix:
`lora_down.weight`, `lora_up.weight`, `alpha` (kohya LoRA / LoCon, `lora_mid.weight` for CP
convs), `hada_*` (LoHa), `lokr_*` (LoKr), `weight` + `on_input` (IA3), `diff` / `diff_b` (full),
`w_norm` / `b_norm` (norm layers), `a1/a2/b1/b2.weight` (GLoRA), plus `scale` (overrides
alpha/dim), `bias` (added to the delta) and `dora_scale` (DoRA weight decomposition) next to any of
them. Kohya-style module keys have no dots (`lora_unet_..._to_q.lora_down.weight`: split at the
first `.`); diffusers/PEFT keys do (`unet.down_blocks.0...to_q.lora_A.weight`: the known suffix is
taken off the end). PEFT/diffusers suffixes are renamed to the kohya ones (`lora_A` -> `lora_down`,
`lora_B` -> `lora_up`, `lora_magnitude_vector` -> `dora_scale`); the module key stays as written.
`bundle_emb.<name>.<key>` tensors are textual-inversion embeddings bundled in the file.

The math follows A1111's Lora extension (v1.10.1): the delta of a module is
`ΔW · scale · multiplier`, where `scale` is the `scale` tensor if present, else `alpha / dim` when
the format has a rank (`dim`: LoRA `lora_down` rows, LoHa `hada_w1_b` rows, LoKr the rows of a
decomposed factor; GLoRA, IA3, full and norm have none), else 1. A `bias` tensor is added to ΔW
before scaling. With `dora_scale`, the scaled delta becomes `W' - W` where
`W' = (W + sΔW) · dora_scale / ‖W + sΔW‖` (norm per input channel, as LyCORIS writes
`dora_scale` [1, in]; per output row when it is [out] / [out, 1], as PEFT's magnitude vector is),
and only then is the multiplier applied. Bias deltas (`diff_b`, `b_norm`) get the multiplier only.
`dyn` truncates a plain LoRA's rank (`up[:, :dyn]`, `down[:dyn]`); the scale keeps the file's rank.

Everything is computed in float32 on the weight's device. A plain LoRA adds `up @ down` into the
sum with one `addmm_` on a 2-D view (conv weights flattened to [out, in·k·k]); the other formats
build their full ΔW once and add it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modules.core.errors import ModelFileError
from modules.models.families import describe_contents

Shape = tuple[int, ...]
OriginalWeight = Callable[[], torch.Tensor]
"""The pristine weight of the target layer, float32 on the compute device (read-only)."""

BUNDLE_PREFIX = "bundle_emb."

# Suffixes of kohya-style keys (module key has no dots) that some format reads.
KNOWN_SUFFIXES = frozenset(
    {
        "lora_up.weight",
        "lora_down.weight",
        "lora_mid.weight",
        "alpha",
        "scale",
        "bias",
        "dora_scale",
        "hada_w1_a",
        "hada_w1_b",
        "hada_w2_a",
        "hada_w2_b",
        "hada_t1",
        "hada_t2",
        "lokr_w1",
        "lokr_w1_a",
        "lokr_w1_b",
        "lokr_w2",
        "lokr_w2_a",
        "lokr_w2_b",
        "lokr_t2",
        "weight",
        "on_input",
        "diff",
        "diff_b",
        "w_norm",
        "b_norm",
        "a1.weight",
        "a2.weight",
        "b1.weight",
        "b2.weight",
    }
)
# Extra information next to a format's weights: alone they are not a network.
_MODIFIERS = frozenset({"alpha", "scale", "bias", "dora_scale", "on_input"})

# Renamed suffixes, whatever the key style.
_RENAMED = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight",
    "lora.up.weight": "lora_up.weight",
    "lora_linear_layer.down.weight": "lora_down.weight",
    "lora_linear_layer.up.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale",
    "lora_magnitude_vector.weight": "dora_scale",
}
# Suffixes recognised at the end of dotted (diffusers/PEFT) keys. Bare `weight`/`bias` are not:
# a dotted key ending in `.weight` is an ordinary model tensor.
_DOTTED_SUFFIXES = frozenset(
    {*_RENAMED, "lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "dora_scale"}
)
# Old diffusers attention-processor files: `...attn1.processor.to_q_lora.down.weight`.
_PROCESSOR_SUFFIXES = {"down.weight": "lora_down.weight", "up.weight": "lora_up.weight"}
_KOHYA_HEADS = ("lora_", "lycoris_", "oft_")


@dataclass(eq=False)
class NetworkWeights:
    """One parsed network file (kept in a RAM cache by the caller).

    `modules`: module key as written in the file -> {suffix: tensor} (suffixes in kohya naming).
    `bundled_embeddings`: `bundle_emb.<name>.<key>` tensors as {name: {key: tensor}}, e.g.
    {"foo": {"string_to_param.*": t}} or {"bar": {"clip_l": t, "clip_g": t}}.
    `nbytes`: bytes of all tensors kept. Compared by identity (a cache holds one per file)."""

    modules: dict[str, dict[str, torch.Tensor]]
    bundled_embeddings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    nbytes: int = 0
    source: str = "<state dict>"


def split_key(key: str) -> tuple[str, str] | None:
    """(module key, canonical suffix) of a network tensor key, or None when it is none."""
    head, dot, rest = key.partition(".")
    if not dot or not rest:
        return None
    if head.startswith(_KOHYA_HEADS):
        return head, _RENAMED.get(rest, rest)
    parts = key.split(".")
    for n in (3, 2, 1):
        if len(parts) <= n:
            continue
        suffix = ".".join(parts[-n:])
        module = ".".join(parts[:-n])
        if suffix in _DOTTED_SUFFIXES:
            return module, _RENAMED.get(suffix, suffix)
        if n == 2 and suffix in _PROCESSOR_SUFFIXES and module.endswith("_lora"):
            return module, _PROCESSOR_SUFFIXES[suffix]
    return None


def parse_network(state_dict: Mapping[str, torch.Tensor], source: str = "<state dict>") -> NetworkWeights:
    """Group a network file's tensors by module. `ModelFileError` (naming `source`) when no
    tensor is part of a network or a bundled embedding."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    bundled: dict[str, dict[str, torch.Tensor]] = {}
    nbytes = 0
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            # converted once here (the parsed file is cached), not at every apply: the deltas are
            # summed in float32 anyway, and fresh memory for the conversion is slow to fault in
            tensor = tensor.to(torch.float32)
        if key.startswith(BUNDLE_PREFIX):
            name, dot, rest = key[len(BUNDLE_PREFIX) :].partition(".")
            if name and dot and rest:
                bundled.setdefault(name, {})[rest] = tensor
                nbytes += tensor.numel() * tensor.element_size()
            continue
        split = split_key(key)
        if split is None:
            continue
        module, suffix = split
        if suffix == "dora_scale" and tensor.dim() == 1 and key.rsplit(".", 1)[-1] != "dora_scale":
            tensor = tensor.reshape(-1, 1)  # PEFT magnitude: one per output row
        modules.setdefault(module, {})[suffix] = tensor
    modules = {k: v for k, v in modules.items() if not set(v) <= _MODIFIERS}
    nbytes += sum(tensors_nbytes(parts.values()) for parts in modules.values())
    if not modules and not bundled:
        shapes = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
        raise ModelFileError(f"{source}: not a LoRA/LyCORIS network ({describe_contents(shapes)})")
    return NetworkWeights(modules, bundled, nbytes, source)


def read_network(path: Path) -> NetworkWeights:
    """Parse a network file (.safetensors, .pt, .ckpt) through the safe loader."""
    from modules.models.checkpoint_io import read_state_dict

    return parse_network(read_state_dict(Path(path)), source=str(path))


# --------------------------------------------------------------------------------------------
# Formats


def _f32(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device=device, dtype=torch.float32)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _cp(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """LyCORIS CP/Tucker rebuild: core `t` [r, r', k, l], `wa` [r, out], `wb` [r', in] ->
    [out, in, k, l]."""
    return torch.einsum("abkl,ao,bi->oikl", t, wa, wb)


class Adapter:
    """One module's weights in one format: how big its ΔW is and how to add it."""

    kind = "?"

    def __init__(self, parts: Mapping[str, torch.Tensor]) -> None:
        self.parts = parts
        alpha = parts.get("alpha")
        scale = parts.get("scale")
        self.alpha = float(alpha.reshape(-1)[0]) if alpha is not None else None
        self.scale = float(scale.reshape(-1)[0]) if scale is not None else None
        self.bias = parts.get("bias")
        self.dora_scale = parts.get("dora_scale")

    @property
    def dim(self) -> int | None:
        return None

    def calc_scale(self) -> float:
        if self.scale is not None:
            return self.scale
        dim = self.dim  # A1111: only formats with a rank set `dim`
        if dim and self.alpha is not None:
            return self.alpha / dim
        return 1.0

    def delta_shape(self, weight_shape: Shape) -> Shape:
        """The shape of ΔW as the format builds it (compared with the weight by `fit`)."""
        raise NotImplementedError

    def full(self, device: torch.device, original: OriginalWeight, dyn: int | None) -> torch.Tensor:
        """ΔW (float32, `delta_shape`), without scale, multiplier or the `bias` tensor."""
        raise NotImplementedError

    def add_into(self, view: torch.Tensor, factor: float, original: OriginalWeight, dyn: int | None) -> None:
        """view += factor · (ΔW + bias), `view` a [out, cols] float32 slice of the sum."""
        delta = self.full(view.device, original, dyn)
        view.add_(delta.reshape(view.shape), alpha=factor)
        self._add_bias(view, factor)

    def _add_bias(self, view: torch.Tensor, factor: float) -> None:
        if self.bias is not None:
            view.add_(_f32(self.bias, view.device).reshape(view.shape), alpha=factor)

    def bias_delta(self) -> torch.Tensor | None:
        """Δbias (gets the multiplier only), if the format has one."""
        return None


class LoraAdapter(Adapter):
    kind = "lora"

    def __init__(self, parts: Mapping[str, torch.Tensor]) -> None:
        super().__init__(parts)
        self.up = parts["lora_up.weight"]
        self.down = parts["lora_down.weight"]
        self.mid = parts.get("lora_mid.weight")

    @property
    def dim(self) -> int:
        return int(self.down.shape[0])

    def delta_shape(self, weight_shape: Shape) -> Shape:
        if self.mid is not None:
            return (int(self.up.shape[0]), int(self.down.shape[1]), *map(int, self.mid.shape[2:]))
        return (int(self.up.shape[0]), *map(int, self.down.shape[1:]))

    def _factors(self, device: torch.device, dyn: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        up, down = _rows(self.up), _rows(self.down)
        if dyn is not None:
            up, down = up[:, :dyn], down[:dyn]
        return _f32(up, device), _f32(down, device)

    def full(self, device: torch.device, original: OriginalWeight, dyn: int | None) -> torch.Tensor:
        if self.mid is not None:
            up, down = _f32(_rows(self.up), device), _f32(_rows(self.down), device)
            return _cp(_f32(self.mid, device), up.t(), down)
        up, down = self._factors(device, dyn)
        return (up @ down).reshape(self.delta_shape(()))

    def add_into(self, view: torch.Tensor, factor: float, original: OriginalWeight, dyn: int | None) -> None:
        if self.mid is not None:
            super().add_into(view, factor, original, dyn)
            return
        up, down = self._factors(view.device, dyn)
        view.addmm_(up, down, alpha=factor)
        self._add_bias(view, factor)


class HadaAdapter(Adapter):
    kind = "loha"

    def __init__(self, parts: Mapping[str, torch.Tensor]) -> None:
        super().__init__(parts)
        self.w1a, self.w1b = parts["hada_w1_a"], parts["hada_w1_b"]
        self.w2a, self.w2b = parts["hada_w2_a"], parts["hada_w2_b"]
        self.t1, self.t2 = parts.get("hada_t1"), parts.get("hada_t2")

    @property
    def dim(self) -> int:
        return int(self.w1b.shape[0])

    def delta_shape(self, weight_shape: Shape) -> Shape:
        if self.t1 is not None:
            return (int(self.w1a.shape[1]), int(self.w1b.shape[1]), *map(int, self.t1.shape[2:]))
        return (int(self.w1a.shape[0]), *map(int, self.w1b.shape[1:]))

    def _half(self, device: torch.device, wa: torch.Tensor, wb: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        if t is not None:
            return _cp(_f32(t, device), _f32(wa, device), _f32(_rows(wb), device))
        return _f32(_rows(wa), device) @ _f32(_rows(wb), device)

    def full(self, device: torch.device, original: OriginalWeight, dyn: int | None) -> torch.Tensor:
        shape = self.delta_shape(())
        first = self._half(device, self.w1a, self.w1b, self.t1).reshape(shape)
        return first.mul_(self._half(device, self.w2a, self.w2b, self.t2).reshape(shape))


class LokrAdapter(Adapter):
    kind = "lokr"

    def __init__(self, parts: Mapping[str, torch.Tensor]) -> None:
        super().__init__(parts)
        self.w1, self.w1a, self.w1b = parts.get("lokr_w1"), parts.get("lokr_w1_a"), parts.get("lokr_w1_b")
        self.w2, self.w2a, self.w2b = parts.get("lokr_w2"), parts.get("lokr_w2_a"), parts.get("lokr_w2_b")
        self.t2 = parts.get("lokr_t2")

    @staticmethod
    def accepts(parts: Mapping[str, torch.Tensor]) -> bool:
        one = "lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= parts.keys()
        two = "lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= parts.keys()
        return one and two

    @property
    def dim(self) -> int | None:
        # A1111: the rank of a decomposed factor (w2's wins); none when both are full matrices.
        if self.w2b is not None and self.w2 is None:
            return int(self.w2b.shape[0])
        if self.w1b is not None and self.w1 is None:
            return int(self.w1b.shape[0])
        return None

    def _w1_shape(self) -> Shape:
        if self.w1 is not None:
            return tuple(map(int, self.w1.shape))
        assert self.w1a is not None and self.w1b is not None
        return (int(self.w1a.shape[0]), int(self.w1b.shape[1]))

    def _w2_shape(self) -> Shape:
        if self.w2 is not None:
            return tuple(map(int, self.w2.shape))
        assert self.w2a is not None and self.w2b is not None
        if self.t2 is not None:
            return (int(self.w2a.shape[1]), int(self.w2b.shape[1]), *map(int, self.t2.shape[2:]))
        return (int(self.w2a.shape[0]), int(self.w2b.shape[1]))

    def delta_shape(self, weight_shape: Shape) -> Shape:
        a, b = self._w1_shape(), self._w2_shape()
        return (a[0] * b[0], a[1] * b[1], *b[2:])

    def full(self, device: torch.device, original: OriginalWeight, dyn: int | None) -> torch.Tensor:
        if self.w1 is not None:
            w1 = _f32(self.w1, device)
        else:
            assert self.w1a is not None and self.w1b is not None
            w1 = _f32(self.w1a, device) @ _f32(self.w1b, device)
        if self.w2 is not None:
            w2 = _f32(self.w2, device)
        else:
            assert self.w2a is not None and self.w2b is not None
            if self.t2 is not None:
                w2 = _cp(_f32(self.t2, device), _f32(self.w2a, device), _f32(_rows(self.w2b), device))
            else:
                w2 = _f32(self.w2a, device) @ _f32(self.w2b, device)
        if w2.dim() == 4:
            w1 = w1.reshape(*w1.shape[:2], 1, 1)
        return torch.kron(w1, w2.contiguous())


class Ia3Adapter(Adapter):
    kind = "ia3"

    def __init__(self, parts: Mapping[str, torch.Tensor]) -> None:
        super().__init__(parts)
        self.w = parts["weight"]
        on_input = parts.get("on_input")
        self.on_input = bool(on_input.reshape(-1)[0]) if on_input is not None else False

    def delta_shape(self, weight_shape: Shape) -> Shape:
        n = self.w.numel()
        if len(weight_shape) == 2 and n == weight_shape[1 if self.on_input else 0]:
            return weight_shape
        if self.on_input or len(weight_shape) < 2:
            return (-1,)  # fits nothing
        return (n, *weight_shape[1:])

    def full(self, device: torch.device, original: OriginalWeight, dyn: int | None) -> torch.Tensor:
        weight = original()
        w = _f32(self.w, device).reshape(-1)
        if self.on_input:
            return weight * w
        return weight * w.reshape(-1, *([1] * (weight.dim() - 1)))


class FullAdapter(Adapter):
    kind = "full"

    def delta_shape(self, weight_shape: Shape) -> Shape:
        return tuple(map(int, self.parts["diff"].shape))

    def full(self, device: torch.device, original: OriginalWeight, dyn: int | None) -> torch.Tensor:
        return _f32(self.parts["diff"], device)

    def bias_delta(self) -> torch.Tensor | None:
        return self.parts.get("diff_b")


class NormAdapter(Adapter):
    kind = "norm"

    def delta_shape(self, weight_shape: Shape) -> Shape:
        return tuple(map(int, self.parts["w_norm"].shape))

    def full(self, device: torch.device, original: OriginalWeight, dyn: int | None) -> torch.Tensor:
        return _f32(self.parts["w_norm"], device)

    def bias_delta(self) -> torch.Tensor | None:
        return self.parts.get("b_norm")


class GloraAdapter(Adapter):
    """ΔW = b2 @ b1 + W @ a2 @ a1 (Linear layers). A1111 gives GLoRA no rank, so its scale is the
    `scale` tensor or 1 (alpha is required in the file but unused)."""

    kind = "glora"

    def delta_shape(self, weight_shape: Shape) -> Shape:
        a2 = self.parts["a2.weight"]
        if len(weight_shape) != 2 or a2.dim() != 2 or int(a2.shape[0]) != weight_shape[1]:
            return (-1,)
        return (int(self.parts["b2.weight"].shape[0]), int(self.parts["b1.weight"].shape[1]))

    def full(self, device: torch.device, original: OriginalWeight, dyn: int | None) -> torch.Tensor:
        p = {k: _f32(_rows(self.parts[f"{k}.weight"]), device) for k in ("a1", "a2", "b1", "b2")}
        out = p["b2"] @ p["b1"]
        return out.add_((original().reshape(out.shape[0], -1) @ p["a2"]) @ p["a1"])


def make_adapter(parts: Mapping[str, torch.Tensor]) -> Adapter | None:
    """The format that accepts a module's suffixes (A1111's order), or None."""
    keys = parts.keys()
    if {"lora_up.weight", "lora_down.weight"} <= keys:
        return LoraAdapter(parts)
    if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= keys:
        return HadaAdapter(parts)
    if "weight" in keys:
        return Ia3Adapter(parts)
    if LokrAdapter.accepts(parts):
        return LokrAdapter(parts)
    if "diff" in keys:
        return FullAdapter(parts)
    if {"w_norm", "b_norm"} <= keys:
        return NormAdapter(parts)
    if {"a1.weight", "a2.weight", "b1.weight", "b2.weight"} <= keys:
        return GloraAdapter(parts)
    return None


# --------------------------------------------------------------------------------------------
# Fitting a delta to a weight, and adding it


@dataclass(frozen=True)
class Fit:
    """How a ΔW lands in a weight: its first `cols` columns of the [out, -1] view (fewer than all
    for a 4-channel delta on a 9-channel inpainting conv_in: the rest is zero-padded)."""

    cols: int
    padded: bool


def fit(delta_shape: Shape, weight_shape: Shape) -> Fit | None:
    """Whether ΔW of `delta_shape` can be added to a weight of `weight_shape` (reshaped, or
    zero-padded on the input channels of a conv), else None."""
    if not delta_shape or not weight_shape or delta_shape[0] != weight_shape[0] or min(delta_shape) < 0:
        return None
    cols = math.prod(weight_shape[1:])
    if math.prod(delta_shape) == math.prod(weight_shape):
        return Fit(cols, False)
    if (
        len(weight_shape) == 4
        and len(delta_shape) == 4
        and delta_shape[2:] == weight_shape[2:]
        and delta_shape[1] < weight_shape[1]
    ):
        return Fit(math.prod(delta_shape[1:]), True)
    return None


def dora_axis(dora_scale: torch.Tensor, weight_shape: Shape) -> int | None:
    """1 when `dora_scale` holds one norm per input channel ([1, in, ...], LyCORIS / A1111), 0
    when one per output row ([out, 1, ...], PEFT), None when it fits neither."""
    if len(weight_shape) < 2:
        return None
    n = dora_scale.numel()
    if dora_scale.shape[0] == 1 and n == weight_shape[1]:
        return 1
    if n == weight_shape[0] and dora_scale.shape[0] == weight_shape[0]:
        return 0
    return None


def add_module_delta(
    total: torch.Tensor,
    adapter: Adapter,
    placement: Fit,
    multiplier: float,
    original: OriginalWeight,
    dyn: int | None,
) -> None:
    """total += the module's final delta (A1111's `finalize_updown`, then × multiplier)."""
    view = total.reshape(total.shape[0], -1)
    if view.data_ptr() != total.data_ptr() or not view.is_contiguous():  # pragma: no cover
        raise RuntimeError("the weight sum must be contiguous")
    scale = adapter.calc_scale()
    part = view[:, : placement.cols] if placement.padded else view
    if adapter.dora_scale is None:
        adapter.add_into(part, scale * multiplier, original, dyn)
        return
    weight = original()
    delta = torch.zeros(view.shape, dtype=torch.float32, device=view.device)
    adapter.add_into(delta[:, : placement.cols], scale, original, dyn)
    delta = delta.reshape(weight.shape).add_(weight)  # W + sΔW
    axis = dora_axis(adapter.dora_scale, tuple(weight.shape))
    if axis == 0:
        norm = delta.reshape(delta.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (delta.dim() - 1)))
    else:
        norm = delta.transpose(0, 1).reshape(delta.shape[1], -1).norm(dim=1)
        norm = norm.reshape(1, -1, *([1] * (delta.dim() - 2)))
    magnitude = _f32(adapter.dora_scale, delta.device).reshape(norm.shape)
    delta.mul_(magnitude / norm).sub_(weight)
    view.add_(delta.reshape(view.shape), alpha=multiplier)


def module_delta_shape(adapter: Adapter, weight_shape: Shape) -> Fit | None:
    """Where the adapter's ΔW lands in a weight of `weight_shape`, or None (not this layer's)."""
    placement = fit(adapter.delta_shape(weight_shape), weight_shape)
    if placement is None:
        return None
    if adapter.dora_scale is not None and dora_axis(adapter.dora_scale, weight_shape) is None:
        return None
    if adapter.bias is not None and adapter.bias.numel() != placement.cols * weight_shape[0]:
        return None
    return placement


def tensors_nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
