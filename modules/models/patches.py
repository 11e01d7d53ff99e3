"""Reversible weight patches (LoRA, LyCORIS, hypernetworks, merged-in deltas) on a loaded model.

A `WeightPatch` names parameters in the model's namespace and gives a delta to add to each:
`unet.<param>`, `vae.<param>` (the VAE in use), `text_encoder.<param>`, `text_encoder_2.<param>`
(diffusers' names for the first and second text encoder), where `<param>` is the module's own
`named_parameters()` name. `WeightPatcher.apply(patches)` makes every such weight equal to
pristine + the sum of the deltas of the set, computed in float32 on the weight's device and stored
in the weight's dtype.

How the way back stays exact: a pristine tensor is never written. A weight gets a *new* tensor
when it is first patched (`param.data = new`; a float32 weight already patched is refilled in its
own tensor on the next change of set, so no fresh memory is faulted in each time), and the
patcher keeps the pristine tensor of every weight it touched: on the CPU, the original tensor
itself (a reference: for a memory-mapped safetensors file that is the read-only view of the file,
which is never written, and which costs no memory); on another device, a copy on the CPU.
Restoring puts that tensor back (moved to the weight's current device), so after `apply(())`
every tensor is bit-identical to what was loaded.

A delta is a tensor, or a `Delta`: something with a `shape` that adds itself into the float32
sum (`add_to(total)`), so a low-rank patch can fuse `up @ down` into the sum (`addmm_`) without
materialising its own full-size tensor. `deltas(model, original)` also gets `original(name)`: the
pristine tensor of a parameter (whatever set is in force), for patches whose delta depends on the
weight itself (DoRA).

An unchanged set does no work: `apply` is keyed by a hash of the ordered identities plus the
identity of the modules in the namespace (a VAE swap changes it). Between two different sets
only weights whose contributions changed are rewritten, and only weights the new set no longer
touches are restored. Unknown names, shape mismatches and non-float weights are a
`ValidationError` before anything is written; any failed apply leaves the model pristine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

import torch

from modules.core.errors import ValidationError

if TYPE_CHECKING:
    from modules.models.loader import StableDiffusionModel


@runtime_checkable
class Delta(Protocol):
    """A delta that adds itself into the float32 sum of a weight (see the module doc)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def add_to(self, total: torch.Tensor) -> None:
        """Add the delta into `total` (float32, the weight's shape and device) in place."""
        ...


Original = Callable[[str], torch.Tensor]
"""A parameter's pristine tensor by its name in the model's namespace (read-only)."""


@runtime_checkable
class WeightPatch(Protocol):
    """Something that adds deltas to named weights. Equal `identity` must mean equal effect
    (e.g. "lora:<sha256>:0.8"): the patcher skips work by comparing identities."""

    @property
    def identity(self) -> str: ...

    def deltas(self, model: StableDiffusionModel, original: Original) -> Iterable[tuple[str, torch.Tensor | Delta]]:
        """(parameter name in the model's namespace, delta to add): a tensor of any dtype or
        device, or a `Delta`; the shape must be the parameter's. `original(name)` is the pristine
        weight, for deltas that depend on it."""
        ...


@dataclass(frozen=True, eq=False)
class AddDelta:
    """The simplest patch: fixed tensors to add, by name. Equal when the identities are."""

    identity: str
    tensors: Mapping[str, torch.Tensor]

    def deltas(self, model: StableDiffusionModel, original: Original) -> Iterator[tuple[str, torch.Tensor | Delta]]:
        return iter(self.tensors.items())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AddDelta) and other.identity == self.identity

    def __hash__(self) -> int:
        return hash((AddDelta, self.identity))

    def __repr__(self) -> str:
        return f"AddDelta({self.identity!r}, {len(self.tensors)} tensors)"


def patch_set_key(patches: Sequence[WeightPatch]) -> str:
    """Stable hash of the ordered identities of a patch set ("" for the empty set)."""
    if not patches:
        return ""
    text = json.dumps([p.identity for p in patches], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def namespace(model: StableDiffusionModel) -> dict[str, torch.nn.Module]:
    """The modules patches address, by the prefix of their parameter names."""
    modules: dict[str, object] = {"unet": model.unet, "vae": model.vae}
    for index, encoder in enumerate(model.text_encoders):
        modules["text_encoder" if index == 0 else f"text_encoder_{index + 1}"] = encoder
    return {k: cast(torch.nn.Module, v) for k, v in modules.items()}


@dataclass
class PatchStats:
    """Public counters, so callers and tests can see what an `apply` cost."""

    applied: int = 0  # apply() calls that changed the set in force
    skipped: int = 0  # apply() calls that found the set already in force: no work at all
    patched_tensors: int = 0  # weights written as pristine + deltas
    kept_tensors: int = 0  # weights left as they were because their contributions did not change
    restored_tensors: int = 0  # weights put back to pristine
    refilled_tensors: int = 0  # patched float32 weights rewritten in their own tensor (no new memory)


@dataclass
class _Touched:
    param: torch.nn.Parameter
    pristine: torch.Tensor  # on the CPU; never written
    contributions: tuple[str, ...]  # identities of the patches summed into it, in order


@dataclass
class _Planned:
    param: torch.nn.Parameter
    items: list[tuple[str, torch.Tensor | Delta]] = field(default_factory=list)


_NOTHING = ("", ())


class WeightPatcher:
    """Applies patch sets to one loaded model and undoes them exactly (see the module doc).

    Not thread-safe by itself: the model manager calls it under its lock."""

    def __init__(self, model: StableDiffusionModel) -> None:
        self.model = model
        self.stats = PatchStats()
        self.identities: tuple[str, ...] = ()  # the set in force, in order
        self._touched: dict[str, _Touched] = {}
        self._key: tuple[str, tuple[int, ...]] | None = _NOTHING

    @property
    def is_pristine(self) -> bool:
        return not self._touched

    @property
    def touched(self) -> tuple[str, ...]:
        return tuple(self._touched)

    def apply(self, patches: Sequence[WeightPatch]) -> bool:
        """Make the weights pristine + the deltas of `patches`. Returns False when that set was
        already in force (nothing done)."""
        patches = tuple(patches)
        key = (patch_set_key(patches), self._module_ids())
        if key == self._key or (not patches and not self._touched):
            self._key = key if patches else _NOTHING
            self.stats.skipped += 1
            return False
        try:
            plan = self._plan(patches)
            with torch.no_grad():
                self._write(plan)
        except BaseException:
            self.restore()
            raise
        self._key = key
        self.identities = tuple(p.identity for p in patches)
        self.stats.applied += 1
        return True

    def restore(self, prefix: str = "") -> int:
        """Put back the pristine tensor of every touched weight whose name starts with `prefix`
        (all by default). Returns how many were restored."""
        names = [n for n in self._touched if n.startswith(prefix)]
        with torch.no_grad():
            for name in names:
                self._restore_one(name)
        if not self._touched:
            self._key = _NOTHING
            self.identities = ()
        elif names:
            self._key = None  # partly undone: the next apply works out what to redo
        return len(names)

    def original(self, name: str) -> torch.Tensor:
        """The pristine tensor of a parameter (`unet.<param>` ...), whatever set is in force: the
        kept one for a patched weight, else the parameter's own tensor. Never write into it."""
        record = self._touched.get(name)
        if record is not None:
            return record.pristine
        return self._resolve(namespace(self.model), name, "original").data

    # -- internals --------------------------------------------------------------------------

    def _module_ids(self) -> tuple[int, ...]:
        return tuple(id(m) for m in namespace(self.model).values())

    def _plan(self, patches: tuple[WeightPatch, ...]) -> dict[str, _Planned]:
        modules = namespace(self.model)
        plan: dict[str, _Planned] = {}
        for patch in patches:
            identity = patch.identity
            for name, delta in patch.deltas(self.model, self.original):
                planned = plan.get(name)
                if planned is None:
                    planned = plan[name] = _Planned(self._resolve(modules, name, identity))
                param = planned.param
                if tuple(delta.shape) != tuple(param.shape):
                    raise ValidationError(
                        f"patch {identity}: {name} has shape {tuple(param.shape)}, the delta {tuple(delta.shape)}"
                    )
                if isinstance(delta, torch.Tensor) and not delta.is_floating_point():
                    raise ValidationError(f"patch {identity}: the delta for {name} is not floating point")
                planned.items.append((identity, delta))
        return plan

    @staticmethod
    def _resolve(modules: dict[str, torch.nn.Module], name: str, identity: str) -> torch.nn.Parameter:
        prefix, _, rest = name.partition(".")
        module = modules.get(prefix)
        if module is None or not rest:
            known = ", ".join(modules)
            raise ValidationError(
                f"patch {identity}: {name!r} is not in the model (parameter names start with {known})"
            )
        try:
            param = module.get_parameter(rest)
        except AttributeError:
            raise ValidationError(f"patch {identity}: the model has no parameter {name!r}") from None
        if not param.is_floating_point():
            raise ValidationError(f"patch {identity}: {name} is not a floating-point weight")
        return param

    def _write(self, plan: dict[str, _Planned]) -> None:
        for name, old in list(self._touched.items()):
            if name not in plan or plan[name].param is not old.param:
                self._restore_one(name)
        for name, planned in plan.items():
            contributions = tuple(identity for identity, _ in planned.items)
            record = self._touched.get(name)
            if record is not None and record.contributions == contributions:
                self.stats.kept_tensors += 1
                continue
            param = planned.param
            current = param.data
            pristine = record.pristine if record is not None else _cpu_reference(current)
            if record is not None and current.dtype == torch.float32 and current.data_ptr() != pristine.data_ptr():
                # our own patched float32 tensor: refilled in place rather than a fresh one, whose
                # memory would have to be faulted in again on every change of set
                total = current.copy_(pristine)
                self.stats.refilled_tensors += 1
            else:
                base = pristine if record is not None else current
                total = base.to(device=current.device, dtype=torch.float32, copy=True)
            for _, delta in planned.items:
                if isinstance(delta, torch.Tensor):
                    total += delta.to(device=current.device, dtype=torch.float32)
                else:
                    delta.add_to(total)
            param.data = total.to(current.dtype)
            self._touched[name] = _Touched(param, pristine, contributions)
            self.stats.patched_tensors += 1
            planned.items.clear()  # drop the deltas as soon as they are summed in

    def _restore_one(self, name: str) -> None:
        record = self._touched.pop(name)
        device = record.param.data.device
        record.param.data = record.pristine.to(device)
        self.stats.restored_tensors += 1


def _cpu_reference(tensor: torch.Tensor) -> torch.Tensor:
    """The pristine value to keep: the tensor itself on the CPU (it is never written: patched
    weights get new tensors), else a CPU copy."""
    if tensor.device.type == "cpu":
        return tensor.detach()
    return tensor.detach().to("cpu", copy=True)
