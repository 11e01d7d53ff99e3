"""Same checkpoint + same request = A1111's pixels.

`../shared/parity/` (or `$SD_WEBUI_PARITY_DIR`) holds images AUTOMATIC1111 v1.10.1 made on the CPU
in fp32 from a small random-weight SD 1.x checkpoint, with the exact requests (see its README).
Every case of its `cases.json` is sent to our `/sdapi/v1/txt2img` (or `/img2img` when the request
has init images) unchanged, and the decoded RGB pixels are compared with A1111's: equal, or at
least 40 dB PSNR. The remaining difference today is float rounding inside the networks (diffusers'
UNet / VAE / attention kernels against A1111's LDM modules compute the same functions in another
order), which moves a fraction of a percent of the pixels by one level after A1111's truncation
to uint8; the numbers are printed (`pytest -s`). The infotext must equal A1111's apart from the
model name and the version.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.app import build_services, create_app
from modules.core.settings import parse_settings
from tests.fixtures.module_tmp import ModuleTempDirs

PARITY_DIR = Path(
    os.environ.get("SD_WEBUI_PARITY_DIR", Path(__file__).resolve().parents[2].parent / "shared" / "parity")
)
MIN_PSNR = 40.0

pytestmark = [
    pytest.mark.usefixtures("no_network"),
    pytest.mark.skipif(
        not (PARITY_DIR / "cases.json").is_file(), reason=f"A1111 parity references not found at {PARITY_DIR}"
    ),
]


def _cases() -> dict[str, Any]:
    if not (PARITY_DIR / "cases.json").is_file():
        return {}
    return dict(json.loads((PARITY_DIR / "cases.json").read_text())["cases"])


@pytest.fixture(scope="module")
def parity_client(module_tmp: ModuleTempDirs) -> Iterator[tuple[TestClient, str]]:
    meta = json.loads((PARITY_DIR / "cases.json").read_text())
    root = module_tmp.mktemp("parity")
    sd = root / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    name = str(meta.get("checkpoint", "parity_sd15.safetensors"))
    shutil.copy(PARITY_DIR / name, sd / name)
    settings = parse_settings(["--data-dir", str(root), "--api", "--use-cpu", "all", "--no-half"], {})
    services = build_services(settings, root, {})
    services.engine.switch_model(checkpoint=name)
    with TestClient(create_app(services)) as client:
        yield client, name
    services.worker.shutdown()


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _params(infotext: str) -> list[str]:
    """The parameter line's entries without the model name and version (the file was named
    differently when A1111 made the references; the version is ours)."""
    last = infotext.strip().split("\n")[-1]
    return [p for p in last.split(", ") if not p.startswith(("Model: ", "Version: "))]


@pytest.mark.parametrize("case", sorted(_cases()))
def test_pixels_equal_a1111(parity_client: tuple[TestClient, str], case: str) -> None:
    client, checkpoint = parity_client
    spec = _cases()[case]
    request = dict(spec["request"])
    request.setdefault("override_settings", {})
    request["override_settings"] = {**request["override_settings"], "sd_model_checkpoint": checkpoint}
    route = "/sdapi/v1/img2img" if request.get("init_images") else "/sdapi/v1/txt2img"
    response = client.post(route, json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    images = body["images"]
    assert len(images) == spec.get("n_images_returned", len(spec["images"]))
    info = json.loads(body["info"])
    for i, ref in enumerate(spec["images"]):
        ours = _rgb(base64.b64decode(images[i]))
        theirs = _rgb((PARITY_DIR / ref["file"]).read_bytes())
        assert ours.shape == theirs.shape
        diff = np.abs(ours - theirs)
        psnr = _psnr(ours, theirs)
        print(
            f"{case}[{i}]: PSNR {psnr:.2f} dB, {100 * float((diff == 0).mean()):.2f}% pixels equal, "
            f"max difference {int(diff.max())}, mean {float((ours - theirs).mean()):+.4f}"
        )
        assert psnr == math.inf or psnr >= MIN_PSNR, f"{case}: {psnr:.2f} dB"
        assert _params(info["infotexts"][i]) == _params(ref["infotext"])
    for key in ("seed", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "clip_skip"):
        if key in spec["info"]:
            assert info[key] == spec["info"][key], key
