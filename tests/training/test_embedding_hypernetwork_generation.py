"""Trained embeddings and hypernetworks change what the engine generates, and the previews taken
while training are what the engine generates afterwards from the saved file (the previews use the
weights being trained: the embedding override, the hypernetwork hooks). Runs the trainers inside a
worker job with the model lease held, as the training service does."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modules.core.hashes import HashCache
from modules.core.options import Options, default_option_infos
from modules.core.requests import Txt2ImgRequest
from modules.core.results import Result
from modules.core.training import (
    CreateEmbeddingRequest,
    CreateHypernetworkRequest,
    TrainEmbeddingRequest,
    TrainHypernetworkRequest,
    TrainResult,
)
from modules.engine.extra_networks import ExtraNetworks
from modules.engine.service import GenerationService
from modules.engine.training.creation import create_embedding, create_hypernetwork
from modules.engine.training.embedding_trainer import train_embedding
from modules.engine.training.hypernetwork_trainer import train_hypernetwork
from modules.engine.training.session import TrainingProgress, TrainingRun
from modules.engine.worker import JobContext, Worker
from modules.models.embeddings import EmbeddingDatabase
from modules.models.loader import Placement
from modules.models.manager import ModelManager
from modules.models.network_registry import NetworkRegistry
from modules.models.registry import ModelRegistry
from modules.models.spec import ModelSpec
from tests.fixtures.module_tmp import ModuleTempDirs

pytestmark = pytest.mark.usefixtures("no_network")


@dataclass
class Setup:
    service: GenerationService
    models: ModelManager
    embeddings: EmbeddingDatabase
    networks: NetworkRegistry
    emb_dir: Path
    hn_dir: Path
    data: Path
    logs: Path


@pytest.fixture(scope="module")
def setup(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Iterator[Setup]:
    root = module_tmp.mktemp("gen")
    sd = root / "Stable-diffusion"
    sd.mkdir()
    shutil.copy(tiny_models["sd1"], sd / "sd1.safetensors")
    cache = HashCache(root / "cache.json")
    models = ModelManager(ModelRegistry([sd], [], cache, hashing=False), Placement(), cache_bytes=1 << 34)
    emb_dir, hn_dir, lora_dir = root / "embeddings", root / "hypernetworks", root / "Lora"
    for folder in (emb_dir, hn_dir, lora_dir):
        folder.mkdir()
    embeddings = EmbeddingDatabase([emb_dir], cache, hashing=False)
    networks = NetworkRegistry([lora_dir], [hn_dir], cache, hashing=False)
    worker = Worker()
    options = Options(default_option_infos(), None)
    service = GenerationService(models, options, worker, networks=ExtraNetworks(networks, embeddings))
    data = root / "data"
    data.mkdir()
    for i, color in enumerate([(220, 40, 40), (40, 40, 220)]):
        Image.new("RGB", (64, 64), color).save(data / f"{i}-a shiny thing.png")
    yield Setup(service, models, embeddings, networks, emb_dir, hn_dir, data, root / "logs")
    worker.shutdown()


def _in_job(setup: Setup, work: Any) -> Any:
    def job(ctx: JobContext) -> Any:
        with setup.models.lease(ModelSpec(checkpoint=None)) as model:
            return work(ctx, model)

    return setup.service.worker.submit(job, description="test-training").future.result(300)


def _run(setup: Setup, ctx: JobContext, model: Any, kind: str, name: str) -> TrainingRun:
    def sample(request: Txt2ImgRequest, sample_ctx: JobContext) -> Result:
        return setup.service.prepare_and_process(request.replace(do_not_save_samples=True), sample_ctx)  # type: ignore[arg-type]

    return TrainingRun(ctx, TrainingProgress(kind, name), model, sampler=sample, embeddings=setup.embeddings)


def _t2i(prompt: str) -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt=prompt, steps=3, width=64, height=64, seed=7, sampler_name="Euler")


def _pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _preview_fields(prompt: str) -> dict[str, Any]:
    return {
        "preview_from_txt2img": True,
        "preview_prompt": prompt,
        "preview_steps": 3,
        "preview_sampler_name": "Euler",
        "preview_seed": 7,
        "preview_width": 64,
        "preview_height": 64,
        "create_image_every": 3,
    }


def test_trained_embedding_changes_generation_and_previews_match(setup: Setup) -> None:
    name = "glowtoken"
    _in_job(
        setup,
        lambda _ctx, model: create_embedding(CreateEmbeddingRequest(name=name, init_text="dog"), setup.emb_dir, model),
    )
    prompt = f"a photo of {name}"
    before = setup.service.run_sync(_t2i(prompt), 300).images[0]
    request = TrainEmbeddingRequest(
        embedding_name=name,
        learn_rate="0.5",
        data_root=str(setup.data),
        training_width=64,
        training_height=64,
        steps=3,
        save_embedding_every=0,
        template_filename="subject.txt",
        **_preview_fields(prompt),
    )

    def work(ctx: JobContext, model: Any) -> TrainResult:
        run = _run(setup, ctx, model, "embedding", name)
        return train_embedding(request, run, embeddings_dir=setup.emb_dir, log_root=setup.logs)

    result = _in_job(setup, work)
    assert result.steps_done == 3 and len(result.samples) == 1
    preview = Image.open(result.samples[0])
    after = setup.service.run_sync(_t2i(prompt), 300).images[0]
    assert np.abs(_pixels(after) - _pixels(before)).max() > 0  # the trained file changes generation
    assert np.array_equal(_pixels(preview), _pixels(after))  # the preview used the trained vectors


def test_trained_hypernetwork_changes_generation_and_previews_match(setup: Setup) -> None:
    name = "glowhn"
    sizes = (32, 64)  # the tiny UNet's channel and context widths
    create_hypernetwork(CreateHypernetworkRequest(name=name, enable_sizes=sizes), setup.hn_dir)
    setup.networks.refresh("hypernetwork")
    prompt = "a shiny thing"
    tagged = f"{prompt} <hypernet:{name}:1>"
    before = setup.service.run_sync(_t2i(tagged), 300).images[0]
    request = TrainHypernetworkRequest(
        hypernetwork_name=name,
        learn_rate="0.02",
        data_root=str(setup.data),
        training_width=64,
        training_height=64,
        steps=3,
        save_hypernetwork_every=0,
        **_preview_fields(prompt),  # no tag: the trainer's own hooks apply the network
    )

    def work(ctx: JobContext, model: Any) -> TrainResult:
        run = _run(setup, ctx, model, "hypernetwork", name)
        return train_hypernetwork(request, run, hypernetworks_dir=setup.hn_dir, log_root=setup.logs)

    result = _in_job(setup, work)
    assert result.steps_done == 3 and len(result.samples) == 1
    preview = Image.open(result.samples[0])
    after = setup.service.run_sync(_t2i(tagged), 300).images[0]
    plain = setup.service.run_sync(_t2i(prompt), 300).images[0]
    assert np.abs(_pixels(after) - _pixels(before)).max() > 0
    assert np.abs(_pixels(preview) - _pixels(plain)).max() > 0  # the preview had the network on
    assert np.abs(_pixels(preview) - _pixels(after)).max() <= 1  # ... as trained
