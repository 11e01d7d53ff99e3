"""Model files that cannot be used are refused when they are loaded, naming the file (issue 19,
item 3): a VAE that builds but does not fit SD models, a diffusers-keyed VAE with tensors
missing, a truncated or empty pickle; out-of-memory while loading or upscaling is never reported
as a bad file, and upscaling's out-of-memory is the 507 `OutOfMemoryError`; a hypernetwork made
for another model family is logged as changing nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from safetensors.torch import save_file
from torch import nn

from modules.core.errors import ModelFileError, OutOfMemoryError
from modules.engine import upscaling
from modules.models import hypernetworks, loader, upscalers
from modules.models.checkpoint_io import read_state_dict, read_structured
from modules.models.families import SD1, SDXL
from modules.models.hypernetworks import Hypernetwork, HypernetworkLayout, HypernetworkModule
from modules.models.loader import Placement, check_vae_fits, load_single_file, load_vae_file

SD_VAE = {"latent_channels": 4, "block_out_channels": [32, 32, 64, 64], "in_channels": 3, "out_channels": 3}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"latent_channels": 16}, "16 latent channels, SD 1.x models use 4"),
        ({"block_out_channels": [32, 32, 64]}, "downsamples 4x, SD 1.x models need 8x"),
        ({"in_channels": 1, "out_channels": 1}, "maps 1 image channels to 1"),
    ],
)
def test_a_vae_that_does_not_fit_sd_models_is_refused(change: dict[str, Any], says: str) -> None:
    check_vae_fits(SD_VAE, SD1, Path("ok.safetensors"))  # the shape of every SD VAE passes
    with pytest.raises(ModelFileError, match=r"other\.safetensors: this VAE does not fit a SD 1\.x") as info:
        check_vae_fits({**SD_VAE, **change}, SD1, Path("other.safetensors"))
    assert says in str(info.value)


def _diffusers_vae(path: Path, latent_channels: int, drop: str | None = None) -> Path:
    config = {
        "block_out_channels": [32, 32, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
        "latent_channels": latent_channels,
        "norm_num_groups": 32,
    }
    state = {k: v.contiguous() for k, v in AutoencoderKL.from_config(config).state_dict().items() if k != drop}
    save_file(state, str(path))
    return path


def test_a_16_channel_vae_file_is_refused_at_load(tmp_path: Path) -> None:
    assert load_vae_file(_diffusers_vae(tmp_path / "sd.safetensors", 4), SDXL, Placement()) is not None
    with pytest.raises(ModelFileError, match=r"flux\.safetensors: this VAE does not fit a SDXL base checkpoint"):
        load_vae_file(_diffusers_vae(tmp_path / "flux.safetensors", 16), SDXL, Placement())


@pytest.mark.parametrize("drop", ["decoder.conv_out.weight", "encoder.down_blocks.0.resnets.0.conv2.weight"])
def test_a_diffusers_vae_with_a_tensor_missing_names_the_file(tmp_path: Path, drop: str) -> None:
    path = _diffusers_vae(tmp_path / "half.safetensors", 4, drop=drop)
    with pytest.raises(ModelFileError, match=r"half\.safetensors: .*VAE"):
        load_vae_file(path, SD1, Placement())


def test_a_truncated_or_empty_pickle_says_so(tmp_path: Path) -> None:
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.ones(64, 64)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:2000])
    for read in (read_state_dict, read_structured):
        with pytest.raises(ModelFileError, match=r"cut\.pt: truncated or damaged: a zip archive without"):
            read(cut)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"empty\.pt: empty file"):
        read_structured(tmp_path / "empty.pt")


def test_out_of_memory_while_building_a_checkpoint_is_not_a_bad_file(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def build(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loader, "build_from_state_dict", build)
    with pytest.raises(torch.OutOfMemoryError):  # the worker turns it into a 507; never "tensors do not fit"
        load_single_file(tiny_models["sd1"], Placement())


def test_out_of_memory_while_building_an_upscaler_is_not_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spandrel import ModelLoader

    from tests.fixtures.upscaler_models import write_esrgan_old

    path = write_esrgan_old(tmp_path / "x4.pth")

    def load(self: Any, state_dict: Any) -> Any:
        raise MemoryError()

    monkeypatch.setattr(ModelLoader, "load_from_state_dict", load)
    with pytest.raises(MemoryError):
        upscalers.load_descriptor(path)


def test_upscaling_out_of_memory_is_the_507_error_after_freeing() -> None:
    def model(x: torch.Tensor) -> torch.Tensor:
        raise MemoryError()  # the CPU's out-of-memory counts too

    with pytest.raises(OutOfMemoryError) as info:
        upscaling.run_tiled_with_retry(model, torch.rand(1, 3, 32, 32), 32, 4, min_tile=16)
    assert info.value.status_code == 507 and "memory was freed" in str(info.value)


class _Attention(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(width, 8), nn.Linear(width, 8), nn.Linear(width, 8)


def _hypernetwork(width: int) -> Hypernetwork:
    layout = HypernetworkLayout()
    pair = (HypernetworkModule(layout.build(width)), HypernetworkModule(layout.build(width)))
    return Hypernetwork(name="anime", filename=Path("/models/hypernetworks/anime.pt"), layers={width: pair})


def test_a_hypernetwork_for_another_width_is_logged_as_changing_nothing(caplog: pytest.LogCaptureFixture) -> None:
    unet = nn.Sequential(_Attention(64), _Attention(32))
    assert hypernetworks.attention_widths(unet) == {32, 64}
    with (
        caplog.at_level(logging.WARNING, logger=hypernetworks.__name__),
        hypernetworks.hypernetworks_applied(unet, [(_hypernetwork(768), 1.0)]),
    ):
        pass
    assert "hypernetwork 'anime' (anime.pt) has layers for widths [768]" in caplog.text
    assert "this model's attentions take [32, 64]: it changes nothing" in caplog.text
    caplog.clear()
    with hypernetworks.hypernetworks_applied(unet, [(_hypernetwork(64), 1.0)]):
        pass
    assert "changes nothing" not in caplog.text
