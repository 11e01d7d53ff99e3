"""Training a hypernetwork on the tiny SD1 model with A1111's semantics: the loss goes down on a
repeated batch, the file keeps A1111's layout and metadata and loads back through our loader and
changes the UNet's output, previews run with the hypernetwork being trained, resume continues the
step count and the optimizer state, an interrupt leaves a valid file, wrong names are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from modules.core.errors import UserError
from modules.core.options import Options, default_option_infos
from modules.core.requests import Txt2ImgRequest
from modules.core.results import Result
from modules.core.training import CreateHypernetworkRequest, TrainHypernetworkRequest
from modules.engine.training.creation import create_hypernetwork
from modules.engine.training.hypernetwork_trainer import train_hypernetwork
from modules.engine.training.session import TrainingRun
from modules.engine.worker import JobContext
from modules.models.hypernetworks import hypernetworks_applied, read_hypernetwork
from modules.models.loader import Placement, StableDiffusionModel, load_single_file

pytestmark = pytest.mark.usefixtures("no_network")

NAME = "myhn"
SIZE = 64


@pytest.fixture(scope="module")
def sd1(tiny_models: dict[str, Path]) -> StableDiffusionModel:
    return load_single_file(tiny_models["sd1"], Placement())


def _sizes(model: StableDiffusionModel) -> tuple[int, ...]:
    config = model.unet.config
    return tuple(sorted({int(config.cross_attention_dim), *(int(c) for c in config.block_out_channels)}))


def _setup(tmp_path: Path, sd1: StableDiffusionModel, **changes: Any) -> tuple[Path, Path]:
    hn_dir = tmp_path / "hypernetworks"
    create_hypernetwork(CreateHypernetworkRequest(name=NAME, enable_sizes=_sizes(sd1), **changes), hn_dir)
    data = tmp_path / "data"
    data.mkdir()
    for i, color in enumerate([(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (SIZE, SIZE), color).save(data / f"{i}-a red thing.png")
    return hn_dir, data


def _request(data: Path, **changes: Any) -> TrainHypernetworkRequest:
    fields: dict[str, Any] = {
        "hypernetwork_name": NAME,
        "learn_rate": "0.01",
        "data_root": str(data),
        "training_width": SIZE,
        "training_height": SIZE,
        "steps": 4,
        "create_image_every": 0,
        "save_hypernetwork_every": 0,
        "template_filename": "hypernetwork.txt",
        **changes,
    }
    return TrainHypernetworkRequest(**fields)


def _train(
    sd1: StableDiffusionModel, request: TrainHypernetworkRequest, tmp_path: Path, hn_dir: Path, **kw: Any
) -> Any:
    run = kw.pop("run", None) or TrainingRun.for_tests(sd1, kind="hypernetwork", name=NAME)
    result = train_hypernetwork(request, run, hypernetworks_dir=hn_dir, log_root=tmp_path / "logs", **kw)
    return run, result


def _unet_out(model: StableDiffusionModel) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    context = torch.randn(1, 77, int(model.unet.config.cross_attention_dim), generator=gen)
    with torch.no_grad():
        out: torch.Tensor = model.unet(x, torch.tensor([500]), encoder_hidden_states=context).sample
    return out


def test_loss_goes_down_and_the_file_loads_back_and_changes_the_unet(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    hn_dir, data = _setup(tmp_path, sd1)
    created = read_hypernetwork(hn_dir / f"{NAME}.pt")
    run, result = _train(
        sd1, _request(data, steps=10, learn_rate="0.01", batch_size=2), tmp_path, hn_dir, repeat_noise=True
    )
    losses = [loss for _s, loss in run.progress.losses]
    assert len(losses) == 10 and losses[-1] < losses[0] * 0.8, losses
    assert result.steps_done == 10 and not result.interrupted
    raw = torch.load(hn_dir / f"{NAME}.pt", weights_only=True)
    assert raw["step"] == 10 and raw["name"] == NAME and raw["weight_initialization"] == "Normal"
    assert raw["activate_output"] is False and raw["layer_structure"] == [1.0, 2.0, 1.0]
    trained = read_hypernetwork(hn_dir / f"{NAME}.pt")
    assert trained.step == 10 and sorted(trained.layers) == sorted(created.layers)
    plain = _unet_out(sd1)
    with hypernetworks_applied(sd1.unet, [(created, 1.0)]):
        with_created = _unet_out(sd1)
    with hypernetworks_applied(sd1.unet, [(trained, 1.0)]):
        with_trained = _unet_out(sd1)
    assert not torch.allclose(with_trained, with_created) and not torch.allclose(with_trained, plain)
    assert torch.equal(_unet_out(sd1), plain)  # no hooks left on the model
    assert all(not p.requires_grad for p in sd1.unet.parameters()) and not sd1.unet.training


def test_previews_run_with_the_hypernetwork_being_trained(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    hn_dir, data = _setup(tmp_path, sd1, add_layer_norm=True, use_dropout=True, dropout_structure=(0, 0.3, 0))
    hooked: list[bool] = []

    def sampler(request: Txt2ImgRequest, ctx: JobContext) -> Result:
        to_k = next(m for n, m in sd1.unet.named_modules() if n.endswith("attn2.to_k"))
        hooked.append(bool(to_k._forward_pre_hooks))
        return Result(images=[Image.new("RGB", (request.width, request.height))], infotexts=["p"])

    run = TrainingRun.for_tests(sd1, kind="hypernetwork", name=NAME, sampler=sampler)
    request = _request(
        data,
        steps=2,
        create_image_every=1,
        save_hypernetwork_every=1,
        preview_from_txt2img=True,
        preview_prompt="a test",
        preview_steps=3,
        preview_width=64,
        preview_height=64,
    )
    _run, result = _train(sd1, request, tmp_path, hn_dir, run=run)
    assert hooked == [True, True]
    (day,) = (tmp_path / "logs").iterdir()
    folder = day / NAME
    assert sorted(p.name for p in (folder / "hypernetworks").iterdir()) == [f"{NAME}-1.pt", f"{NAME}-2.pt"]
    assert sorted(p.name for p in (folder / "images").iterdir()) == [f"{NAME}-1.png", f"{NAME}-2.png"]
    assert read_hypernetwork(folder / "hypernetworks" / f"{NAME}-1.pt").step == 1
    assert len(result.samples) == 2 and len(result.saved) == 5  # 2 copies + 2 in place + the final save
    raw = torch.load(hn_dir / f"{NAME}.pt", weights_only=True)
    assert raw["dropout_structure"] == [0.0, 0.3, 0.0] and raw["is_layer_norm"] is True


def test_resume_and_interrupt(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    hn_dir, data = _setup(tmp_path, sd1)
    options = Options(default_option_infos(), None)
    options.set("save_optimizer_state", True)
    _train(sd1, _request(data, steps=2), tmp_path, hn_dir, options=options)
    optim = torch.load(hn_dir / f"{NAME}.pt.optim", weights_only=True)
    assert optim["optimizer_state_dict"]["state"][0]["step"] == 2
    run = TrainingRun.for_tests(sd1, kind="hypernetwork", name=NAME)
    step_done = run.step_done

    def stop_at_three(step: int, loss: float, **kw: Any) -> None:
        step_done(step, loss, **kw)
        if step == 3:
            run.ctx.interrupted = True

    run.step_done = stop_at_three  # type: ignore[method-assign]
    _run, second = _train(sd1, _request(data, steps=100), tmp_path, hn_dir, run=run, options=options)
    assert second.interrupted and second.steps_done == 3 and [s for s, _ in run.progress.losses] == [3]
    assert read_hypernetwork(hn_dir / f"{NAME}.pt").step == 3
    optim = torch.load(hn_dir / f"{NAME}.pt.optim", weights_only=True)
    assert optim["optimizer_state_dict"]["state"][0]["step"] == 3  # continued from 2


def test_wrong_name_is_refused(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    hn_dir, data = _setup(tmp_path, sd1)
    with pytest.raises(UserError, match="not found"):
        _train(sd1, _request(data, hypernetwork_name="nobody"), tmp_path, hn_dir)
    create_hypernetwork(CreateHypernetworkRequest(name="other", enable_sizes=(1280,)), hn_dir)
    with pytest.raises(UserError, match="none of which"):
        _train(sd1, _request(data, hypernetwork_name="other"), tmp_path, hn_dir)
