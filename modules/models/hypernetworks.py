"""A1111 hypernetworks (features.md 2): `.pt` files read without unpickling arbitrary code, applied
to the UNet's attention context through torch forward pre-hooks.

A file is a dict whose int keys are context widths (768, 1024, 320, 640, 1280); each holds a pair of
state dicts, one module for the keys and one for the values. The other keys describe the modules:
`layer_structure` ([1, 2, 1] by default: widths as multiples of the context width, first and last
1), `activation_func` (none / `linear`, `relu`, `leakyrelu`, `elu`, `swish` = Hardswish, `tanh`,
`sigmoid`, or any `torch.nn` activation by its lowercase name), `is_layer_norm`, `use_dropout` /
`dropout_structure` / `last_layer_dropout`, `activate_output` (True when absent). A module is a
Sequential: per layer a Linear, the activation (not after the last Linear unless
`activate_output`), a LayerNorm, a Dropout where the dropout structure says; its state dict keys are
`linear.<index in that Sequential>.*`, so the layout must be rebuilt exactly for the indices to line
up. The first files used `linear1.*` / `linear2.*` (two Linears, no metadata).

At inference the modules are in eval mode (dropout off). Before each attention's `to_k` and `to_v`,
the context `x` becomes `x + module(x) * strength`, using the pair whose key is `x`'s last
dimension: cross-attention contexts (768 / 1024 / 2048) and, as in A1111, self-attention ones
(320 / 640 / 1280, where the context is the hidden states). Several hypernetworks apply in order.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modules.core.errors import ModelFileError
from modules.models.checkpoint_io import read_structured

log = logging.getLogger(__name__)

HYPERNETWORK_SUFFIXES = (".pt",)

_NAMED_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def activation_class(name: str) -> type[nn.Module]:
    """The activation a hypernetwork names: A1111's short names, else any activation class of
    `torch.nn` by its lowercase name. Raises `ModelFileError` for anything else."""
    key = name.lower()
    if key in _NAMED_ACTIVATIONS:
        return _NAMED_ACTIVATIONS[key]
    activations = nn.modules.activation
    for cls_name, cls in inspect.getmembers(activations, inspect.isclass):
        if cls.__module__ == activations.__name__ and cls_name.lower() == key and issubclass(cls, nn.Module):
            return cls
    raise ModelFileError(f"unsupported hypernetwork activation function {name!r}")


class HypernetworkModule(nn.Module):
    """One hypernetwork module (k or v): `forward` gives the change `layers(x)`; the hook adds it
    to the context times the strength."""

    def __init__(self, linear: nn.Sequential) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return out


@dataclass(frozen=True)
class HypernetworkLayout:
    """How a file's modules are built (shared by all its modules)."""

    layer_structure: tuple[float, ...] = (1, 2, 1)
    activation_func: str | None = None
    is_layer_norm: bool = False
    dropout_structure: tuple[float, ...] = (0, 0, 0)
    activate_output: bool = True

    def build(self, dim: int) -> nn.Sequential:
        ls = self.layer_structure
        layers: list[nn.Module] = []
        activation = None if self.activation_func in (None, "linear") else activation_class(str(self.activation_func))
        for i in range(len(ls) - 1):
            width_out = int(dim * ls[i + 1])
            layers.append(nn.Linear(int(dim * ls[i]), width_out))
            is_last = i >= len(ls) - 2
            if activation is not None and (self.activate_output or not is_last):
                layers.append(activation())
            if self.is_layer_norm:
                layers.append(nn.LayerNorm(width_out))
            if self.dropout_structure[i + 1] > 0:
                layers.append(nn.Dropout(p=float(self.dropout_structure[i + 1])))
        return nn.Sequential(*layers)


@dataclass(eq=False)
class Hypernetwork:
    name: str
    filename: Path
    layers: dict[int, tuple[nn.Module, nn.Module]]
    """Context width -> (module for the keys, module for the values)."""
    layout: HypernetworkLayout = field(default_factory=HypernetworkLayout)
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    stored_name: str | None = None
    """The `name` saved inside the file (A1111 shows it; the file stem is what tags use)."""
    optional_info: str | None = None

    def modules(self) -> Iterator[nn.Module]:
        for k, v in self.layers.values():
            yield k
            yield v


def _dropout_structure(data: Mapping[Any, Any], layer_structure: Sequence[float]) -> tuple[float, ...]:
    """A1111's rules: the file's `dropout_structure`, else 0.3 after every hidden layer when
    `use_dropout` (after the last hidden one only with `last_layer_dropout`), never at the ends."""
    given = data.get("dropout_structure")
    if given is not None:
        if not isinstance(given, (list, tuple)) or len(given) != len(layer_structure):
            raise ModelFileError(f"dropout_structure {given!r} does not match layer_structure {list(layer_structure)}")
        values = tuple(float(v) for v in given)
        if any(not (v == 0 or 0 < v < 1) for v in values):
            raise ModelFileError(f"dropout_structure {list(values)} must hold 0 or probabilities below 1")
        return values
    if not data.get("use_dropout", False):
        return tuple(0.0 for _ in layer_structure)
    hidden = [0.3] * (len(layer_structure) - 3)
    last = 0.3 if data.get("last_layer_dropout", False) else 0.0
    return (0.0, *hidden, last, 0.0)


def _layout(data: Mapping[Any, Any]) -> HypernetworkLayout:
    raw = data.get("layer_structure")
    if raw is None:
        raw = [1, 2, 1]
    if not isinstance(raw, (list, tuple)) or len(raw) < 2 or not all(isinstance(v, (int, float)) for v in raw):
        raise ModelFileError(f"layer_structure {raw!r} is not a list of numbers")
    structure = tuple(float(v) for v in raw)
    if structure[0] != 1 or structure[-1] != 1:
        raise ModelFileError(f"layer_structure {list(raw)} must start and end with 1")
    activation = data.get("activation_func")
    if activation is not None and not isinstance(activation, str):
        raise ModelFileError(f"activation_func {activation!r} is not a name")
    if activation not in (None, "linear"):
        activation_class(activation)  # unknown names fail here, with the file named by the caller
    activate_output = data.get("activate_output", True)
    return HypernetworkLayout(
        layer_structure=structure,
        activation_func=activation,
        is_layer_norm=bool(data.get("is_layer_norm", False)),
        dropout_structure=_dropout_structure(data, structure),
        activate_output=bool(activate_output) if activate_output is not None else True,
    )


_OLD_KEYS = {"linear1.": "linear.0.", "linear2.": "linear.1."}


def _module(dim: int, state: Any, layout: HypernetworkLayout, what: str) -> HypernetworkModule:
    if not isinstance(state, Mapping):
        raise ModelFileError(f"{what}: a {type(state).__name__}, not a state dict")
    fixed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{what}: {key!r} is not a tensor")
        key = str(key)
        for old, new in _OLD_KEYS.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        fixed[key] = value
    module = HypernetworkModule(layout.build(dim))
    try:
        module.load_state_dict(fixed)
    except RuntimeError as exc:
        raise ModelFileError(f"{what}: weights do not fit the described layers: {exc}") from exc
    module.requires_grad_(False)
    return module.eval()


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def read_hypernetwork(path: Path) -> Hypernetwork:
    """Parse an A1111 hypernetwork file through the safe structured reader (no code from the file
    runs). Raises `UnsafeModelFileError` for forbidden pickle globals, `ModelFileError` for a file
    that is not a readable hypernetwork."""
    data = read_structured(path)
    if not isinstance(data, Mapping):
        raise ModelFileError(f"{path}: not a hypernetwork (the file holds a {type(data).__name__})")
    try:
        layout = _layout(data)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    layers: dict[int, tuple[nn.Module, nn.Module]] = {}
    for key, value in data.items():
        if not isinstance(key, int) or isinstance(key, bool):
            continue
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ModelFileError(f"{path}: layers for width {key} are not a (k, v) pair")
        layers[key] = (
            _module(key, value[0], layout, f"{path}: width {key} k"),
            _module(key, value[1], layout, f"{path}: width {key} v"),
        )
    if not layers:
        raise ModelFileError(f"{path}: not a hypernetwork (no layers keyed by context width)")
    return Hypernetwork(
        name=path.stem,
        filename=path,
        layers=dict(sorted(layers.items())),
        layout=layout,
        step=_optional_int(data.get("step")),
        sd_checkpoint=_optional_str(data.get("sd_checkpoint")),
        sd_checkpoint_name=_optional_str(data.get("sd_checkpoint_name")),
        stored_name=_optional_str(data.get("name")),
        optional_info=_optional_str(data.get("optional_info")),
    )


# --------------------------------------------------------------------------- applying


def attention_projections(unet: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Module]]:
    """(name, to_k, to_v) of every attention block of a diffusers UNet (self- and cross-attention)."""
    for name, module in unet.named_modules():
        to_k, to_v = getattr(module, "to_k", None), getattr(module, "to_v", None)
        if isinstance(to_k, nn.Module) and isinstance(to_v, nn.Module) and hasattr(module, "to_q"):
            yield name, to_k, to_v


def _shift(x: torch.Tensor, modules: Sequence[tuple[nn.Module, float]]) -> torch.Tensor:
    for module, strength in modules:
        param = next(module.parameters(), None)
        if param is not None and param.device != x.device:
            module.to(x.device)
        change = module(x.to(torch.float32)) * strength
        x = x + change.to(x.dtype)
    return x


def _pre_hook(active: Sequence[tuple[Hypernetwork, float]], index: int) -> Any:
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not args or not isinstance(args[0], torch.Tensor):
            return None
        x = args[0]
        chosen = [(hn.layers[x.shape[-1]][index], s) for hn, s in active if x.shape[-1] in hn.layers]
        if not chosen:
            return None
        return (_shift(x, chosen), *args[1:])

    return hook


def attention_widths(unet: nn.Module) -> set[int]:
    """The input widths of every attention's k/v projections (the context width of cross-attention,
    the channel widths of self-attention): the keys a hypernetwork's layers must have to act."""
    widths: set[int] = set()
    for _name, to_k, _to_v in attention_projections(unet):
        weight = getattr(to_k, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            widths.add(int(weight.shape[1]))
    return widths


def unfit_message(network: Hypernetwork, widths: set[int]) -> str | None:
    """Why `network` changes nothing on a UNet whose attentions take `widths` (a hypernetwork
    trained for another model family), or None when some of its layers apply."""
    if not widths or set(network.layers) & widths:
        return None
    return (
        f"hypernetwork {network.name!r} ({network.filename.name}) has layers for widths "
        f"{sorted(network.layers)}, this model's attentions take {sorted(widths)}: it changes nothing (skipped)"
    )


@contextmanager
def hypernetworks_applied(unet: nn.Module, active: Sequence[tuple[Hypernetwork, float]]) -> Iterator[None]:
    """Hypernetworks with their strengths on every attention's k and v inputs while inside; the
    hooks are removed on exit (also on an error). An empty list does nothing. One made for
    another model family (no layer of its width) is logged as changing nothing (A1111 is silent)."""
    if not active:
        yield
        return
    frozen = [(hn, float(strength)) for hn, strength in active]
    widths = attention_widths(unet)
    for hn, _strength in frozen:
        message = unfit_message(hn, widths)
        if message is not None:
            log.warning("%s", message)
    handles = []
    try:
        for _name, to_k, to_v in attention_projections(unet):
            handles.append(to_k.register_forward_pre_hook(_pre_hook(frozen, 0)))
            handles.append(to_v.register_forward_pre_hook(_pre_hook(frozen, 1)))
        yield
    finally:
        for handle in handles:
            handle.remove()
