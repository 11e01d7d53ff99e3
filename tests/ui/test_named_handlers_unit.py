"""The tabs' handlers take their inputs by name: each event is given a *set* of components, so
Gradio calls the handler with one `{component: value}` dict, which the tab maps to field names
(`modules.ui.named_inputs`). Each test builds a tab, finds its event, calls the handler with such
a dict and checks the request that reached the engine (a recording fake behind
`services.engine`, the one job interface)."""

from __future__ import annotations

import dataclasses
import inspect
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from PIL import Image

from modules.app import build_services
from modules.core.jobs import ExtrasRequest, MergeRequest
from modules.core.requests import Img2ImgRequest, Txt2ImgRequest
from modules.core.results import ExtrasResult, MergeResult, ModelStatus, Result
from modules.core.settings import parse_settings
from modules.services import Services
from modules.ui.extras import build_extras_tab, extras_request_from_ui
from modules.ui.img2img import build_img2img_tab
from modules.ui.img2img_modes import IMG2IMG
from modules.ui.img2img_request import img2img_request_from_ui
from modules.ui.merger import build_merger_tab, merge_request_from_ui
from modules.ui.named_inputs import inputs_of, values_of
from modules.ui.txt2img import build_txt2img_tab, txt2img_request_from_ui
from tests.ui.test_img2img_modes_unit import DEFAULTS as IMG2IMG_DEFAULTS
from tests.ui.test_ui_api_parity import DEFAULTS as TXT2IMG_DEFAULTS


class FakeHandle:
    """A finished job: what `JobHandle` offers the UI."""

    def __init__(self, result: Any) -> None:
        self.id = "job-1"
        self.future: Future[Any] = Future()
        self.future.set_result(result)
        self.textinfo = None

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        return self.future.result(timeout)

    def is_running(self) -> bool:
        return False

    def preview(self) -> Any:
        return None

    def progress(self, *, with_preview: bool = False) -> dict[str, Any]:
        return {"progress": 0.0, "eta_relative": 0.0, "state": {}, "current_image": None, "textinfo": None}

    @property
    def interrupted(self) -> bool:
        return False


class RecordingEngine:
    """Records what the UI submits and answers with a canned result per request type."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def submit(self, request: Any) -> FakeHandle:
        self.requests.append(request)
        if isinstance(request, ExtrasRequest):
            return FakeHandle([ExtrasResult(image, {"Postprocess upscale by": 2}) for image in request.images])
        if isinstance(request, MergeRequest):
            return FakeHandle(MergeResult(Path("merged.safetensors"), 10, 8, 0, False, False, 0.5))
        image = Image.new("RGB", (8, 8), (10, 20, 30))
        return FakeHandle(Result(images=[image], infotexts=["named\nSteps: 3, Seed: 5"], seeds=[5], subseeds=[6]))

    def model_status(self) -> ModelStatus:
        return ModelStatus()

    def interrupt(self, job_id: str | None = None) -> None:
        pass

    def skip(self, job_id: str | None = None) -> None:
        pass


@pytest.fixture(scope="module")
def real_services() -> Iterator[Services]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        built = build_services(parse_settings(["--data-dir", str(data)], {}), data, {})
        yield built
        built.worker.shutdown()


@pytest.fixture()
def services(real_services: Services) -> Services:
    return dataclasses.replace(real_services, engine=RecordingEngine())  # type: ignore[arg-type]


def _engine(services: Services) -> RecordingEngine:
    engine = services.engine
    assert isinstance(engine, RecordingEngine)
    return engine


def _handler(blocks: gr.Blocks, output: Any) -> tuple[Callable[[dict[Any, Any]], Any], list[Any]]:
    """(the handler, its input components) of the one named-input event that updates `output`."""
    found = [fn for fn in blocks.fns.values() if fn.inputs_as_dict and output in fn.outputs]
    assert len(found) == 1, found
    assert found[0].fn is not None
    return found[0].fn, list(found[0].inputs)


def _data(fields: dict[str, Any], values: dict[str, Any], inputs: list[Any]) -> dict[Any, Any]:
    """What Gradio hands a handler given a set of inputs: {component: value}."""
    data = {fields[name]: value for name, value in values.items()}
    assert set(data) == set(inputs)  # the event reads exactly these fields
    return data


def _keywords(converter: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(converter).parameters)


def _script_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    """The script controls' values as built (Script: None): the tabs pass them in by name too."""
    return {name: component.value for name, component in fields.items()}


def test_values_of_maps_components_to_names() -> None:
    with gr.Blocks():
        a, b = gr.Textbox(), gr.Number()
    fields = {"prompt": a, "steps": b, "same_box_again": a}
    assert inputs_of(fields) == {a, b}
    assert values_of(fields, {a: "cat", b: 3}) == {"prompt": "cat", "steps": 3, "same_box_again": "cat"}


def test_txt2img_generate_reads_its_fields_by_name(services: Services) -> None:
    with gr.Blocks() as blocks:
        tab = build_txt2img_tab(services)
    request_fields = {k: v for k, v in tab.fields.items() if k != "subseed_show" and not k.startswith("controlnet_")}
    assert set(request_fields) == _keywords(txt2img_request_from_ui)
    run, inputs = _handler(blocks, tab.gallery)
    values = {**TXT2IMG_DEFAULTS, "prompt": "named", "steps": 3.0, "width": 64.0, "seed": 5.0, "cfg_scale": 4.5}
    assert tab.scripts is not None and tab.controlnet is not None
    scripts = {**_script_defaults(tab.scripts.fields), **_script_defaults(tab.controlnet.fields)}
    extra_fields = {**tab.scripts.fields, **tab.controlnet.fields}
    outputs = list(run(_data({**request_fields, **extra_fields}, {**values, **scripts}, inputs)))
    [request] = _engine(services).requests
    assert isinstance(request, Txt2ImgRequest)
    assert request == tab.scripts.apply(txt2img_request_from_ui(**values), scripts)
    assert request.script_name is None
    assert (request.prompt, request.steps, request.width, request.cfg_scale) == ("named", 3, 64, 4.5)
    assert outputs[-1][-1] == (5, 6)  # the last seeds, for ♻️


def test_img2img_generate_and_its_check_read_their_fields_by_name(services: Services) -> None:
    with gr.Blocks() as blocks, gr.Tab("img2img"):
        tab = build_img2img_tab(services)
    request_fields = {k: v for k, v in tab.fields.items() if k != "subseed_show" and not k.startswith("controlnet_")}
    assert set(request_fields) == _keywords(img2img_request_from_ui)
    assert tab.scripts is not None and tab.controlnet is not None
    fields = {**request_fields, **tab.batch_fields, **tab.scripts.fields, **tab.controlnet.fields}
    run, inputs = _handler(blocks, tab.gallery)
    batch = {
        "batch_source": "upload",
        "batch_files": None,
        "batch_input_dir": "",
        "batch_output_dir": "",
        "batch_inpaint_mask_dir": "",
    }
    image = Image.new("RGB", (40, 24), (200, 30, 30))
    values = {**IMG2IMG_DEFAULTS, "mode": IMG2IMG, "init_image": image, "prompt": "by name", "denoising_strength": 0.4}
    batch.update(_script_defaults(tab.scripts.fields))
    batch.update(_script_defaults(tab.controlnet.fields))
    outputs = list(run(_data(fields, {**values, **batch}, inputs)))
    [request] = _engine(services).requests
    assert isinstance(request, Img2ImgRequest)
    assert (request.prompt, request.denoising_strength, request.steps) == ("by name", 0.4, 3)
    assert request.init_images[0].size == (40, 24)
    assert outputs[-1][-1] == (5, 6)

    # the check before Generate: same fields, a user error names what is missing
    checks = [fn for fn in blocks.fns.values() if fn.inputs_as_dict and not fn.outputs and tab.row.prompt in fn.inputs]
    assert len(checks) == 1 and checks[0].fn is not None
    checks[0].fn(_data(fields, {**values, **batch}, list(checks[0].inputs)))  # fine: no error
    with pytest.raises(gr.Error, match="Please upload an image for img2img"):
        checks[0].fn(_data(fields, {**values, **batch, "init_image": None}, list(checks[0].inputs)))


def test_extras_generate_submits_an_extras_request_by_name(services: Services) -> None:
    with gr.Blocks() as blocks:
        tab = build_extras_tab(services)
    run, inputs = _handler(blocks, tab.output_image)
    image = Image.new("RGB", (16, 12), (1, 2, 3))
    values = {
        "source_mode": 0,
        "image": image,
        "batch_files": None,
        "input_dir": "",
        "output_dir": "",
        "show_results": True,
        "resize_mode": 0,
        "upscale_enabled": True,
        "upscaler_1": "Lanczos",
        "upscaler_2": "None",
        "upscaler_2_visibility": 0.0,
        "upscaling_resize": 2.0,
        "upscaling_resize_w": 512.0,
        "upscaling_resize_h": 512.0,
        "upscaling_crop": True,
        "gfpgan_enabled": False,
        "gfpgan_visibility": 1.0,
        "codeformer_enabled": True,
        "codeformer_visibility": 0.5,
        "codeformer_weight": 0.25,
    }
    settings = {k: v for k, v in values.items() if k in _keywords(extras_request_from_ui)}
    assert set(tab.fields) == set(values)
    out_image, _gallery, info = run(_data(tab.fields, values, inputs))
    [request] = _engine(services).requests
    assert request == extras_request_from_ui(images=[image], **settings)
    assert (request.upscaler_1, request.gfpgan_visibility, request.codeformer_visibility) == ("Lanczos", 0.0, 0.5)
    assert out_image["value"] is image and "Postprocess upscale by" in info


def _merge_handler(blocks: gr.Blocks, tab: Any) -> tuple[Callable[[dict[Any, Any]], Any], list[Any]]:
    """The Merge button's handler (Extract LoRA writes into the same result box)."""
    found = [f for f in blocks.fns.values() if f.inputs_as_dict and tab.result in f.outputs]
    [fn] = [f for f in found if any(target[0] == tab.merge._id for target in f.targets)]
    assert fn.fn is not None
    return fn.fn, list(fn.inputs)


MERGE_FORM = {
    "primary_model_name": "a.safetensors",
    "secondary_model_name": "b.safetensors",
    "tertiary_model_name": None,
    "interp_method": "Weighted sum",
    "multiplier": 0.45,
    "custom_name": "mix",
    "checkpoint_format": "safetensors",
    "save_as_half": True,
    "config_source": "B",
    "bake_in_vae": None,
    "discard_weights": "",
    "save_metadata": True,
    "add_merge_recipe": False,
    "copy_metadata_fields": True,
    "metadata_json": "",
}


def _merge_extra(tab: Any, use_blocks: bool, bake: str = "") -> dict[str, Any]:
    extra: dict[str, Any] = {"use_blocks": use_blocks, "base_alpha": 0.2, "bake_loras": bake}
    extra.update({name: i / 100 for i, name in enumerate(n for n in tab.extra if n.startswith("block_"))})
    return extra


def test_merger_submits_a_merge_request_by_name(services: Services) -> None:
    with gr.Blocks() as blocks:
        tab = build_merger_tab(services)
    run, inputs = _merge_handler(blocks, tab)
    assert set(MERGE_FORM) | {"block_weights", "base_alpha", "bake_loras"} == _keywords(merge_request_from_ui)
    both = {**tab.fields, **tab.extra}
    shown = list(run(_data(both, {**MERGE_FORM, **_merge_extra(tab, use_blocks=False)}, inputs)))
    [request] = _engine(services).requests
    assert request == MergeRequest(
        primary_model_name="a.safetensors",
        secondary_model_name="b.safetensors",
        multiplier=0.45,
        custom_name="mix",
        save_as_half=True,
        config_source="B",
        add_merge_recipe=False,
    )  # block sliders unused: no block weights, no base alpha
    assert "Checkpoint saved to merged.safetensors" in shown[-1]


def test_merger_block_sliders_and_loras_reach_the_request(services: Services) -> None:
    with gr.Blocks() as blocks:
        tab = build_merger_tab(services)
    run, inputs = _merge_handler(blocks, tab)
    extra = _merge_extra(tab, use_blocks=True, bake="style:0.8, detail\nother:-0.5")
    list(run(_data({**tab.fields, **tab.extra}, {**MERGE_FORM, **extra}, inputs)))
    [request] = _engine(services).requests
    # no such checkpoint to read the layout from: SD 1.x/2.x's 25 blocks, in slider order
    assert request.block_weights == ",".join(f"{i / 100:.6g}" for i in range(25))
    assert request.base_alpha == 0.2
    assert request.bake_loras == (("style", 0.8), ("detail", 1.0), ("other", -0.5))
    with pytest.raises(gr.Error, match="not name:weight"):
        list(run(_data({**tab.fields, **tab.extra}, {**MERGE_FORM, **_merge_extra(tab, True, "x:y")}, inputs)))
