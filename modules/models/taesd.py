"""TAESD live-preview decoders from `models/VAE-taesd` (the files A1111 users already have).

`taesd_decoder.pth` (SD 1.x/2.x) and `taesdxl_decoder.pth` (SDXL) hold the decoder as a plain
`nn.Sequential`: a clamp module, conv, ReLU, blocks, upsamples, convs. diffusers' `DecoderTiny`
has the same layers in the same order but applies the clamp as a function, so layer N of the
file is `layers.{N-1}` there. `.safetensors` copies of the same tensors load too.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import torch
from diffusers.models.autoencoders.vae import DecoderTiny

from modules.core.errors import ModelFileError
from modules.models.checkpoint_io import read_state_dict
from modules.models.families import ModelFamily
from modules.models.memory import TAESD, MemoryBudget, module_nbytes

log = logging.getLogger(__name__)

_LAYER = re.compile(r"^(\d+)\.(.+)$")


def decoder_names(family: ModelFamily) -> tuple[str, ...]:
    stem = "taesdxl_decoder" if family.is_sdxl else "taesd_decoder"
    return tuple(stem + suffix for suffix in (".safetensors", ".pth"))


def build_decoder() -> DecoderTiny:
    return DecoderTiny(
        in_channels=4,
        out_channels=3,
        num_blocks=(3, 3, 3, 1),
        block_out_channels=(64, 64, 64, 64),
        upsampling_scaling_factor=2,
        act_fn="relu",
        upsample_fn="nearest",
    )


def load_decoder(path: Path) -> DecoderTiny:
    tensors = read_state_dict(path)
    renamed: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        key = key.removeprefix("decoder.")
        match = _LAYER.match(key)
        if match is None:
            raise ModelFileError(f"{path}: not a TAESD decoder (unexpected tensor {key!r})")
        renamed[f"layers.{int(match.group(1)) - 1}.{match.group(2)}"] = value.float()
    decoder = build_decoder()
    try:
        decoder.load_state_dict(renamed, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: not a TAESD decoder: {exc}") from exc
    return decoder.eval().requires_grad_(False)


class TaesdDecoders:
    """Loads the right TAESD decoder for a family on first use; None when the file is absent.
    Loaded decoders are registered with the shared `MemoryBudget` (kind "taesd"; an unbounded one
    of its own without `budget`) and loaded again after it evicts them."""

    def __init__(self, folder: Path | None, *, budget: MemoryBudget | None = None) -> None:
        self.folder = folder
        self.budget = budget if budget is not None else MemoryBudget()
        self._lock = threading.RLock()
        self._cache: dict[str, DecoderTiny | None] = {}

    def get(self, family: ModelFamily) -> DecoderTiny | None:
        key = "xl" if family.is_sdxl else "sd"
        budget_key = f"{TAESD}:{key}"
        with self._lock:
            if key in self._cache:
                cached = self._cache[key]
                if cached is not None:
                    self.budget.touch(budget_key)
                return cached
            decoder = None
            for name in decoder_names(family):
                path = self.folder / name if self.folder is not None else None
                if path is not None and path.is_file():
                    try:
                        decoder = load_decoder(path)
                        log.info("live previews: TAESD from %s", path)
                    except ModelFileError as exc:
                        log.warning("ignoring %s: %s", path, exc)
                    break
            self._cache[key] = decoder
        if decoder is not None:
            self.budget.add(budget_key, TAESD, module_nbytes(decoder), lambda: self._drop(key))
        return decoder

    def _drop(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)
