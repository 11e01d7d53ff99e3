"""A LoRA extracted from the difference of two single-file checkpoints (SVD), in the kohya format.

What it does is what kohya sd-scripts' `extract_lora_from_models` does (its behaviour, not its
code): for every layer a kohya LoRA trains, `diff = tuned - original` in float32, flattened to
[out, in·k·k]; `U, S, Vh = svd(diff)`; the first `r` singular triplets are kept (`r` = the rank,
at most the matrix's smaller side), `U·S` is `lora_up`, `Vh` is `lora_down`; both are clamped to
±(the `clamp_quantile` quantile of their absolute values) unless it is 1.0; `alpha` = `r`, so the
file's scale is 1 and `up @ down` is the best rank-`r` approximation of the difference.

Layers: every Linear and 1x1 Conv2d of the UNet's transformer blocks (`Transformer2DModel`:
proj_in/out, attention q/k/v/out, feed-forward); with `conv_rank > 0` also the resnet blocks and
down/upsamplers (their 3x3 convs at `conv_rank`, their Linears and 1x1 convs at `rank`); the text
encoders' q/k/v/out_proj, fc1 and fc2, unless no element of any text-encoder difference exceeds
`min_diff` (then the file has no text-encoder modules, and the result says so).

Module names as kohya writes them: SD 1.x/2.x `lora_unet_<diffusers path, . -> _>` and
`lora_te_text_model_...`; SDXL `lora_unet_<SGM/LDM path>`, `lora_te1_` (CLIP-L), `lora_te2_`
(OpenCLIP-bigG); the SDXL refiner as SDXL (its one encoder is bigG: `lora_te2_`). Metadata: the
`ss_*` keys our network registry and A1111 read (`ss_network_module=networks.lora`, dim, alpha,
`ss_network_args` with the conv rank, `ss_base_model_version`, `ss_v2`).

Memory: both files are read one tensor at a time (`merge.TensorSource`: safetensors memory-mapped)
and one layer's difference is in memory at a time; only the (small) result is collected. The file
is written atomically at the end (`merge.write_checkpoint`): an interrupt (`progress` raising)
leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modules.core.errors import ModelFileError, ValidationError
from modules.models import families as fam
from modules.models.checkpoint_layers import CheckpointLayers, FileSlot, LayerParam, is_lora_target, tower_name
from modules.models.lora_keys import UNET, unet_ldm_names
from modules.models.merge import TensorSource, write_checkpoint

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]  # (done, total, what)

_UNET_TRANSFORMER = frozenset({"Transformer2DModel"})
_UNET_CONV_BLOCKS = frozenset({"ResnetBlock2D", "Downsample2D", "Upsample2D"})
_QUANTILE_LIMIT = 1 << 24  # torch.quantile's input size limit


@dataclass
class ExtractResult:
    path: Path
    modules: int  # LoRA modules written
    text_encoder_skipped: bool  # every text-encoder difference was below `min_diff`
    text_encoder_max_diff: float  # the largest |tuned - original| element over the text encoders
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Layer:
    param: LayerParam
    slot: FileSlot
    shape: tuple[int, ...]
    rank: int
    module_key: str

    @property
    def is_text_encoder(self) -> bool:
        return self.param.component != UNET


def extract_lora(
    original: Path,
    tuned: Path,
    target: Path,
    *,
    rank: int,
    conv_rank: int = 0,
    clamp_quantile: float = 0.99,
    min_diff: float = 0.01,
    save_fp16: bool = False,
    progress: ProgressFn | None = None,
) -> ExtractResult:
    """Write the LoRA of `tuned - original` to `target` (a new `.safetensors` file) and say
    what was written. `ValidationError` for bad arguments, files of different families or
    shapes, an existing target (all before any tensor is read); an exception from `progress`
    aborts and leaves no file."""
    started = time.perf_counter()
    original, tuned, target = Path(original), Path(tuned), Path(target)
    _check_arguments(original, tuned, target, rank, conv_rank, clamp_quantile, min_diff)
    with TensorSource(original) as src_a, TensorSource(tuned) as src_b:
        family = _same_family(src_a, src_b)
        layers = CheckpointLayers(src_a.shapes, original, family)
        plan = _plan(layers, rank, conv_rank)
        for layer in plan:
            shape_b = src_b.shapes.get(layer.slot.key)
            if shape_b is None or tuple(shape_b) != tuple(src_a.shapes[layer.slot.key]):
                raise ValidationError(
                    f"{tuned.name}: {layer.slot.key} is {shape_b} there and {src_a.shapes[layer.slot.key]} in "
                    f"{original.name}: the checkpoints are not the same architecture"
                )
        reader_a, reader_b = _SlotReader(src_a), _SlotReader(src_b)
        dtype = torch.float16 if save_fp16 else torch.float32
        te_out: dict[str, torch.Tensor] = {}
        unet_out: dict[str, torch.Tensor] = {}
        te_max = 0.0
        total = len(plan)

        def report(done: int, what: str) -> None:
            if progress is not None:
                progress(done, total, what)

        report(0, "Extracting")
        for done, layer in enumerate(plan, start=1):
            diff = reader_b.read(layer) - reader_a.read(layer)
            if layer.is_text_encoder:
                te_max = max(te_max, float(diff.abs().max()) if diff.numel() else 0.0)
            up, down = low_rank(diff, layer.rank, clamp_quantile)
            del diff
            out = te_out if layer.is_text_encoder else unet_out
            out[f"{layer.module_key}.lora_up.weight"] = up.to(dtype).contiguous()
            out[f"{layer.module_key}.lora_down.weight"] = down.to(dtype).contiguous()
            out[f"{layer.module_key}.alpha"] = torch.tensor(float(down.shape[0]), dtype=dtype)
            report(done, layer.module_key)
    skipped = bool(te_out) and te_max <= min_diff
    if skipped:
        log.info("extract: the text encoders differ by at most %g (<= %g); U-Net only", te_max, min_diff)
        te_out = {}
    tensors = {**te_out, **unet_out}
    modules = sum(1 for k in tensors if k.endswith(".lora_down.weight"))
    if not modules:
        raise ValidationError("nothing to extract: no layer of the checkpoints is a LoRA target")
    metadata = lora_metadata(family, rank, conv_rank, target.stem)
    report(total, "Saving")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(target, tensors, metadata)
    seconds = time.perf_counter() - started
    log.info("extracted a rank-%d LoRA (%d modules) from %s - %s in %.1f s", rank, modules, tuned, original, seconds)
    return ExtractResult(target, modules, skipped, te_max, seconds, metadata)


# ------------------------------------------------------------------------------------ checks


def _check_arguments(
    original: Path, tuned: Path, target: Path, rank: int, conv_rank: int, clamp_quantile: float, min_diff: float
) -> None:
    if rank < 1:
        raise ValidationError("rank must be at least 1")
    if conv_rank < 0:
        raise ValidationError("conv rank must be 0 (no 3x3 convolutions) or more")
    if not 0.0 < clamp_quantile <= 1.0:
        raise ValidationError("clamp quantile must be in (0, 1]")
    if min_diff < 0:
        raise ValidationError("minimum difference must not be negative")
    for path in (original, tuned):
        if not path.is_file():
            raise ValidationError(f"{path}: not a single-file checkpoint")
    if target.suffix.lower() != ".safetensors":
        raise ValidationError(f"{target.name}: the LoRA is written as .safetensors")
    if target.exists() or target.resolve() in (original.resolve(), tuned.resolve()):
        raise ValidationError(f"{target.name} already exists; choose another name")


def _same_family(a: TensorSource, b: TensorSource) -> fam.ModelFamily:
    family_a = fam.detect_family(a.shapes, a.path)
    family_b = fam.detect_family(b.shapes, b.path)
    if family_a != family_b:
        raise ValidationError(
            f"cannot extract a LoRA between a {family_a.label} checkpoint ({a.path.name}) "
            f"and a {family_b.label} one ({b.path.name})"
        )
    return family_a


# ------------------------------------------------------------------------------------- layers


def module_key(layers: CheckpointLayers, param: LayerParam, ldm: dict[str, str]) -> str:
    """The kohya module key of a layer (see the module doc)."""
    family = layers.family
    if param.component == UNET:
        name = ldm[param.name] if family.is_sdxl else param.name
        return "lora_unet_" + name.replace(".", "_")
    if family.base == "sdxl":
        prefix = "lora_te1_" if param.component == "text_encoder" else "lora_te2_"
    elif family.base == "sdxl-refiner":
        prefix = "lora_te2_"
    else:
        prefix = "lora_te_"
    return prefix + ("text_model." + tower_name(param.name)).replace(".", "_")


def _plan(layers: CheckpointLayers, rank: int, conv_rank: int) -> list[_Layer]:
    """The layers to extract, text encoders first, each with its rank and kohya name."""
    ldm = unet_ldm_names(layers.model.unet)
    chosen: list[tuple[LayerParam, int]] = []
    for component, root in layers.components().items():
        if component == UNET:
            continue
        for name, module in root.named_modules():
            if is_lora_target(component, name, module):
                chosen.append((LayerParam(component, name), rank))
    blocks = _UNET_TRANSFORMER | (_UNET_CONV_BLOCKS if conv_rank > 0 else frozenset())
    for block_name, block in layers.model.unet.named_modules():
        if type(block).__name__ not in blocks:
            continue
        for child, module in block.named_modules():
            if not child or not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                continue
            one_by_one = isinstance(module, torch.nn.Linear) or tuple(module.kernel_size) == (1, 1)
            if not one_by_one and conv_rank <= 0:
                continue
            chosen.append((LayerParam(UNET, f"{block_name}.{child}"), rank if one_by_one else conv_rank))
    plan: list[_Layer] = []
    for param, layer_rank in chosen:
        slot = layers.slot(param.component, param.name)
        if slot is None:  # pragma: no cover - CheckpointLayers refuses files missing a target
            raise ModelFileError(f"{layers.source}: {param.param_name} has no place in the file")
        key = module_key(layers, param, ldm)
        plan.append(_Layer(param, slot, layers.param_shape(param), layer_rank, key))
    return plan


class _SlotReader:
    """A layer's weight from one file as float32 in the layer's shape; the last file tensor is
    kept, so the three rows of a fused OpenCLIP q/k/v read it once."""

    def __init__(self, source: TensorSource) -> None:
        self.source = source
        self._last: tuple[str, torch.Tensor] | None = None

    def read(self, layer: _Layer) -> torch.Tensor:
        key = layer.slot.key
        if self._last is None or self._last[0] != key:
            self._last = None
            tensor = self.source.get(key)
            if tensor is None:  # pragma: no cover - the plan came from this file's keys
                raise ModelFileError(f"{self.source.path}: {key} is missing")
            self._last = (key, tensor)
        return layer.slot.view(self._last[1]).to(torch.float32).reshape(layer.shape)


# --------------------------------------------------------------------------------------- math


def low_rank(diff: torch.Tensor, rank: int, clamp_quantile: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) of the best rank-`rank` approximation of `diff` (float32): up [out, r] and
    down [r, in] for a matrix, up [out, r, 1, 1] and down [r, in, k, l] for a conv weight;
    `r` = min(rank, out, in·k·l). Clamped as the module doc says."""
    out = int(diff.shape[0])
    mat = diff.reshape(out, -1).to(torch.float32)
    r = max(1, min(rank, out, int(mat.shape[1])))
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    up = u[:, :r] * s[:r]
    down = vh[:r]
    if clamp_quantile < 1.0:
        hi = _quantile(torch.cat([up.reshape(-1), down.reshape(-1)]).abs(), clamp_quantile)
        up = up.clamp(-hi, hi)
        down = down.clamp(-hi, hi)
    if diff.dim() == 4:
        return up.reshape(out, r, 1, 1), down.reshape(r, *diff.shape[1:])
    return up, down


def _quantile(values: torch.Tensor, q: float) -> float:
    """`torch.quantile` (linear interpolation), also for inputs above its size limit."""
    if values.numel() <= _QUANTILE_LIMIT:
        return float(torch.quantile(values, q))
    ordered = values.sort().values
    position = q * (ordered.numel() - 1)
    low = math.floor(position)
    high = min(low + 1, ordered.numel() - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


# ----------------------------------------------------------------------------------- metadata

_BASE_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "sdxl-refiner": "sdxl_refiner_v1-0"}


def lora_metadata(family: fam.ModelFamily, rank: int, conv_rank: int, name: str) -> dict[str, str]:
    """The `ss_*` keys kohya writes for an extracted LoRA (strings, as safetensors holds them)."""
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(rank)),
        "ss_base_model_version": _BASE_VERSIONS[family.base],
        "ss_v2": str(family.base == "sd2"),
        "ss_output_name": name,
    }
    if conv_rank > 0:
        metadata["ss_network_args"] = json.dumps({"conv_dim": str(conv_rank), "conv_alpha": str(float(conv_rank))})
    return metadata


__all__ = ["ExtractResult", "extract_lora", "lora_metadata", "low_rank", "module_key"]
