"""A1111's own API test for the SD upscale script (`test/test_img2img.py`,
`test_img2img_sd_upscale_performed`): its img2img payload with `script_name: "sd upscale"` and
`script_args: ["", 8, "Lanczos", 2.0]` answers 200, and here the image is also twice the size."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

API_CHECKPOINTS = {"sd1": "sd1.safetensors"}


def _init_image_b64() -> str:
    """A 64x64 RGBA image like A1111's `img2img_basic.png` (a data URL, as their test sends)."""
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    channels = [np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)), np.full((64, 64), 128, np.uint8)]
    rgba = np.stack([*channels, np.full((64, 64), 255, np.uint8)], axis=-1)
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _a1111_request() -> dict[str, Any]:
    """`simple_img2img_request` of A1111's test/test_img2img.py."""
    return {
        "batch_size": 1,
        "cfg_scale": 7,
        "denoising_strength": 0.75,
        "eta": 0,
        "height": 64,
        "include_init_images": False,
        "init_images": [_init_image_b64()],
        "inpaint_full_res": False,
        "inpaint_full_res_padding": 0,
        "inpainting_fill": 0,
        "inpainting_mask_invert": False,
        "mask": None,
        "mask_blur": 4,
        "n_iter": 1,
        "negative_prompt": "",
        "override_settings": {},
        "prompt": "example prompt",
        "resize_mode": 0,
        "restore_faces": False,
        "s_churn": 0,
        "s_noise": 1,
        "s_tmax": 0,
        "s_tmin": 0,
        "sampler_index": "Euler a",
        "seed": -1,
        "seed_resize_from_h": -1,
        "seed_resize_from_w": -1,
        "steps": 3,
        "styles": [],
        "subseed": -1,
        "subseed_strength": 0,
        "tiling": False,
        "width": 64,
    }


def test_img2img_sd_upscale_performed(client: TestClient) -> None:
    payload = _a1111_request()
    payload["script_name"] = "sd upscale"
    payload["script_args"] = ["", 8, "Lanczos", 2.0]
    response = client.post("/sdapi/v1/img2img", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 1
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert image.size == (128, 128)
    info = json.loads(body["info"])
    assert "SD upscale overlap: 8" in info["infotexts"][0]
    assert "SD upscale upscaler: Lanczos" in info["infotexts"][0]
