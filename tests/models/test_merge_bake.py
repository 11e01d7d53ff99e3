"""LoRAs baked in by the merger itself (`merge_checkpoints` with `bake_loras`): the file equals the
checkpoint with the same LoRAs applied at generation time - alone (No interpolation) and after a
weighted sum - and what cannot be baked comes back as warnings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modules.core.errors import NotFoundError, ValidationError
from modules.core.hashes import HashCache
from modules.models import merge as mg
from modules.models.loader import Placement, load_single_file
from modules.models.lora_formats import read_network
from modules.models.registry import ModelRegistry
from tests.fixtures import lora_files as lf
from tests.fixtures.ldm_checkpoints import write_checkpoint
from tests.models.test_lora_bake_extract import assert_states_close, runtime_state, state


@pytest.fixture()
def env(tiny_models: dict[str, Path], tmp_path: Path) -> tuple[ModelRegistry, Path, dict[str, Path]]:
    sd = tmp_path / "Stable-diffusion"
    sd.mkdir()
    shutil.copy(tiny_models["sd1"], sd / "a.safetensors")
    write_checkpoint(sd / "b.safetensors", "sd1", seed=1)
    shutil.copy(tiny_models["sdxl"], sd / "xl.safetensors")
    model = load_single_file(sd / "a.safetensors", Placement())
    loras = {
        "style": lf.kohya_sd(tmp_path / "style.safetensors", model, seed=3).path,
        "soft": lf.lycoris(tmp_path / "soft.safetensors", model, "loha", seed=4).path,
    }
    registry = ModelRegistry([sd], [], HashCache(tmp_path / "cache.json"))
    registry.refresh()
    return registry, sd, loras


def _finder(loras: dict[str, Path]):  # type: ignore[no-untyped-def]
    def find(name: str) -> Path:
        if name not in loras:
            raise NotFoundError(f"LoRA not found: {name}")
        return loras[name]

    return find


def test_baked_alone_equals_the_run_time_patch(env: tuple[ModelRegistry, Path, dict[str, Path]]) -> None:
    registry, sd, loras = env
    request = mg.MergeRequest(
        primary_model_name="a.safetensors",
        interp_method=mg.NO_INTERPOLATION,
        bake_loras=(("style", 0.7), ("soft", -0.4)),
        custom_name="baked",
    )
    result = mg.merge_checkpoints(request, registry, sd, find_lora=_finder(loras))
    assert result.warnings == ()
    baked = state(load_single_file(result.path, Placement()))
    want = runtime_state(
        sd / "a.safetensors",
        [(read_network(loras["style"]), 0.7, 0.7), (read_network(loras["soft"]), -0.4, -0.4)],
    )
    assert_states_close(baked, want)


def test_baked_after_a_weighted_sum(env: tuple[ModelRegistry, Path, dict[str, Path]]) -> None:
    registry, sd, loras = env
    plain = mg.merge_checkpoints(
        mg.MergeRequest(primary_model_name="a.safetensors", secondary_model_name="b.safetensors", custom_name="mix"),
        registry,
        sd,
    )
    baked = mg.merge_checkpoints(
        mg.MergeRequest(
            primary_model_name="a.safetensors",
            secondary_model_name="b.safetensors",
            custom_name="mix-baked",
            bake_loras=(("style", 0.5),),
        ),
        registry,
        sd,
        find_lora=_finder(loras),
    )
    assert_states_close(
        state(load_single_file(baked.path, Placement())),
        runtime_state(plain.path, [(read_network(loras["style"]), 0.5, 0.5)]),
    )


def test_what_cannot_be_baked_is_a_warning_or_an_error(env: tuple[ModelRegistry, Path, dict[str, Path]]) -> None:
    registry, sd, loras = env
    # an SD 1.x LoRA on an SDXL checkpoint: nothing fits - refused before any tensor is written
    with pytest.raises(ValidationError, match=r"no module of it fits xl\.safetensors"):
        mg.merge_checkpoints(
            mg.MergeRequest(
                primary_model_name="xl.safetensors", interp_method=mg.NO_INTERPOLATION, bake_loras=(("style", 1.0),)
            ),
            registry,
            sd,
            find_lora=_finder(loras),
        )
    # a LoRA of which some modules fit: baked, and the rest reported
    partial = {**loras, "partial": _with_a_stray_module(loras["style"], sd.parent / "partial.safetensors")}
    result = mg.merge_checkpoints(
        mg.MergeRequest(
            primary_model_name="a.safetensors", interp_method=mg.NO_INTERPOLATION, bake_loras=(("partial", 1.0),)
        ),
        registry,
        sd,
        find_lora=_finder(partial),
    )
    assert len(result.warnings) == 1 and "1 modules match no layer" in result.warnings[0]
    assert "lora_unet_no_such_layer" in result.warnings[0]
    with pytest.raises(NotFoundError):
        mg.merge_checkpoints(
            mg.MergeRequest(
                primary_model_name="a.safetensors", interp_method=mg.NO_INTERPOLATION, bake_loras=(("missing", 1.0),)
            ),
            registry,
            sd,
            find_lora=_finder(loras),
        )
    with pytest.raises(ValidationError, match="not available"):
        mg.merge_checkpoints(
            mg.MergeRequest(
                primary_model_name="a.safetensors", interp_method=mg.NO_INTERPOLATION, bake_loras=(("style", 1.0),)
            ),
            registry,
            sd,
        )
    assert not list(sd.glob(".*.tmp"))


def _with_a_stray_module(source: Path, target: Path) -> Path:
    """A copy of a LoRA file with one more module that names no layer."""
    tensors = load_file(str(source))
    tensors["lora_unet_no_such_layer.lora_down.weight"] = torch.zeros(2, 4)
    tensors["lora_unet_no_such_layer.lora_up.weight"] = torch.zeros(4, 2)
    save_file(tensors, str(target))
    return target
