"""Helpers shared by the engine tests."""

from __future__ import annotations

import numpy as np
from PIL import Image

from modules.core.requests import Txt2ImgRequest


def t2i(**kw: object) -> Txt2ImgRequest:
    base: dict[str, object] = {
        "prompt": "a cat",
        "width": 64,
        "height": 64,
        "steps": 3,
        "seed": 1234,
        "sampler_name": "Euler",
        "override_settings": {"sd_model_checkpoint": "sd1"},
    }
    base.update(kw)
    return Txt2ImgRequest(**base)  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)
