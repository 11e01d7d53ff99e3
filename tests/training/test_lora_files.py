"""Writing trained LoRAs as kohya does (modules/engine/training/lora_files.py): tensors our loader
matches to every layer, kohya's `ss_*` metadata as strings, the addnet hashes in the header, what
our registry reads from it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from modules.core.hashes import HashCache, addnet_hash_safetensors
from modules.core.training import LoraTrainRequest
from modules.engine.training.lora_files import (
    LoraRunFacts,
    base_model_version,
    legacy_hash,
    lora_metadata,
    read_metadata,
    save_lora,
)
from modules.engine.training.lora_network import LoraNetwork
from modules.models.loader import Placement, StableDiffusionModel, load_single_file
from modules.models.lora_formats import read_network
from modules.models.lora_patch import match_network
from modules.models.network_registry import NetworkRegistry

BRIEF_KEYS = [
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_base_model_version",
    "ss_v2",
    "ss_resolution",
    "ss_learning_rate",
    "ss_unet_lr",
    "ss_text_encoder_lr",
    "ss_num_train_images",
    "ss_num_epochs",
    "ss_epoch",
    "ss_steps",
    "ss_max_train_steps",
    "ss_lr_scheduler",
    "ss_optimizer",
    "ss_training_started_at",
    "ss_training_finished_at",
    "ss_session_id",
    "ss_output_name",
    "ss_sd_model_name",
    "ss_sd_model_hash",
    "ss_tag_frequency",
    "ss_bucket_info",
    "ss_seed",
    "ss_noise_offset",
    "ss_min_snr_gamma",
    "ss_mixed_precision",
    "ss_gradient_checkpointing",
    "ss_gradient_accumulation_steps",
    "ss_clip_skip",
    "ss_caption_dropout_rate",
    "ss_flip_aug",
    "ss_enable_bucket",
    "ss_min_bucket_reso",
    "ss_max_bucket_reso",
    "ss_bucket_no_upscale",
    "ss_cache_latents",
    "ss_keep_tokens",
    "ss_shuffle_caption",
    "sshs_model_hash",
    "sshs_legacy_hash",
]


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> dict[str, StableDiffusionModel]:
    return {name: load_single_file(tiny_models[name], Placement()) for name in ("sd1", "sdxl")}


def _facts() -> LoraRunFacts:
    return LoraRunFacts(
        session_id="abc",
        started_at=1700000000.5,
        finished_at=1700000100.25,
        num_train_images=60,
        num_epochs=2,
        epoch=2,
        steps=120,
        max_train_steps=120,
        seed=42,
        num_batches_per_epoch=60,
        tag_frequency={"10_subject": {"a red cube": 6, "studio photo": 1}},
        dataset_dirs={"10_subject": {"n_repeats": 10, "img_count": 6}},
        bucket_info={"buckets": {"0": {"resolution": [64, 64], "count": 10}}, "mean_img_ar_error": 0.01},
        sd_model_name="sd1.safetensors",
        sd_model_hash="12345678",
        optimizer="torch.optim.adamw.AdamW",
        clip_skip=1,
    )


def _trained(network: LoraNetwork) -> LoraNetwork:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return network


def test_metadata_is_kohyas_keys_as_strings(models: dict[str, StableDiffusionModel], tmp_path: Path) -> None:
    request = LoraTrainRequest(name="cube", data_root=str(tmp_path), conv_dim=2, conv_alpha=0.5, comment="hi")
    network = _trained(LoraNetwork(models["sd1"], rank=4, conv_rank=2, conv_alpha=0.5))
    path = tmp_path / "cube.safetensors"
    written = save_lora(path, network.kohya_state_dict(), lora_metadata(request, models["sd1"], _facts()))
    meta = read_metadata(path)
    assert meta == written
    assert all(isinstance(v, str) for v in meta.values())
    missing = [k for k in BRIEF_KEYS if k not in meta]
    assert not missing
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "1.0"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "0.5"}
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["ss_resolution"] == "(512, 512)"
    assert meta["ss_unet_lr"] == "None" and meta["ss_learning_rate"] == "0.0001"
    assert meta["ss_output_name"] == "cube" and meta["ss_training_comment"] == "hi"
    assert meta["ss_training_started_at"] == "1700000000.5"
    assert json.loads(meta["ss_tag_frequency"]) == {"10_subject": {"a red cube": 6, "studio photo": 1}}
    assert json.loads(meta["ss_bucket_info"])["mean_img_ar_error"] == 0.01
    assert meta["ss_seed"] == "42" and meta["ss_steps"] == "120"
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_network_args_only_with_conv_dim(models: dict[str, StableDiffusionModel], tmp_path: Path) -> None:
    meta = lora_metadata(LoraTrainRequest(name="x", data_root=""), models["sd1"], _facts())
    assert "ss_network_args" not in meta and "ss_training_comment" not in meta


def test_addnet_hashes_in_the_header(models: dict[str, StableDiffusionModel], tmp_path: Path) -> None:
    network = _trained(LoraNetwork(models["sd1"], rank=64))  # big enough for the legacy window
    path = tmp_path / "big.safetensors"
    meta = save_lora(path, network.kohya_state_dict(), {"ss_output_name": "big", "other": "x"})
    assert meta["sshs_model_hash"] == addnet_hash_safetensors(path)
    data = path.read_bytes()
    assert len(data) > 0x110000
    assert meta["sshs_legacy_hash"] != hashlib.sha256(b"").hexdigest()[:8]
    # the legacy hash is taken over the file as written with the training metadata only
    from safetensors.torch import save

    tensors = {k: v.to(torch.float16) for k, v in network.kohya_state_dict().items()}
    assert meta["sshs_legacy_hash"] == legacy_hash(save(tensors, metadata={"ss_output_name": "big"}))


@pytest.mark.parametrize(("save_dtype", "expected"), [(torch.float16, torch.float16), (torch.float32, torch.float32)])
def test_save_dtype(
    models: dict[str, StableDiffusionModel], tmp_path: Path, save_dtype: torch.dtype, expected: torch.dtype
) -> None:
    path = tmp_path / "x.safetensors"
    save_lora(path, LoraNetwork(models["sd1"], rank=2).kohya_state_dict(), {}, dtype=save_dtype)
    with safe_open(str(path), framework="pt") as handle:
        dtypes = {handle.get_tensor(k).dtype for k in handle.keys()}  # noqa: SIM118
    assert dtypes == {expected}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_written_file_matches_every_layer_and_is_listed(
    models: dict[str, StableDiffusionModel], tmp_path: Path, family: str
) -> None:
    model = models[family]
    request = LoraTrainRequest(name=f"trained-{family}", data_root=str(tmp_path), conv_dim=2)
    network = _trained(LoraNetwork(model, rank=4, conv_rank=2))
    lora_dir = tmp_path / "Lora"
    path = lora_dir / f"file-{family}.safetensors"
    save_lora(path, network.kohya_state_dict(), lora_metadata(request, model, _facts()))
    weights = read_network(path)
    match = match_network(weights, model)
    assert not match.unmatched and not match.unsupported
    assert match.matched_unet + match.matched_te == len(network.targets)
    registry = NetworkRegistry([lora_dir], [], HashCache(tmp_path / "cache.json"), hashing=True)
    (info,) = registry.loras()
    assert info.alias == f"trained-{family}"
    assert info.sd_version == ("SDXL" if family == "sdxl" else "SD1")
    assert info.shorthash == read_metadata(path)["sshs_model_hash"][:12]


def test_base_model_versions(models: dict[str, StableDiffusionModel]) -> None:
    assert base_model_version(models["sd1"]) == "sd_v1"
    assert base_model_version(models["sdxl"]) == "sdxl_base_v1-0"
