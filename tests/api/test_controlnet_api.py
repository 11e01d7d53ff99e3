"""ControlNet through /sdapi/v1 with the tiny SD 1.x checkpoint and a tiny SD 1.x ControlNet: the
sd-webui-controlnet payload as webuiapi and the extension's example send it works unchanged;
weight 0 gives the same pixels as no unit and weight 1 changes them; the infotext line; unknown
model / module refused before anything is queued; img2img uses its own image; hires fix runs
with a unit; the /controlnet routes answer with the real registry and preprocessors."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.fixtures.controlnet_files import write_controlnet
from tests.unit.test_controlnet_units import webuiapi_unit

API_CHECKPOINTS = {"sd1": "sd1.safetensors"}
BASE = {
    "prompt": "a house",
    "steps": 3,
    "width": 64,
    "height": 64,
    "seed": 11,
    "sampler_name": "Euler",
    "cfg_scale": 5,
}


def _png(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _source() -> Image.Image:
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    arr[16:48, 16:48] = 255  # a white square: canny finds its outline
    return Image.fromarray(arr)


@pytest.fixture(scope="module", autouse=True)
def controlnet_file(api_data_dir: Path) -> Path:
    return write_controlnet(api_data_dir / "models" / "ControlNet" / "control_sd1_canny.safetensors", "sd1", seed=3)


def _image(response: Any, index: int = 0) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][index]))))


def _cn(*units: dict[str, Any]) -> dict[str, Any]:
    return {"controlnet": {"args": list(units)}}


def _unit(**changes: Any) -> dict[str, Any]:
    unit = webuiapi_unit(image=_png(_source()))
    unit.update({"model": "control_sd1_canny", "processor_res": 64, "resize_mode": "Crop and Resize"})
    unit.update(changes)
    return unit


def test_webuiapi_payload_works_unchanged_and_weight_matters(client: TestClient) -> None:
    plain = _image(client.post("/sdapi/v1/txt2img", json=BASE))
    zero = client.post(
        "/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {"ControlNet": {"args": [_unit(weight=0.0)]}}}
    )
    assert np.array_equal(_image(zero), plain)  # weight 0: the same pixels as no unit
    one = client.post("/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {"ControlNet": {"args": [_unit()]}}})
    assert not np.array_equal(_image(one), plain)
    assert len(one.json()["images"]) == 2  # the detected map follows the image, as the extension answers
    edges = _image(one, 1)
    assert edges.shape[:2] == (64, 64) and edges[32, 32].max() == 0 and edges.max() == 255
    assert len(zero.json()["images"]) == 2
    no_map = client.post("/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": _cn(_unit(save_detected_map=False))})
    assert len(no_map.json()["images"]) == 1
    info = json.loads(one.json()["info"])
    text = info["infotexts"][0]
    assert 'ControlNet 0: "Module: canny, Model: control_sd1_canny [' in text
    assert "Weight: 1.0, Resize Mode: Crop and Resize, Processor Res: 64" in text


def test_extension_example_payload_and_two_units(client: TestClient) -> None:
    example = {
        "enabled": True,
        "module": "none",
        "model": "canny",  # the shortest name containing "canny"
        "weight": 1.0,
        "image": _png(_source()),
        "resize_mode": "Crop and Resize",
        "lowvram": False,
        "processor_res": 64,
        "threshold_a": 64,
        "threshold_b": 64,
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "control_mode": "Balanced",
        "pixel_perfect": False,
    }
    one = _image(
        client.post("/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {"controlnet": {"args": [example]}}})
    )
    two = client.post(
        "/sdapi/v1/txt2img",
        json={**BASE, "alwayson_scripts": {"controlnet": {"args": [example, {**example, "weight": 0.5}]}}},
    )
    assert not np.array_equal(_image(two), one)
    assert 'ControlNet 1: "Module: none' in json.loads(two.json()["info"])["infotexts"][0]


def test_refusals_before_queueing(client: TestClient) -> None:
    for unit, status, text in (
        (_unit(model="no_such_controlnet"), 404, "no_such_controlnet"),
        (_unit(module="no_such_module"), 422, "no_such_module"),
        (_unit(model="None"), 422, "choose a ControlNet model"),
        (_unit(image=""), 422, "no image"),
        (_unit(module="depth_leres"), 404, "res101.pth"),  # weighted, its file missing: named
        (_unit(weight=3), 422, "weight"),
    ):
        response = client.post("/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
        assert response.status_code == status, (unit.get("module"), response.text)
        assert text in response.text


def test_img2img_uses_its_image_and_hires_runs(client: TestClient) -> None:
    init = _png(_source())
    unit = _unit(image="")  # no image of its own: the img2img image
    response = client.post(
        "/sdapi/v1/img2img",
        json={
            **BASE,
            "init_images": [init],
            "denoising_strength": 0.6,
            "alwayson_scripts": {"controlnet": {"args": [unit]}},
        },
    )
    assert "ControlNet 0" in json.loads(response.json()["info"])["infotexts"][0]
    _image(response)
    hires = client.post(
        "/sdapi/v1/txt2img",
        json={
            **BASE,
            "enable_hr": True,
            "hr_scale": 1.5,
            "hr_upscaler": "Latent",
            "hr_second_pass_steps": 2,
            "denoising_strength": 0.5,
            "alwayson_scripts": {"controlnet": {"args": [_unit(hr_option="Both")]}},
        },
    )
    assert _image(hires).shape[:2] == (96, 96)


def test_controlnet_routes_with_the_real_registry(client: TestClient) -> None:
    models = client.get("/controlnet/model_list").json()["model_list"]
    assert any(m.startswith("control_sd1_canny [") for m in models)
    modules = client.get("/controlnet/module_list").json()
    assert "canny" in modules["module_list"] and "canny" in modules["module_detail"]
    detect = client.post(
        "/controlnet/detect",
        json={
            "controlnet_module": "canny",
            "controlnet_input_images": [_png(_source())],
            "controlnet_processor_res": 64,
        },
    )
    assert detect.status_code == 200, detect.text
    edges = np.asarray(Image.open(io.BytesIO(base64.b64decode(detect.json()["images"][0]))))
    assert edges.max() == 255 and edges[32, 32].max() == 0  # an outline, not the filled square
    assert "controlnet" in client.get("/sdapi/v1/scripts").json()["txt2img"]
    assert client.get("/controlnet/version").json() == {"version": 3}


def test_inpaint_with_an_inpaint_unit(client: TestClient) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    payload = {
        **BASE,
        "init_images": [_png(_source())],
        "mask": _png(mask),
        "denoising_strength": 0.8,
        "alwayson_scripts": _cn(_unit(image="", module="inpaint_only")),
    }
    response = client.post("/sdapi/v1/img2img", json=payload)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    # A1111 already inpaints with its mask: as the extension, the unit falls back to
    # inpaint_global_harmonious ("inpaint"), says so, and the infotext names what ran
    assert 'ControlNet 0: "Module: inpaint,' in info["infotexts"][0]
    assert any("runs as inpaint_global_harmonious" in w for w in info.get("warnings", []))
    plain = client.post("/sdapi/v1/img2img", json={**payload, "alwayson_scripts": {}})
    assert not np.array_equal(_image(response), _image(plain))


def test_reference_only_needs_no_model_and_steers_the_image(client: TestClient) -> None:
    """The reference modes run without a ControlNet model (Model "None"), through the webuiapi unit
    shape; weight 0 is no unit; a model named anyway is reported as unused."""
    plain = _image(client.post("/sdapi/v1/txt2img", json=BASE))
    for module in ("reference_only", "reference_adain", "reference_adain+attn"):
        response = client.post(
            "/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": _cn(_unit(module=module, model="None"))}
        )
        assert not np.array_equal(_image(response), plain), module
        info = json.loads(response.json()["info"])
        assert f'ControlNet 0: "Module: {module}, Model: None' in info["infotexts"][0]
    zero = client.post(
        "/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": _cn(_unit(module="reference_only", weight=0))}
    )
    assert np.array_equal(_image(zero), plain)
    assert any("needs no ControlNet model" in w for w in json.loads(zero.json()["info"]).get("warnings", []))
