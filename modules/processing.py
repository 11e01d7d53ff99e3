"""A1111's `modules.processing` for extension code (a facade: internal packages never import it)."""

from __future__ import annotations

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
    "create_infotext",
    "fix_seed",
    "get_fixed_seed",
    "process_images",
]
