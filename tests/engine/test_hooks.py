"""The seams of generation: the UNet wrapper chain, lifecycle events in order with the right
images, the per-step callback and in-worker processing of several requests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core.infotext import parse_infotext
from modules.core.options import Options, default_option_infos
from modules.core.paths import Paths
from modules.core.settings import parse_settings
from modules.engine.hooks import BatchEvent, Hooks, ImageEvent, ProcessEvent, SaveEvent
from modules.engine.image_metadata import read_infotext_from_image
from modules.engine.noise import ImageRNG
from modules.engine.outputs import ImageSaver
from modules.engine.sampler_runner import SamplerOptions, SamplerPass
from modules.engine.samplers import resolve_sampler
from modules.engine.sampling import (
    CFGDenoiser,
    DiscreteSchedule,
    SamplingJob,
    StepConds,
    StepInfo,
    TextCond,
    UNetCall,
    UNetFn,
    a1111_alphas_cumprod,
)
from modules.engine.service import GenerationService, image_saver_for
from modules.engine.worker import JobContext
from tests.engine.support import pixels, t2i

pytestmark = pytest.mark.usefixtures("no_network")


class _Out:
    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample


class ExactUNet(torch.nn.Module):
    """A stand-in UNet whose outputs are exact in float32 (small integers and halves), so sums of
    residuals can be compared with `torch.equal`."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def forward(self, x: torch.Tensor, t: Any, encoder_hidden_states: torch.Tensor, **kwargs: Any) -> _Out:
        self.calls += 1
        per_row = encoder_hidden_states.sum(dim=(1, 2)).reshape(-1, 1, 1, 1)
        return _Out(2 * x[:, :4] + per_row)


def _conds(batch: int) -> StepConds:
    cond = TextCond(torch.ones(batch, 3, 2))
    uncond = TextCond(torch.zeros(batch, 3, 2))
    return StepConds(cond=cond, weights=[[(b, 1.0)] for b in range(batch)], uncond=uncond)


def _job(unet: torch.nn.Module, **kw: Any) -> SamplingJob:
    """A job whose denoiser returns the CFG-combined raw UNet output (timestep mode: no scalings)."""
    kw.setdefault("mode", "timesteps")
    return SamplingJob(
        unet=unet,
        schedule=DiscreteSchedule(a1111_alphas_cumprod()),
        conds_at=lambda i: _conds(2),
        cfg_scale=7.0,
        total_calls=6,
        **kw,
    )


def _call(job: SamplingJob, x: torch.Tensor, t: float, *, calls_before: int = 0) -> torch.Tensor:
    denoiser = CFGDenoiser(job)
    denoiser.step = calls_before
    return denoiser(x, torch.full((x.shape[0],), t))


def test_a_unet_wrapper_adding_a_residual_changes_the_output_by_exactly_that() -> None:
    x = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 4, 2, 2)
    residual = torch.full((1, 4, 2, 2), 0.25)
    seen: list[UNetCall] = []

    def add(call: UNetCall, call_next: UNetFn) -> torch.Tensor:
        seen.append(call)
        return call_next(call) + residual

    plain = _call(_job(ExactUNet()), x, 999, calls_before=3)
    wrapped = _call(_job(ExactUNet(), unet_wrappers=(add,)), x, 999, calls_before=3)
    assert not torch.equal(plain, wrapped)
    assert torch.equal(wrapped - plain, residual.expand_as(plain))
    # the wrapper saw the whole CFG batch in one call: cond rows then uncond rows, step and owners
    assert len(seen) == 1 and seen[0].part == "cond+uncond" and seen[0].step == 3
    assert seen[0].owners == (0, 1, 0, 1) and seen[0].x.shape[0] == 4 and seen[0].steps == 6


def test_wrappers_chain_outermost_first_and_can_change_the_call() -> None:
    order: list[str] = []

    def outer(call: UNetCall, call_next: UNetFn) -> torch.Tensor:
        order.append("outer")
        return call_next(replace(call, text=TextCond(call.text.hidden * 0)))

    def inner(call: UNetCall, call_next: UNetFn) -> torch.Tensor:
        order.append("inner")
        assert float(call.text.hidden.abs().sum()) == 0.0  # outer's change arrived
        return call_next(call)

    x = torch.ones(2, 4, 2, 2)
    out = _call(_job(ExactUNet(), unet_wrappers=(outer, inner)), x, 1)
    assert order == ["outer", "inner"]
    assert torch.equal(out, 2 * x)  # with every text row zeroed, cond == uncond: CFG leaves 2x


def test_on_step_sees_every_sampler_step_of_a_pass() -> None:
    sampler, schedule = resolve_sampler("Euler", None)
    sp = SamplerPass(sampler, schedule, a1111_alphas_cumprod(), SamplerOptions())
    steps: list[StepInfo] = []
    unet = ExactUNet()
    job = _job(unet, mode="kdiffusion")
    rng = ImageRNG((4, 2, 2), [1, 2])
    out = sp.txt2img(job, rng.first() * 0.01, 6, rng, [1, 2], on_step=steps.append)
    assert [s.step for s in steps] == [0, 1, 2, 3, 4, 5] and all(s.steps == 6 for s in steps)
    assert unet.calls == 6 and torch.isfinite(out).all()
    assert all(s.denoised is not None for s in steps)


def test_removing_a_wrapper_restores_the_original_pixels(engine: GenerationService) -> None:
    baseline = engine.run_sync(t2i(), 120)
    calls: list[UNetCall] = []

    def shift(call: UNetCall, call_next: UNetFn) -> torch.Tensor:
        calls.append(call)
        return call_next(call) + 0.5

    remove = engine.hooks.add_unet_wrapper(shift)
    try:
        shifted = engine.run_sync(t2i(), 120)
    finally:
        remove()
    again = engine.run_sync(t2i(), 120)
    assert len(calls) == 3 and [c.step for c in calls] == [0, 1, 2]
    assert not np.array_equal(pixels(shifted.images[0]), pixels(baseline.images[0]))
    assert np.array_equal(pixels(again.images[0]), pixels(baseline.images[0]))


def test_lifecycle_events_fire_in_order_with_the_right_images(engine: GenerationService, tmp_path: Path) -> None:
    paths = Paths.from_settings(parse_settings(["--data-dir", str(tmp_path)], {}), tmp_path, {})
    options = Options(default_option_infos(), None)
    saver, engine.saver = engine.saver, image_saver_for(ImageSaver(options, paths))
    log: list[tuple[str, Any]] = []
    hooks = Hooks()
    hooks.before_process.add(lambda e: log.append(("before_process", (list(e.seeds), e.model_family))))
    hooks.before_batch.add(lambda e: log.append(("before_batch", (e.batch_number, list(e.seeds), len(e.images)))))
    batches: list[BatchEvent] = []
    hooks.after_batch.add(lambda e: (batches.append(e), log.append(("after_batch", e.batch_number))))

    def invert(e: ImageEvent) -> None:
        log.append(("postprocess_image", e.index))
        e.image = Image.fromarray(255 - np.asarray(e.image.convert("RGB")))

    hooks.postprocess_image.add(invert)

    def before_save(e: SaveEvent) -> None:
        log.append(("before_image_saved", (e.index, e.path)))
        e.infotext += ", Hooked: yes"

    hooks.before_image_saved.add(before_save)
    saved: list[SaveEvent] = []
    hooks.after_image_saved.add(lambda e: (saved.append(e), log.append(("after_image_saved", e.index))))
    steps: list[int] = []
    hooks.on_step.add(lambda info: steps.append(info.step))

    def job(ctx: JobContext) -> Any:
        return engine.process(t2i(seed=50, batch_size=2, n_iter=2, do_not_save_grid=True), ctx, hooks=hooks)

    try:
        result = engine.worker.submit(job).future.result(120)
    finally:
        engine.saver = saver
    names = [name for name, _ in log]
    assert names == [
        "before_process",
        "before_batch",
        "after_batch",
        "before_batch",
        "after_batch",
        *["postprocess_image"] * 4,
        *["before_image_saved", "after_image_saved"] * 4,
    ]
    assert log[0][1][0] == [50, 51, 52, 53]
    assert log[1][1] == (0, [50, 51], 0) and log[3][1] == (1, [52, 53], 0)
    assert steps == [0, 1, 2] * 2  # per batch
    # after_batch saw the decoded images; postprocess_image replaced them (inverted) in the result
    decoded = [image for batch in batches for image in batch.images]
    assert [b.indices for b in batches] == [[0, 1], [2, 3]]
    for before, after in zip(decoded, result.images, strict=True):
        assert np.array_equal(255 - pixels(before), pixels(after))
    # what was saved is the postprocessed image with the hooked infotext, and the path was reported
    assert [e.index for e in saved] == [0, 1, 2, 3]
    for i, event in enumerate(saved):
        assert event.path is not None and event.path == result.paths[i]
        with Image.open(event.path) as on_disk:
            assert np.array_equal(pixels(on_disk), pixels(result.images[i]))
            infotext = read_infotext_from_image(on_disk)
        assert parse_infotext(infotext or "")["Hooked"] == "yes"


def test_a_job_can_process_several_requests_in_the_worker(engine: GenerationService) -> None:
    seen: list[ProcessEvent] = []
    remove = engine.hooks.before_process.add(seen.append)

    def loopback(ctx: JobContext) -> list[Any]:
        first = engine.process(t2i(seed=7), ctx)
        second = engine.process(t2i(seed=8), ctx)
        return [first, second]

    try:
        first, second = engine.worker.submit(loopback).future.result(120)
    finally:
        remove()
    assert first.seeds == [7] and second.seeds == [8] and len(seen) == 2


def test_process_outside_the_worker_thread_is_refused(engine: GenerationService) -> None:
    ctx = JobContext(id="not-a-job")
    assert not engine.worker.on_worker_thread()
    with pytest.raises(RuntimeError, match="worker thread"):
        engine.process(t2i(), ctx)


def test_a_broken_hook_fails_the_job_loudly_and_the_worker_goes_on(engine: GenerationService) -> None:
    def broken(event: BatchEvent) -> None:
        raise ValueError("hook broke")

    remove = engine.hooks.before_batch.add(broken)
    try:
        with pytest.raises(ValueError, match="hook broke"):
            engine.run_sync(t2i(), 120)
    finally:
        remove()
    assert len(engine.run_sync(t2i(), 120).images) == 1


def test_token_counting_is_an_engine_service() -> None:
    from modules.engine.token_count import count_tokens

    assert count_tokens("", 20) == (0, 75)
    used, limit = count_tokens("a photo of a cat", 20)
    assert used == 5 and limit == 75
    used, limit = count_tokens(", ".join(["word"] * 60), 20)
    assert used == 119 and limit == 150
