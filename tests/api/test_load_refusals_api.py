"""Model files that cannot be used, through the API (issue 19, item 3): a VAE, upscaler or
ControlNet file that is truncated, has a corrupt header or shapes that do not fit is refused when
it is loaded, with a 4xx in A1111's error shape naming the file, never a 500 at generate time, and
the previous model keeps generating; a LoRA that cannot be used is skipped with a warning (as
A1111 does); an upscaler that runs out of memory is a 507 and the worker goes on serving."""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from modules.models.upscalers import LoadedUpscaler
from modules.services import Services
from tests.fixtures.controlnet_files import write_controlnet
from tests.fixtures.module_tmp import ModuleTempDirs
from tests.fixtures.upscaler_models import write_esrgan_old

API_CHECKPOINTS = {"sd1": "sd1.safetensors"}
V1 = "/sdapi/v1"
BASE = {"prompt": "a house", "steps": 2, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler", "cfg_scale": 5}
KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: len(data) // 2])
    return dst


def corrupt(dst: Path) -> Path:
    """A header that is not JSON (safetensors) / a zip's first bytes and then garbage (pickles)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix == ".safetensors":
        dst.write_bytes(struct.pack("<Q", 24) + b'{"a": not json at all!!}' + b"\0" * 64)
    else:
        dst.write_bytes(b"PK\x03\x04" + b"not the rest of a zip archive " * 4)
    return dst


def vae_16_channels(path: Path) -> Path:
    """A VAE that reads and builds but makes 16-channel latents (as SD3/Flux VAEs), in diffusers keys."""
    config = {
        "block_out_channels": [32, 32, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
        "latent_channels": 16,
        "norm_num_groups": 32,
    }
    vae = AutoencoderKL.from_config(config)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))
    return path


def png(width: int = 32, height: int = 32) -> str:
    out = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.fixture(scope="module")
def files(api_services: Services, tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> None:
    paths, src = api_services.paths, module_tmp.mktemp("sources")
    paths.vae_dir.mkdir(parents=True, exist_ok=True)
    truncated(tiny_models["vae"], paths.vae_dir / "vae-cut.safetensors")
    corrupt(paths.vae_dir / "vae-junk.safetensors")
    vae_16_channels(paths.vae_dir / "vae-16ch.safetensors")

    paths.lora_dir.mkdir(parents=True, exist_ok=True)
    fits = {f"{KEY}.lora_down.weight": torch.ones(2, 64), f"{KEY}.lora_up.weight": torch.ones(32, 2)}
    save_file(fits, str(src / "lora.safetensors"))
    truncated(src / "lora.safetensors", paths.lora_dir / "lora-cut.safetensors")
    corrupt(paths.lora_dir / "lora-junk.safetensors")
    truncated(src / "lora.safetensors", paths.lycoris_dir / "lyco-cut.safetensors")
    save_file(fits, str(paths.lora_dir / "lora-ok.safetensors"))
    full_size = {f"{KEY}.lora_down.weight": torch.ones(2, 768), f"{KEY}.lora_up.weight": torch.ones(320, 2)}
    save_file(full_size, str(paths.lora_dir / "lora-other-model.safetensors"))  # a real SD 1.5 LoRA's widths

    write_esrgan_old(src / "esrgan.pth")
    truncated(src / "esrgan.pth", paths.esrgan_dir / "esrgan-cut.pth")
    corrupt(paths.esrgan_dir / "esrgan-junk.pth")
    state = torch.load(src / "esrgan.pth")
    state[next(iter(state))] = torch.zeros(3, 3)  # the first conv is no conv
    torch.save(state, paths.esrgan_dir / "esrgan-misshapen.pth")
    write_esrgan_old(paths.esrgan_dir / "esrgan-ok.pth")

    write_controlnet(src / "cn.safetensors", "sd1", seed=3)
    truncated(src / "cn.safetensors", paths.controlnet_dir / "cn-cut.safetensors")
    write_controlnet(paths.controlnet_dir / "cn-sd2.safetensors", "sd2", seed=3)
    api_services.networks.refresh()


def assert_refused(r: Any, needle: str, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    body = r.json()
    assert set(body) >= {"error", "detail", "body", "errors"}, body
    assert needle in str(body["detail"]), body["detail"]
    return body


def generates(client: TestClient, **extra: Any) -> dict[str, Any]:
    r = client.post(f"{V1}/txt2img", json={**BASE, **extra})
    assert r.status_code == 200, r.text[:500]
    return dict(r.json())


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("vae-cut.safetensors", "truncated"),
        ("vae-junk.safetensors", "not valid JSON"),
        ("vae-16ch.safetensors", "16 latent channels"),
    ],
)
def test_a_bad_vae_is_refused_naming_it_and_the_previous_one_stays(
    client: TestClient, files: None, name: str, says: str
) -> None:
    client.post(f"{V1}/refresh-vae")
    before = client.get(f"{V1}/options").json()["sd_vae"]
    body = assert_refused(client.post(f"{V1}/options", json={"sd_vae": name}), name)
    assert says in body["detail"]
    assert client.get(f"{V1}/options").json()["sd_vae"] == before
    # the per-request override loads it too: the same refusal, not a 500 from the sampler
    assert_refused(client.post(f"{V1}/txt2img", json={**BASE, "override_settings": {"sd_vae": name}}), name)
    generates(client)


def test_a_lora_that_cannot_be_used_is_skipped_with_a_warning_naming_it(client: TestClient, files: None) -> None:
    """A1111 skips such a LoRA and generates (features.md 1.2: unmatched keys are logged); here
    the result says which and why."""
    prompt = "a house <lora:lora-cut:1> <lora:lora-junk:1> <lora:lora-other-model:1> <lyco:lyco-cut:1>"
    warnings = generates(client, prompt=prompt)["info"]
    assert "lyco-cut" in warnings.replace("lyco-cut:1", "")  # LyCORIS folder and tag: the same
    assert "lora-cut" in warnings and "truncated" in warnings
    assert "lora-junk" in warnings and "not valid JSON" in warnings
    assert "'lora-other-model' (SD1) matches no layer of this SD 1.x model: skipped" in warnings


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("esrgan-cut", "truncated"),
        ("esrgan-junk", "truncated or damaged"),
        ("esrgan-misshapen", "size mismatch"),
    ],
)
def test_a_bad_upscaler_is_refused_naming_it(client: TestClient, files: None, name: str, says: str) -> None:
    r = client.post(f"{V1}/extra-single-image", json={"image": png(), "upscaler_1": name, "upscaling_resize": 2})
    assert says in assert_refused(r, f"{name}.pth")["detail"]


def test_a_bad_hires_upscaler_is_refused_naming_it(client: TestClient, files: None) -> None:
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "esrgan-misshapen", "hr_second_pass_steps": 1}
    assert_refused(client.post(f"{V1}/txt2img", json={**BASE, **hires}), "esrgan-misshapen.pth")
    generates(client)


@pytest.mark.parametrize(("name", "says"), [("cn-cut", "truncated"), ("cn-sd2", "SD 2.x ControlNet on an SD 1.x")])
def test_a_bad_controlnet_is_refused_naming_it(client: TestClient, files: None, name: str, says: str) -> None:
    unit = {"image": png(64, 64), "module": "none", "model": name, "weight": 1.0, "enabled": True}
    r = client.post(f"{V1}/txt2img", json={**BASE, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert says in assert_refused(r, name)["detail"]


def test_an_upscaler_out_of_memory_is_507_and_the_worker_goes_on(
    client: TestClient, files: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def out_of_memory(self: LoadedUpscaler, image: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")

    payload = {"image": png(), "upscaler_1": "esrgan-ok", "upscaling_resize": 2}
    with monkeypatch.context() as patch:
        patch.setattr(LoadedUpscaler, "__call__", out_of_memory)
        r = client.post(f"{V1}/extra-single-image", json=payload)
    body = assert_refused(r, "ran out of memory", status=507)
    assert "Tried to allocate 12.00 GiB" in body["detail"] and "memory was freed" in body["detail"]
    assert calls >= 2  # the tile was halved and retried before giving up
    assert client.get(f"{V1}/progress").json()["state"]["job_count"] == 0
    r = client.post(f"{V1}/extra-single-image", json=payload)
    assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize(
    "payload",
    [
        {"override_settings": {"sd_model_checkpoint": "cut"}},
        {"enable_hr": True, "hr_scale": 1.5, "hr_checkpoint_name": "cut", "hr_second_pass_steps": 1},
        {"refiner_checkpoint": "cut", "refiner_switch_at": 0.5},
    ],
    ids=["override", "hires", "refiner"],
)
def test_a_bad_checkpoint_named_by_a_job_is_a_4xx_and_the_model_stays(
    client: TestClient, api_services: Services, tiny_models: dict[str, Path], payload: dict[str, Any]
) -> None:
    """The job's own checkpoint choices load it inside the job: the refusal is the same 400 as
    POST /options gives (it was a 500 from the worker)."""
    cut = api_services.paths.checkpoint_dir / "cut.safetensors"
    if not cut.exists():
        truncated(tiny_models["sd1"], cut)
        client.post(f"{V1}/refresh-checkpoints")
    body = assert_refused(client.post(f"{V1}/txt2img", json={**BASE, **payload}), "cut.safetensors")
    assert "truncated" in body["detail"] and body["error"] == "ModelFileLoadError"
    assert generates(client)["info"].count("Model: sd1") == 1


# -- the scripts' own size caps are the request limits ----------------------------------------------


@pytest.fixture
def option(api_services: Services) -> Any:
    saved: dict[str, object] = {}

    def set_option(key: str, value: object) -> None:
        saved.setdefault(key, api_services.options.get(key))
        api_services.options.set(key, value)

    yield set_option
    for key, value in saved.items():
        api_services.options.set(key, value)


def _img2img(script: str, args: list[Any]) -> dict[str, Any]:
    return {**BASE, "init_images": [png(64, 64)], "denoising_strength": 0.5, "script_name": script, "script_args": args}


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("outpainting mk2", [None, 64, 4, ["left", "right"], 1.0, 0.05]),
        ("poor man's outpainting", [32, 4, "fill", ["left", "right"]]),
    ],
)
def test_outpainting_canvas_is_checked_against_the_size_settings(
    client: TestClient, option: Any, script: str, args: list[Any]
) -> None:
    """Growing 64x64 sideways makes a 192x64 (mk2, 64 px) or 128x64 (poor man's, 32 px) canvas:
    refused under max_image_side 96 (the scripts had their own fixed 8192 cap), then under the
    pixel cap, before any image is made."""
    option("max_image_side", 96)
    body = assert_refused(client.post(f"{V1}/img2img", json=_img2img(script, args)), "more than 96 px", status=422)
    assert "x64 canvas" in str(body["detail"]) and "setting max_image_side" in str(body["detail"])
    option("max_image_side", 8192)
    option("max_pixels_times_batch", 64 * 96)
    body = assert_refused(client.post(f"{V1}/img2img", json=_img2img(script, args)), "more than 6144", status=422)
    assert "setting max_pixels_times_batch" in str(body["detail"])


def test_xyz_cells_are_checked_against_max_image_side(client: TestClient, option: Any) -> None:
    option("max_image_side", 128)
    nothing = ["Nothing", "", []]
    args = ["Size", "64x64, 64x256", [], *nothing, *nothing, True, False, False, False, False, False, False, 0, False]
    body = assert_refused(
        client.post(f"{V1}/txt2img", json={**BASE, "script_name": "x/y/z plot", "script_args": args}),
        "X/Y/Z plot: cell X=Size: 64x256: height must be 8..128",
        status=422,
    )
    assert body["error"] == "ValidationError"


def test_out_of_memory_in_training_is_507_and_the_worker_goes_on(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from modules.engine.training.service import TrainingService

    def out_of_memory(self: Any, *args: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.00 GiB")

    monkeypatch.setattr(TrainingService, "_run", out_of_memory)
    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    assert client.post(f"{V1}/create/embedding", json={"name": "oom"}).status_code == 200
    payload = {"id_task": 0, "embedding_name": "oom", "data_root": str(tmp_path), "steps": 1}
    body = assert_refused(client.post(f"{V1}/train/embedding", json=payload), "Tried to allocate 6.00 GiB", 507)
    assert body["error"] == "OutOfMemoryError" and "memory was freed" in body["detail"]
    assert client.get(f"{V1}/train/status").json()["state"] == "failed"
    generates(client)


def test_out_of_memory_loading_a_checkpoint_is_507_not_a_bad_file(
    client: TestClient, api_services: Services, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modules.models import manager

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    other = api_services.paths.checkpoint_dir / "other.safetensors"
    if not other.exists():
        other.write_bytes(tiny_models["sd1"].read_bytes())
        client.post(f"{V1}/refresh-checkpoints")
    monkeypatch.setattr(manager, "load_single_file", out_of_memory)
    for r in (
        client.post(f"{V1}/options", json={"sd_model_checkpoint": "other"}),
        client.post(f"{V1}/txt2img", json={**BASE, "override_settings": {"sd_model_checkpoint": "other"}}),
    ):
        body = assert_refused(r, "Tried to allocate 3.00 GiB", 507)
        assert body["error"] == "OutOfMemoryError"
    monkeypatch.undo()
    assert "sd1" in client.get(f"{V1}/options").json()["sd_model_checkpoint"]
    assert generates(client)["info"].count("Model: sd1") == 1


def test_out_of_memory_applying_a_lora_is_507_and_the_weights_are_pristine(
    client: TestClient, files: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modules.models.patches import WeightPatcher

    def out_of_memory(self: Any, plan: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    plain = generates(client)["images"][0]
    with monkeypatch.context() as patch:
        patch.setattr(WeightPatcher, "_write", out_of_memory)
        r = client.post(f"{V1}/txt2img", json={**BASE, "prompt": "a house <lora:lora-ok:1>"})
    assert assert_refused(r, "Tried to allocate 1.00 GiB", 507)["error"] == "OutOfMemoryError"
    assert generates(client)["images"][0] == plain  # nothing of the LoRA was left in the weights
    with_lora = generates(client, prompt="a house <lora:lora-ok:1>")
    assert "lora-ok" not in str(with_lora.get("info", "")).split("warnings")[-1]  # applied, no warning


def test_an_upscaler_that_loads_but_cannot_run_is_a_4xx_naming_it(
    client: TestClient, files: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: LoadedUpscaler, image: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x3 and 8x8)")

    payload = {"image": png(), "upscaler_1": "esrgan-ok", "upscaling_resize": 2}
    with monkeypatch.context() as patch:
        patch.setattr(LoadedUpscaler, "__call__", broken)
        body = assert_refused(client.post(f"{V1}/extra-single-image", json=payload), "esrgan-ok.pth")
    assert "failed on a 32x32 image" in body["detail"] and "cannot be multiplied" in body["detail"]
    assert client.post(f"{V1}/extra-single-image", json=payload).status_code == 200
