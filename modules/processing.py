"""A1111's `modules.processing` for extension code (a facade: internal packages never import it):
the `p` classes, `Processed`, `process_images` and the seed / infotext helpers of
`modules.extensions.processing_api`, and a few of A1111's image helpers."""

from __future__ import annotations

from typing import Any

from PIL import Image

from modules.engine import images as engine_images
from modules.extensions.processing_api import (
    Processed,
    StableDiffusionProcessing,
    StableDiffusionProcessingImg2Img,
    StableDiffusionProcessingTxt2Img,
    create_infotext,
    fix_seed,
    get_fixed_seed,
    process_images,
)

__all__ = [
    "Processed",
    "StableDiffusionProcessing",
    "StableDiffusionProcessingImg2Img",
    "StableDiffusionProcessingTxt2Img",
    "apply_overlay",
    "create_binary_mask",
    "create_infotext",
    "fix_seed",
    "get_fixed_seed",
    "opt_C",
    "opt_f",
    "process_images",
]

opt_C = 4  # latent channels
opt_f = 8  # latent downscale factor


def create_binary_mask(image: Image.Image, round: bool = True) -> Image.Image:
    return engine_images.binary_mask(image, round_mask=round)


def apply_overlay(image: Image.Image, paste_loc: Any, overlay: Image.Image | None) -> Image.Image:
    return engine_images.apply_overlay(image, tuple(paste_loc) if paste_loc is not None else None, overlay)
