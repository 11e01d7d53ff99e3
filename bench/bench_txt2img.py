"""txt2img benchmark: our engine against a raw diffusers pipeline, same model, scheduler, size,
steps and seed, in one process, printing it/s and ratios from one run.

    venv/bin/python bench/bench_txt2img.py                        # CPU default: SD1.5, 256 px, 4 steps, b1, eager
    python3 bench/bench_txt2img.py --families sd1 sdxl --batches 1 4 --modes eager compiled   # GPU matrix
    venv/bin/python bench/bench_txt2img.py --smoke                # tiny random models, seconds (proves the wiring)

Cells: family x batch x mode. Sizes are per family unless `--size` is given (sd1 512, sdxl 1024 on
CUDA; 256 on the CPU). On CUDA weights are fp16 (`--dtype`), on the CPU fp32. The models are the
full-size random-weight checkpoints in bench/out (written when missing; `--smoke`: tiny ones in a
temp dir). The diffusers pipeline (`StableDiffusionPipeline` / `StableDiffusionXLPipeline`) is built
from the very modules our engine loaded, with `EulerDiscreteScheduler` from the model's config; ours
runs the A1111 "Euler" sampler. "compiled": ours with the `torch_compile` option (UNet), raw
diffusers with `pipe.unet = torch.compile(unet)`; the first (compiling) call of each side is timed
apart and reported as compile time. After one warm-up each, the runs come in pairs, ours first in
one pair and raw first in the next (so neither side always runs second); medians are compared, and
the best runs, and the median of the pairs' ratios (each pair ran back to back, so the drift of a
shared box's load cancels within it). it/s = steps / median seconds of the whole request (text encoding, sampling,
VAE decode), for both sides alike. VRAM peak = torch.cuda.max_memory_allocated over each side's runs.
Target (issue 18): ours/raw time <= 1.03x eager; on a GPU >= 1.0x raw eager it/s, >= 1.3x compiled.
`--json PATH` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FAMILIES = ("sd1", "sdxl")
MODES = ("eager", "compiled")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["sd1"], choices=FAMILIES)
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=MODES)
    parser.add_argument("--size", type=int, help="image size for every family (default: per family and device)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp16", "bf16", "fp32"))
    parser.add_argument("--compile-backend", default="inductor", choices=("inductor", "aot_eager", "eager"))
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--smoke", action="store_true", help="tiny random models, 64 px, 2 steps, 1 repeat")
    parser.add_argument("--json", type=Path, help="also write the result rows as JSON here")
    return parser


def default_size(family: str, cuda: bool) -> int:
    if not cuda:
        return 256
    return 1024 if family == "sdxl" else 512


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run_cell(
    family: str,
    path: Path,
    batch: int,
    mode: str,
    size: int,
    args: argparse.Namespace,
    device: Any,
    dtype: Any,
) -> dict[str, Any]:
    """One cell: load the checkpoint through our manager, build the raw pipeline on the same
    modules, time both alternately. Returns a row (times in seconds)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from bench.bench_load import registry_over
    from modules.core.options import Options, default_option_infos
    from modules.core.requests import Txt2ImgRequest
    from modules.engine.service import GenerationService
    from modules.engine.worker import Worker
    from modules.models.loader import Placement
    from modules.models.manager import ModelManager

    cuda = device.type == "cuda"
    row: dict[str, Any] = {"family": family, "size": size, "batch": batch, "mode": mode, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        placement = Placement(device=device, dtype=dtype, vae_dtype=dtype, text_encoder_dtype=dtype)
        models = ModelManager(registry_over(Path(tmp), path), placement, cache_bytes=0, background_hashing=False)
        options = Options(default_option_infos(), None)
        options.set("randn_source", "CPU")
        options.set("samples_save", False)
        options.set("grid_save", False)
        compiled = mode == "compiled"
        if compiled:
            options.set("torch_compile", True)
            options.set("torch_compile_backend", args.compile_backend)
            options.set("torch_compile_mode", args.compile_mode)
        worker = Worker()
        engine = GenerationService(models, options, worker)
        try:
            models.load(path.name)
            model = models.active.model  # type: ignore[union-attr]
            scheduler = EulerDiscreteScheduler.from_config(model.scheduler_config)
            if model.family.is_sdxl:
                pipe: Any = StableDiffusionXLPipeline(
                    vae=model.vae,
                    text_encoder=model.text_encoders[0],
                    text_encoder_2=model.text_encoders[1],
                    tokenizer=model.tokenizers[0],
                    tokenizer_2=model.tokenizers[1],
                    unet=model.unet,
                    scheduler=scheduler,
                )
            else:
                pipe = StableDiffusionPipeline(
                    vae=model.vae,
                    text_encoder=model.text_encoders[0],
                    tokenizer=model.tokenizers[0],
                    unet=model.unet,
                    scheduler=scheduler,
                    safety_checker=None,
                    feature_extractor=None,
                    requires_safety_checker=False,
                )
            if compiled:
                pipe.unet = torch.compile(model.unet, backend=args.compile_backend, mode=args.compile_mode)
            pipe.set_progress_bar_config(disable=True)
            prompt, negative = "a photo of a cat on a sofa", "blurry"
            request = Txt2ImgRequest(
                prompt=prompt,
                negative_prompt=negative,
                width=size,
                height=size,
                steps=args.steps,
                seed=1234,
                batch_size=batch,
                sampler_name="Euler",
                scheduler="Automatic",
                cfg_scale=7.0,
            )
            compile_note: list[str] = []

            def sync() -> None:
                if cuda:
                    torch.cuda.synchronize()

            def ours() -> float:
                started = time.perf_counter()
                result = engine.run_sync(request)
                sync()
                if compiled and not compile_note:
                    compile_note.append(str(getattr(result, "info", "")))
                return time.perf_counter() - started

            def theirs() -> float:
                started = time.perf_counter()
                pipe(
                    prompt,
                    negative_prompt=negative,
                    width=size,
                    height=size,
                    num_inference_steps=args.steps,
                    num_images_per_prompt=batch,
                    guidance_scale=7.0,
                    generator=torch.Generator().manual_seed(1234),
                )
                sync()
                return time.perf_counter() - started

            def peak(fn: Callable[[], float]) -> tuple[float, float]:
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                seconds = fn()
                return seconds, (torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"))

            row["ours_first_s"], _ = peak(ours)  # warm-up; with compile on, where the compile happens
            row["raw_first_s"], _ = peak(theirs)
            a, b, va, vb = [], [], [], []
            for i in range(args.repeats):
                # pairs in A-B, B-A order: whichever side runs second in a pair (warm allocator,
                # caches, a neighbour's burst that started during the first) is each side in turn
                for side in (ours, theirs) if i % 2 == 0 else (theirs, ours):
                    s, v = peak(side)
                    (a if side is ours else b).append(s)
                    (va if side is ours else vb).append(v)
        finally:
            worker.shutdown()
            models.unload()
    o, d = _median(a), _median(b)
    row.update(
        ours_runs=a,
        raw_runs=b,
        ours_s=o,
        raw_s=d,
        ours_its=args.steps / o,
        raw_its=args.steps / d,
        ratio_time=o / d,
        ratio_best=min(a) / min(b),
        ratio_paired=_median([x / y for x, y in zip(a, b, strict=True)]),
        ours_vram_mib=max(va, default=float("nan")),
        raw_vram_mib=max(vb, default=float("nan")),
    )
    if compile_note:
        row["ours_compile_info"] = compile_note[0][-300:]
    return row


def print_row(row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"{row['family']:5} {row['size']:5} b{row['batch']} {row['mode']:8}  not available: {row['error']}")
        return
    print(
        f"{row['family']:5} {row['size']:5} b{row['batch']} {row['mode']:8}"
        f"  ours {row['ours_its']:7.2f} it/s ({row['ours_s']:6.2f}s)  raw {row['raw_its']:7.2f} it/s"
        f" ({row['raw_s']:6.2f}s)  ours/raw time {row['ratio_time']:.3f}x (best runs {row['ratio_best']:.3f}x,"
        f" median of pairs {row['ratio_paired']:.3f}x)"
        f"  it/s {1 / row['ratio_time']:.3f}x"
        f"  first call ours {row['ours_first_s']:.1f}s raw {row['raw_first_s']:.1f}s"
        + (
            f"  VRAM peak ours {row['ours_vram_mib']:.0f} MiB raw {row['raw_vram_mib']:.0f} MiB"
            if row["ours_vram_mib"] == row["ours_vram_mib"]
            else ""
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_grad_enabled(False)
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dt = args.dtype if args.dtype != "auto" else ("fp16" if cuda else "fp32")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dt]
    if args.smoke:
        args.steps, args.repeats = min(args.steps, 2), 1
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[str, Path] = {}
        for family in args.families:
            if args.smoke:
                from tests.fixtures.ldm_checkpoints import write_checkpoint

                paths[family] = Path(tmp) / f"{family}-tiny.safetensors"
                write_checkpoint(paths[family], family, "tiny", dtype=torch.float16)
            else:
                from bench.bench_load import ensure_checkpoint

                paths[family] = ensure_checkpoint(family, "fp16")
        print(
            f"txt2img ours vs raw diffusers: {'tiny (smoke)' if args.smoke else 'full-size'} random weights, "
            f"{dt} on {torch.cuda.get_device_name(0) if cuda else f'CPU ({os.cpu_count()} cores)'}, "
            f"{args.steps} steps Euler, CFG 7, {args.repeats} repeats, torch {torch.__version__}",
            flush=True,
        )
        for family in args.families:
            size = args.size or (64 if args.smoke else default_size(family, cuda))
            for batch in args.batches:
                for mode in args.modes:
                    try:
                        row = run_cell(family, paths[family], batch, mode, size, args, device, dtype)
                    except Exception as exc:  # a cell that cannot run says so; the others still run
                        row = {"family": family, "size": size, "batch": batch, "mode": mode, "error": repr(exc)[:400]}
                    rows.append(row)
                    print_row(row)
                    if cuda:
                        torch.cuda.empty_cache()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
