"""Memory modes (--medvram, --medvram-sdxl, --lowvram): which part of the model is on the device at
each stage, observed through a recording move on this CPU-only machine (the model computes on the
CPU; the recorder tracks where each tensor would be)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from modules.core.hashes import HashCache
from modules.core.options import Options, default_option_infos
from modules.engine.service import GenerationService
from modules.engine.worker import Worker
from modules.models import offload
from modules.models.loader import Placement, StableDiffusionModel, load_single_file
from modules.models.manager import ModelManager
from modules.models.offload import TEXT, UNET, VAE, Offloader, _unet_block_parts, _unet_outer_layers
from modules.models.registry import ModelRegistry
from tests.engine.support import t2i

pytestmark = pytest.mark.usefixtures("no_network")

GPU = torch.device("cuda", 0)  # where the recorder pretends parts go; nothing ever runs there
CPU = torch.device("cpu")


class Where:
    """A recording move: remembers where each parameter and buffer would be, moves nothing."""

    def __init__(self) -> None:
        self.at: dict[int, torch.device] = {}
        self.log: list[tuple[int, torch.device]] = []

    def __call__(self, module: torch.nn.Module, device: torch.device) -> None:
        for tensor in (*module.parameters(), *module.buffers()):
            self.at[id(tensor)] = device
        self.log.append((id(module), device))

    def on_device(self, module: torch.nn.Module) -> float:
        """The fraction of `module`'s parameter bytes on the device."""
        params = list(module.parameters())
        total = sum(p.numel() * p.element_size() for p in params)
        on = sum(p.numel() * p.element_size() for p in params if self.at.get(id(p), CPU) == GPU)
        return on / total

    def bytes_on_device(self, model: StableDiffusionModel) -> int:
        return sum(
            t.numel() * t.element_size()
            for m in (model.unet, model.vae, *model.text_encoders)
            for t in m.parameters()
            if self.at.get(id(t), CPU) == GPU
        )


def _stages(model: StableDiffusionModel, where: Where) -> dict[str, float]:
    encoders = [where.on_device(e) for e in model.text_encoders]
    return {TEXT: min(encoders), UNET: where.on_device(model.unet), VAE: where.on_device(model.vae)}


@pytest.fixture(scope="module")
def sd1(tiny_models: dict[str, Path]) -> StableDiffusionModel:
    return load_single_file(tiny_models["sd1"], Placement())


@pytest.fixture(scope="module")
def sdxl(tiny_models: dict[str, Path]) -> StableDiffusionModel:
    return load_single_file(tiny_models["sdxl"], Placement())


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_lowvram_groups_and_outer_layers_partition_the_unet(
    family: str, sd1: StableDiffusionModel, sdxl: StableDiffusionModel
) -> None:
    model = sd1 if family == "sd1" else sdxl
    unet = model.unet
    seen: dict[int, int] = {}
    parts = [part for _, part in _unet_block_parts(unet)] + list(_unet_outer_layers(unet))
    for part in parts:
        for p in part.parameters():
            seen[id(p)] = seen.get(id(p), 0) + 1
    every = {id(p) for p in unet.parameters()}
    assert set(seen) == every, "a UNet parameter in no group would stay on the CPU and fail the forward"
    assert set(seen.values()) == {1}, "a parameter in two groups would move twice"
    names = [name for name, _ in _unet_block_parts(unet)]
    # block granularity: each resnet / transformer / resampler of every block is its own group
    assert "unet.down_blocks.0.resnets.0" in names and "unet.mid_block.attentions.0" in names
    assert any(n.startswith("unet.up_blocks.") and ".upsamplers." in n for n in names)
    assert len(names) > 2 * len(unet.down_blocks)


def _run_unet(model: StableDiffusionModel) -> None:
    unet = model.unet
    x = torch.zeros(1, unet.config.in_channels, 8, 8)
    hidden = torch.zeros(1, 77, unet.config.cross_attention_dim)
    kwargs = {}
    if model.family.is_sdxl:
        pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(1, pooled_dim), "time_ids": torch.zeros(1, 6)}
    with torch.no_grad():
        unet(x, torch.tensor([10.0]), encoder_hidden_states=hidden, **kwargs)


def _run_text(model: StableDiffusionModel) -> None:
    with torch.no_grad():
        for encoder in model.text_encoders:
            encoder(torch.zeros(1, 77, dtype=torch.long))


def _run_vae(model: StableDiffusionModel) -> None:
    with torch.no_grad():
        model.vae.decode(torch.zeros(1, 4, 8, 8))


def test_medvram_one_component_on_the_device_at_a_time(sd1: StableDiffusionModel) -> None:
    where = Where()
    off = Offloader(sd1, GPU, "medvram", move=where, execution_device=CPU)
    off.install()
    try:
        assert _stages(sd1, where) == {TEXT: 0.0, UNET: 0.0, VAE: 0.0}
        assert sd1.device == CPU  # inputs go to the execution device
        _run_text(sd1)
        assert _stages(sd1, where) == {TEXT: 1.0, UNET: 0.0, VAE: 0.0}
        _run_unet(sd1)
        assert _stages(sd1, where) == {TEXT: 0.0, UNET: 1.0, VAE: 0.0}
        _run_unet(sd1)  # already there: no move
        moves = len(where.log)
        _run_unet(sd1)
        assert len(where.log) == moves
        _run_vae(sd1)
        assert _stages(sd1, where) == {TEXT: 0.0, UNET: 0.0, VAE: 1.0}
        assert [(e.group, e.device.type) for e in list(off.events)[-2:]] == [(UNET, "cpu"), (VAE, "cuda")]
    finally:
        off.uninstall()
    assert _stages(sd1, where) == {TEXT: 0.0, UNET: 0.0, VAE: 0.0}
    assert sd1.offloader is None
    _run_unet(sd1)  # the hooks are gone: nothing moves any more
    assert where.on_device(sd1.unet) == 0.0


def test_lowvram_moves_the_unet_block_by_block(sd1: StableDiffusionModel) -> None:
    where = Where()
    off = Offloader(sd1, GPU, "lowvram", move=where, execution_device=CPU)
    total = sum(p.numel() * p.element_size() for m in sd1.modules() for p in m.parameters())
    peaks: list[int] = []
    off.move = lambda module, device: (where(module, device), peaks.append(where.bytes_on_device(sd1)))[0]  # type: ignore[func-returns-value]
    off.install()
    try:
        outer = sum(p.numel() * p.element_size() for m in _unet_outer_layers(sd1.unet) for p in m.parameters())
        assert where.bytes_on_device(sd1) == outer  # only the UNet's outer layers stay on the device
        assert sd1.unet.conv_in.weight is not None and where.at[id(sd1.unet.conv_in.weight)] == GPU
        _run_text(sd1)
        peaks.clear()
        _run_unet(sd1)
        unet_groups = [e.group for e in off.events if e.group.startswith("unet.") and e.device == GPU]
        # the forward brought every block-level group in, one after the other, in forward order
        block_names = [name for name, _ in _unet_block_parts(sd1.unet)]
        assert sorted(unet_groups) == sorted(block_names)
        assert unet_groups[0] == "unet.down_blocks.0.resnets.0"
        largest_group = max(
            sum(p.numel() * p.element_size() for p in part.parameters()) for _, part in _unet_block_parts(sd1.unet)
        )
        assert max(peaks) <= outer + largest_group  # never more than one block on the device
        assert max(peaks) < sum(p.numel() * p.element_size() for p in sd1.unet.parameters())
        assert where.on_device(sd1.text_encoders[0]) == 0.0
        _run_vae(sd1)
        assert where.on_device(sd1.vae) == 1.0
        assert where.bytes_on_device(sd1) < total
    finally:
        off.uninstall()
    assert where.bytes_on_device(sd1) == 0


def test_the_move_log_is_bounded_and_the_count_is_not(
    sd1: StableDiffusionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(offload, "EVENTS_KEPT", 8)  # a model may stay placed for the server's life
    off = Offloader(sd1, GPU, "medvram", move=Where(), execution_device=CPU)
    off.install()
    try:
        for _ in range(10):
            _run_text(sd1)
            _run_unet(sd1)
    finally:
        off.uninstall()
    assert off.moves == 3 + 1 + 2 * 19 + 1  # install, text in, then out+in per switch, uninstall
    assert len(off.events) == 8 and off.events[-1] == offload.MoveEvent(UNET, CPU)


def test_sdxl_medvram_moves_both_text_encoders_together(sdxl: StableDiffusionModel) -> None:
    where = Where()
    off = Offloader(sdxl, GPU, "medvram", move=where, execution_device=CPU)
    off.install()
    try:
        with torch.no_grad():
            sdxl.text_encoders[1](torch.zeros(1, 77, dtype=torch.long))
        assert [where.on_device(e) for e in sdxl.text_encoders] == [1.0, 1.0]
        _run_unet(sdxl)
        assert [where.on_device(e) for e in sdxl.text_encoders] == [0.0, 0.0]
        assert where.on_device(sdxl.unet) == 1.0
    finally:
        off.uninstall()


# -- through the manager and a real generation -------------------------------------------------------


def _service(tiny_models: dict[str, Path], root: Path, mode: str, where: Where | None) -> GenerationService:
    sd = root / "Stable-diffusion"
    sd.mkdir(parents=True, exist_ok=True)
    for name, family in (("sd1", "sd1"), ("xl", "sdxl")):
        if not (sd / f"{name}.safetensors").exists():
            shutil.copy(tiny_models[family], sd / f"{name}.safetensors")
    registry = ModelRegistry([sd], [], HashCache(root / "cache.json"), hashing=False)
    kw: dict[str, object] = {}
    if where is not None:
        kw = {"memory_mode": mode, "move": where, "offload_device": GPU}
    models = ModelManager(registry, Placement(), cache_bytes=1 << 34, **kw)  # type: ignore[arg-type]
    return GenerationService(models, Options(default_option_infos(), None), Worker())


def test_generation_under_medvram_runs_text_unet_vae_in_turn_and_gives_the_same_pixels(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    plain = _service(tiny_models, tmp_path / "a", "normal", None)
    where = Where()
    med = _service(tiny_models, tmp_path / "b", "medvram", where)
    try:
        request = t2i(prompt="a [cat:dog:0.5]", steps=4)
        expected = plain.run_sync(request, 120).images[0]
        seen: list[dict[str, float]] = []
        med.models.load("sd1")
        model = med.models.active.model  # type: ignore[union-attr]
        probes = [
            model.unet.register_forward_pre_hook(lambda *_: seen.append({"at": 1.0, **_stages(model, where)})),
            model.vae.decoder.register_forward_pre_hook(lambda *_: seen.append({"at": 2.0, **_stages(model, where)})),
        ]
        try:
            got = med.run_sync(request, 120).images[0]
        finally:
            for probe in probes:
                probe.remove()
        assert np.array_equal(np.asarray(got), np.asarray(expected)), "offloading must not change the picture"
        off = model.offloader
        assert off is not None and off.mode == "medvram"
        # text first (both prompts of the edit, before sampling), then only the UNet, then the VAE
        assert seen[0] == {"at": 1.0, TEXT: 0.0, UNET: 1.0, VAE: 0.0}
        assert all(s == seen[0] for s in seen if s["at"] == 1.0)
        assert seen[-1] == {"at": 2.0, TEXT: 0.0, UNET: 0.0, VAE: 1.0}
        stages = [e.group for e in off.events if e.device == GPU]
        assert stages == [TEXT, UNET, VAE], "each stage once: no text encoding between UNet calls"
    finally:
        plain.worker.shutdown()
        med.worker.shutdown()


def test_medvram_sdxl_offloads_only_sdxl_and_parking_returns_everything(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    where = Where()
    service = _service(tiny_models, tmp_path, "medvram-sdxl", where)
    try:
        manager = service.models
        manager.load("sd1")
        sd1_model = manager.active.model  # type: ignore[union-attr]
        assert sd1_model.offloader is None  # an SD1 model runs as in the normal mode
        manager.load("xl")
        xl_model = manager.active.model  # type: ignore[union-attr]
        off = xl_model.offloader
        assert off is not None and off.mode == "medvram"
        _run_unet(xl_model)
        assert where.on_device(xl_model.unet) == 1.0
        manager.load("sd1")  # the SDXL model is parked in RAM: hooks removed, every part on the CPU
        assert xl_model.offloader is None
        assert where.bytes_on_device(xl_model) == 0
    finally:
        service.worker.shutdown()


def test_a_vae_swap_under_medvram_moves_the_new_vae_with_the_hooks(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    where = Where()
    root = tmp_path
    (root / "VAE").mkdir()
    shutil.copy(tiny_models["vae"], root / "VAE" / "tiny.vae.safetensors")
    sd = root / "Stable-diffusion"
    sd.mkdir()
    shutil.copy(tiny_models["sd1"], sd / "sd1.safetensors")
    registry = ModelRegistry([sd], [root / "VAE"], HashCache(root / "cache.json"), hashing=False)
    manager = ModelManager(
        registry, Placement(), cache_bytes=1 << 34, memory_mode="medvram", move=where, offload_device=GPU
    )
    manager.load("sd1")
    manager.set_vae("tiny.vae.safetensors")
    model = manager.active.model  # type: ignore[union-attr]
    assert model.vae_source is not None and model.baked_vae is not None
    assert where.on_device(model.vae) == 0.0
    _run_vae(model)
    assert where.on_device(model.vae) == 1.0  # the new VAE's own modules trigger the move
    _run_unet(model)
    assert where.on_device(model.vae) == 0.0 and where.on_device(model.unet) == 1.0
    assert where.on_device(model.baked_vae) == 0.0
