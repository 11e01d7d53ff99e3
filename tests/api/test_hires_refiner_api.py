"""Hires fix's second checkpoint / sampler / prompts and the SDXL refiner through `/sdapi/v1`
(the same features the txt2img tab's Hires. fix and Refiner accordions offer): acted on, written
to the infotext as A1111 writes them, bad names a 404 and a bad switch point a 422 before
anything is queued."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modules.core.infotext import parse_infotext

pytestmark = pytest.mark.usefixtures("no_network")

API_CHECKPOINTS = {  # read by conftest's api_data_dir
    "sd1": "sd1.safetensors",
    "sd2": "sd2.safetensors",
    "sdxl": "xl.safetensors",
    "sdxl-refiner": "refiner.safetensors",
}


def _info(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return json.loads(response.json()["info"])  # type: ignore[no-any-return]


def test_refiner_takes_over_and_is_in_the_infotext(client: TestClient) -> None:
    payload = {
        "prompt": "a cat",
        "width": 64,
        "height": 64,
        "steps": 4,
        "seed": 7,
        "sampler_name": "Euler",
        "refiner_checkpoint": "refiner",
        "refiner_switch_at": 0.5,
        "override_settings": {"sd_model_checkpoint": "xl"},
    }
    info = _info(client.post("/sdapi/v1/txt2img", json=payload))
    assert info["warnings"] == []
    params = parse_infotext(info["infotexts"][0])
    assert str(params["Refiner"]).startswith("refiner")
    assert params["Refiner switch at"] == "0.5"
    assert str(params["Model"]).startswith("xl")
    # the refiner changed the picture: the same request without it differs
    without = dict(payload, refiner_checkpoint=None, refiner_switch_at=None)
    assert (
        client.post("/sdapi/v1/txt2img", json=without).json()["images"][0]
        != (client.post("/sdapi/v1/txt2img", json=payload).json()["images"][0])
    )


def test_refiner_errors_come_before_queueing(client: TestClient) -> None:
    base = {"prompt": "p", "width": 64, "height": 64, "steps": 2, "override_settings": {"sd_model_checkpoint": "xl"}}
    missing = client.post("/sdapi/v1/txt2img", json={**base, "refiner_checkpoint": "nope", "refiner_switch_at": 0.5})
    assert missing.status_code == 404
    assert "refiner_checkpoint" in missing.json()["detail"]
    beyond = client.post("/sdapi/v1/txt2img", json={**base, "refiner_checkpoint": "refiner", "refiner_switch_at": 1.5})
    assert beyond.status_code == 422
    assert "refiner_switch_at" in beyond.json()["errors"]


def test_hires_second_checkpoint_sampler_and_prompt(client: TestClient) -> None:
    payload = {
        "prompt": "a cat",
        "width": 64,
        "height": 64,
        "steps": 2,
        "seed": 3,
        "sampler_name": "Euler",
        "enable_hr": True,
        "hr_scale": 1.5,
        "hr_second_pass_steps": 2,
        "denoising_strength": 0.5,
        "hr_checkpoint_name": "sd2",
        "hr_sampler_name": "DDIM",
        "hr_prompt": "a dog",
        "override_settings": {"sd_model_checkpoint": "sd1"},
    }
    response = client.post("/sdapi/v1/txt2img", json=payload)
    info = _info(response)
    assert info["warnings"] == []
    params = parse_infotext(info["infotexts"][0])
    assert str(params["Hires checkpoint"]).startswith("sd2")
    assert params["Hires sampler"] == "DDIM"
    assert params["Hires prompt"] == "a dog"
    assert (params["Size-1"], params["Size-2"], params["Hires upscale"]) == ("64", "64", "1.5")
    assert str(params["Model"]).startswith("sd1")
    bad = client.post("/sdapi/v1/txt2img", json={**payload, "hr_checkpoint_name": "nope"})
    assert bad.status_code == 404 and "hr_checkpoint_name" in bad.json()["detail"]
