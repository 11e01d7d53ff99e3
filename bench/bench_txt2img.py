"""txt2img benchmark: our engine against a plain diffusers pipeline, same model, same scheduler,
steps and seed, in one process.

    venv/bin/python bench/bench_txt2img.py [--size 256] [--steps 4] [--repeats 3] [--family sd1]

The model is the full-size random-weight checkpoint from bench/out (written when missing), loaded
once; the diffusers `StableDiffusionPipeline` is built from the very same modules. Runs alternate
(ours, diffusers, ours, ...) and the medians are compared; the target is ours within 5%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="sd1", choices=["sd1"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import tempfile

    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from bench.bench_load import ensure_checkpoint, registry_over
    from modules.core.options import Options, default_option_infos
    from modules.core.requests import Txt2ImgRequest
    from modules.engine.service import GenerationService
    from modules.engine.worker import Worker
    from modules.models.loader import Placement
    from modules.models.manager import ModelManager

    torch.set_grad_enabled(False)
    path = ensure_checkpoint(args.family, "fp16")
    with tempfile.TemporaryDirectory() as tmp:
        registry = registry_over(Path(tmp), path)
        models = ModelManager(registry, Placement(), cache_bytes=1 << 40)
        options = Options(default_option_infos(), None)
        options.set("randn_source", "CPU")
        worker = Worker()
        engine = GenerationService(models, options, worker)
        models.load(path.name)
        model = models.active.model  # type: ignore[union-attr]
        pipe = StableDiffusionPipeline(
            vae=model.vae,
            text_encoder=model.text_encoders[0],
            tokenizer=model.tokenizers[0],
            unet=model.unet,
            scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        prompt, negative = "a photo of a cat on a sofa", "blurry"
        request = Txt2ImgRequest(
            prompt=prompt,
            negative_prompt=negative,
            width=args.size,
            height=args.size,
            steps=args.steps,
            seed=1234,
            sampler_name="Euler",
            scheduler="Automatic",
            cfg_scale=7.0,
        )

        def ours() -> float:
            started = time.perf_counter()
            engine.run_sync(request)
            return time.perf_counter() - started

        def theirs() -> float:
            started = time.perf_counter()
            pipe(
                prompt,
                negative_prompt=negative,
                width=args.size,
                height=args.size,
                num_inference_steps=args.steps,
                guidance_scale=7.0,
                generator=torch.Generator().manual_seed(1234),
            )
            return time.perf_counter() - started

        ours(), theirs()  # warm-up (allocator, kernels, tokenizer caches)
        a, b = [], []
        for _ in range(args.repeats):
            a.append(ours())
            b.append(theirs())
        worker.shutdown()
    o, d = statistics.median(a), statistics.median(b)
    print(
        f"txt2img {args.family} full-size fp32 on CPU ({os.cpu_count()} cores), {args.size}x{args.size}, "
        f"{args.steps} steps Euler, CFG 7, batch 1, {args.repeats} repeats"
    )
    print(f"  ours     median {o:6.2f}s  runs {', '.join(f'{x:.2f}' for x in a)}")
    print(f"  diffusers median {d:6.2f}s  runs {', '.join(f'{x:.2f}' for x in b)}")
    print(f"  ratio ours/diffusers {o / d:.3f}x (target <= 1.05x)")


if __name__ == "__main__":
    main()
