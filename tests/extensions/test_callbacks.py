"""A1111's script callbacks (`modules.extensions.callbacks.CallbackRegistry`) without an app: names,
order, error isolation, the kinds the engine never calls, and the engine hooks it makes (the save
callbacks around a SaveEvent, cfg_denoiser / cfg_denoised around a UNet call). The same callbacks
in a running app: tests/extensions/test_facades.py."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from modules.core.requests import Txt2ImgRequest
from modules.engine.hooks import Hooks, ProcessEvent, SaveEvent
from modules.engine.sampling import TextCond, UNetCall, run_unet_chain
from modules.engine.worker import JobContext
from modules.extensions import runtime
from modules.extensions.callbacks import (
    CALLBACK_KINDS,
    NOT_CALLED,
    CallbackRegistry,
    CFGDenoisedParams,
    CFGDenoiserParams,
    ImageSaveParams,
)
from modules.extensions.processing_api import StableDiffusionProcessingTxt2Img


@pytest.fixture(autouse=True)
def no_environment() -> Any:
    """These tests use a registry of their own: no app's environment is installed meanwhile."""
    saved = runtime.maybe_environment()
    runtime.install(None)
    yield
    runtime.install(saved)


def test_every_a1111_kind_is_known() -> None:
    assert len(CALLBACK_KINDS) == 21
    assert {"app_started", "model_loaded", "ui_tabs", "cfg_denoiser", "before_token_counter"} <= set(CALLBACK_KINDS)
    registry = CallbackRegistry()
    with pytest.raises(ValueError, match="unknown callback kind"):
        registry.add("no_such_kind", print)


def test_names_are_unique_and_say_where_they_come_from() -> None:
    registry = CallbackRegistry()
    a = registry.add("ui_settings", print, filename="/x/extensions/ext/scripts/a.py")
    b = registry.add("ui_settings", print, filename="/x/extensions/ext/scripts/a.py")
    c = registry.add("ui_settings", print, name="opts", filename="/x/extensions/ext/scripts/a.py")
    assert a.name == "base/a.py/ui_settings"  # no app: the extension folder is not known
    assert b.name == "base/a.py/ui_settings-1"
    assert c.name == "base/a.py/ui_settings/opts"
    assert a.script == "/x/extensions/ext/scripts/a.py"
    assert [x.name for x in registry.callback_map["callbacks_ui_settings"]] == [a.name, b.name, c.name]


def test_fire_order_results_and_the_special_kinds() -> None:
    registry = CallbackRegistry()
    calls: list[str] = []
    registry.add("before_ui", lambda: calls.append("first"))
    registry.add("before_ui", lambda: calls.append("second"))
    registry.fire("before_ui")
    assert calls == ["second", "first"]  # A1111 calls before_ui (and script_unloaded) in reverse

    registry.add("ui_tabs", lambda: [("blocks-a", "A", "a")])
    registry.add("ui_tabs", lambda: None)
    registry.add("ui_tabs", lambda: [("blocks-b", "B", "b"), ("blocks-c", "C", "c")])
    assert registry.fire("ui_tabs") == [("blocks-a", "A", "a"), ("blocks-b", "B", "b"), ("blocks-c", "C", "c")]

    registry.add("app_started", lambda demo, app: (demo, app))
    assert registry.fire("app_started", None, "app") == [(None, "app")]


def test_a_failing_callback_is_logged_recorded_and_the_others_run(caplog: pytest.LogCaptureFixture) -> None:
    registry = CallbackRegistry()
    seen: list[int] = []

    def broken(params: Any) -> None:
        raise RuntimeError("boom")

    registry.add("image_grid", broken, filename="/ext/broken.py")
    registry.add("image_grid", lambda params: seen.append(params))
    with caplog.at_level(logging.ERROR):
        registry.fire("image_grid", 7)  # never raises into the caller
        registry.fire("image_grid", 8)
    assert seen == [7, 8]
    assert [(e.kind, e.script, e.text) for e in registry.errors] == [
        ("image_grid", "/ext/broken.py", "RuntimeError: boom"),
        ("image_grid", "/ext/broken.py", "RuntimeError: boom"),
    ]
    tracebacks = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(tracebacks) == 1  # the traceback once, not at every call


def test_a_failing_callback_in_a_job_is_a_warning_of_the_job() -> None:
    registry = CallbackRegistry()
    registry.add("image_grid", lambda params: 1 / 0)
    job = runtime.ScriptJob(JobContext(id="t"), lambda r, h: None, Txt2ImgRequest())  # type: ignore[arg-type,return-value]
    with runtime.running(job):
        registry.fire("image_grid", None)
    assert any("ZeroDivisionError" in w for w in job.warnings)


def test_kinds_the_engine_never_calls_are_accepted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    registry = CallbackRegistry()
    with caplog.at_level(logging.WARNING):
        for kind in NOT_CALLED:
            registry.add(kind, print)
            registry.add(kind, print)
    for kind, reason in NOT_CALLED.items():
        lines = [r.getMessage() for r in caplog.records if f"(on_{kind})" in r.getMessage()]
        assert len(lines) == 1 and "not called by this engine" in lines[0] and reason in lines[0]
    assert registry.has("extra_noise")
    assert registry.fire("list_optimizers") == []  # A1111 hands them one list to fill


def test_removing_by_script_and_by_function() -> None:
    registry = CallbackRegistry()

    def mine() -> None: ...

    registry.add("ui_settings", mine, filename="/a.py")
    registry.add("before_ui", mine, filename="/a.py")
    registry.add("ui_settings", print, filename="/b.py")
    assert registry.remove_script("/a.py") == 2
    assert [c.script for c in registry.callbacks("ui_settings")] == ["/b.py"]
    registry.add("ui_settings", mine, filename="/c.py")
    assert registry.remove_function(mine) == 1
    assert [c.callback for c in registry.callbacks("ui_settings")] == [print]


# -- the engine hooks ------------------------------------------------------------------------


def _save_event(image: Any, path: Path | None = None) -> SaveEvent:
    return SaveEvent(Txt2ImgRequest(prompt="a cat"), 0, image, "a cat\nSteps: 2", "txt2img", path)


def test_no_callbacks_no_hooks() -> None:
    hooks = CallbackRegistry().hooks_for(StableDiffusionProcessingTxt2Img())
    assert not len(hooks.before_image_saved) and not len(hooks.before_process) and not hooks.unet_wrappers


def test_save_callbacks_get_p_and_change_what_is_saved(tmp_path: Path) -> None:
    registry = CallbackRegistry()
    seen: list[ImageSaveParams] = []

    def before(params: ImageSaveParams) -> None:
        params.image = "replaced image"
        params.pnginfo["parameters"] += ", Tagged: yes"

    registry.add("before_image_saved", before)
    registry.add("image_saved", seen.append)
    p = StableDiffusionProcessingTxt2Img(prompt="a cat")
    hooks = registry.hooks_for(p)
    hooks.before_process.fire(ProcessEvent(Txt2ImgRequest(), [1], [1], "SD 1.x"))
    event = hooks.before_image_saved.fire(_save_event("image"))
    assert event.image == "replaced image"
    assert event.infotext == "a cat\nSteps: 2, Tagged: yes"
    event.path = tmp_path / "00001-1.png"
    hooks.after_image_saved.fire(event)
    assert len(seen) == 1
    assert seen[0].p is p
    assert seen[0].filename == str(tmp_path / "00001-1.png")
    assert seen[0].image == "replaced image"


def test_save_callbacks_of_a_plain_job_get_a_p_from_the_request() -> None:
    registry = CallbackRegistry()
    seen: list[Any] = []
    registry.add("image_saved", lambda params: seen.append(params.p))
    hooks = Hooks()
    registry.attach(hooks)  # the engine's own hooks: every job, scripted or not
    hooks.before_process.fire(ProcessEvent(Txt2ImgRequest(), [1], [1], "SD 1.x"))
    event = hooks.before_image_saved.fire(_save_event("image"))
    event.path = Path("/out/1.png")
    hooks.after_image_saved.fire(event)
    assert isinstance(seen[0], StableDiffusionProcessingTxt2Img) and seen[0].prompt == "a cat"


def test_engine_hooks_are_there_only_while_callbacks_need_them() -> None:
    registry = CallbackRegistry()
    hooks = Hooks()
    registry.attach(hooks)
    assert not hooks.unet_wrappers and not len(hooks.before_image_saved)
    registry.add("cfg_denoised", print)
    registry.add("image_saved", print)
    assert len(hooks.unet_wrappers) == 1 and len(hooks.after_image_saved) == 1
    registry.remove_function(print)
    assert not hooks.unet_wrappers and not len(hooks.after_image_saved)


def _unet_call(sigma: float | None) -> UNetCall:
    # 2 images: cond rows 0..1, uncond rows 2..3 (one cond+uncond call)
    return UNetCall(
        x=torch.ones(4, 4, 8, 8),
        timestep=torch.full((4,), 500.0),
        text=TextCond(torch.arange(4.0)[:, None, None].expand(4, 3, 5).clone()),
        image_cond=None,
        added_time_ids=None,
        step=3,
        steps=10,
        sigma=sigma,
        part="cond+uncond",
        owners=(0, 1, 0, 1),
    )


def _run(registry: CallbackRegistry, call: UNetCall) -> tuple[torch.Tensor, list[UNetCall]]:
    hooks = registry.hooks_for(StableDiffusionProcessingTxt2Img())
    reached: list[UNetCall] = []

    def unet(c: UNetCall) -> torch.Tensor:
        reached.append(c)
        return torch.zeros_like(c.x)

    return run_unet_chain(hooks.unet_wrappers, unet, call), reached


def test_cfg_denoiser_sees_a1111s_inputs_and_its_changes_are_used() -> None:
    registry = CallbackRegistry()
    seen: list[CFGDenoiserParams] = []
    given: list[torch.Tensor] = []

    def denoiser(params: CFGDenoiserParams) -> None:
        seen.append(params)
        given.append(params.x.clone())
        params.x = params.x * 2
        params.text_uncond = torch.full_like(params.text_uncond, -1.0)

    registry.add("cfg_denoiser", denoiser)
    sigma = 3.0
    _, reached = _run(registry, _unet_call(sigma))
    params = seen[0]
    c_in = 1 / (sigma**2 + 1) ** 0.5
    assert torch.allclose(given[0], torch.full((4, 4, 8, 8), 1 / c_in))  # before the input scaling
    assert params.sigma.tolist() == [sigma] * 4
    assert (params.sampling_step, params.total_sampling_steps) == (3, 10)  # no job: the call's counters
    assert params.text_cond[:, 0, 0].tolist() == [0.0, 1.0] and params.text_uncond.shape[0] == 2
    assert torch.allclose(reached[0].x, torch.full((4, 4, 8, 8), 2.0))  # doubled, scaled back
    assert reached[0].text.hidden[:, 0, 0].tolist() == [0.0, 1.0, -1.0, -1.0]


def test_cfg_denoiser_in_place_changes_and_no_change() -> None:
    registry = CallbackRegistry()
    registry.add("cfg_denoiser", lambda params: params.x.add_(1.0))
    call = _unet_call(None)  # a timestep sampler: no input scaling
    _, reached = _run(registry, call)
    assert torch.equal(reached[0].x, torch.full((4, 4, 8, 8), 2.0))

    untouched = CallbackRegistry()
    untouched.add("cfg_denoiser", lambda params: None)
    call = _unet_call(2.0)
    _, reached = _run(untouched, call)
    assert reached[0] is call  # nothing changed: the call goes on as it was


def test_cfg_steps_come_from_the_job() -> None:
    registry = CallbackRegistry()
    steps: list[tuple[int, int]] = []
    registry.add("cfg_denoiser", lambda params: steps.append((params.sampling_step, params.total_sampling_steps)))
    ctx = JobContext(id="job")
    ctx.begin_pass(20)
    ctx.sampling_step = 7
    job = runtime.ScriptJob(ctx, lambda r, h: None, Txt2ImgRequest())  # type: ignore[arg-type,return-value]
    with runtime.running(job):
        _run(registry, _unet_call(1.0))
    assert steps == [(7, 20)]


def test_cfg_denoised_replaces_the_output() -> None:
    registry = CallbackRegistry()
    seen: list[tuple[torch.Tensor, int]] = []

    def denoised(params: CFGDenoisedParams) -> None:
        seen.append((params.x, params.sampling_step))
        params.x = params.x + 5

    registry.add("cfg_denoised", denoised)
    out, _ = _run(registry, _unet_call(1.0))
    assert torch.equal(out, torch.full((4, 4, 8, 8), 5.0))
    assert torch.equal(seen[0][0], torch.zeros(4, 4, 8, 8)) and seen[0][1] == 3


def test_sdxl_text_is_a1111s_dict() -> None:
    registry = CallbackRegistry()
    seen: list[Any] = []

    def denoiser(params: CFGDenoiserParams) -> None:
        seen.append(params.text_cond)
        params.text_cond["vector"] = params.text_cond["vector"] + 1

    registry.add("cfg_denoiser", denoiser)
    call = _unet_call(1.0)
    call = dataclasses.replace(call, text=TextCond(call.text.hidden, torch.zeros(4, 6)))
    _, reached = _run(registry, call)
    assert set(seen[0]) == {"crossattn", "vector"} and seen[0]["vector"].shape == (2, 6)
    assert reached[0].text.pooled is not None
    assert reached[0].text.pooled[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_p_get_token_merging_ratio_is_what_the_job_runs_with(tmp_path: Path) -> None:
    from modules.core.option_defaults import default_option_infos
    from modules.core.options import Options
    from modules.core.paths import Paths
    from modules.core.settings import parse_settings
    from modules.extensions import runtime
    from modules.extensions.processing_api import Processed, StableDiffusionProcessingImg2Img

    settings = parse_settings(["--data-dir", str(tmp_path)], {})
    options = Options(default_option_infos(), tmp_path / "config.json")
    options.update({"token_merging_ratio": 0.3, "token_merging_ratio_img2img": 0.5, "token_merging_ratio_hr": 0.2})
    previous = runtime.maybe_environment()
    runtime.install(runtime.ScriptEnvironment(settings, Paths.from_settings(settings, tmp_path, {}), options))
    try:
        txt = StableDiffusionProcessingTxt2Img(prompt="a cat")
        assert (txt.get_token_merging_ratio(), txt.get_token_merging_ratio(for_hr=True)) == (0.3, 0.2)
        assert StableDiffusionProcessingImg2Img().get_token_merging_ratio() == 0.5
        overridden = StableDiffusionProcessingImg2Img(override_settings={"token_merging_ratio": 0.1})
        assert overridden.get_token_merging_ratio() == 0.1  # an override of the base wins for img2img too
        processed = Processed(txt, [])
        assert (processed.get_token_merging_ratio(), processed.get_token_merging_ratio(for_hr=True)) == (0.3, 0.2)
    finally:
        runtime.install(previous)
