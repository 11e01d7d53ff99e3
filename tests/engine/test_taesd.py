"""TAESD preview decoders from models/VAE-taesd in the layout of the files A1111 users have."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from modules.engine.service import GenerationService
from modules.models.families import SD1, SDXL
from modules.models.taesd import TaesdDecoders, build_decoder


def write_taesd_pth(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random decoder saved as the original taesd.py `nn.Sequential` state dict: a clamp
    module at index 0, so diffusers' layer i is the file's layer i + 1."""
    torch.manual_seed(seed)
    decoder = build_decoder()
    tensors = {}
    for key, value in decoder.state_dict().items():
        index, rest = key.removeprefix("layers.").split(".", 1)
        tensors[f"{int(index) + 1}.{rest}"] = value.clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, path)
    return tensors


def test_the_file_layout_loads_strictly_and_decodes_to_full_size(tmp_path: Path) -> None:
    tensors = write_taesd_pth(tmp_path / "taesd_decoder.pth")
    assert "1.weight" in tensors and "3.conv.0.weight" in tensors  # original layout markers
    decoders = TaesdDecoders(tmp_path)
    decoder = decoders.get(SD1)
    assert decoder is not None and decoders.get(SDXL) is None  # SDXL needs taesdxl_decoder
    assert torch.equal(decoder.layers[0].weight, tensors["1.weight"])
    out = decoder(torch.randn(1, 4, 8, 8))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


def test_a_wrong_file_is_ignored(tmp_path: Path) -> None:
    torch.save({"something": torch.zeros(3)}, tmp_path / "taesd_decoder.pth")
    assert TaesdDecoders(tmp_path).get(SD1) is None
    assert TaesdDecoders(None).get(SD1) is None


@pytest.mark.usefixtures("no_network")
def test_live_preview_uses_taesd_when_present(engine: GenerationService, tmp_path: Path) -> None:
    from tests.engine.support import t2i

    write_taesd_pth(tmp_path / "taesd_decoder.pth")
    sizes: list[tuple[int, int]] = []
    for taesd in (None, TaesdDecoders(tmp_path)):
        engine.taesd = taesd
        job = engine.submit(
            t2i(steps=20, override_settings={"sd_model_checkpoint": "sd1", "show_progress_every_n_steps": 1})
        )
        while not job.future.done():
            image = engine.worker.progress()["current_image"]
            if image is not None:
                sizes.append(image.size)
                engine.worker.interrupt()
                break
            time.sleep(0.01)
        job.future.result(60)
    engine.taesd = None
    assert sizes == [(8, 8), (64, 64)]  # cheap approximation at latent size, TAESD at full size
