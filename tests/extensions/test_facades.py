"""A1111's modules as extension code imports them (`modules.shared`, `scripts`, `script_callbacks`,
`processing`, `images`, ...), in a running app: an extension written against A1111's API registers
callbacks and options at import, and the test checks they act (tiny sd1 model, 64x64, 2 steps)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.extensions import runtime
from modules.services import Services
from tests.api.conftest import api_app, api_services, client  # noqa: F401  (the app fixtures)
from tests.fixtures.module_tmp import ModuleTempDirs

API_CHECKPOINTS = {"sd1": "sd1.safetensors", "sd2": "sd2.safetensors"}
SMALL: dict[str, Any] = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 3}

# An extension's script, written as for A1111 (only A1111's module names and signatures).
EXTENSION = """
import gradio as gr

from modules import images, processing, script_callbacks, scripts, shared

RECORD = {"saved": [], "saved_p": [], "cfg": [], "state": [], "settings": 0, "changed": [], "loaded": []}
BASEDIR = scripts.basedir()

shared.opts.add_option(
    "facade_probe_level",
    shared.OptionInfo(3, "Probe level", gr.Slider, {"minimum": 0, "maximum": 10, "step": 1},
                      section=("facade_probe", "Facade probe")),
)
shared.opts.onchange("facade_probe_level", lambda: RECORD["changed"].append(shared.opts.facade_probe_level), call=False)


def on_settings():
    RECORD["settings"] += 1
    section = ("facade_probe", "Facade probe")
    shared.opts.add_option("facade_probe_mode", shared.OptionInfo("fast", "Probe mode", section=section))


def before_saved(params):
    params.pnginfo["parameters"] += ", Probe: tagged"


def saved(params):
    RECORD["saved"].append(params.filename)
    RECORD["saved_p"].append((type(params.p).__name__, getattr(params.p, "prompt", None)))


def denoiser(params):
    RECORD["cfg"].append((params.sampling_step, params.total_sampling_steps, tuple(params.x.shape)))
    RECORD["state"].append((shared.state.job_count, shared.state.sampling_steps, shared.opts.samples_format))


script_callbacks.on_ui_settings(on_settings)
script_callbacks.on_before_image_saved(before_saved)
script_callbacks.on_image_saved(saved)
script_callbacks.on_cfg_denoiser(denoiser)
script_callbacks.on_model_loaded(lambda sd_model: RECORD["loaded"].append(sd_model))


class Probe(scripts.Script):
    def title(self):
        return "Facade probe"

    def run(self, p, *args):
        assert isinstance(p, processing.StableDiffusionProcessingTxt2Img)
        p.prompt = "a dog"
        return processing.process_images(p)
"""


@pytest.fixture(scope="module")
def api_data_dir(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Path:
    import shutil

    root = module_tmp.mktemp("facades")
    sd = root / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    for family, name in API_CHECKPOINTS.items():
        shutil.copy(tiny_models[family], sd / name)
    scripts_dir = root / "extensions" / "facade_probe" / "scripts"
    scripts_dir.mkdir(parents=True)
    (scripts_dir / "probe.py").write_text(EXTENSION, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def ext(api_services: Services) -> ModuleType:  # noqa: F811
    assert not api_services.scripts or not api_services.scripts.errors, api_services.scripts.errors
    return sys.modules["sdw_ext.facade_probe.probe"]


@pytest.fixture(autouse=True)
def this_app(api_services: Services) -> Iterator[None]:  # noqa: F811
    """The facades read the installed environment: this module's app (another test module may have
    built its own app since)."""
    assert api_services.scripts is not None
    saved = runtime.maybe_environment()
    runtime.install(api_services.scripts.environment)
    yield
    runtime.install(saved)


def _reset(ext: ModuleType) -> None:
    for value in ext.RECORD.values():
        if isinstance(value, list):
            value.clear()


def test_basedir_is_the_extensions_folder(ext: ModuleType, api_data_dir: Path) -> None:
    assert Path(ext.BASEDIR) == api_data_dir / "extensions" / "facade_probe"


def test_an_added_option_is_a_real_option(ext: ModuleType, client: TestClient, api_data_dir: Path) -> None:  # noqa: F811
    from modules import shared

    listed = client.get("/sdapi/v1/options").json()
    assert listed["facade_probe_level"] == 3
    assert shared.opts.facade_probe_level == 3 and shared.opts.data["facade_probe_level"] == 3
    assert client.post("/sdapi/v1/options", json={"facade_probe_level": 5}).status_code == 200
    assert shared.opts.facade_probe_level == 5
    assert ext.RECORD["changed"] == [5]  # opts.onchange
    assert json.loads((api_data_dir / "config.json").read_text())["facade_probe_level"] == 5
    shared.opts.facade_probe_level = 7  # attribute set, as extension code does
    assert client.get("/sdapi/v1/options").json()["facade_probe_level"] == 7
    assert client.post("/sdapi/v1/options", json={"facade_probe_level": 11}).status_code == 422  # the slider's range
    assert shared.opts.data_labels["facade_probe_level"].section == ("facade_probe", "Facade probe")
    with pytest.raises(AttributeError):
        _ = shared.opts.no_such_option


def test_ui_settings_callbacks_add_options(ext: ModuleType, client: TestClient) -> None:  # noqa: F811
    # building the page fired before_ui / ui_settings / ui_tabs once (modules.ui.scripts)
    assert ext.RECORD["settings"] == 1
    from modules import shared

    assert client.get("/sdapi/v1/options").json()["facade_probe_mode"] == "fast"
    assert shared.opts.facade_probe_mode == "fast"


def test_image_saved_gets_the_file_and_the_saved_infotext_has_the_change(
    ext: ModuleType,
    client: TestClient,  # noqa: F811
    api_data_dir: Path,
) -> None:
    _reset(ext)
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "save_images": True})
    assert response.status_code == 200, response.text
    assert len(ext.RECORD["saved"]) == 1
    saved = Path(ext.RECORD["saved"][0])
    assert saved.is_file() and (api_data_dir / "outputs") in saved.parents
    assert "Probe: tagged" in Image.open(saved).info["parameters"]
    assert ext.RECORD["saved_p"] == [("StableDiffusionProcessingTxt2Img", "a cat")]  # a plain job: p from the request


def test_cfg_denoiser_sees_the_steps_and_state_during_a_job(ext: ModuleType, client: TestClient) -> None:  # noqa: F811
    from modules import shared

    _reset(ext)
    assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
    cfg = ext.RECORD["cfg"]
    assert cfg and all(total == 2 and 0 <= step < 2 for step, total, _ in cfg)
    assert cfg[0][2] == (2, 4, 8, 8)  # cond + uncond rows of a 64x64 latent
    job_count, sampling_steps, samples_format = ext.RECORD["state"][0]
    assert (job_count, sampling_steps, samples_format) == (1, 2, "png")
    assert shared.state.job_count == 0 and shared.state.job == ""  # no job now


def test_a_selectable_script_and_its_p_in_the_callbacks(ext: ModuleType, client: TestClient) -> None:  # noqa: F811
    _reset(ext)
    payload = {**SMALL, "script_name": "facade probe", "script_args": [], "save_images": True}
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["all_prompts"] == ["a dog"]
    assert ext.RECORD["saved_p"] == [("StableDiffusionProcessingTxt2Img", "a dog")]  # the script's own p
    assert ext.RECORD["cfg"] and ext.RECORD["state"][0][:2] == (1, 2)


def test_images_save_image_with_the_callbacks(ext: ModuleType, tmp_path: Path) -> None:
    from modules import images

    _reset(ext)
    image = Image.new("RGB", (16, 16), "red")
    path, txt = images.save_image(image, str(tmp_path), "probe", seed=42, prompt="a red square", info="a red square")
    assert tmp_path in Path(path).parents and Path(path).name.startswith("probe-") and Path(path).is_file()
    assert txt is None  # save_txt is off
    assert ext.RECORD["saved"] == [path]
    geninfo, _items = images.read_info_from_image(Image.open(path))
    assert geninfo == "a red square, Probe: tagged"


def test_model_views_and_lists(ext: ModuleType, api_services: Services) -> None:  # noqa: F811
    from modules import api, devices, paths, sd_models, sd_samplers, sd_schedulers, shared

    model = shared.sd_model
    assert model.sd_checkpoint_info.title.startswith("sd1.safetensors")
    assert model.is_sd1 and not model.is_sd2 and not model.is_sdxl
    with pytest.raises(AttributeError, match="not reachable"):
        _ = model.model.diffusion_model
    assert sorted(c.split(" ")[0] for c in sd_models.checkpoint_tiles()) == ["sd1.safetensors", "sd2.safetensors"]
    assert sd_models.get_closet_checkpoint_match("sd2").name == "sd2.safetensors"
    assert sd_samplers.samplers_map["euler"] == "Euler" and "Euler" in sd_samplers.visible_sampler_names()
    assert sd_schedulers.schedulers_map["Karras"].name == "karras"
    assert paths.models_path == str(api_services.paths.models_dir)
    assert shared.cmd_opts.data_dir == str(api_services.paths.data_dir) and shared.cmd_opts.api is True
    assert str(devices.device) == str(api_services.policy.placement.device)
    assert [u.name for u in shared.sd_upscalers][:3] == ["None", "Lanczos", "Nearest"]
    from modules.api.api import decode_base64_to_image, encode_pil_to_base64

    encoded = encode_pil_to_base64(Image.new("RGB", (8, 8), "blue"))
    assert isinstance(encoded, bytes) and decode_base64_to_image(encoded.decode()).size == (8, 8)
    assert api is not None


def test_model_loaded_gets_the_new_model(ext: ModuleType, api_services: Services) -> None:  # noqa: F811
    assert api_services.scripts is not None  # the composition root wires model_loaded to the manager
    try:
        _reset(ext)
        api_services.engine.switch_model(checkpoint="sd2.safetensors")
        assert [m.is_sd2 for m in ext.RECORD["loaded"]] == [True]
        assert ext.RECORD["loaded"][0].sd_checkpoint_info.name == "sd2.safetensors"
    finally:
        api_services.engine.switch_model(checkpoint="sd1.safetensors")


def test_a_failing_callback_does_not_fail_the_job(ext: ModuleType, api_services: Services, client: TestClient) -> None:  # noqa: F811
    from modules import script_callbacks

    def broken(params: Any) -> None:
        raise RuntimeError("extension bug")

    script_callbacks.on_cfg_denoised(broken)
    try:
        assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
    finally:
        script_callbacks.remove_callbacks_for_function(broken)
    assert api_services.scripts is not None
    assert any(e.text == "RuntimeError: extension bug" for e in api_services.scripts.callbacks.errors)
