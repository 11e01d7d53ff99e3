"""Tiled VAE decode/encode for large images (ours; A1111 has none built in): diffusers'
`AutoencoderKL` tiling (overlapping tiles blended at the seams), switched on for one job when the
`sd_vae_tiling` option is on, with tiles of `sd_vae_tiling_threshold` pixels: an image wider or
taller than that goes through the VAE in tiles, a smaller one whole."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

TILE_ATTRS = ("use_tiling", "tile_sample_min_size", "tile_latent_min_size")


def latent_factor(vae: Any) -> int:
    """Pixels per latent cell (8 for SD's VAEs)."""
    return int(2 ** (len(vae.config.block_out_channels) - 1))


@contextlib.contextmanager
def vae_tiling(vae: Any, enabled: bool, tile_px: int) -> Iterator[None]:
    """Inside the block, `vae` encodes and decodes images larger than `tile_px` in tiles of that size."""
    if not enabled or not all(hasattr(vae, a) for a in TILE_ATTRS):
        yield
        return
    saved = {a: getattr(vae, a) for a in TILE_ATTRS}
    factor = latent_factor(vae)
    tile_px = max(int(tile_px) // factor * factor, 2 * factor)
    vae.use_tiling = True
    vae.tile_sample_min_size = tile_px
    vae.tile_latent_min_size = tile_px // factor
    try:
        yield
    finally:
        for attr, value in saved.items():
            setattr(vae, attr, value)
