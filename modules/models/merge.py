"""Checkpoint merging (a1111.md 10.5): the state dicts of checkpoints A, B (and C) combined as
A1111's Checkpoint Merger does, written as a new checkpoint into the Stable-diffusion folder.

- "No interpolation": A alone (format conversion, float16, VAE baking, discarding weights);
- "Weighted sum": ``A * (1 - M) + B * M``;
- "Add difference": ``A + (B - C) * M``.

With block weights (`MergeRequest.block_weights`, `modules.core.merge_blocks`) M is the alpha
of the key's UNet block (IN00..OUTnn); keys outside the blocks take the base alpha. Checkpoints of
different families (SD 1.x with SDXL, ...) are refused from their headers, before any tensor is
read. LoRAs in `bake_loras` are then added into the result at their weights, through the same
delta code as at run time (`modules.models.lora_bake`), key by key as the result is written.

Only floating-point tensors whose key contains ``model`` are combined; everything else (integer
buffers, schedule tensors) is A's. Keys missing from B or C keep A's tensor. The first UNet conv of
an inpainting (9 input channels) or instruct-pix2pix (8) model A merged with a normal model B
(4 channels) combines the 4 channels both have and keeps A's extra ones; the other way round is
refused (A must be the special model). ``model_ema.*`` is dropped.

Memory: safetensors inputs are memory-mapped and read one tensor at a time, so the only full copy
held is the output. The output goes to a temp file beside the target and is renamed into place
(fsynced first), so a failed or interrupted merge leaves no partial checkpoint; an existing file
(an input above all) is never overwritten.

No gradio here: the UI (``modules/ui/merger.py``) builds a `MergeRequest` and runs
`merge_checkpoints` as a job on the single worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

from modules.core.atomic import atomic_write_bytes
from modules.core.errors import ModelFileError, ValidationError
from modules.core.jobs import (
    ADD_DIFFERENCE,
    CHECKPOINT_FORMATS,
    CONFIG_SOURCES,
    INTERP_METHODS,
    NO_INTERPOLATION,
    NO_VAE,
    WEIGHTED_SUM,
    ExtractLoraRequest,
    MergeRequest,
)
from modules.core.merge_blocks import BlockWeights, layout_of, parse_block_weights
from modules.core.results import MergeResult
from modules.core.safetensors_header import read_safetensors_header
from modules.models import families as fam
from modules.models.checkpoint_io import SAFETENSORS_SUFFIXES, read_state_dict
from modules.models.registry import CheckpointInfo, ModelRegistry

if TYPE_CHECKING:
    from modules.models.lora_bake import BakePlan as _BakePlan

log = logging.getLogger(__name__)


# kept from A whatever the method (A1111's checkpoint_dict_skip_on_merge)
SKIP_ON_MERGE = frozenset({"cond_stage_model.transformer.text_model.embeddings.position_ids"})
DROPPED_PREFIXES = ("model_ema.",)
VAE_PREFIX = "first_stage_model."
_VAE_IGNORED = ("loss", "model_ema.")

ProgressFn = Callable[[int, int, str], None]  # (done, total, what)
_LORA_FILE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
LoraFinder = Callable[[str], Path]  # a LoRA's name -> its file (raises NotFoundError)


# ------------------------------------------------------------------------------ validation


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


def validate_request(request: MergeRequest) -> None:
    """Everything that can be refused before any file is read; raises `ValidationError`."""
    if request.interp_method not in INTERP_METHODS:
        raise ValidationError(f"unknown interpolation method {request.interp_method!r}")
    if _blank(request.primary_model_name):
        raise ValidationError("Failed: Merging requires a primary model.")
    if request.interp_method in (WEIGHTED_SUM, ADD_DIFFERENCE) and _blank(request.secondary_model_name):
        raise ValidationError("Failed: Merging requires a secondary model.")
    if request.interp_method == ADD_DIFFERENCE and _blank(request.tertiary_model_name):
        raise ValidationError(f"Failed: Interpolation method ({ADD_DIFFERENCE}) requires a tertiary model.")
    if request.checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValidationError(f"unknown checkpoint format {request.checkpoint_format!r}")
    if request.config_source not in CONFIG_SOURCES:
        raise ValidationError(f"unknown config source {request.config_source!r}")
    if not 0.0 <= float(request.multiplier) <= 1.0:
        raise ValidationError("Multiplier (M) must be between 0 and 1")
    if request.block_weights.strip() and request.interp_method == NO_INTERPOLATION:
        raise ValidationError(f"block weights need a merge of two or three models, not {NO_INTERPOLATION!r}")
    if request.base_alpha is not None:
        if not request.block_weights.strip():
            raise ValidationError("a base alpha is used only with block weights")
        if not 0.0 <= float(request.base_alpha) <= 1.0:
            raise ValidationError("the base alpha must be between 0 and 1")
    for name, weight in request.bake_loras:
        if _blank(name):
            raise ValidationError("a LoRA to bake in needs a name")
        if not math.isfinite(float(weight)):
            raise ValidationError(f"LoRA {name}: the weight must be a number")
    if request.discard_weights:
        try:
            re.compile(request.discard_weights)
        except re.error as exc:
            raise ValidationError(f"Discard weights with matching name: bad regular expression: {exc}") from exc
    name = request.custom_name.strip()
    if name and (name in (".", "..") or "/" in name or "\\" in name or "\0" in name):
        raise ValidationError("Custom Name must be a plain file name (no folders)")
    if request.save_metadata and request.metadata_json.strip():
        try:
            extra = json.loads(request.metadata_json)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"Metadata in JSON format: {exc}") from exc
        if not isinstance(extra, dict):
            raise ValidationError("Metadata in JSON format must be a JSON object")


_MAX_RANK = 1024


def validate_extract_request(request: ExtractLoraRequest) -> None:
    """What can be refused about a LoRA extraction before any file is read."""
    if _blank(request.original_model_name) or _blank(request.tuned_model_name):
        raise ValidationError("Extracting a LoRA needs the original and the tuned model")
    if request.original_model_name.strip() == request.tuned_model_name.strip():
        raise ValidationError("The original and the tuned model are the same checkpoint")
    name = request.name.strip()
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValidationError("The LoRA needs a name: a plain file name (no folders)")
    if not 1 <= int(request.rank) <= _MAX_RANK:
        raise ValidationError(f"Rank must be between 1 and {_MAX_RANK}")
    if not 0 <= int(request.conv_rank) <= _MAX_RANK:
        raise ValidationError(f"Conv rank must be between 0 (none) and {_MAX_RANK}")
    if not 0.0 < float(request.clamp_quantile) <= 1.0:
        raise ValidationError("Clamp quantile must be above 0 and at most 1")
    if not float(request.min_diff) >= 0.0:
        raise ValidationError("Minimum difference must be 0 or more")


# ------------------------------------------------------------------------------ tensor maths


def merge_tensor(
    method: str, a: torch.Tensor, b: torch.Tensor | None, c: torch.Tensor | None, multiplier: float
) -> tuple[torch.Tensor, str]:
    """One tensor of the result, in A's dtype, and what was done ("merged", "kept", "inpainting",
    "instruct-pix2pix"). Arithmetic runs in float32 (float64 stays float64)."""
    if method == NO_INTERPOLATION or b is None or not a.is_floating_point() or not b.is_floating_point():
        return a, "kept"
    if method == ADD_DIFFERENCE:
        if c is None or not c.is_floating_point():
            return a, "kept"
        b_part, c_part = _overlap(b, c)
        if b_part is None or c_part is None:
            return a, "kept"
        if a.shape == b_part.shape:
            return _combine(a, b_part, c_part, multiplier), "merged"
        other = _work(b_part) - _work(c_part)
    else:
        if a.shape == b.shape:
            return _combine(a, b, None, multiplier), "merged"
        other = _work(b)
    kind = "merged"
    target = a
    if a.shape != other.shape:
        kind = _special_conv(a, other)
        if kind == "kept":
            log.warning("merge: shapes differ (%s vs %s); keeping A's tensor", tuple(a.shape), tuple(other.shape))
            return a, "kept"
        target = a[:, : other.shape[1]]
    wa = _work(target)
    combined = wa + other * multiplier if method == ADD_DIFFERENCE else wa * (1.0 - multiplier) + other * multiplier
    combined = combined.to(a.dtype)
    if target is a:
        return combined, kind
    out = a.clone()
    out[:, : other.shape[1]] = combined
    return out, kind


_CHUNK = 1 << 20  # elements combined at a time: the work buffers stay in cache and are reused


def _combine(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, multiplier: float) -> torch.Tensor:
    """``A * (1 - M) + B * M`` (c None) or ``A + (B - C) * M`` for tensors of one shape, in A's
    dtype: chunk by chunk through reused float32 (float64 if any input is) buffers, with the same
    operations in the same order as the whole-tensor formula, so the numbers are the same; no
    full-size float32 temporaries (fresh memory is slow to fault in, and a model is ~1e9 values)."""
    inputs = [t for t in (a, b, c) if t is not None]
    work = torch.float64 if any(t.dtype == torch.float64 for t in inputs) else torch.float32
    out = torch.empty(a.shape, dtype=a.dtype)
    flat_out = out.reshape(-1)
    flat = [t.reshape(-1) for t in inputs]
    total = flat_out.numel()
    size = min(_CHUNK, total)
    buffers = [torch.empty(size, dtype=work) for _ in flat]
    for start in range(0, total, _CHUNK):
        stop = min(start + _CHUNK, total)
        views = [buffer[: stop - start] for buffer in buffers]
        for view, source in zip(views, flat, strict=True):
            view.copy_(source[start:stop])
        if c is None:
            wa, wb = views
            result = wa.mul_(1.0 - multiplier).add_(wb.mul_(multiplier))
        else:
            wa, wb, wc = views
            result = wa.add_(wb.sub_(wc).mul_(multiplier))
        flat_out[start:stop].copy_(result)
    return out


def _work(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.to(torch.float32)


def _overlap(b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """B and C for ``B - C``: equal shapes, or a 9/8-channel B against a 4-channel C (B's
    first 4 channels)."""
    if b.shape == c.shape:
        return b, c
    if _same_but_channels(b, c) and b.shape[1] in (8, 9) and c.shape[1] == 4:
        return b[:, :4], c
    return None, None


def _same_but_channels(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dim() == b.dim() and a.dim() >= 2 and a.shape[0] == b.shape[0] and a.shape[2:] == b.shape[2:]


def _special_conv(a: torch.Tensor, other: torch.Tensor) -> str:
    if not _same_but_channels(a, other):
        return "kept"
    if a.shape[1] == 4 and other.shape[1] == 9:
        raise ValidationError("When merging inpainting model with a normal one, A must be the inpainting model.")
    if a.shape[1] == 4 and other.shape[1] == 8:
        raise ValidationError(
            "When merging instruct-pix2pix model with a normal one, A must be the instruct-pix2pix model."
        )
    if a.shape[1] == 9 and other.shape[1] == 4:
        return "inpainting"
    if a.shape[1] == 8 and other.shape[1] == 4:
        return "instruct-pix2pix"
    return "kept"


def to_half(t: torch.Tensor, enable: bool) -> torch.Tensor:
    """float32/float64 -> float16 when asked; other dtypes unchanged."""
    if enable and t.dtype in (torch.float32, torch.float64):
        return t.half()
    return t


# ------------------------------------------------------------------------------ reading


class TensorSource:
    """A checkpoint's tensors by key, read one at a time: safetensors through a memory map after
    the header check, pickles through the restricted loader (memory-mapped zip archives)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stack = contextlib.ExitStack()
        self._handle: Any = None
        self._dict: dict[str, torch.Tensor] | None = None
        self.metadata: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            header = read_safetensors_header(path)
            self.metadata = dict(header.metadata)
            self._keys = list(header.tensors)
            self.shapes = {k: tuple(v.shape) for k, v in header.tensors.items()}
            self.dtypes = {k: _dtype_of(v.dtype, path) for k, v in header.tensors.items()}
            try:
                self._handle = self._stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
            except Exception as exc:  # safetensors raises its own error types
                raise ModelFileError(f"{path}: cannot read safetensors file: {exc}") from exc
        else:
            self._dict = read_state_dict(path)
            self._keys = list(self._dict)
            self.shapes = {k: tuple(v.shape) for k, v in self._dict.items()}
            self.dtypes = {k: v.dtype for k, v in self._dict.items()}
        self._key_set = frozenset(self._keys)

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def get(self, key: str) -> torch.Tensor | None:
        if key not in self._key_set:
            return None
        if self._dict is not None:
            return self._dict[key]
        tensor: torch.Tensor = self._handle.get_tensor(key)
        return tensor

    def close(self) -> None:
        self._stack.close()
        self._dict = None

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_metadata(path: Path) -> dict[str, str]:
    """A checkpoint's safetensors `__metadata__` (empty for other formats)."""
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES or not path.is_file():
        return {}
    return dict(read_safetensors_header(path).metadata)


def vae_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A standalone VAE's tensors under their checkpoint names (``first_stage_model.*``)."""
    found: dict[str, torch.Tensor] = {}
    for key, tensor in read_state_dict(path).items():
        if key.startswith(_VAE_IGNORED):
            continue
        bare = key.removeprefix(VAE_PREFIX)
        found[VAE_PREFIX + bare] = tensor
    return found


# ------------------------------------------------------------------------------ naming


def _num(value: float) -> str:
    rounded = round(float(value), 2)
    return str(int(rounded)) if rounded == int(rounded) and abs(rounded) >= 1 else str(rounded)


def auto_name(
    method: str,
    multiplier: float,
    a: str,
    b: str | None,
    c: str | None,
    *,
    block_weighted: bool = False,
    loras: Sequence[str] = (),
) -> str:
    """A1111's automatic name (without suffix): ``0.7(a) + 0.3(b)``, ``a + 0.3(b - c)``, or ``a``;
    a block-weighted merge has no single M: ``bw(a, b)`` / ``a + bw(b - c)``; baked LoRAs follow
    as ``+lora(name)``."""
    if method == WEIGHTED_SUM:
        name = f"bw({a}, {b})" if block_weighted else f"{_num(1 - multiplier)}({a}) + {_num(multiplier)}({b})"
    elif method == ADD_DIFFERENCE:
        name = f"{a} + bw({b} - {c})" if block_weighted else f"{a} + {_num(multiplier)}({b} - {c})"
    else:
        name = a
    for lora in loras:
        name += f" +lora({Path(lora).name.split('.')[0] if lora.endswith(_LORA_FILE_SUFFIXES) else lora})"
    return name


def output_path(
    output_dir: Path, base: str, fmt: str, *, inpainting: bool = False, instruct_pix2pix: bool = False
) -> Path:
    name = base
    if inpainting:
        name += ".inpainting"
    if instruct_pix2pix:
        name += ".instruct-pix2pix"
    return output_dir / f"{name}.{fmt}"


# ------------------------------------------------------------------------------ the merge


@dataclass
class _Inputs:
    a: CheckpointInfo
    b: CheckpointInfo | None
    c: CheckpointInfo | None
    vae: Path | None


def _resolve(request: MergeRequest, registry: ModelRegistry) -> _Inputs:
    def find(query: str | None) -> CheckpointInfo | None:
        if _blank(query):
            return None
        assert query is not None
        info = registry.find_checkpoint(query)
        if info.is_folder:
            raise ValidationError(f"{info.name}: diffusers folders cannot be merged; choose a single-file checkpoint")
        return info

    method = request.interp_method
    a = find(request.primary_model_name)
    assert a is not None
    b = find(request.secondary_model_name) if method != NO_INTERPOLATION else None
    c = find(request.tertiary_model_name) if method == ADD_DIFFERENCE else None
    vae = None
    if request.bake_in_vae and request.bake_in_vae != NO_VAE:
        vae = registry.find_vae(request.bake_in_vae).filename
    return _Inputs(a, b, c, vae)


def _config_for(request: MergeRequest, inputs: _Inputs) -> Path | None:
    def cfg(info: CheckpointInfo | None) -> Path | None:
        return info.config_yaml if info is not None else None

    source = request.config_source
    if source == CONFIG_SOURCES[0]:
        return cfg(inputs.a) or cfg(inputs.b) or cfg(inputs.c)
    if source == "B":
        return cfg(inputs.b)
    if source == "C":
        return cfg(inputs.c)
    return None


def _build_metadata(
    request: MergeRequest,
    inputs: _Inputs,
    registry: ModelRegistry,
    result_flags: dict[str, bool],
    weights: BlockWeights | None = None,
) -> dict[str, str]:
    metadata: dict[str, str] = {"format": "pt"}
    if not request.save_metadata:
        return metadata
    infos = [i for i in (inputs.a, inputs.b, inputs.c) if i is not None]
    if request.copy_metadata_fields:
        for info in infos:
            metadata.update(read_metadata(info.filename))
    if request.add_merge_recipe:
        recipe: dict[str, Any] = {
            "type": "webui",
            "primary_model_hash": registry.ensure_hash(inputs.a),
            "secondary_model_hash": registry.ensure_hash(inputs.b) if inputs.b else None,
            "tertiary_model_hash": registry.ensure_hash(inputs.c) if inputs.c else None,
            "interp_method": request.interp_method,
            "multiplier": float(request.multiplier),
            "save_as_half": bool(request.save_as_half),
            "custom_name": request.custom_name,
            "config_source": CONFIG_SOURCES.index(request.config_source),
            "bake_in_vae": request.bake_in_vae or NO_VAE,
            "discard_weights": request.discard_weights,
            "is_inpainting": result_flags["inpainting"],
            "is_instruct_pix2pix": result_flags["instruct-pix2pix"],
        }
        if weights is not None:
            recipe["block_weights"] = weights.text()
            recipe["base_alpha"] = weights.base
        if request.bake_loras:
            recipe["bake_loras"] = [[name, float(weight)] for name, weight in request.bake_loras]
        metadata["sd_merge_recipe"] = json.dumps(recipe)
        models: dict[str, Any] = {}
        for info in infos:
            own = read_metadata(info.filename)
            sha = registry.ensure_hash(info) or info.name
            models[sha] = {
                "name": info.name,
                "legacy_hash": info.old_hash,
                "sd_merge_recipe": _json_or_none(own.get("sd_merge_recipe")),
            }
            earlier = _json_or_none(own.get("sd_merge_models"))
            if isinstance(earlier, dict):
                models.update(earlier)
        metadata["sd_merge_models"] = json.dumps(models)
    if request.metadata_json.strip():
        extra = json.loads(request.metadata_json)
        metadata.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return metadata


def _json_or_none(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def merge_checkpoints(
    request: MergeRequest,
    registry: ModelRegistry,
    output_dir: Path,
    *,
    progress: ProgressFn | None = None,
    find_lora: LoraFinder | None = None,
    target: Path | None = None,
) -> MergeResult:
    """Merge as the request asks, write the result into `output_dir` (atomically, never over an
    existing file), copy the config and rescan the registry. `target` names the file instead of
    the request's name rules (the command line's ``--out``); `find_lora` resolves `bake_loras`.
    Raises `ValidationError` / `NotFoundError` / `ModelFileError` for the user; an exception from
    `progress` (an interrupt) aborts the merge and leaves nothing behind."""
    validate_request(request)
    started = time.perf_counter()
    inputs = _resolve(request, registry)
    input_paths = {i.filename.resolve() for i in (inputs.a, inputs.b, inputs.c) if i is not None}
    method = request.interp_method
    multiplier = float(request.multiplier)

    def report(done: int, total: int, what: str) -> None:
        if progress is not None:
            progress(done, total, what)

    discard = re.compile(request.discard_weights) if request.discard_weights else None
    safetensors_out = request.checkpoint_format == "safetensors"
    merged = discarded = 0
    warnings: list[str] = []
    with contextlib.ExitStack() as stack:
        src_a = stack.enter_context(TensorSource(inputs.a.filename))
        src_b = stack.enter_context(TensorSource(inputs.b.filename)) if inputs.b else None
        src_c = stack.enter_context(TensorSource(inputs.c.filename)) if inputs.c else None
        # everything below up to the first tensor read works from the headers alone
        _check_families(src_a, src_b, src_c)
        weights = _block_weights(request, src_a)
        bake = _bake_plan(request, src_a, find_lora, warnings)
        flags = _expected_flags(src_a.shapes, src_b.shapes if src_b else {})
        if target is None:
            target = _target_for(request, inputs, output_dir, flags, weights)
        else:
            output_dir = target.parent
        _check_target(target, input_paths)

        all_keys = src_a.keys()
        keys = [k for k in all_keys if not k.startswith(DROPPED_PREFIXES) and not (discard and discard.search(k))]
        discarded = len(all_keys) - len(keys)
        vae = {k: v for k, v in vae_tensors(inputs.vae).items() if k in src_a.shapes} if inputs.vae else {}
        plan = [(k, _half_dtype(src_a.dtypes[k], request.save_as_half), src_a.shapes[k]) for k in keys]
        metadata = _build_metadata(request, inputs, registry, flags, weights) if safetensors_out else {}
        output_dir.mkdir(parents=True, exist_ok=True)
        out = stack.enter_context(_Output(target, plan, metadata if safetensors_out else None))
        total = len(keys)
        report(0, total, "Merging")
        for done, (key, dtype, _shape) in enumerate(plan, start=1):
            if key in vae:
                tensor, kind = vae[key], "baked"
            else:
                a = src_a.get(key)
                assert a is not None
                tensor, kind = a, "kept"
                if src_b is not None and "model" in key and key not in SKIP_ON_MERGE and key in src_b:
                    c = src_c.get(key) if src_c is not None else None
                    if method != ADD_DIFFERENCE or c is not None:
                        alpha = weights.alpha_for(key) if weights is not None else multiplier
                        tensor, kind = merge_tensor(method, a, src_b.get(key), c, alpha)
            if kind not in ("kept", "baked"):
                merged += 1
                if kind in flags and not flags[kind]:
                    raise ModelFileError(f"{key}: unexpected {kind} first convolution")
            if bake is not None and bake.touches(key):
                tensor = bake.apply(key, tensor)
            out.add(key, to_half(tensor, request.save_as_half).to(dtype))
            report(done, total, "Merging")
        report(total, total, "Saving")
        out.commit()
        count = len(plan)

    config = _config_for(request, inputs)
    if config is not None:
        atomic_write_bytes(target.with_suffix(".yaml"), config.read_bytes())
    registry.refresh()
    seconds = time.perf_counter() - started
    for warning in warnings:
        log.warning("merge into %s: %s", target.name, warning)
    log.info("merged %s into %s in %.1f s (%d tensors, %d combined)", method, target, seconds, count, merged)
    return MergeResult(
        path=target,
        tensors=count,
        merged=merged,
        discarded=discarded,
        is_inpainting=flags["inpainting"],
        is_instruct_pix2pix=flags["instruct-pix2pix"],
        seconds=seconds,
        metadata=metadata,
        warnings=tuple(warnings),
    )


def _check_families(a: TensorSource, *others: TensorSource | None) -> None:
    """Refuse checkpoints of different base architectures (from their headers alone)."""
    family_a = fam.detect_family(a.shapes, a.path)
    for other in others:
        if other is None:
            continue
        family = fam.detect_family(other.shapes, other.path)
        if family.base != family_a.base:
            raise ValidationError(
                f"cannot merge {a.path.name} ({family_a.label}) with {other.path.name} ({family.label}): "
                "the models must be of the same kind"
            )


def _block_weights(request: MergeRequest, src_a: TensorSource) -> BlockWeights | None:
    if not request.block_weights.strip():
        return None
    return parse_block_weights(
        request.block_weights,
        layout_of(src_a.shapes),
        default=float(request.multiplier),
        base=None if request.base_alpha is None else float(request.base_alpha),
    )


def _bake_plan(
    request: MergeRequest, src_a: TensorSource, find_lora: LoraFinder | None, warnings: list[str]
) -> _BakePlan | None:
    if not request.bake_loras:
        return None
    if find_lora is None:
        raise ValidationError("baking LoRAs is not available here (no LoRA folder)")
    # imported here: the LoRA code pulls in transformers (seconds), which a plain merge never needs
    from modules.models.lora_bake import BakePlan
    from modules.models.lora_formats import read_network

    networks = [(read_network(find_lora(name)), float(weight)) for name, weight in request.bake_loras]
    plan = BakePlan(src_a.shapes, src_a.path, networks)
    for (name, _weight), report in zip(request.bake_loras, plan.report.networks, strict=True):
        if report.matched == 0:  # a LoRA for another kind of model: refused, not a useless copy
            raise ValidationError(
                f"LoRA {name}: no module of it fits {src_a.path.name}; is it for another kind of model?"
            )
    warnings.extend(plan.report.warnings())
    return plan


def _target_for(
    request: MergeRequest,
    inputs: _Inputs,
    output_dir: Path,
    flags: Mapping[str, bool],
    weights: BlockWeights | None,
) -> Path:
    base = request.custom_name.strip() or auto_name(
        request.interp_method,
        float(request.multiplier),
        inputs.a.model_name,
        inputs.b.model_name if inputs.b else None,
        inputs.c.model_name if inputs.c else None,
        block_weighted=weights is not None,
        loras=[name for name, _ in request.bake_loras],
    )
    return output_path(
        output_dir,
        base,
        request.checkpoint_format,
        inpainting=flags["inpainting"],
        instruct_pix2pix=flags["instruct-pix2pix"],
    )


def _check_target(target: Path, input_paths: set[Path]) -> None:
    if target.resolve() in input_paths:
        raise ValidationError(f"{target.name}: refusing to overwrite an input checkpoint; choose another name")
    if target.exists():
        raise ValidationError(f"{target.name} already exists; choose another Custom Name")


def _expected_flags(a: Mapping[str, tuple[int, ...]], b: Mapping[str, tuple[int, ...]]) -> dict[str, bool]:
    """Whether the result will be an inpainting / instruct-pix2pix model, from A's and B's shapes."""
    flags = {"inpainting": False, "instruct-pix2pix": False}
    for key, shape in a.items():
        other = b.get(key)
        if other is None or "model" not in key or len(shape) < 2 or shape == other or len(other) != len(shape):
            continue
        if shape[0] == other[0] and shape[2:] == other[2:] and other[1] == 4:
            if shape[1] == 9:
                flags["inpainting"] = True
            elif shape[1] == 8:
                flags["instruct-pix2pix"] = True
    return flags


# safetensors dtype names (the file format's own spelling)
_ST_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_ST_NAMES = {name: dtype for dtype, name in _ST_DTYPES.items()}


def _dtype_of(name: str, path: Path) -> torch.dtype:
    try:
        return _ST_NAMES[name]
    except KeyError:
        raise ModelFileError(f"{path}: tensors of type {name} cannot be merged") from None


def _half_dtype(dtype: torch.dtype, enable: bool) -> torch.dtype:
    return torch.float16 if enable and dtype in (torch.float32, torch.float64) else dtype


class _Output:
    """The result, written to a hidden temp file beside `target` while the merge runs and linked
    into place by `commit()` (never over an existing file). safetensors are streamed: the header
    is written first from the plan (key, dtype, shape), then each tensor as it is computed, so no
    copy of the whole model is held. `.ckpt` output (``metadata is None``) is collected and
    pickled at the end. Leaving the `with` block without `commit()` removes the temp file."""

    def __init__(
        self, target: Path, plan: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None
    ) -> None:
        self.target = target
        self.plan = plan
        self.metadata = metadata
        self.tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        self._index = 0
        self._tensors: dict[str, torch.Tensor] = {}
        self._fh = open(self.tmp, "xb")  # noqa: SIM115 - closed in commit()/__exit__
        if metadata is not None:
            self._fh.write(_safetensors_header(plan, metadata))

    def add(self, key: str, tensor: torch.Tensor) -> None:
        name, dtype, shape = self.plan[self._index]
        if key != name or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ModelFileError(
                f"{key}: {tensor.dtype} {tuple(tensor.shape)} does not fit the planned {dtype} {shape}"
            )
        self._index += 1
        if self.metadata is None:
            self._tensors[key] = tensor.clone() if tensor.numel() else tensor
            return
        if tensor.numel():
            self._fh.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)

    def commit(self) -> None:
        if self._index != len(self.plan):
            raise ModelFileError(f"{self.target.name}: {len(self.plan) - self._index} tensors missing")
        if self.metadata is None:
            torch.save({"state_dict": self._tensors}, self._fh)
            self._tensors = {}
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        try:
            os.link(self.tmp, self.target)
        except FileExistsError as exc:
            raise ValidationError(f"{self.target.name} already exists; choose another Custom Name") from exc
        except OSError:  # file systems without hard links: a rename (the target was checked)
            if self.target.exists():
                raise ValidationError(f"{self.target.name} already exists; choose another Custom Name") from None
            os.replace(self.tmp, self.target)
        _fsync_dir(self.target.parent)

    def __enter__(self) -> _Output:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._fh.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


def _safetensors_header(plan: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key, dtype, shape in plan:
        size = torch.empty((), dtype=dtype).element_size()
        for dim in shape:
            size *= dim
        header[key] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return len(raw).to_bytes(8, "little") + raw


def write_checkpoint(target: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    """Write `tensors` as safetensors (with `metadata`) or, with ``metadata=None``, as a `.ckpt`,
    the same way a merge does (temp file, linked into place, never over an existing file)."""
    plan = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    with _Output(target, plan, metadata) as out:
        for key, tensor in tensors.items():
            out.add(key, tensor)
        out.commit()


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def iter_titles(registry: ModelRegistry) -> Iterator[str]:
    """Checkpoint titles as in the top-bar dropdown (single files only: folders cannot be merged)."""
    for info in registry.checkpoints():
        if not info.is_folder:
            yield info.title
