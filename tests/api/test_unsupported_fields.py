"""Fields A1111 clients send that we accept but do not act on yet are reported in the response's
`info` JSON (`warnings`), one line per field set; defaults and empty values say nothing; naming an
unknown selectable script is still A1111's 422."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.core.fields import IGNORED_FIELDS

pytestmark = pytest.mark.usefixtures("no_network")

SMALL = {"width": 64, "height": 64, "steps": 2}


def b64_png(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def init_image() -> Image.Image:
    return Image.new("RGB", (64, 64), (200, 40, 40))


def mask_image() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 44, 44))
    return mask


TXT2IMG_IGNORED: dict[str, Any] = {
    "eta": 0.3,
    "s_churn": 1.0,
    "s_tmin": 0.5,
    "s_tmax": 9.0,
    "s_noise": 1.003,
    "s_min_uncond": 0.2,
    "refiner_checkpoint": "sdxl_refiner.safetensors",
    "refiner_switch_at": 0.8,
    "hr_checkpoint_name": "other.safetensors",
    "firstpass_image": b64_png(init_image()),
    "firstphase_width": 256,
    "firstphase_height": 256,
    "comments": {"note": "hello"},
    "script_args": [1, 2],
}


def warnings_of(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    warnings = json.loads(response.json()["info"])["warnings"]
    assert isinstance(warnings, list)
    return warnings


def test_the_api_test_covers_every_declared_field() -> None:
    assert {f.field for f in IGNORED_FIELDS} == set(TXT2IMG_IGNORED) | {"latent_mask"}


def test_txt2img_warns_for_each_ignored_field_it_was_sent(client: TestClient) -> None:
    payload = {**SMALL, "prompt": "p", **TXT2IMG_IGNORED, "alwayson_scripts": {"ADetailer": {"args": [True]}}}
    warnings = warnings_of(client.post("/sdapi/v1/txt2img", json=payload))
    for name in TXT2IMG_IGNORED:
        assert sum(w.startswith(f"{name}: accepted but not acted on (") for w in warnings) == 1, (name, warnings)
    assert "alwayson_scripts: script 'ADetailer' is not installed; its args were ignored" in warnings


def test_defaults_empty_and_standard_values_are_no_warning(client: TestClient) -> None:
    payload = {  # what the webuiapi package sends when its caller sets none of these
        **SMALL,
        "prompt": "p",
        "alwayson_scripts": {},
        "script_args": [],
        "comments": {},
        "eta": 1.0,
        "s_churn": 0,
        "s_tmax": 0,
        "s_tmin": 0,
        "s_noise": 1,
        "firstphase_width": 0,
        "firstphase_height": 0,
        "hr_checkpoint_name": None,
        "refiner_checkpoint": None,
    }
    assert warnings_of(client.post("/sdapi/v1/txt2img", json=payload)) == []


def test_img2img_warns_for_latent_mask(client: TestClient) -> None:
    payload = {
        **SMALL,
        "prompt": "p",
        "init_images": [b64_png(init_image())],
        "mask": b64_png(mask_image()),
        "latent_mask": b64_png(mask_image()),
    }
    warnings = warnings_of(client.post("/sdapi/v1/img2img", json=payload))
    assert [w for w in warnings if w.startswith("latent_mask:")] == [
        "latent_mask: accepted but not acted on (not implemented yet: the mask is used for the latent blend too)"
    ]


def test_override_settings_nothing_reads_are_reported(client: TestClient) -> None:
    payload = {**SMALL, "prompt": "p", "override_settings": {"eta_ddim": 0.4, "CLIP_stop_at_last_layers": 1}}
    warnings = warnings_of(client.post("/sdapi/v1/txt2img", json=payload))
    assert [w.split(" (")[0] for w in warnings] == ["override_settings: 'eta_ddim' is accepted but not acted on"]


def test_an_unknown_selectable_script_is_still_422(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "x/y/z plot", "script_args": [1]})
    assert r.status_code == 422, r.text
