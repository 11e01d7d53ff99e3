"""Helpers shared by the engine tests."""

from __future__ import annotations

import numpy as np
import torch
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


class CountingRandn:
    """A sampler's `randn_like` drawing from its own seeded generator (the k-th draw is the same
    fixed tensor in every run); counts the draws."""

    def __init__(self, seed: int = 123) -> None:
        self.n = 0
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.n += 1
        return torch.randn(x.shape, generator=self.gen, dtype=x.dtype)
