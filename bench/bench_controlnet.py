"""ControlNet per-step cost: txt2img with 0, 1 and 2 canny units on the full-size SD 1.5.

    venv/bin/python bench/bench_controlnet.py [--size 256] [--steps 6] [--rounds 2]
                                              [--device cpu|cuda] [--dtype fp32|fp16|bf16]

Uses the full-size random SD 1.5 checkpoint from bench/out (written when missing) and a full-size
random SD 1.5 ControlNet (LDM keys, fp16 file; written into bench/out once and kept), loaded
through the real model manager and `ControlNetCache`, and runs the engine's txt2img (Euler, CFG 7,
batch 1) with no unit, one unit and two units (canny on a synthetic image, weight 1, the whole
guidance range; the two units use the same ControlNet file, so the model is loaded once and run
twice per UNet call, as two units of one model are in the extension).

Only the sampling steps are timed: an `on_step` listener on the engine's hooks stamps the end of
every step, and the step times are the gaps between consecutive stamps (the first step of a run,
which also fits the map to the latent, is left out). One warm-up run per case, then `--rounds`
rounds of the three cases alternated (this VM's timings drift); the median over all timed steps
of a case is its per-step time, and the ratios are 1 unit / none and 2 units / none.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

OUT = ROOT / "bench" / "out"
CONTROLNET = OUT / "control_sd1-full-fp16.safetensors"
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def ensure_controlnet() -> Path:
    """The full-size random SD 1.5 ControlNet in bench/out (written once, kept)."""
    if not CONTROLNET.exists():
        import torch

        from tests.fixtures.controlnet_files import write_controlnet

        print(f"writing {CONTROLNET.name} ...", flush=True)
        started = time.perf_counter()
        write_controlnet(CONTROLNET, "sd1", size="full", dtype=torch.float16)
        print(f"  {CONTROLNET.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - started:.0f}s", flush=True)
    return CONTROLNET


def synthetic_image(size: int) -> Any:
    """Shapes canny finds edges in: a rectangle, a disc, a triangle and stripes."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    s = size
    draw.rectangle((s // 8, s // 8, s // 2, s // 2), fill=(220, 220, 220))
    draw.ellipse((s // 2, s // 3, s - s // 10, s - s // 5), fill=(90, 160, 230))
    draw.polygon([(s // 10, s - s // 10), (s // 3, s // 2 + s // 10), (s // 2, s - s // 10)], fill=(240, 120, 60))
    for x in range(s // 2 + s // 10, s - s // 10, max(4, s // 32)):
        draw.line((x, s // 10, x, s // 4), fill=(250, 250, 250), width=max(1, s // 128))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image width and height")
    parser.add_argument("--steps", type=int, default=6, help="sampling steps per run (the first is not timed)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of none / 1 unit / 2 units")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="UNet / ControlNet precision (fp32 on CPU, fp16 on CUDA)"
    )
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not timed)")

    import torch

    from bench.bench_load import ensure_checkpoint, registry_over
    from modules.core.controlnet import ControlNetUnit
    from modules.core.hashes import HashCache
    from modules.core.options import Options, default_option_infos
    from modules.core.requests import Txt2ImgRequest
    from modules.engine.controlnet_service import ControlNetService
    from modules.engine.sampling import StepInfo
    from modules.engine.service import GenerationService
    from modules.engine.worker import Worker
    from modules.models.controlnet import ControlNetCache, ControlNetRegistry
    from modules.models.loader import Placement
    from modules.models.manager import ModelManager

    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    dtype = getattr(torch, DTYPES[args.dtype or ("fp16" if cuda else "fp32")])
    vae_dtype = dtype if cuda else torch.float32
    placement = Placement(device=device, dtype=dtype, vae_dtype=vae_dtype, text_encoder_dtype=vae_dtype)

    path = ensure_checkpoint("sd1", "fp16")
    cn_path = ensure_controlnet()
    with tempfile.TemporaryDirectory() as tmp:
        registry = registry_over(Path(tmp), path)
        models = ModelManager(registry, placement, cache_bytes=1 << 40, background_hashing=False)
        options = Options(default_option_infos(), None)
        options.set("randn_source", "CPU")
        worker = Worker()
        engine = GenerationService(models, options, worker)
        engine.controlnet = ControlNetService(
            ControlNetRegistry([cn_path.parent], HashCache(Path(tmp) / "cn-cache.json")),
            ControlNetCache(models.budget),
        )
        models.load(path.name)

        stamps: list[float] = []

        def on_step(_info: StepInfo) -> None:
            if cuda:
                torch.cuda.synchronize(device)
            stamps.append(time.perf_counter())

        engine.hooks.on_step.add(on_step)

        image = synthetic_image(args.size)

        def unit(low: float, high: float) -> ControlNetUnit:
            return ControlNetUnit(
                enabled=True,
                module="canny",
                model=cn_path.stem,
                weight=1.0,
                image=image,
                resize_mode="Crop and Resize",
                processor_res=args.size,
                threshold_a=low,
                threshold_b=high,
            )

        base = Txt2ImgRequest(
            prompt="a photo of a cat on a sofa",
            negative_prompt="blurry",
            width=args.size,
            height=args.size,
            steps=args.steps,
            seed=1234,
            sampler_name="Euler",
            scheduler="Automatic",
            cfg_scale=7.0,
        )
        cases: dict[str, tuple[ControlNetUnit, ...]] = {
            "none": (),
            "1 unit": (unit(100, 200),),
            "2 units": (unit(100, 200), unit(50, 150)),
        }

        def run(units: tuple[ControlNetUnit, ...]) -> tuple[list[float], float]:
            stamps.clear()
            request = dataclasses.replace(base, controlnet_units=units)
            started = time.perf_counter()
            result = engine.run_sync(request)
            total = time.perf_counter() - started
            for index in range(len(units)):  # the units did run
                assert f"ControlNet {index}:" in result.infotexts[0], result.infotexts[0]
            assert len(stamps) == args.steps, (len(stamps), args.steps)
            return [b - a for a, b in itertools.pairwise(stamps)], total

        for name, units in cases.items():  # warm-up: allocator, kernels, the ControlNet load
            started = time.perf_counter()
            run(units)
            print(f"warm-up {name:8} {time.perf_counter() - started:6.1f}s", flush=True)

        steps: dict[str, list[float]] = {name: [] for name in cases}
        totals: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, units in cases.items():
                step_times, total = run(units)
                steps[name].extend(step_times)
                totals[name].append(total)
        worker.shutdown()

    where = f"{torch.cuda.get_device_name(device)}" if cuda else f"CPU ({torch.get_num_threads()} threads)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nControlNet per step, SD 1.5 full size + ControlNet full size, {str(dtype).removeprefix('torch.')} on "
        f"{where}, {args.size}x{args.size}, Euler {args.steps} steps, CFG 7, batch 1, canny units at weight 1; "
        f"{args.rounds} rounds x {args.steps - 1} timed steps per case; load average after {load:.2f}"
    )
    none = statistics.median(steps["none"])
    print(f"{'case':8} {'step s (median)':>15} {'min':>7} {'max':>7} {'run s (median)':>15} {'ratio':>7}")
    for name in cases:
        median = statistics.median(steps[name])
        print(
            f"{name:8} {median:15.3f} {min(steps[name]):7.3f} {max(steps[name]):7.3f} "
            f"{statistics.median(totals[name]):15.2f} {median / none:7.3f}"
        )
    print(
        f"ratios per step: 1 unit / none {statistics.median(steps['1 unit']) / none:.3f}, "
        f"2 units / none {statistics.median(steps['2 units']) / none:.3f}"
    )


if __name__ == "__main__":
    main()
