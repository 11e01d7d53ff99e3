"""Memory modes: what is on the device at each stage, and the peak, normal vs --medvram vs --lowvram.

    venv/bin/python bench/bench_memory_modes.py [--family sd1|sdxl] [--size 64] [--steps 2]

Runs one txt2img per mode (same request) on the full-size random-weight checkpoint from bench/out
(written when missing), through the real model manager and engine, and prints per mode: the peak
bytes on the device, the peak weight bytes on the device, the number of moves, which parts were on
the device while the text encoders, the UNet and the VAE ran, and the wall time; then the peaks as
ratios to the normal mode.

On a CUDA machine the moves are real and the peak is `torch.cuda.max_memory_allocated` (weights and
activations). Without a GPU the model computes on the CPU and a recording move tracks where every
weight would be: the peak is then the weights alone, activations excluded (the line says so).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODES = ("normal", "medvram", "lowvram")


class Recorder:
    """A move that moves nothing and remembers where each weight would be."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.at: dict[int, Any] = {}
        self.sizes: dict[int, int] = {}
        self.moves = 0
        self.peak = 0
        self.on = 0

    def __call__(self, module: Any, device: Any) -> None:
        self.moves += 1
        for tensor in (*module.parameters(), *module.buffers()):
            key = id(tensor)
            size = tensor.numel() * tensor.element_size()
            self.sizes[key] = size
            was = self.at.get(key)
            if was == self.device and device != self.device:
                self.on -= size
            elif was != self.device and device == self.device:
                self.on += size
            self.at[key] = device
        self.peak = max(self.peak, self.on)

    def fraction(self, module: Any) -> float:
        params = list(module.parameters())
        total = sum(p.numel() * p.element_size() for p in params) or 1
        return sum(p.numel() * p.element_size() for p in params if self.at.get(id(p)) == self.device) / total


def _probe(stage: str, model: Any, mode: str, recorder: Recorder | None, seen: dict[str, list[str]]) -> Any:
    """A forward hook noting, the first time `stage` runs, which parts are on the device."""
    from modules.models.offload import TEXT, UNET, VAE

    def hook(*_: Any) -> None:
        if stage in seen:
            return
        parts = {TEXT: model.text_encoders[0], UNET: model.unet, VAE: model.vae}
        if recorder is None:  # real moves
            on = {name: float(next(m.parameters()).device.type == "cuda") for name, m in parts.items()}
            if mode == "lowvram":
                on[UNET] = float(model.unet.down_blocks[0].resnets[0].conv1.weight.device.type == "cuda")
        elif mode == "normal":
            on = dict.fromkeys(parts, 1.0)  # the normal mode keeps the whole model on the device
        else:
            on = {name: recorder.fraction(m) for name, m in parts.items()}
        seen[stage] = [f"{name} {share:.1%}" for name, share in on.items() if share > 0] or ["-"]

    return hook


def _weights(model: Any) -> int:
    return int(model.nbytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("sd1", "sdxl"), default="sd1")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    import torch

    from bench.bench_load import ensure_checkpoint, registry_over
    from modules.core.options import Options, default_option_infos
    from modules.core.requests import Txt2ImgRequest
    from modules.engine.service import GenerationService
    from modules.engine.worker import Worker
    from modules.models.loader import Placement
    from modules.models.manager import ModelManager
    from modules.models.offload import TEXT, UNET, VAE

    torch.set_grad_enabled(False)
    cuda = torch.cuda.is_available()
    gpu = torch.device("cuda", 0)
    dtype = torch.float16 if cuda else torch.float32
    path = ensure_checkpoint(args.family, "fp16")
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            registry = registry_over(Path(tmp), path)
            recorder = Recorder(gpu)
            kw: dict[str, Any] = {"memory_mode": mode}
            if cuda:
                placement = Placement(device=gpu, dtype=dtype, vae_dtype=dtype, text_encoder_dtype=dtype)
            else:
                placement = Placement()
                kw.update(move=recorder, offload_device=gpu)
            models = ModelManager(registry, placement, cache_bytes=0, **kw)
            worker = Worker()
            engine = GenerationService(models, Options(default_option_infos(), None), worker)
            models.load(path.name)
            model = models.active.model  # type: ignore[union-attr]
            seen: dict[str, list[str]] = {}

            hooks = [
                module.register_forward_hook(_probe(stage, model, mode, recorder if not cuda else None, seen))
                for stage, module in (
                    (TEXT, model.text_encoders[0]),
                    (UNET, model.unet.down_blocks[0]),
                    (VAE, model.vae.decoder),
                )
            ]
            request = Txt2ImgRequest(prompt="a cat", width=args.size, height=args.size, steps=args.steps, seed=1)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            engine.run_sync(request)
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
            for h in hooks:
                h.remove()
            off = model.offloader
            if cuda:
                peak = torch.cuda.max_memory_allocated()
                weights_peak = peak
                moves = off.moves if off else 0
            else:
                weights_peak = recorder.peak if off else _weights(model)
                peak = weights_peak
                moves = recorder.moves
            rows[mode] = {"peak": peak, "weights": weights_peak, "moves": moves, "seen": seen, "time": elapsed}
            worker.shutdown()
            models.unload()
            del engine, models, model, off, hooks  # one full-size model in RAM at a time (SDXL fp32: ~14 GB)
            gc.collect()
    where = "CUDA (real moves, peak allocated incl. activations)" if cuda else "CPU (recorded moves, weights only)"
    print(f"memory modes, {args.family} full-size random weights, {args.size}x{args.size}, {args.steps} steps; {where}")
    header = f"  {'mode':<9} {'peak MiB':>9} {'vs normal':>9} {'moves':>6} {'time s':>7}"
    print(header + "  on the device while: text | unet | vae")
    base = rows["normal"]["peak"] or 1
    for mode, row in rows.items():
        stages = " | ".join(", ".join(row["seen"].get(s, ["?"])) for s in (TEXT, UNET, VAE))
        print(
            f"  {mode:<9} {row['peak'] / 2**20:>9.0f} {row['peak'] / base:>8.2f}x {row['moves']:>6} "
            f"{row['time']:>7.1f}  {stages}"
        )


if __name__ == "__main__":
    main()
