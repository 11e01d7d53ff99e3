"""Checkpoint load benchmark: our loader against diffusers' own `from_single_file` on the same file.

    venv/bin/python bench/bench_load.py [--families sd1 sdxl] [--dtype fp16] [--repeats 3]

Writes full-size random-weight checkpoints into bench/out/ when missing (tests/fixtures writer).
Every measurement runs in a fresh subprocess so that peak RSS belongs to that load alone; ours and
the baseline alternate so both see the same page-cache state. Prints, per family:
- cold load (process already started, torch imported; file read + build): ours vs diffusers,
  median of the repeats, and the ratio (target: ours <= 1.2x diffusers);
- warm switch from the RAM cache between two checkpoints (target: < 30 ms on CPU);
- peak RSS of each;
- RSS growth over 20 switches with the RAM cache off (every switch a real load from disk).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OUT = ROOT / "bench" / "out"
DTYPES = {"fp16": "float16", "fp32": "float32"}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def checkpoint_path(family: str, dtype: str) -> Path:
    """`sd1` -> the seed-0 file; `sd1:2` -> a second, different file of the same family."""
    name, _, seed = family.partition(":")
    suffix = f"-seed{seed}" if seed else ""
    return OUT / f"{name}{suffix}-full-{dtype}.safetensors"


def registry_over(tmp: Path, *paths: Path, hashing: bool = False) -> Any:
    """A `ModelRegistry` whose checkpoint folder (under `tmp`) holds symlinks to `paths`."""
    from modules.core.hashes import HashCache
    from modules.models.registry import ModelRegistry

    ckdir = tmp / "Stable-diffusion"
    ckdir.mkdir(exist_ok=True)
    for p in paths:
        link = ckdir / p.name
        if not link.exists():
            link.symlink_to(p)
    return ModelRegistry([ckdir], [], HashCache(tmp / "cache.json"), hashing=hashing)


def ensure_checkpoint(family: str, dtype: str) -> Path:
    path = checkpoint_path(family, dtype)
    if not path.exists():
        import torch

        from tests.fixtures.ldm_checkpoints import write_checkpoint

        name, _, seed = family.partition(":")
        print(f"writing {path.name} ...", flush=True)
        started = time.perf_counter()
        write_checkpoint(path, name, size="full", dtype=getattr(torch, DTYPES[dtype]), seed=int(seed or 0))
        print(f"  {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - started:.0f}s", flush=True)
    return path


# ------------------------------------------------------------------------------ phases (child)


def phase_ours(path: Path, dtype: str) -> dict[str, float]:
    import torch

    from modules.models.loader import Placement, load_single_file

    dt = getattr(torch, DTYPES[dtype])
    placement = Placement(dtype=dt, vae_dtype=dt, text_encoder_dtype=dt)
    started = time.perf_counter()
    model = load_single_file(path, placement)
    seconds = time.perf_counter() - started
    t = model.timings
    return {"seconds": seconds, "read": t.read, "build": t.build, "move": t.move, "peak_rss_mb": _peak_rss_mb()}


def phase_diffusers(path: Path, dtype: str, config_dir: Path) -> dict[str, float]:
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    dt = getattr(torch, DTYPES[dtype])
    is_xl = "sdxl" in path.name
    cls = StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline
    extra = {} if is_xl else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    started = time.perf_counter()
    pipe = cls.from_single_file(str(path), config=str(config_dir), local_files_only=True, torch_dtype=dt, **extra)
    seconds = time.perf_counter() - started
    del pipe
    return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def phase_switch(paths: list[Path], dtype: str, switches: int) -> dict[str, object]:
    import torch

    from modules.models.loader import Placement
    from modules.models.manager import ModelManager

    dt = getattr(torch, DTYPES[dtype])
    placement = Placement(dtype=dt, vae_dtype=dt, text_encoder_dtype=dt)
    with tempfile.TemporaryDirectory() as tmp:
        registry = registry_over(Path(tmp), *paths, hashing=True)
        names = [p.name for p in paths]

        warm = ModelManager(registry, placement, cache_bytes=1 << 40, background_hashing=False)
        warm.registry.hashing = False
        for name in names:
            warm.load(name)
        times = []
        for i in range(switches):
            started = time.perf_counter()
            warm.load(names[i % len(names)])
            times.append(time.perf_counter() - started)
        warm.clear_cache()
        warm.unload()
        del warm
        gc.collect()

        cold = ModelManager(registry, placement, cache_bytes=0)
        registry.hashing = False
        for name in names:  # warm-up: allocator pools and page cache
            cold.load(name)
        gc.collect()
        rss_start = _rss_mb()
        rss_after = []
        cold_times = []
        for i in range(switches):
            started = time.perf_counter()
            cold.load(names[i % len(names)])
            cold_times.append(time.perf_counter() - started)
            gc.collect()
            rss_after.append(_rss_mb())
    return {
        "warm_switch_ms": [t * 1000 for t in times],
        "cold_switch_s": cold_times,
        "rss_start_mb": rss_start,
        "rss_after_each_mb": rss_after,
        "peak_rss_mb": _peak_rss_mb(),
    }


# ------------------------------------------------------------------------------ driver (parent)


def _child(*args: str) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _config_dir(path: Path, tmp: Path) -> Path:
    from modules.models.architecture import architecture
    from modules.models.checkpoint_io import tensor_shapes
    from modules.models.config_folder import write_config_folder
    from modules.models.families import detect_family

    shapes = tensor_shapes(path)
    return write_config_folder(architecture(shapes, detect_family(shapes, path)), tmp / path.stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--families", nargs="+", default=["sd1", "sdxl"], help="family ids; `sd1:2` = a second sd1 file (seed 2)"
    )
    parser.add_argument("--load-dtype", choices=sorted(DTYPES), help="dtype to load into (default: the file's)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--skip-cold", action="store_true", help="only the switching measurements")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "ours":
            result: dict[str, object] = dict(phase_ours(Path(rest[0]), rest[1]))
        elif kind == "diffusers":
            result = dict(phase_diffusers(Path(rest[0]), rest[1], Path(rest[2])))
        else:
            result = phase_switch([Path(p) for p in rest[2:]], rest[0], int(rest[1]))
        print(json.dumps(result))
        return

    paths = [ensure_checkpoint(f, args.dtype) for f in args.families]
    print(f"\nload benchmark, dtype {args.dtype}, {args.repeats} repeats, CPU, {os.cpu_count()} cores\n")
    with tempfile.TemporaryDirectory() as tmp:
        for path in [] if args.skip_cold else paths:
            config_dir = _config_dir(path, Path(tmp))
            subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # same page cache for both
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(_child("ours", str(path), args.dtype))
                theirs.append(_child("diffusers", str(path), args.dtype, str(config_dir)))
            o = statistics.median(float(r["seconds"]) for r in ours)  # type: ignore[arg-type]
            d = statistics.median(float(r["seconds"]) for r in theirs)  # type: ignore[arg-type]
            parts = {k: statistics.median(float(r[k]) for r in ours) for k in ("read", "build", "move")}  # type: ignore[arg-type]
            print(f"{path.name} ({path.stat().st_size / 2**30:.2f} GiB)")
            print(f"  cold load   ours {o:6.2f}s   diffusers from_single_file {d:6.2f}s   ratio {o / d:.2f}x")
            print(
                f"              ours split: read {parts['read']:.2f}s, build {parts['build']:.2f}s,"
                f" move {parts['move']:.2f}s"
            )
            print(
                f"  peak RSS    ours {max(float(r['peak_rss_mb']) for r in ours):7.0f} MiB"  # type: ignore[arg-type]
                f"   diffusers {max(float(r['peak_rss_mb']) for r in theirs):7.0f} MiB"  # type: ignore[arg-type]
            )
    if len(paths) >= 2:
        sw = _child("switch", args.load_dtype or args.dtype, str(args.switches), *map(str, paths))
        warm = sw["warm_switch_ms"]
        cold = sw["cold_switch_s"]
        after = sw["rss_after_each_mb"]
        assert isinstance(warm, list) and isinstance(cold, list) and isinstance(after, list)
        print(f"\nswitching between {', '.join(p.name for p in paths)}, loaded as {args.load_dtype or args.dtype}")
        print(
            f"  warm switch (RAM cache) median {statistics.median(warm):.2f} ms, max {max(warm):.2f} ms"
            f" over {len(warm)} switches"
        )
        print(f"  cold switch (cache off)  median {statistics.median(cold):.2f} s over {len(cold)} switches")
        start = float(sw["rss_start_mb"])  # type: ignore[arg-type]
        print(
            f"  RSS over {len(after)} cold switches: start {start:.0f} MiB, after each min {min(after):.0f} /"
            f" max {max(after):.0f} MiB, last {after[-1]:.0f} MiB; growth first->last pair"
            f" {after[-1] - after[1]:+.0f} MiB"
        )
        print("  RSS after each cold switch (MiB): " + " ".join(f"{float(x):.0f}" for x in after))
        print(f"  peak RSS of the switch run {float(sw['peak_rss_mb']):.0f} MiB")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
