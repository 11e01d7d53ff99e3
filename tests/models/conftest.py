"""Fixtures shared by the model-manager tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture()
def tree(tiny_models: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """A private A1111-style tree with two SD1-family checkpoints, an SDXL one and a VAE."""
    sd, vae = tmp_path / "Stable-diffusion", tmp_path / "VAE"
    sd.mkdir()
    vae.mkdir()
    out = {"sd": sd, "vae_dir": vae, "cache": tmp_path / "cache.json"}
    for name, key in (("one.safetensors", "sd1"), ("two.safetensors", "sd1-inpaint"), ("xl.safetensors", "sdxl")):
        out[name] = sd / name
        shutil.copy(tiny_models[key], sd / name)
    out["vae"] = vae / "vae-tiny.safetensors"
    shutil.copy(tiny_models["vae"], out["vae"])
    return out
