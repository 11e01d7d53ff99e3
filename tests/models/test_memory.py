"""One memory budget: LRU across kinds, pinned entries never evicted, auxiliary models count."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from modules.core.hashes import HashCache
from modules.models.families import SD1
from modules.models.loader import Placement
from modules.models.manager import ModelManager
from modules.models.memory import CHECKPOINT, TAESD, UPSCALER, MemoryBudget
from modules.models.registry import ModelRegistry
from modules.models.taesd import TaesdDecoders, build_decoder


class Owner:
    """Something that keeps models and is told when the budget drops one."""

    def __init__(self) -> None:
        self.dropped: list[str] = []

    def evictor(self, key: str):  # type: ignore[no-untyped-def]
        return lambda: self.dropped.append(key)


def test_lru_across_kinds_within_the_byte_limit() -> None:
    owner = Owner()
    budget = MemoryBudget(100)
    budget.add("a", CHECKPOINT, 40, owner.evictor("a"))
    budget.add("b", UPSCALER, 40, owner.evictor("b"))
    budget.touch("a")  # b is now the least recently used
    budget.add("c", TAESD, 40, owner.evictor("c"))
    assert owner.dropped == ["b"]
    assert budget.keys() == ("a", "c") and budget.used_bytes() == 80
    assert budget.evictions == 1


def test_pinned_entries_are_never_evicted_and_do_not_count_against_the_limit() -> None:
    owner = Owner()
    limit = [50]
    budget = MemoryBudget(lambda: limit[0])  # read at every check, like the option
    budget.add("active", CHECKPOINT, 1000, None, pinned=True)
    budget.add("aux", UPSCALER, 30, owner.evictor("aux"))
    assert owner.dropped == [] and budget.evictable_bytes() == 30 and budget.used_bytes() == 1030
    with budget.pinned("aux") as held:
        assert held
        limit[0] = 0
        assert budget.enforce() == []  # in use: kept even over the limit
    assert owner.dropped == ["aux"]  # evicted as soon as it was unpinned
    assert budget.keys() == ("active",)
    with budget.pinned("gone") as held:
        assert not held
    with pytest.raises(ValueError):
        budget.add("x", UPSCALER, 1, None)  # an evictable entry needs a way to evict it


def test_evict_and_remove() -> None:
    owner = Owner()
    budget = MemoryBudget()
    budget.add("a", UPSCALER, 1, owner.evictor("a"))
    budget.add("b", UPSCALER, 1, owner.evictor("b"))
    budget.add("c", TAESD, 1, owner.evictor("c"))
    assert budget.remove("a") and owner.dropped == []  # the owner took it back itself
    assert budget.evict_kind(UPSCALER) == 1 and owner.dropped == ["b"]
    assert budget.evict("c") and not budget.evict("c") and owner.dropped == ["b", "c"]


@pytest.fixture()
def tree(tiny_models: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    sd = tmp_path / "Stable-diffusion"
    sd.mkdir()
    (tmp_path / "VAE").mkdir()
    for name, key in (("one.safetensors", "sd1"), ("two.safetensors", "sd1-inpaint")):
        shutil.copy(tiny_models[key], sd / name)
    taesd = tmp_path / "VAE-taesd"
    taesd.mkdir()
    tensors = {}
    for key, value in build_decoder().state_dict().items():  # the original file layout: clamp at index 0
        index, rest = key.removeprefix("layers.").split(".", 1)
        tensors[f"{int(index) + 1}.{rest}"] = value.clone()
    torch.save(tensors, taesd / "taesd_decoder.pth")
    return {"sd": sd, "vae_dir": tmp_path / "VAE", "taesd": taesd, "cache": tmp_path / "cache.json"}


@pytest.mark.usefixtures("no_network")
def test_checkpoints_and_an_aux_model_share_one_budget(tree: dict[str, Path]) -> None:
    limit = [1 << 40]
    budget = MemoryBudget(lambda: limit[0])
    registry = ModelRegistry([tree["sd"]], [tree["vae_dir"]], HashCache(tree["cache"]))
    m = ModelManager(registry, Placement(), budget=budget, background_hashing=False)
    taesd = TaesdDecoders(tree["taesd"], budget=budget)
    one, two = str(tree["sd"] / "one.safetensors"), str(tree["sd"] / "two.safetensors")

    m.load("one")
    assert [(h.key, h.pinned) for h in m.status().held] == [(f"checkpoint:{one}", True)]
    one_bytes = m.status().held[0].nbytes
    m.load("two")  # one is parked
    decoder = taesd.get(SD1)
    assert decoder is not None
    aux_bytes = next(h.nbytes for h in budget.snapshot() if h.kind == TAESD)
    assert 0 < aux_bytes < one_bytes

    # the aux model counts: parked one + TAESD no longer fit, and the older entry (one) goes
    limit[0] = one_bytes + aux_bytes // 2
    budget.enforce()
    status = m.status()
    assert status.cached == () and m.active.info.name == "two.safetensors"  # type: ignore[union-attr]
    assert [h.kind for h in status.held] == [CHECKPOINT, TAESD] and status.held[0].pinned
    assert taesd.get(SD1) is decoder  # still held: touched, so now the most recently used
    assert status.budget_bytes == limit[0]

    # switching parks two: two + TAESD do not fit, TAESD is now the oldest and goes
    m.load("one")
    status = m.status()
    assert status.cached == (two,)
    assert not any(h.kind == TAESD for h in status.held)
    assert taesd.get(SD1) is not decoder  # loaded again after the eviction

    # never the pinned active model, even with no room at all
    limit[0] = 0
    budget.enforce()
    assert [(h.key, h.pinned) for h in m.status().held] == [(f"checkpoint:{one}", True)]
    with m.lease() as model:
        assert model is m.active.model  # type: ignore[union-attr]


def test_upscalers_register_with_the_budget_and_stay_while_in_use(tmp_path: Path) -> None:
    from modules.models.upscalers import UpscalerRegistry
    from tests.fixtures.upscaler_models import build_upscaler_set

    build_upscaler_set(tmp_path)
    budget = MemoryBudget(1 << 40)
    reg = UpscalerRegistry([("ESRGAN", tmp_path / "ESRGAN"), ("RealESRGAN", tmp_path / "RealESRGAN")], budget=budget)
    name = "tiny_esrgan_old_4x"
    first = reg.load(name)
    (held,) = budget.snapshot()
    assert held.kind == UPSCALER and held.key.endswith(".pth") and held.nbytes > 0 and not held.pinned
    assert reg.load(name) is first  # kept
    budget.evict(held.key)
    again = reg.load(name)
    assert again is not first  # the budget dropped it: loaded again
    with reg.using(name) as model:
        assert model is again and budget.snapshot()[0].pinned
        budget.set_limit(0)  # no room at all
        assert budget.enforce() == []  # in use: kept
    assert budget.snapshot() == ()  # dropped as soon as it was no longer in use
    assert reg.load(name) is not again
