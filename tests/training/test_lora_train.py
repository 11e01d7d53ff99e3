"""LoRA training end to end on tiny models (modules/engine/training/lora_trainer.py): the loss goes
down on a repeated batch; a trained file loads through the engine's extra networks and changes
generation while the leased model is left exactly as found; SDXL with LoCon, checkpointing and
bf16; resume continues the step count and optimizer state (and lands where an uninterrupted run
lands); an interrupt leaves a valid file; epochs override steps; a broken image is skipped."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from modules.core.hashes import HashCache
from modules.core.options import Options, default_option_infos
from modules.core.training import LoraTrainRequest
from modules.engine.extra_networks import ExtraNetworks
from modules.engine.service import GenerationService
from modules.engine.training.diffusion import TrainingView
from modules.engine.training.lora_files import read_metadata
from modules.engine.training.lora_network import LoraNetwork
from modules.engine.training.lora_trainer import output_paths, step_file, train_lora
from modules.engine.training.session import TrainingProgress, TrainingRun, load_state
from modules.engine.worker import Worker
from modules.models.embeddings import EmbeddingDatabase
from modules.models.loader import Placement, StableDiffusionModel, load_single_file
from modules.models.lora_formats import read_network
from modules.models.lora_patch import match_network
from modules.models.manager import ModelManager
from modules.models.network_registry import NetworkRegistry
from modules.models.registry import ModelRegistry
from modules.models.spec import ModelSpec
from tests.engine.support import pixels, t2i
from tests.fixtures.module_tmp import ModuleTempDirs
from tests.fixtures.training_data import SMALL_BUCKETS, make_training_set, write_problem_images


@pytest.fixture(scope="module")
def data_root(module_tmp: ModuleTempDirs) -> Path:
    return make_training_set(module_tmp.mktemp("lora-data"), repeats=1)


@pytest.fixture(scope="module")
def sd1(tiny_models: dict[str, Path]) -> StableDiffusionModel:
    return load_single_file(tiny_models["sd1"], Placement())


def _request(data_root: Path, **kw: Any) -> LoraTrainRequest:
    base: dict[str, Any] = {
        "name": "cube",
        "data_root": str(data_root),
        "max_train_steps": 4,
        "train_batch_size": 2,
        "learning_rate": 1e-3,
        "seed": 7,
        **SMALL_BUCKETS,
    }
    base.update(kw)
    return LoraTrainRequest(**base)


def _stop_after(run: TrainingRun, steps: int) -> None:
    """Ask the run to stop once `steps` optimizer steps are done (as the Interrupt button would)."""
    real = run.step_done

    def step_done(step: int, loss: float, *, lr: float, epoch: int = 0) -> None:
        real(step, loss, lr=lr, epoch=epoch)
        if step >= steps:
            run.ctx.interrupted = True

    run.step_done = step_done  # type: ignore[method-assign]


def test_loss_goes_down_on_a_repeated_batch(sd1: StableDiffusionModel) -> None:
    view = TrainingView(sd1)
    network = LoraNetwork(sd1, rank=8, alpha=8.0, seed=0)
    params = list(network.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    timesteps = torch.tensor([300, 600])
    losses = []
    with network.applied():
        for p in params:
            p.requires_grad_(True)
        for _ in range(20):
            cond = view.encode_text(["a red cube", "a blue ball"], grad=True)
            loss = view.loss(latents, cond, timesteps, noise).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses
    assert not any(t.module._forward_hooks for t in network.targets.values())


@pytest.fixture(scope="module")
def engine(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Iterator[GenerationService]:
    root = module_tmp.mktemp("lora-engine")
    sd = root / "Stable-diffusion"
    sd.mkdir()
    shutil.copy(tiny_models["sd1"], sd / "sd1.safetensors")
    (root / "Lora").mkdir()
    cache = HashCache(root / "cache.json")
    models = ModelManager(ModelRegistry([sd], [], cache, hashing=False), Placement(), cache_bytes=1 << 34)
    networks = ExtraNetworks(
        NetworkRegistry([root / "Lora"], [], cache, hashing=False),
        EmbeddingDatabase([root / "embeddings"], cache, hashing=False),
    )
    worker = Worker()
    service = GenerationService(models, Options(default_option_infos(), None), worker, networks=networks)
    yield service
    worker.shutdown()


def _hooks(model: StableDiffusionModel) -> dict[str, list[Any]]:
    """Every module's forward hooks (the engine may have its own; training must add none)."""
    out = {}
    for index, component in enumerate(model.modules()):
        for name, module in component.named_modules():
            out[f"{index}.{name}"] = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return out


def _lora_dir(engine: GenerationService) -> Path:
    assert engine.networks is not None
    return engine.networks.registry.lora_dirs[0]


def test_trained_lora_loads_changes_generation_and_the_model_is_left_as_found(
    engine: GenerationService, data_root: Path
) -> None:
    before = engine.run_sync(t2i(prompt="a red cube"), 120)
    lora_dir = _lora_dir(engine)
    request = _request(
        data_root,
        name="cube-sd1",
        max_train_steps=4,
        learning_rate=5e-2,
        network_alpha=4.0,
        sample_every_n_steps=2,
        sample_prompt="a red cube",
        sample_steps=2,
        sample_width=64,
        sample_height=64,
        sample_sampler_name="Euler",
        gradient_checkpointing=True,
    )

    def sampler(req: Any, ctx: Any) -> Any:
        return engine.prepare_and_process(req.replace(override_settings={"sd_model_checkpoint": "sd1"}), ctx)

    def job(ctx: Any) -> tuple[Any, TrainingRun]:
        # as the training service runs it: a worker job holding the model lease
        with engine.models.lease(ModelSpec(checkpoint="sd1")) as model:
            hooks_before = _hooks(model)
            run = TrainingRun(ctx, TrainingProgress("lora", request.name), model, sampler=sampler)
            result = train_lora(request, run, output_dir=lora_dir)
            unet: Any = model.unet
            assert not unet.is_gradient_checkpointing
            assert not any(e.is_gradient_checkpointing for e in model.text_encoders)
            for component in model.modules():
                assert not any(m.training for m in component.modules())
                assert not any(p.requires_grad for p in component.parameters())
            assert _hooks(model) == hooks_before
        return result, run

    result, run = engine.worker.submit(job).future.result(300)
    assert not result.interrupted and result.steps_done == 4
    assert [s for s, _ in run.progress.losses] == [1, 2, 3, 4]
    assert result.filename == str(lora_dir / "cube-sd1.safetensors")
    assert len(result.samples) == 2 and all(Path(p).is_file() for p in result.samples)
    assert Path(result.samples[0]).parent == lora_dir / "cube-sd1-samples"
    assert [s for s, _ in run.progress.samples] == [2, 4]
    with Image.open(result.samples[0]) as sample:
        assert sample.size == (64, 64) and "a red cube" in sample.info["parameters"]

    after = engine.run_sync(t2i(prompt="a red cube"), 120)
    assert np.array_equal(pixels(after.images[0]), pixels(before.images[0]))

    assert engine.networks is not None
    engine.networks.registry.refresh("lora")
    # the resume state beside the file is not a LoRA of the list
    assert [info.name for info in engine.networks.registry.loras()] == ["cube-sd1"]
    with_lora = engine.run_sync(t2i(prompt="a red cube <lora:cube-sd1:1>"), 120)
    assert not any("cube-sd1" in w for w in with_lora.warnings), with_lora.warnings
    assert "Lora hashes" in with_lora.infotexts[0]
    diff = np.abs(pixels(with_lora.images[0]) - pixels(before.images[0]))
    assert diff.max() > 0


def test_sdxl_locon_with_checkpointing_and_bf16(tiny_models: dict[str, Path], data_root: Path, tmp_path: Path) -> None:
    model = load_single_file(tiny_models["sdxl"], Placement())
    request = _request(
        data_root,
        name="cube-xl",
        max_train_steps=2,
        conv_dim=2,
        conv_alpha=1.0,
        gradient_checkpointing=True,
        mixed_precision="bf16",
        min_snr_gamma=5.0,
        noise_offset=0.05,
        lr_scheduler="cosine",
        lr_warmup_steps=1,
    )
    run = TrainingRun.for_tests(model)
    result = train_lora(request, run, output_dir=tmp_path)
    assert result.steps_done == 2 and np.isfinite(result.last_loss or float("nan"))
    weights = read_network(Path(result.filename))
    assert any(k.startswith("lora_te1_") for k in weights.modules)
    assert any(k.startswith("lora_te2_") for k in weights.modules)
    conv = weights.modules["lora_unet_input_blocks_1_0_in_layers_2"]
    assert conv["lora_down.weight"].shape[2:] == (3, 3)
    with safe_open(result.filename, framework="pt") as handle:
        assert handle.get_tensor("lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight").dtype == torch.float16
    match = match_network(weights, model)
    assert not match.unmatched and not match.unsupported
    meta = read_metadata(Path(result.filename))
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_mixed_precision"] == "bf16"
    assert meta["ss_steps"] == "2" and meta["ss_min_snr_gamma"] == "5.0"
    unet: Any = model.unet
    assert not unet.is_gradient_checkpointing
    assert not any(e.is_gradient_checkpointing for e in model.text_encoders)


def test_resume_continues_the_step_count_and_optimizer_state(
    sd1: StableDiffusionModel, data_root: Path, tmp_path: Path
) -> None:
    request = _request(data_root, name="resumed", max_train_steps=4, save_every_n_steps=2)
    straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
    straight = train_lora(
        request.__class__(**{**request.__dict__, "name": "straight"}),
        TrainingRun.for_tests(sd1),
        output_dir=straight_dir,
    )

    first = TrainingRun.for_tests(sd1)
    _stop_after(first, 2)
    interrupted = train_lora(request, first, output_dir=split_dir)
    assert interrupted.interrupted and interrupted.steps_done == 2
    final, state_path = output_paths(split_dir, "resumed")
    state = load_state(state_path)
    assert state is not None and state["step"] == 2
    adam_steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {2}
    assert step_file(split_dir, "resumed", 2).is_file()

    second = TrainingRun.for_tests(sd1)
    resumed = train_lora(request, second, output_dir=split_dir)
    assert not resumed.interrupted and resumed.steps_done == 4
    assert second.progress.start_step == 2 and [s for s, _ in second.progress.losses] == [3, 4]
    state = load_state(state_path)
    assert state is not None and state["step"] == 4
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {4}
    # the resumed run ends where the uninterrupted one ends
    a, b = read_network(Path(straight.filename)), read_network(final)
    for key, parts in a.modules.items():
        for suffix, tensor in parts.items():
            torch.testing.assert_close(b.modules[key][suffix], tensor, rtol=1e-3, atol=1e-4)
    assert resumed.last_loss == pytest.approx(straight.last_loss, rel=1e-4)
    assert read_metadata(final)["ss_steps"] == "4"

    # a state of other network settings is refused rather than half-loaded
    with pytest.raises(Exception, match="other network settings"):
        train_lora(
            request.__class__(**{**request.__dict__, "network_dim": 8}),
            TrainingRun.for_tests(sd1),
            output_dir=split_dir,
        )


def test_interrupt_leaves_a_valid_file(sd1: StableDiffusionModel, data_root: Path, tmp_path: Path) -> None:
    run = TrainingRun.for_tests(sd1)
    _stop_after(run, 1)
    result = train_lora(_request(data_root, name="stopped", max_train_steps=50), run, output_dir=tmp_path)
    assert result.interrupted and result.steps_done == 1
    path = Path(result.filename)
    assert path == tmp_path / "stopped.safetensors"
    match = match_network(read_network(path), sd1)
    assert match.matched_unet > 0 and match.matched_te > 0 and not match.unmatched
    assert read_metadata(path)["ss_steps"] == "1"
    state = load_state(tmp_path / "stopped.training-state")
    assert state is not None and state["step"] == 1
    assert not any(m._forward_hooks for c in sd1.modules() for m in c.modules())


def test_epochs_override_steps_and_bad_images_are_skipped(
    sd1: StableDiffusionModel, data_root: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    write_problem_images(data / "1_problems")
    request = _request(
        data, name="epochs", max_train_epochs=1, max_train_steps=999, train_batch_size=4, gradient_accumulation_steps=2
    )
    run = TrainingRun.for_tests(sd1)
    result = train_lora(request, run, output_dir=tmp_path / "out")
    assert [name for name, _ in result.skipped_images] == ["1_problems/broken.png"]
    assert any("broken.png" in w for w in result.warnings)
    meta = read_metadata(Path(result.filename))
    batches = int(meta["ss_num_batches_per_epoch"])
    assert result.steps_done == -(-batches // 2) == int(meta["ss_max_train_steps"])
    assert meta["ss_num_epochs"] == "1" and meta["ss_epoch"] == "1"
    assert meta["ss_num_train_images"] == "8"  # 6 + the CMYK and 16-bit images, repeats 1


def test_adamw8bit_without_bitsandbytes_warns_and_trains(
    sd1: StableDiffusionModel, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modules.engine.training import optim

    monkeypatch.setattr(optim, "_adamw8bit", lambda device: (None, "bitsandbytes is not usable (test)"))
    run = TrainingRun.for_tests(sd1)
    result = train_lora(
        _request(data_root, name="eightbit", max_train_steps=1, optimizer_type="AdamW8bit"), run, output_dir=tmp_path
    )
    assert result.steps_done == 1
    assert any("AdamW8bit" in w and "AdamW instead" in w for w in result.warnings)
    assert read_metadata(Path(result.filename))["ss_optimizer"].endswith("AdamW")
