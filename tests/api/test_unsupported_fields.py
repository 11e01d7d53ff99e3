"""Fields A1111 clients send that we accept but do not act on yet are reported in the response's
`info` JSON (`warnings`), one line per field set; defaults and empty values say nothing; naming an
unknown selectable script is still A1111's 422. Fields acted on (sampler parameters, latent_mask,
firstpass_image) change the result and warn about nothing."""

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
    "firstphase_width": 256,
    "firstphase_height": 256,
    "comments": {"note": "hello"},
    "script_args": [1, 2],
}
# acted on since issue 11: sent with non-standard values they change the image and warn about nothing
TXT2IMG_ACTED_ON: dict[str, Any] = {"eta": 0.3, "s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 9.0, "s_noise": 1.003}


def warnings_of(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    warnings = json.loads(response.json()["info"])["warnings"]
    assert isinstance(warnings, list)
    return warnings


def test_the_api_test_covers_every_declared_field() -> None:
    assert {f.field for f in IGNORED_FIELDS} == set(TXT2IMG_IGNORED)


def test_sampler_parameters_are_acted_on_without_warnings(client: TestClient) -> None:
    base = {**SMALL, "prompt": "p", "seed": 5, "sampler_name": "Euler"}
    plain = client.post("/sdapi/v1/txt2img", json=base)
    tuned = client.post("/sdapi/v1/txt2img", json={**base, **TXT2IMG_ACTED_ON})
    assert warnings_of(tuned) == [] and warnings_of(plain) == []
    assert plain.json()["images"][0] != tuned.json()["images"][0]
    info = json.loads(tuned.json()["info"])["infotexts"][0]
    assert "Sigma churn: 1.0" in info and "Sigma noise: 1.003" in info


def test_txt2img_warns_for_each_ignored_field_it_was_sent(client: TestClient) -> None:
    payload = {**SMALL, "prompt": "p", **TXT2IMG_IGNORED}
    warnings = warnings_of(client.post("/sdapi/v1/txt2img", json=payload))
    for name in TXT2IMG_IGNORED:
        assert sum(w.startswith(f"{name}: accepted but not acted on (") for w in warnings) == 1, (name, warnings)


def test_an_always_on_script_that_is_not_installed_is_a_422_and_a_builtin_section_a_warning(
    client: TestClient,
) -> None:
    payload = {**SMALL, "prompt": "p", "alwayson_scripts": {"ADetailer": {"args": [True]}}}
    r = client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 422  # A1111's words, as the one validation item's msg
    assert r.json()["detail"][0]["msg"] == "always on script ADetailer not found"
    # A1111's built-in UI sections are always-on scripts there; here they are request fields
    payload["alwayson_scripts"] = {"Seed": {"args": [5, False, -1, 0, 0, 0]}}
    warnings = warnings_of(client.post("/sdapi/v1/txt2img", json=payload))
    assert any(w.startswith("alwayson_scripts: 'Seed' is a built-in section here") for w in warnings), warnings


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


def test_img2img_latent_mask_drives_the_latent_blend(client: TestClient) -> None:
    payload = {
        **SMALL,
        "prompt": "p",
        "seed": 3,
        "sampler_name": "Euler",
        "init_images": [b64_png(init_image())],
        "mask": b64_png(mask_image()),
        "mask_blur": 0,
        "inpaint_full_res": False,
        "inpainting_fill": 1,
    }
    plain = client.post("/sdapi/v1/img2img", json=payload)
    everything = Image.new("L", (64, 64), 255)
    with_latent = client.post("/sdapi/v1/img2img", json={**payload, "latent_mask": b64_png(everything)})
    assert warnings_of(with_latent) == [] and warnings_of(plain) == []
    assert plain.json()["images"][0] != with_latent.json()["images"][0]


def test_firstpass_image_replaces_the_first_pass(client: TestClient) -> None:
    payload = {
        **SMALL,
        "prompt": "p",
        "seed": 3,
        "sampler_name": "Euler",
        "enable_hr": True,
        "hr_scale": 1.5,
        "hr_upscaler": "Lanczos",
        "denoising_strength": 0.3,
    }
    plain = client.post("/sdapi/v1/txt2img", json=payload)
    given = client.post("/sdapi/v1/txt2img", json={**payload, "firstpass_image": b64_png(init_image())})
    assert warnings_of(given) == []
    assert plain.json()["images"][0] != given.json()["images"][0]
    image = Image.open(io.BytesIO(base64.b64decode(given.json()["images"][0])))
    assert image.size == (96, 96)
    bad = client.post("/sdapi/v1/txt2img", json={**payload, "firstpass_image": b64_png(Image.new("RGB", (32, 32)))})
    assert bad.status_code == 422 and "firstpass_image" in bad.text


def test_override_settings_nothing_reads_are_reported(client: TestClient) -> None:
    payload = {**SMALL, "prompt": "p", "override_settings": {"enable_quantization": True, "eta_ddim": 0.4}}
    warnings = warnings_of(client.post("/sdapi/v1/txt2img", json=payload))
    assert [w.split(" (")[0] for w in warnings] == [
        "override_settings: 'enable_quantization' is accepted but not acted on"
    ]


def test_an_unknown_selectable_script_is_still_422(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "x/y/z plot", "script_args": [1]})
    assert r.status_code == 422, r.text
