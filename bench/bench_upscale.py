"""Tiled vs untiled model upscaling on the CPU: throughput and peak memory.

    venv/bin/python bench/bench_upscale.py [--size 256] [--blocks 16] [--feat 32] [--tiles 0,192,128,64]

Each configuration runs in its own subprocess so that peak RSS (`ru_maxrss`) is its own: the
number reported is the peak RSS during the upscale minus the RSS just before it (model loaded,
input built). The model is a random ESRGAN (RRDBNet, old layout) written to a temporary
`.safetensors` and loaded through the same registry path the app uses.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from modules.engine.upscaling import TileSettings, upscale
    from modules.models.upscalers import UpscalerRegistry

    torch.set_num_threads(args.threads)
    folder = Path(args.dir) / "ESRGAN"
    registry = UpscalerRegistry([("ESRGAN", folder)])
    model = registry.load("bench_4x")
    from PIL import Image

    image = Image.effect_noise((args.size, args.size), 64).convert("RGB")
    tiles = TileSettings(tile=args.tile, overlap=8)
    base = _rss_bytes()
    t0 = time.perf_counter()
    out = upscale(image, model, 4, tiles=tiles)
    first = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    t0 = time.perf_counter()
    upscale(image, model, 4, tiles=tiles)
    second = time.perf_counter() - t0
    best = min(first, second)
    print(json.dumps({"tile": args.tile, "seconds": best, "peak_mib": peak / 2**20, "out": list(out.size)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--feat", type=int, default=32)
    parser.add_argument("--tiles", default="0,192,128,64")
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    sys.path.insert(0, str(ROOT))
    from tests.fixtures.upscaler_models import esrgan_old_state_dict

    with tempfile.TemporaryDirectory() as tmp:
        from safetensors.torch import save_file

        folder = Path(tmp) / "ESRGAN"
        folder.mkdir()
        state = esrgan_old_state_dict(num_filters=args.feat, num_blocks=args.blocks, scale=4)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "bench_4x.safetensors"))
        print(
            f"ESRGAN RRDB {args.blocks} blocks x {args.feat} feat, {args.size}x{args.size} -> 4x, "
            f"CPU, {args.threads} threads, overlap 8"
        )
        results = []
        for tile in (int(t) for t in args.tiles.split(",")):
            cmd = [sys.executable, __file__, "--child", "--tile", str(tile), "--dir", tmp]
            cmd += ["--size", str(args.size), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(result)
        whole = results[0]
        mpix = args.size * args.size / 1e6
        print(f"{'tile':>6} {'seconds':>8} {'in Mpx/s':>9} {'peak MiB':>9} {'time x':>7} {'mem x':>6}")
        for r in results:
            print(
                f"{r['tile'] or 'whole':>6} {r['seconds']:8.2f} {mpix / r['seconds']:9.4f} {r['peak_mib']:9.1f} "
                f"{r['seconds'] / whole['seconds']:7.2f} {r['peak_mib'] / max(whole['peak_mib'], 1e-9):6.2f}"
            )


if __name__ == "__main__":
    main()
