"""Creating empty textual-inversion embeddings and hypernetworks in A1111's file layouts.

Embeddings (features.md 2): for SD 1.x / 2.x A1111's `.pt` (`string_to_token {"*": 265}`,
`string_to_param {"*": [n, width]}`, `name`, `step` 0, `sd_checkpoint`, `sd_checkpoint_name`).
SDXL has two text encoders, and A1111 reads the SDXL layout only when the file holds nothing but
`clip_l` / `clip_g` tensors, so an SDXL embedding is a `.safetensors` with exactly those two
(kohya's SDXL layout) and the step, name and checkpoint in the safetensors header metadata.
The vectors start as the token embeddings of the initialization text, spread over the N vectors as
A1111 picks them (vector i takes the init text's token `i * tokens // N`); an empty init text gives
zeros.

Hypernetworks: A1111's `.pt` dict: per enabled context width (int key) a pair of state dicts (keys,
values), each a Sequential built as `HypernetworkLayout.build` builds it, initialised by A1111's
named schemes, plus the metadata keys A1111 writes. A created hypernetwork has `activate_output`
False (A1111 never sets it when creating). Every write is atomic.
"""

from __future__ import annotations

import glob
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import nn

from modules.core.atomic import atomic_write_bytes
from modules.core.errors import ModelFileError, UserError
from modules.core.training import (
    HYPERNETWORK_INITS,
    CreateEmbeddingRequest,
    CreateHypernetworkRequest,
    CreateResult,
)
from modules.models.embeddings import EMBEDDING_SUFFIXES
from modules.models.hypernetworks import HypernetworkLayout, HypernetworkModule, activation_class

if TYPE_CHECKING:
    from modules.models.loader import StableDiffusionModel

MAX_VECTORS = 75
A1111_STAR_TOKEN = 265  # the id of "*" in CLIP's vocabulary; A1111 writes it in string_to_token
_NAME_EXTRA_CHARS = "._- "


# --------------------------------------------------------------------------- names and files


def checked_name(name: str, what: str) -> str:
    """The name as the file stem, or a `UserError`: A1111 keeps letters, digits and `._- `
    (it silently drops the rest; we refuse instead, so the file is named as asked)."""
    stripped = (name or "").strip()
    if not stripped:
        raise UserError(f"the new {what} needs a name")
    bad = sorted({c for c in stripped if not (c.isalnum() or c in _NAME_EXTRA_CHARS)})
    if bad:
        raise UserError(
            f"{what} name {stripped!r} is not a safe file name: use letters, digits, '.', '_', '-' and spaces "
            f"(not {' '.join(repr(c) for c in bad)})"
        )
    if stripped.startswith(".") or len(stripped) > 200:
        raise UserError(f"{what} name {stripped!r} is not a safe file name (a leading '.' or over 200 characters)")
    return stripped


def torch_bytes(data: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.getvalue()


def _refuse_existing(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and not overwrite:
        raise UserError(f"{what} file {path} already exists (tick 'Overwrite Old' to replace it)", status_code=409)


# --------------------------------------------------------------------------- embeddings


def _encoder_keys(model: StableDiffusionModel) -> list[str]:
    from modules.models.embeddings import encoder_slots

    return [slot.key for slot in encoder_slots(model)]


def init_vectors(model: StableDiffusionModel, init_text: str, count: int) -> dict[str, torch.Tensor]:
    """Per text-encoder key ("clip", or "clip_l" / "clip_g"), `count` vectors from the token
    embeddings of `init_text` (zeros when it has no tokens), float32 on the CPU."""
    out: dict[str, torch.Tensor] = {}
    for key, tokenizer, encoder in zip(_encoder_keys(model), model.tokenizers, model.text_encoders, strict=True):
        table: torch.Tensor = cast(nn.Embedding, encoder.get_input_embeddings()).weight
        ids: list[int] = tokenizer([init_text], add_special_tokens=False, truncation=False).input_ids[0]
        vec = torch.zeros(count, table.shape[1], dtype=torch.float32)
        if init_text and ids:
            with torch.no_grad():
                embedded = table[torch.tensor(ids, device=table.device)].detach().to("cpu", torch.float32)
            for i in range(count):
                vec[i] = embedded[i * len(ids) // count]
        out[key] = vec
    return out


def embedding_file_bytes(
    vectors: Mapping[str, torch.Tensor],
    *,
    name: str,
    step: int | None,
    sd_checkpoint: str | None,
    sd_checkpoint_name: str | None,
) -> bytes:
    """The bytes of an embedding file in the layout `embedding_suffix(vectors)` names."""
    if set(vectors) == {"clip"}:
        return torch_bytes(
            {
                "string_to_token": {"*": A1111_STAR_TOKEN},
                "string_to_param": {"*": vectors["clip"].detach().to("cpu", torch.float32).clone()},
                "name": name,
                "step": step,
                "sd_checkpoint": sd_checkpoint,
                "sd_checkpoint_name": sd_checkpoint_name,
            }
        )
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in vectors.items()}
    metadata = {"name": name}
    if step is not None:
        metadata["step"] = str(step)
    if sd_checkpoint:
        metadata["sd_checkpoint"] = sd_checkpoint
    if sd_checkpoint_name:
        metadata["sd_checkpoint_name"] = sd_checkpoint_name
    return save(tensors, metadata=metadata)


def embedding_suffix(keys: Sequence[str]) -> str:
    return ".pt" if list(keys) == ["clip"] else ".safetensors"


def safetensors_step(path: Path) -> int | None:
    """The `step` an SDXL embedding keeps in its safetensors header (None when absent)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None
    try:
        return int(meta["step"]) if "step" in meta else None
    except ValueError:
        return None


def create_embedding(
    request: CreateEmbeddingRequest, embeddings_dir: Path, model: StableDiffusionModel
) -> CreateResult:
    """A new embedding file of `num_vectors_per_token` vectors (A1111's `create_embedding`)."""
    name = checked_name(request.name, "embedding")
    count = int(request.num_vectors_per_token)
    if not 1 <= count <= MAX_VECTORS:
        raise UserError(f"number of vectors per token must be between 1 and {MAX_VECTORS} (got {count})")
    vectors = init_vectors(model, request.init_text or "", count)
    path = Path(embeddings_dir) / f"{name}{embedding_suffix(list(vectors))}"
    _refuse_existing(path, request.overwrite_old, "embedding")
    for other in sorted(Path(embeddings_dir).glob(f"{glob.escape(name)}.*")):
        if other != path and other.suffix.lower() in EMBEDDING_SUFFIXES and other.stem == name:
            raise UserError(f"another embedding named {name!r} exists: {other} (remove it or choose another name)")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = embedding_file_bytes(vectors, name=name, step=0, sd_checkpoint=None, sd_checkpoint_name=None)
    atomic_write_bytes(path, data)
    return CreateResult("embedding", name, str(path))


# --------------------------------------------------------------------------- hypernetworks


def init_module(module: nn.Module, weight_init: str, activation_func: str | None) -> None:
    """A1111's initialisation schemes, by name: "Normal" draws weights from N(0, 0.01) with zero
    biases; Xavier / Kaiming (uniform or normal) init the Linear weights with zero biases (Kaiming
    for leaky ReLU when that is the activation, else ReLU). LayerNorms always take N(0, 0.01)."""
    if weight_init not in HYPERNETWORK_INITS:
        raise UserError(f"unknown weight initialization {weight_init!r}; one of {', '.join(HYPERNETWORK_INITS)}")
    nonlinearity: Literal["leaky_relu", "relu"] = "leaky_relu" if activation_func == "leakyrelu" else "relu"
    with torch.no_grad():
        for layer in module.modules():
            if not isinstance(layer, (nn.Linear, nn.LayerNorm)):
                continue
            weight, bias = layer.weight, layer.bias
            if weight_init == "Normal" or isinstance(layer, nn.LayerNorm):
                nn.init.normal_(weight, mean=0.0, std=0.01)
            elif weight_init == "XavierUniform":
                nn.init.xavier_uniform_(weight)
            elif weight_init == "XavierNormal":
                nn.init.xavier_normal_(weight)
            elif weight_init == "KaimingUniform":
                nn.init.kaiming_uniform_(weight, nonlinearity=nonlinearity)
            else:
                nn.init.kaiming_normal_(weight, nonlinearity=nonlinearity)
            if bias is not None:
                nn.init.zeros_(bias)


def _numbers(values: Any, what: str) -> tuple[float, ...]:
    if isinstance(values, str):
        try:
            return tuple(float(v.strip()) for v in values.split(",") if v.strip())
        except ValueError as exc:
            raise UserError(f"{what} {values!r} is not a comma-separated list of numbers") from exc
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{what} {values!r} is not a list of numbers") from exc


def hypernetwork_layout(request: CreateHypernetworkRequest) -> tuple[HypernetworkLayout, tuple[float, ...]]:
    """The validated layout of a new hypernetwork and its dropout structure as A1111 stores it."""
    structure = _numbers(request.layer_structure, "layer structure")
    if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1:
        raise UserError(f"layer structure {list(structure)} must start and end with 1 (e.g. 1, 2, 1)")
    if any(not math.isfinite(v) or v <= 0 for v in structure):
        raise UserError(f"layer structure {list(structure)} must hold positive numbers")
    activation = request.activation_func or "linear"
    if activation != "linear":
        try:
            activation_class(activation)
        except ModelFileError as exc:
            raise UserError(f"unknown activation function {activation!r}") from exc
    if request.weight_init not in HYPERNETWORK_INITS:
        raise UserError(
            f"unknown weight initialization {request.weight_init!r}; one of {', '.join(HYPERNETWORK_INITS)}"
        )
    if request.use_dropout and request.dropout_structure:
        dropout = _numbers(request.dropout_structure, "dropout structure")
        if len(dropout) != len(structure):
            raise UserError(f"dropout structure {list(dropout)} must have as many entries as the layer structure")
        if any(not 0 <= v < 1 for v in dropout):
            raise UserError(f"dropout structure {list(dropout)} must hold probabilities from 0 up to (not) 1")
    else:
        dropout = tuple(0.0 for _ in structure)
    layout = HypernetworkLayout(
        layer_structure=structure,
        activation_func=activation,
        is_layer_norm=bool(request.add_layer_norm),
        dropout_structure=dropout,
        activate_output=False,
    )
    return layout, dropout


def _plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in module.state_dict().items()}


def hypernetwork_file_data(
    layers: Mapping[int, tuple[nn.Module, nn.Module]], metadata: Mapping[str, Any]
) -> dict[Any, Any]:
    """A1111's hypernetwork dict: int width -> (k state dict, v state dict), plus `metadata`."""
    data: dict[Any, Any] = {int(size): (_plain_state(k), _plain_state(v)) for size, (k, v) in layers.items()}
    for key, value in metadata.items():
        data[key] = value
    return data


def create_hypernetwork(request: CreateHypernetworkRequest, hypernetworks_dir: Path) -> CreateResult:
    """A new hypernetwork file (A1111's `create_hypernetwork`)."""
    name = checked_name(request.name, "hypernetwork")
    sizes = sorted({int(s) for s in request.enable_sizes})
    if not sizes or any(s <= 0 for s in sizes):
        raise UserError("choose at least one module size (768, 1024, 320, 640, 1280)")
    layout, dropout = hypernetwork_layout(request)
    path = Path(hypernetworks_dir) / f"{name}.pt"
    _refuse_existing(path, request.overwrite_old, "hypernetwork")
    layers: dict[int, tuple[nn.Module, nn.Module]] = {}
    for size in sizes:
        pair = (HypernetworkModule(layout.build(size)), HypernetworkModule(layout.build(size)))
        for module in pair:
            init_module(module, request.weight_init, layout.activation_func)
        layers[size] = pair
    metadata = {
        "step": 0,
        "name": name,
        "layer_structure": list(layout.layer_structure),
        "activation_func": layout.activation_func,
        "is_layer_norm": layout.is_layer_norm,
        "weight_initialization": request.weight_init,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
        "activate_output": False,
        "use_dropout": bool(request.use_dropout),
        "dropout_structure": list(dropout),
        "last_layer_dropout": dropout[-2] != 0 if len(dropout) >= 2 else False,
        "optional_info": None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, torch_bytes(hypernetwork_file_data(layers, metadata)))
    return CreateResult("hypernetwork", name, str(path))
