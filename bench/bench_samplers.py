"""Per-step time of every sampler against Euler, same model, size, seed and step count, one process.

    venv/bin/python bench/bench_samplers.py [--size 64] [--steps 6] [--repeats 2] [--samplers "Euler a,Restart"]

The model is the full-size random-weight SD 1.5 checkpoint from bench/out (written when missing).
For each sampler the script counts the UNet calls (second-order samplers make two per step, DPM
adaptive as many as its error control asks for, Restart adds its restart segments) and prints the
median time per sampler step and per UNet call, and the per-step ratio to Euler. A sampler whose
step makes two UNet calls is expected near 2x; the sampler arithmetic itself should not show.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--samplers", default="", help="comma-separated names (default: all)")
    args = parser.parse_args()

    import torch

    from bench.bench_load import ensure_checkpoint, registry_over
    from modules.core.options import Options, default_option_infos
    from modules.core.requests import Txt2ImgRequest
    from modules.engine.samplers import list_samplers
    from modules.engine.sampling import UNetCall, UNetFn
    from modules.engine.service import GenerationService
    from modules.engine.worker import Worker
    from modules.models.loader import Placement
    from modules.models.manager import ModelManager

    torch.set_grad_enabled(False)
    names = [s.strip() for s in args.samplers.split(",") if s.strip()] or [s.name for s in list_samplers()]
    if "Euler" not in names:
        names.insert(0, "Euler")
    path = ensure_checkpoint("sd1", "fp16")
    results: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        registry = registry_over(Path(tmp), path)
        models = ModelManager(registry, Placement(), cache_bytes=1 << 40)
        options = Options(default_option_infos(), None)
        options.set("randn_source", "CPU")
        worker = Worker()
        engine = GenerationService(models, options, worker)
        models.load(path.name)
        calls = [0]

        def count(call: UNetCall, call_next: UNetFn) -> torch.Tensor:
            calls[0] += 1
            return call_next(call)

        engine.hooks.add_unet_wrapper(count)
        for name in names:
            request = Txt2ImgRequest(
                prompt="a photo of a cat on a sofa",
                negative_prompt="blurry",
                width=args.size,
                height=args.size,
                steps=args.steps,
                seed=1234,
                sampler_name=name,
                cfg_scale=7.0,
            )
            engine.run_sync(request)  # warm-up
            times = []
            for _ in range(args.repeats):
                calls[0] = 0
                started = time.perf_counter()
                engine.run_sync(request)
                times.append(time.perf_counter() - started)
            t = statistics.median(times)
            results[name] = (t / args.steps, t / max(calls[0], 1), calls[0])
        worker.shutdown()
    base = results["Euler"][0]
    print(
        f"samplers on SD 1.5 full-size fp32, CPU ({os.cpu_count()} cores), {args.size}x{args.size}, "
        f"{args.steps} steps, CFG 7, batch 1, median of {args.repeats}"
    )
    print(f"  {'sampler':<18} {'UNet calls':>10} {'s/step':>8} {'s/call':>8} {'step vs Euler':>14}")
    for name, (per_step, per_call, n_calls) in results.items():
        print(f"  {name:<18} {int(n_calls):>10} {per_step:>8.3f} {per_call:>8.3f} {per_step / base:>13.2f}x")


if __name__ == "__main__":
    main()
