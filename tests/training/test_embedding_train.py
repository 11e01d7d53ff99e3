"""Training an embedding on the tiny SD1 model with A1111's semantics: the loss goes down on a
repeated batch, the trained file loads back and changes the conditioning, previews use the current
vectors (over the file of the same name), resume continues the step count and the optimizer state,
an interrupt leaves a valid file, a broken image is reported and skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from modules.core.errors import UserError
from modules.core.hashes import HashCache
from modules.core.options import Options, default_option_infos
from modules.core.requests import Txt2ImgRequest
from modules.core.results import Result
from modules.core.training import CreateEmbeddingRequest, TrainEmbeddingRequest
from modules.engine.conditioning import ConditioningSettings, Encoder
from modules.engine.training.creation import create_embedding
from modules.engine.training.diffusion import TrainingView
from modules.engine.training.embedding_trainer import train_embedding
from modules.engine.training.session import TrainingRun
from modules.engine.worker import JobContext
from modules.models.embeddings import EmbeddingDatabase, read_embedding_file
from modules.models.loader import Placement, StableDiffusionModel, load_single_file
from tests.fixtures.training_data import write_problem_images

pytestmark = pytest.mark.usefixtures("no_network")

NAME = "shinything"
SIZE = 64


@pytest.fixture(scope="module")
def sd1(tiny_models: dict[str, Path]) -> StableDiffusionModel:
    return load_single_file(tiny_models["sd1"], Placement())


def _images(root: Path, count: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    for i in range(count):
        Image.new("RGB", (SIZE + 16 * i, SIZE), colors[i % 4]).save(root / f"{i:04d}-red round thing.png")
    return root


def _setup(tmp_path: Path, sd1: StableDiffusionModel, vectors: int = 2) -> tuple[Path, EmbeddingDatabase]:
    emb_dir = tmp_path / "embeddings"
    create_embedding(CreateEmbeddingRequest(name=NAME, num_vectors_per_token=vectors, init_text="cat"), emb_dir, sd1)
    db = EmbeddingDatabase([emb_dir], HashCache(tmp_path / "cache.json"), hashing=False)
    db.refresh()
    return emb_dir, db


def _request(data: Path, **changes: Any) -> TrainEmbeddingRequest:
    fields: dict[str, Any] = {
        "embedding_name": NAME,
        "learn_rate": "0.05",
        "data_root": str(data),
        "training_width": SIZE,
        "training_height": SIZE,
        "steps": 4,
        "create_image_every": 0,
        "save_embedding_every": 0,
        "template_filename": "subject_filewords.txt",
        **changes,
    }
    return TrainEmbeddingRequest(**fields)


def _options(**values: object) -> Options:
    options = Options(default_option_infos(), None)
    for key, value in values.items():
        options.set(key, value)
    return options


def _train(sd1: StableDiffusionModel, request: TrainEmbeddingRequest, tmp_path: Path, emb_dir: Path, **kw: Any) -> Any:
    run = kw.pop("run", None) or TrainingRun.for_tests(sd1, kind="embedding", name=NAME, embeddings=kw.pop("db", None))
    result = train_embedding(request, run, embeddings_dir=emb_dir, log_root=tmp_path / "logs", **kw)
    return run, result


def test_loss_goes_down_on_a_repeated_batch(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    emb_dir, _db = _setup(tmp_path, sd1)
    data = _images(tmp_path / "data", 1)
    before = read_embedding_file(emb_dir / f"{NAME}.pt")[1]
    run, result = _train(sd1, _request(data, steps=12, learn_rate="0.2"), tmp_path, emb_dir, repeat_noise=True)
    losses = [loss for _step, loss in run.progress.losses]
    assert [s for s, _ in run.progress.losses] == list(range(1, 13))
    assert losses[-1] < losses[0] * 0.97 and losses[-1] == min(losses), losses
    assert result.steps_done == 12 and not result.interrupted and result.last_loss == pytest.approx(losses[-1])
    after = read_embedding_file(emb_dir / f"{NAME}.pt")[1]
    assert before is not None and after is not None and after.step == 12
    assert not torch.equal(before.vectors["clip"], after.vectors["clip"])
    assert all(not p.requires_grad for p in sd1.unet.parameters())  # the model as found
    assert all(not p.requires_grad for e in sd1.text_encoders for p in e.parameters())
    assert not sd1.unet.training


def test_trained_file_changes_conditioning_and_previews_use_current_vectors(
    sd1: StableDiffusionModel, tmp_path: Path
) -> None:
    emb_dir, db = _setup(tmp_path, sd1)
    data = _images(tmp_path / "data", 2)
    prompt = f"a photo of {NAME}"
    created = Encoder(sd1, ConditioningSettings(), embeddings=db.for_model(sd1)).encode(prompt).hidden
    seen: list[tuple[int, torch.Tensor]] = []

    def sampler(request: Txt2ImgRequest, ctx: JobContext) -> Result:
        # what the engine does for a job: the embeddings the model can use now
        vectors = db.for_model(sd1).loaded[NAME].vectors["clip"].clone()
        seen.append((request.steps, vectors))
        return Result(images=[Image.new("RGB", (request.width, request.height))], infotexts=["x"])

    run = TrainingRun.for_tests(sd1, kind="embedding", name=NAME, sampler=sampler, embeddings=db)
    request = _request(data, steps=4, create_image_every=2, save_embedding_every=2)
    _run, result = _train(sd1, request, tmp_path, emb_dir, run=run, options=_options(training_write_csv_every=1))
    # previews at steps 2 and 4 saw the vectors as trained so far (not the created file's)
    assert len(seen) == 2 and seen[0][0] == 20  # A1111: the template prompt, 20 steps
    file_vectors = read_embedding_file(emb_dir / f"{NAME}.pt")[1]
    assert file_vectors is not None
    assert torch.equal(seen[1][1], file_vectors.vectors["clip"])
    assert not torch.equal(seen[0][1], seen[1][1])
    # A1111's log layout: <log>/<date>/<name>/{embeddings,images,image_embeddings}, the loss csv
    (day,) = (tmp_path / "logs").iterdir()
    folder = day / NAME
    assert sorted(p.name for p in (folder / "embeddings").iterdir()) == [f"{NAME}-2.pt", f"{NAME}-4.pt"]
    assert sorted(p.name for p in (folder / "images").iterdir()) == [f"{NAME}-2.png", f"{NAME}-4.png"]
    assert len(result.samples) == 2
    stored = read_embedding_file(folder / "image_embeddings" / f"{NAME}-4.png")[1]
    assert stored is not None and torch.equal(stored.vectors["clip"], file_vectors.vectors["clip"])
    (settings,) = folder.glob("settings-*.json")  # A1111's save_training_settings_to_txt (on by default)
    saved_settings = json.loads(settings.read_text())
    assert saved_settings["embedding_name"] == NAME and saved_settings["num_vectors_per_token"] == 2
    assert saved_settings["steps"] == 4 and saved_settings["num_of_dataset_images"] == 2
    lines = (folder / "textual_inversion_loss.csv").read_text().splitlines()
    assert lines[0] == "step,epoch,epoch_step,loss,learn_rate" and len(lines) == 5
    copy = read_embedding_file(folder / "embeddings" / f"{NAME}-2.pt")[1]
    assert copy is not None and copy.step == 2
    # outside the run the file is what the views give, and it changes the conditioning
    db.refresh()
    trained = Encoder(sd1, ConditioningSettings(), embeddings=db.for_model(sd1)).encode(prompt).hidden
    assert db.for_model(sd1).loaded[NAME].step == 4
    assert not torch.allclose(created, trained)


def test_resume_continues_step_count_and_optimizer_state(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    emb_dir, _db = _setup(tmp_path, sd1)
    data = _images(tmp_path / "data", 2)
    options = _options(save_optimizer_state=True)
    _run, first = _train(sd1, _request(data, steps=3), tmp_path, emb_dir, options=options)
    assert first.steps_done == 3
    optim = torch.load(emb_dir / f"{NAME}.pt.optim", weights_only=True)
    assert optim["optimizer_name"] == "AdamW" and optim["optimizer_state_dict"]["state"][0]["step"] == 3
    run, second = _train(sd1, _request(data, steps=5), tmp_path, emb_dir, options=options)
    assert [s for s, _ in run.progress.losses] == [4, 5] and run.progress.start_step == 3
    assert second.steps_done == 5
    optim = torch.load(emb_dir / f"{NAME}.pt.optim", weights_only=True)
    assert optim["optimizer_state_dict"]["state"][0]["step"] == 5  # continued, not restarted at 2
    # at max steps already: nothing to do, said so
    _run, third = _train(sd1, _request(data, steps=5), tmp_path, emb_dir, options=options)
    assert third.steps_done == 5 and "already been trained" in third.warnings[0]


def test_interrupt_leaves_a_valid_file(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    emb_dir, _db = _setup(tmp_path, sd1)
    data = _images(tmp_path / "data", 2)
    run = TrainingRun.for_tests(sd1, kind="embedding", name=NAME)
    step_done = run.step_done

    def stop_after_two(step: int, loss: float, **kw: Any) -> None:
        step_done(step, loss, **kw)
        if step == 2:
            run.ctx.interrupted = True

    run.step_done = stop_after_two  # type: ignore[method-assign]
    _run, result = _train(sd1, _request(data, steps=50), tmp_path, emb_dir, run=run)
    assert result.interrupted and result.steps_done == 2
    embedding = read_embedding_file(emb_dir / f"{NAME}.pt")[1]
    assert embedding is not None and embedding.step == 2


def test_broken_image_is_reported_and_skipped(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    emb_dir, _db = _setup(tmp_path, sd1)
    data = _images(tmp_path / "data", 1)
    write_problem_images(data)  # broken.png, cmyk.jpg, grey16.png
    (data / "notes.md").write_text("not an image")
    run, result = _train(sd1, _request(data, steps=2, batch_size=4), tmp_path, emb_dir)
    assert [name for name, _reason in result.skipped_images] == ["broken.png"]
    assert any("broken.png" in w for w in result.warnings)
    assert result.steps_done == 2 and len(run.progress.losses) == 2


def test_varsize_weights_random_latents_tag_edits_and_clipping(
    sd1: StableDiffusionModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb_dir, _db = _setup(tmp_path, sd1)
    data = tmp_path / "data"
    data.mkdir()
    half = Image.new("RGBA", (64, 64), (200, 30, 30, 255))
    half.paste((200, 30, 30, 0), (0, 0, 32, 64))  # left half transparent
    half.save(data / "half.png")
    Image.new("RGB", (96, 64), (30, 30, 200)).save(data / "wide.png")
    (data / "wide.txt").write_text("blue, wide, flat")
    seen: list[tuple[tuple[int, ...], torch.Tensor | None]] = []
    loss = TrainingView.loss

    def spy(self: TrainingView, latents: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
        seen.append((tuple(latents.shape), kw.get("weight_map")))
        return loss(self, latents, *args, **kw)

    monkeypatch.setattr(TrainingView, "loss", spy)
    request = _request(
        data,
        steps=4,
        batch_size=2,
        varsize=True,
        use_weight=True,
        latent_sampling_method="random",
        shuffle_tags=True,
        tag_drop_out=0.3,
        clip_grad_mode="norm",
        clip_grad_value="0.01",
    )
    _run, result = _train(sd1, request, tmp_path, emb_dir)
    assert result.steps_done == 4
    shapes = {shape for shape, _w in seen}
    assert shapes == {(1, 4, 8, 8), (1, 4, 8, 12)}  # varsize: one size per batch, never mixed
    for shape, weight in seen:
        assert weight is not None
        if shape[-1] == 8:  # the half-transparent image: zero weight on its left half
            assert float(weight[..., :3].max()) == 0.0 and float(weight[..., 5:].min()) > 0.0
        else:
            assert torch.equal(weight, torch.ones_like(weight))


def test_sdxl_embedding_trains_both_encoders(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    xl = load_single_file(tiny_models["sdxl"], Placement())
    emb_dir = tmp_path / "embeddings"
    create_embedding(CreateEmbeddingRequest(name=NAME, num_vectors_per_token=2, init_text="cat"), emb_dir, xl)
    before = read_embedding_file(emb_dir / f"{NAME}.safetensors")[1]
    data = _images(tmp_path / "data", 1)
    _run, result = _train(xl, _request(data, steps=2, learn_rate="0.1"), tmp_path, emb_dir)
    assert result.steps_done == 2 and Path(result.filename).suffix == ".safetensors"
    after = read_embedding_file(emb_dir / f"{NAME}.safetensors")[1]
    assert before is not None and after is not None
    for key in ("clip_l", "clip_g"):
        assert not torch.equal(before.vectors[key], after.vectors[key])
    with safe_open(str(emb_dir / f"{NAME}.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["clip_g", "clip_l"] and f.metadata()["step"] == "2"


def test_wrong_names_and_schedules(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    emb_dir, _db = _setup(tmp_path, sd1)
    data = _images(tmp_path / "data", 1)
    with pytest.raises(UserError, match="not found"):
        _train(sd1, _request(data, embedding_name="nobody"), tmp_path, emb_dir)
    with pytest.raises(UserError, match="learning rate schedule"):
        _train(sd1, _request(data, learn_rate="fast"), tmp_path, emb_dir)
    with pytest.raises(UserError, match="template"):
        _train(sd1, _request(data, template_filename="missing.txt"), tmp_path, emb_dir)
    embedding = read_embedding_file(emb_dir / f"{NAME}.pt")[1]
    assert embedding is not None and embedding.step == 0  # untouched
