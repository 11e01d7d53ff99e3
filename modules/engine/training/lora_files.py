"""Writing a trained LoRA as kohya writes it: `.safetensors` with `ss_*` training metadata.

Tensors: `<key>.lora_down.weight`, `<key>.lora_up.weight`, `<key>.alpha` per module
(`LoraNetwork.kohya_state_dict`) in the save dtype (fp16 by default, or fp32 / bf16).

Metadata: every value a string, as kohya's `train_network.py` writes them (`str()` of the option,
`json.dumps` for the dict-valued ones: `ss_tag_frequency` {dataset dir: {tag: count}},
`ss_bucket_info`, `ss_dataset_dirs`, `ss_network_args`). The hashes A1111 and the Additional
Networks extension show are precomputed into the header, as kohya does:
`sshs_model_hash` is the SHA-256 of the tensor data (everything after the header: the "addnet"
hash, which a header change cannot alter, so it equals `hashes.addnet_hash_safetensors` of the
written file) and `sshs_legacy_hash` the first 8 hex of the SHA-256 of 0x10000 bytes at 0x100000
of the file serialised with the training metadata only (the "legacy" addnet hash).

Writes are atomic (temp file + rename): a reader, or a crash, sees the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from modules.core.atomic import atomic_write_bytes
from modules.core.training import LoraTrainRequest
from modules.models.loader import StableDiffusionModel

__all__ = [
    "SAVE_DTYPES",
    "LoraRunFacts",
    "base_model_version",
    "legacy_hash",
    "lora_metadata",
    "read_metadata",
    "save_lora",
    "tensor_data_hash",
]

SAVE_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}
NETWORK_MODULE = "networks.lora"
_LEGACY_OFFSET, _LEGACY_LENGTH = 0x100000, 0x10000


def base_model_version(model: StableDiffusionModel) -> str:
    """kohya's `ss_base_model_version`: sd_v1, sd_v2, sd_v2_v (v-parameterization), sdxl_base_v1-0."""
    base = model.family.base
    if base == "sdxl":
        return "sdxl_base_v1-0"
    if base == "sdxl-refiner":
        return "sdxl_refiner_v1-0"
    if base == "sd2":
        return "sd_v2_v" if model.prediction_type == "v_prediction" else "sd_v2"
    return "sd_v1"


@dataclass
class LoraRunFacts:
    """What the trainer knows about the run beyond the request (for the metadata)."""

    session_id: str
    started_at: float
    num_train_images: int  # images with repeats, as kohya counts them
    num_epochs: int
    epoch: int
    steps: int
    max_train_steps: int
    seed: int
    num_batches_per_epoch: int = 0
    tag_frequency: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    dataset_dirs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # dir -> n_repeats, img_count
    bucket_info: Mapping[str, Any] | None = None
    sd_model_name: str = ""
    sd_model_hash: str = ""  # A1111's old 8-hex checkpoint hash
    new_sd_model_hash: str = ""  # sha256 when known
    optimizer: str = ""  # the optimizer actually used (after a fallback)
    clip_skip: int | None = None
    finished_at: float | None = None


def lora_metadata(request: LoraTrainRequest, model: StableDiffusionModel, facts: LoraRunFacts) -> dict[str, str]:
    """kohya's `ss_*` metadata for a LoRA trained with `request` on `model` (every value a string)."""
    r = request
    width, height = r.resolution
    network_args: dict[str, str] = {}
    if r.conv_dim > 0:
        network_args = {"conv_dim": str(r.conv_dim), "conv_alpha": str(r.conv_alpha)}
    meta: dict[str, Any] = {
        "ss_session_id": facts.session_id,
        "ss_training_started_at": facts.started_at,
        "ss_training_finished_at": facts.finished_at if facts.finished_at is not None else time.time(),
        "ss_output_name": r.name,
        "ss_sd_model_name": facts.sd_model_name or model.source.name,
        "ss_sd_model_hash": facts.sd_model_hash,
        "ss_new_sd_model_hash": facts.new_sd_model_hash,
        "ss_base_model_version": base_model_version(model),
        "ss_v2": model.family.base == "sd2",
        "ss_v_parameterization": model.prediction_type == "v_prediction",
        "ss_network_module": NETWORK_MODULE,
        "ss_network_dim": r.network_dim,
        "ss_network_alpha": float(r.network_alpha),
        "ss_network_dropout": None,
        "ss_network_train_unet_only": not r.train_text_encoder,
        "ss_network_train_text_encoder_only": not r.train_unet,
        "ss_learning_rate": r.learning_rate,
        "ss_unet_lr": r.unet_lr,
        "ss_text_encoder_lr": r.text_encoder_lr,
        "ss_lr_scheduler": r.lr_scheduler,
        "ss_lr_warmup_steps": r.lr_warmup_steps,
        "ss_optimizer": facts.optimizer or r.optimizer_type,
        "ss_max_grad_norm": r.max_grad_norm,
        "ss_num_train_images": facts.num_train_images,
        "ss_num_batches_per_epoch": facts.num_batches_per_epoch,
        "ss_num_epochs": facts.num_epochs,
        "ss_epoch": facts.epoch,
        "ss_steps": facts.steps,
        "ss_max_train_steps": facts.max_train_steps,
        "ss_batch_size_per_device": r.train_batch_size,
        "ss_total_batch_size": r.train_batch_size * r.gradient_accumulation_steps,
        "ss_gradient_accumulation_steps": r.gradient_accumulation_steps,
        "ss_gradient_checkpointing": r.gradient_checkpointing,
        "ss_mixed_precision": r.mixed_precision,
        "ss_full_fp16": False,
        "ss_seed": facts.seed,
        "ss_noise_offset": r.noise_offset if r.noise_offset else None,
        "ss_min_snr_gamma": r.min_snr_gamma,
        "ss_clip_skip": facts.clip_skip,
        "ss_max_token_length": None,  # kohya's default: 75 tokens
        "ss_resolution": (width, height),
        "ss_enable_bucket": r.enable_bucket,
        "ss_min_bucket_reso": r.min_bucket_reso,
        "ss_max_bucket_reso": r.max_bucket_reso,
        "ss_bucket_no_upscale": r.bucket_no_upscale,
        "ss_random_crop": r.random_crop,
        "ss_flip_aug": r.flip_aug,
        "ss_color_aug": False,
        "ss_cache_latents": r.cache_latents,
        "ss_caption_dropout_rate": r.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": 0,
        "ss_caption_tag_dropout_rate": 0.0,
        "ss_keep_tokens": r.keep_tokens,
        "ss_shuffle_caption": r.shuffle_caption,
        "ss_face_crop_aug_range": None,
        "ss_prior_loss_weight": 1.0,
        "ss_num_reg_images": 0,
    }
    out = {key: str(value) for key, value in meta.items()}
    out["ss_tag_frequency"] = json.dumps({d: dict(tags) for d, tags in facts.tag_frequency.items()})
    out["ss_dataset_dirs"] = json.dumps({d: dict(v) for d, v in facts.dataset_dirs.items()})
    if facts.bucket_info is not None:
        out["ss_bucket_info"] = json.dumps(facts.bucket_info)
    if network_args:
        out["ss_network_args"] = json.dumps(network_args)
    if r.comment:
        out["ss_training_comment"] = r.comment
    return out


def tensor_data_hash(serialized: bytes) -> str:
    """SHA-256 of a serialised safetensors file's tensor data (the "addnet" hash)."""
    (header_size,) = struct.unpack("<Q", serialized[:8])
    return hashlib.sha256(memoryview(serialized)[8 + header_size :]).hexdigest()


def legacy_hash(serialized: bytes) -> str:
    """The legacy addnet hash: SHA-256 of 0x10000 bytes at 0x100000, first 8 hex."""
    return hashlib.sha256(serialized[_LEGACY_OFFSET : _LEGACY_OFFSET + _LEGACY_LENGTH]).hexdigest()[:8]


def save_lora(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    *,
    dtype: torch.dtype = torch.float16,
) -> dict[str, str]:
    """Write `tensors` (cast to `dtype`, alphas included) with `metadata` plus the two addnet
    hashes, atomically. Returns the metadata written."""
    cast = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}
    training_only = {k: str(v) for k, v in metadata.items() if k.startswith("ss_")}
    first = save(cast, metadata=training_only)
    written = {str(k): str(v) for k, v in metadata.items()}
    written["sshs_model_hash"] = tensor_data_hash(first)
    written["sshs_legacy_hash"] = legacy_hash(first)
    data = save(cast, metadata=written)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return written


def read_metadata(path: Path) -> dict[str, str]:
    """The header metadata of a `.safetensors` file."""
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
