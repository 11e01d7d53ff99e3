"""Block-weighted merging: one alpha per UNet block instead of one for the whole model.

The blocks are the LDM UNet's own: ``IN00``..``INnn`` (``input_blocks.N``), ``M00``
(``middle_block``) and ``OUT00``..``OUTnn`` (``output_blocks.N``), counted from the checkpoint's
keys: 12 + 1 + 12 = 25 for SD 1.x/2.x, 9 + 1 + 9 = 19 for SDXL. Every other key (text encoders,
VAE, and the UNet's ``time_embed``, ``label_emb`` and ``out``) takes the base alpha.

Weights are written as the block-merge extensions write them:

- all values in block order, comma-separated (``"1,0.9,...,1"``: 25 for SD 1.x/2.x, 19 for SDXL);
  one more value in front is the base alpha (SuperMerger's ``BASE,IN00,...``);
- a sparse list of ``block:value`` pairs, the block as an index into that order or a name
  (``"0:0.5, 3:0.6"``, ``"IN03:0.6, M00:0.1, BASE:0.2"``); blocks not named take the default
  (the merge's multiplier M);
- a preset name (``GRAD_V``, ``WRAP08``, ... the names of the block-weighted merge extension).
  The shaped presets (gradients, flats, sigmoids, all-A/all-B) exist for any block count; the
  table presets (WRAP, MID, OUT, RING) are defined for the 25 blocks of SD 1.x/2.x only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from modules.core.errors import ValidationError

UNET_PREFIX = "model.diffusion_model."
BASE = "BASE"
_BLOCK_RE = re.compile(r"^model\.diffusion_model\.(input_blocks|middle_block|output_blocks)\.(\d+)\.")
_NAME_RE = re.compile(r"^(IN|M|OUT)(\d+)$")


@dataclass(frozen=True)
class BlockLayout:
    """The blocks of one UNet: how many input and output blocks (one middle block)."""

    inputs: int
    outputs: int

    @property
    def names(self) -> tuple[str, ...]:
        return (
            *(f"IN{i:02d}" for i in range(self.inputs)),
            "M00",
            *(f"OUT{i:02d}" for i in range(self.outputs)),
        )

    def __len__(self) -> int:
        return self.inputs + 1 + self.outputs

    def index_of(self, key: str) -> int | None:
        """The block index of a checkpoint key, None for keys outside the UNet's blocks."""
        match = _BLOCK_RE.match(key)
        if match is None:
            return None
        kind, number = match.group(1), int(match.group(2))
        if kind == "input_blocks":
            return number if number < self.inputs else None
        if kind == "middle_block":
            return self.inputs
        return self.inputs + 1 + number if number < self.outputs else None


SD_LAYOUT = BlockLayout(12, 12)
SDXL_LAYOUT = BlockLayout(9, 9)


def layout_of(keys: Iterable[str]) -> BlockLayout:
    """The block layout of a checkpoint, from its key names."""
    inputs = outputs = 0
    middle = False
    for key in keys:
        match = _BLOCK_RE.match(key)
        if match is None:
            continue
        kind, number = match.group(1), int(match.group(2))
        if kind == "input_blocks":
            inputs = max(inputs, number + 1)
        elif kind == "output_blocks":
            outputs = max(outputs, number + 1)
        else:
            middle = True
    if not (inputs and outputs and middle):
        raise ValidationError("block weights need an LDM UNet (input_blocks / middle_block / output_blocks keys)")
    return BlockLayout(inputs, outputs)


@dataclass(frozen=True)
class BlockWeights:
    """One alpha per block (in `layout` order) and the alpha of every other key."""

    layout: BlockLayout
    values: tuple[float, ...]
    base: float

    def alpha_for(self, key: str) -> float:
        index = self.layout.index_of(key)
        return self.base if index is None else self.values[index]

    def as_dict(self) -> dict[str, float]:
        return {BASE: self.base, **dict(zip(self.layout.names, self.values, strict=True))}

    def text(self) -> str:
        """The values in block order, as the extensions write them."""
        return ",".join(_fmt(v) for v in self.values)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


# ------------------------------------------------------------------------------ presets


def _shaped(fn: Callable[[float], float]) -> Callable[[int], list[float]]:
    """A preset from a curve over the blocks: x runs from 0 (IN00) to 1 (the last OUT block)."""
    return lambda n: [fn(i / (n - 1)) for i in range(n)]


def _smoothstep(x: float) -> float:
    return x * x * (3 - 2 * x)


_SHAPED: dict[str, Callable[[int], list[float]]] = {
    "GRAD_V": _shaped(lambda x: abs(1 - 2 * x)),
    "GRAD_A": _shaped(lambda x: 1 - abs(1 - 2 * x)),
    "FLAT_25": _shaped(lambda _x: 0.25),
    "FLAT_75": _shaped(lambda _x: 0.75),
    "NORMAL-SIGMOID": _shaped(_smoothstep),
    "REVERSE-SIGMOID": _shaped(lambda x: 1 - _smoothstep(x)),
    "ALL_A": _shaped(lambda _x: 0.0),
    "ALL_B": _shaped(lambda _x: 1.0),
}


def _bits(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


# the block-weighted merge extension's table presets (25 blocks: IN00-IN11, M00, OUT00-OUT11)
_TABLE_25: dict[str, list[float]] = {
    "WRAP08": _bits("1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1"),
    "WRAP12": _bits("1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1"),
    "WRAP14": _bits("1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1,1"),
    "WRAP16": _bits("1,1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1"),
    "MID12_50": _bits("0,0,0,0,0,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0,0,0,0,0,0"),
    "OUT07": _bits("0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1,1"),
    "OUT12": _bits("0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1,1,1,1"),
    "OUT12_5": _bits("0,0,0,0,0,0,0,0,0,0,0,0,0.5,1,1,1,1,1,1,1,1,1,1,1,1"),
    "RING08_SOFT": _bits("0,0,0,0,0,0.5,1,1,1,0.5,0,0,0,0,0,0.5,1,1,1,0.5,0,0,0,0,0"),
    "RING08_5": _bits("0,0,0,0,0,0,1,1,1,1,0,0,0,0,0,1,1,1,1,0,0,0,0,0,0"),
    "RING10_5": _bits("0,0,0,0,0,1,1,1,1,1,0,0,0,0,0,1,1,1,1,1,0,0,0,0,0"),
    "RING10_3": _bits("0,0,0,0,0,0,1,1,1,1,1,0,0,0,1,1,1,1,1,0,0,0,0,0,0"),
}

PRESET_NAMES: tuple[str, ...] = (*_SHAPED, *_TABLE_25)


def preset_values(name: str, layout: BlockLayout) -> list[float]:
    """A preset's values for `layout`; a `ValidationError` for an unknown name or a table preset
    on a layout it is not defined for."""
    key = name.strip().upper()
    if key in _SHAPED:
        return _SHAPED[key](len(layout))
    if key in _TABLE_25:
        if len(layout) != len(SD_LAYOUT):
            raise ValidationError(
                f"preset {key} is defined for the 25 blocks of SD 1.x/2.x; this model has {len(layout)} blocks"
            )
        return list(_TABLE_25[key])
    raise ValidationError(f"unknown block weight preset {name!r}; presets: {', '.join(PRESET_NAMES)}")


def presets_for(layout: BlockLayout) -> dict[str, list[float]]:
    """Every preset that exists for `layout`, by name."""
    names = _SHAPED if len(layout) != len(SD_LAYOUT) else PRESET_NAMES
    return {name: preset_values(name, layout) for name in names}


# ------------------------------------------------------------------------------ parsing


def parse_block_weights(
    text: str | Sequence[float],
    layout: BlockLayout,
    *,
    default: float,
    base: float | None = None,
) -> BlockWeights:
    """Weights written as a full list, sparse ``block:value`` pairs or a preset name (see the module
    docstring). `default` fills blocks a sparse list leaves out; `base` is the alpha of keys outside
    the blocks (`default` when None, unless the text sets ``BASE``). Values must lie in [0, 1]."""
    n = len(layout)
    given_base: float | None = None
    if isinstance(text, str):
        spec = text.strip()
        if not spec:
            raise ValidationError("block weights are empty")
        if ":" in spec:
            values, given_base = _sparse(spec, layout, default)
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", spec):
            values = preset_values(spec, layout)
        else:
            values = [_number(part, "block weight") for part in spec.split(",")]
    else:
        values = [float(v) for v in text]
    if len(values) == n + 1:
        given_base, values = values[0], values[1:]
    if len(values) != n:
        raise ValidationError(
            f"block weights need {n} values ({layout.names[0]}..{layout.names[-1]}) for this model, got {len(values)}"
        )
    if base is not None and given_base is not None and abs(base - given_base) > 1e-12:
        raise ValidationError(f"the base alpha is given twice ({base} and BASE:{given_base})")
    final_base = base if base is not None else given_base if given_base is not None else default
    for name, value in [(BASE, final_base), *zip(layout.names, values, strict=True)]:
        if not 0.0 <= value <= 1.0:
            raise ValidationError(f"block weight {name} must be between 0 and 1, got {value}")
    return BlockWeights(layout, tuple(values), final_base)


def _number(text: str, what: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValidationError(f"{what}: {text.strip()!r} is not a number") from None


def _sparse(spec: str, layout: BlockLayout, default: float) -> tuple[list[float], float | None]:
    values = [default] * len(layout)
    names = {name: i for i, name in enumerate(layout.names)}
    base: float | None = None
    seen: set[int | str] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        block, sep, raw = part.partition(":")
        if not sep:
            raise ValidationError(f"block weights: {part!r} is not block:value")
        label = block.strip().upper()
        value = _number(raw, f"block weight {label}")
        if label == BASE:
            if BASE in seen:
                raise ValidationError("block weights: BASE is given twice")
            seen.add(BASE)
            base = value
            continue
        index = _index(label, names, len(layout))
        if index in seen:
            raise ValidationError(f"block weights: {layout.names[index]} is given twice")
        seen.add(index)
        values[index] = value
    return values, base


def _index(label: str, names: Mapping[str, int], count: int) -> int:
    if label.isdigit():
        index = int(label)
        if index >= count:
            raise ValidationError(f"block weights: index {index} is past the last block ({count - 1})")
        return index
    match = _NAME_RE.match(label)
    if match is not None:
        canonical = f"{match.group(1)}{int(match.group(2)):02d}"
        if canonical in names:
            return names[canonical]
    raise ValidationError(f"block weights: no block {label!r} in this model ({', '.join(names)})")
