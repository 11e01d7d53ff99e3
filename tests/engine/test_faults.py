"""Faults (issue 19, item 3): out of memory leaves the worker serving; an unusable checkpoint is
refused at load with a message naming it, and the previous model keeps generating."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from modules.core.errors import OutOfMemoryError
from modules.engine.worker import JobContext, Worker
from tests.fixtures.module_tmp import ModuleTempDirs


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"),
        MemoryError(),
    ],
)
def test_out_of_memory_fails_the_job_clearly_and_the_worker_goes_on(
    error: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modules.engine.worker as worker_module

    freed: list[bool] = []
    real_free = worker_module._free_memory
    monkeypatch.setattr(worker_module, "_free_memory", lambda: (freed.append(True), real_free())[1])
    worker = Worker()
    try:

        def explode(ctx: JobContext) -> None:
            raise error

        failed = worker.submit(explode, description="txt2img")
        with pytest.raises(OutOfMemoryError) as caught:
            failed.future.result(30)
        assert caught.value.status_code == 507
        assert "Out of memory while running txt2img" in caught.value.message
        assert freed == [True]
        assert worker.submit(lambda ctx: 42).future.result(30) == 42
    finally:
        worker.shutdown()


def test_other_errors_are_not_called_out_of_memory() -> None:
    worker = Worker()
    try:

        def explode(ctx: JobContext) -> None:
            raise RuntimeError("shapes do not match")

        with pytest.raises(RuntimeError, match="shapes"):
            worker.submit(explode).future.result(30)
    finally:
        worker.shutdown()


# -- unusable checkpoints are refused at load; the previous model keeps generating ---------------


def _bad_checkpoints(tiny_models: dict[str, Path], folder: Path) -> dict[str, Path]:
    from safetensors.torch import load_file, save_file

    xl = load_file(str(tiny_models["sdxl"]))
    key = "model.diffusion_model.label_emb.0.0.weight"
    weight = xl[key]
    xl[key] = torch.zeros(weight.shape[0], weight.shape[1] + 8)  # label_emb input != pooled + 6 x 256
    save_file(xl, str(folder / "xl-label-emb.safetensors"))
    good = tiny_models["sd1"].read_bytes()
    (folder / "corrupt-header.safetensors").write_bytes((64).to_bytes(8, "little") + b"{not json" + b" " * 55)
    (folder / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    return {
        "label_emb": folder / "xl-label-emb.safetensors",
        "corrupt header": folder / "corrupt-header.safetensors",
        "truncated": folder / "truncated.safetensors",
    }


@pytest.fixture(scope="module")
def faulty_engine(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Iterator[Any]:
    from modules.core.hashes import HashCache
    from modules.core.options import Options, default_option_infos
    from modules.engine.service import GenerationService
    from modules.models.loader import Placement
    from modules.models.manager import ModelManager
    from modules.models.registry import ModelRegistry

    root = module_tmp.mktemp("faulty")
    sd = root / "Stable-diffusion"
    sd.mkdir()
    shutil.copy(tiny_models["sd1"], sd / "good.safetensors")
    bad = _bad_checkpoints(tiny_models, sd)
    registry = ModelRegistry([sd], [], HashCache(root / "cache.json"), hashing=False)
    models = ModelManager(registry, Placement(), cache_bytes=1 << 34)
    worker = Worker()
    service = GenerationService(models, Options(default_option_infos(), None), worker)
    models.load("good.safetensors")
    yield service, bad
    worker.shutdown()


@pytest.mark.parametrize("case", ["label_emb", "corrupt header", "truncated"])
def test_an_unusable_checkpoint_is_refused_at_load_and_the_previous_one_still_generates(
    faulty_engine: Any, case: str
) -> None:
    from modules.core.errors import ModelLoadError
    from modules.core.requests import Txt2ImgRequest

    service, bad = faulty_engine
    path = bad[case]
    with pytest.raises(ModelLoadError) as caught:
        service.models.load(path.name)
    assert path.name in str(caught.value)
    if case == "label_emb":
        assert "label_emb" in str(caught.value) and "needs" in str(caught.value)
    assert service.models.status().checkpoint is not None and "good" in str(service.models.status().checkpoint)
    request = Txt2ImgRequest(prompt="a cat", steps=1, width=64, height=64, seed=1, sampler_name="Euler")
    result = service.submit(request).future.result(120)
    assert len(result.images) == 1


# -- NaN / infinity check ---------------------------------------------------------------------------


class _GreyVAE:
    dtype = torch.float32

    def __init__(self, bad_pixel: float | None = None) -> None:
        self.config = {"scaling_factor": 0.18215}
        self.bad_pixel = bad_pixel

    def decode(self, z: torch.Tensor) -> Any:
        from types import SimpleNamespace

        sample = torch.zeros((z.shape[0], 3, 8, 8))
        if self.bad_pixel is not None:
            sample[0, 2, 7, 7] = self.bad_pixel
        return SimpleNamespace(sample=sample)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_latents_anywhere_are_caught_unless_the_check_is_off(bad: float) -> None:
    from types import SimpleNamespace

    from modules.core.errors import NansException
    from modules.engine.processing import EngineSettings, _decode

    latents = torch.zeros(2, 4, 2, 2)
    latents[1, 3, 1, 1] = bad  # not the first element: A1111's first-element test misses it
    model = SimpleNamespace(vae=_GreyVAE())
    with pytest.raises(NansException, match="A tensor with NaNs was produced in Unet"):
        _decode(model, latents, EngineSettings())  # type: ignore[arg-type]
    assert len(_decode(model, latents, EngineSettings(nan_check=False))) == 2  # type: ignore[arg-type]


def test_a_vae_output_with_one_bad_pixel_is_caught() -> None:
    from types import SimpleNamespace

    from modules.core.errors import NansException
    from modules.engine.processing import EngineSettings, _decode

    model = SimpleNamespace(vae=_GreyVAE(bad_pixel=float("inf")))
    with pytest.raises(NansException, match="produced in VAE"):
        _decode(model, torch.zeros(1, 4, 2, 2), EngineSettings())  # type: ignore[arg-type]


def test_disable_nan_check_reaches_the_engine(tmp_path: Path) -> None:
    from modules.app import build_services
    from modules.core.settings import parse_settings

    for flags, expected in (([], True), (["--disable-nan-check"], False)):
        settings = parse_settings(["--data-dir", str(tmp_path), *flags], {})
        services = build_services(settings, tmp_path, {})
        try:
            assert services.engine._generation.nan_check is expected
        finally:
            services.worker.shutdown()


# -- a full disk ------------------------------------------------------------------------------------


def _disk_full(*args: Any) -> None:
    import errno
    import os

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_fails_the_job_clearly_and_the_worker_goes_on() -> None:
    from modules.core.errors import DiskFullError

    worker = Worker()
    try:

        def save(ctx: JobContext) -> None:
            _disk_full()

        with pytest.raises(DiskFullError) as caught:
            worker.submit(save, description="txt2img").future.result(30)
        assert caught.value.status_code == 507 and "No space left on device" in caught.value.message
        assert worker.submit(lambda ctx: 1).future.result(30) == 1
    finally:
        worker.shutdown()


def test_writers_under_a_full_disk_leave_the_old_file_and_no_partial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from modules.core.hashes import HashCache
    from modules.core.options import Options, default_option_infos
    from modules.core.styles import PromptStyle, StyleDatabase
    from modules.engine.publishing import publish_bytes

    config = tmp_path / "config.json"
    options = Options(default_option_infos(), config)
    options.set("samples_format", "jpg")
    options.save()
    styles_file = tmp_path / "styles.csv"
    styles = StyleDatabase([styles_file])
    styles.save(PromptStyle("one", "a cat", ""))
    (tmp_path / "cache").mkdir()
    cache = HashCache(tmp_path / "cache" / "cache.json")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert set(before) >= {"config.json", "styles.csv"}

    monkeypatch.setattr(os, "fsync", _disk_full)
    options.set("samples_format", "webp")
    with pytest.raises(OSError, match="No space left"):
        options.save()
    with pytest.raises(OSError, match="No space left"):
        styles.save(PromptStyle("two", "a dog", ""))
    cache.set_value("checkpoint", "x", config, "ab" * 32)  # a cache: the write failure is logged
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    with pytest.raises(OSError, match="No space left"):
        publish_bytes(
            outputs, b"\x89PNG...", basename="", decoration="x", extension="png", add_number=True, stem_budget=100
        )
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # old files intact, no temp files left
    assert list(outputs.iterdir()) == []
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith((".json", ".tmp"))]
