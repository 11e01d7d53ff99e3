"""The CPU delta cache: a multiplier change or a return to a LoRA used before computes no matrix
product again, the weights are the same whatever happened before, and the budget can evict it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from modules.core.hashes import HashCache
from modules.models.loader import Placement, load_single_file
from modules.models.lora_formats import read_network
from modules.models.lora_patch import DeltaCache, NetworkPatch
from modules.models.manager import ModelManager
from modules.models.memory import MemoryBudget
from modules.models.patches import namespace
from modules.models.registry import ModelRegistry
from modules.models.spec import ModelSpec
from tests.fixtures import lora_files as lf

pytestmark = pytest.mark.usefixtures("no_network")


def _weights(model: object) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.{name}": t.detach().clone()
        for prefix, module in namespace(model).items()  # type: ignore[arg-type]
        for name, t in module.state_dict().items()
    }


def test_delta_cache_makes_weight_changes_free_of_products_and_history(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    sd = tmp_path / "sd"
    sd.mkdir()
    shutil.copy(tiny_models["sd1"], sd / "sd1.safetensors")
    budget = MemoryBudget(1 << 40)
    manager = ModelManager(
        ModelRegistry([sd], [], HashCache(tmp_path / "cache.json")),
        Placement(),
        budget=budget,
        background_hashing=False,
    )
    pristine_model = load_single_file(sd / "sd1.safetensors", Placement())
    pristine = _weights(pristine_model)
    written = lf.kohya_sd(tmp_path / "a.safetensors", pristine_model, seed=3)
    weights = read_network(written.path)
    cache = DeltaCache(budget)

    def patched(multiplier: float) -> dict[str, torch.Tensor]:
        patch = NetworkPatch(f"a:{multiplier}", weights, multiplier, multiplier, cache=cache)
        with manager.lease(ModelSpec("sd1.safetensors", patches=(patch,))) as model:
            return _weights(model)

    first = patched(0.8)
    layers = cache.computed
    assert layers > 0 and budget.keys(DeltaCache.KIND)
    for name, delta in written.deltas.items():  # the formula, through the cache
        torch.testing.assert_close(first[name], pristine[name] + 0.8 * delta, rtol=1e-5, atol=1e-6)
    half = patched(0.5)
    assert cache.computed == layers, "a multiplier change recomputed products"
    for name, delta in written.deltas.items():
        torch.testing.assert_close(half[name], pristine[name] + 0.5 * delta, rtol=1e-5, atol=1e-6)
    again = patched(0.8)
    assert cache.computed == layers
    assert all(torch.equal(again[k], first[k]) for k in first), "the weights depend on what came before"
    budget.evict_kind(DeltaCache.KIND)
    assert len(cache) == 0
    recomputed = patched(0.3)
    assert cache.computed == 2 * layers
    for name, delta in written.deltas.items():
        torch.testing.assert_close(recomputed[name], pristine[name] + 0.3 * delta, rtol=1e-5, atol=1e-6)
    with manager.lease(ModelSpec("sd1.safetensors")) as model:
        assert all(torch.equal(v, pristine[k]) for k, v in _weights(model).items())


def test_a_network_whose_deltas_exceed_the_budget_is_not_cached(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    sd.mkdir()
    shutil.copy(tiny_models["sd1"], sd / "sd1.safetensors")
    budget = MemoryBudget(1024)  # far below the network's deltas
    manager = ModelManager(
        ModelRegistry([sd], [], HashCache(tmp_path / "cache.json")),
        Placement(),
        budget=budget,
        background_hashing=False,
    )
    model = load_single_file(sd / "sd1.safetensors", Placement())
    written = lf.kohya_sd(tmp_path / "a.safetensors", model, seed=3)
    cache = DeltaCache(budget)
    patch = NetworkPatch("a", read_network(written.path), 0.7, 0.7, cache=cache)
    with manager.lease(ModelSpec("sd1.safetensors", patches=(patch,))) as leased:
        weights = _weights(leased)
    assert cache.computed == 0 and len(cache) == 0
    pristine = _weights(model)
    for name, delta in written.deltas.items():
        torch.testing.assert_close(weights[name], pristine[name] + 0.7 * delta, rtol=1e-5, atol=1e-6)
