"""Switch times: checkpoint switch from disk and from the RAM cache, and LoRA switch, with ratios
against baselines, in one process and one command.

    venv/bin/python bench/bench_switch.py [--families sd1] [--repeats 3] [--rank 64]
    python3 bench/bench_switch.py --families sd1 sdxl           # on a GPU box (weights fp16 on CUDA)
    venv/bin/python bench/bench_switch.py --smoke                # tiny random models, seconds

Per family, two different full-size random checkpoints (bench/out, seed 0 and seed 2; written when
missing) and two random kohya LoRAs (bench_lora's writer):
- disk switch: our manager with the RAM cache off switching A -> B (read + build + move to the
  device) vs diffusers `from_single_file(B, config=<local folder>)` + `.to(device)`; alternated,
  medians; both read the same page-cached file.
- RAM switch: our manager with the RAM cache on switching between A and B vs a fresh load (our own
  disk switch above): the ratio says what the cache saves.
- LoRA switch between two requests: ours through `ModelManager.lease(ModelSpec(patches=...))`
  (apply A at 0.8, swap to B, remove) vs diffusers/peft `pipe.load_lora_weights` + `fuse_lora`
  (swap = `unfuse_lora` + `unload_lora_weights` + load + fuse; remove = unfuse + unload) on the
  same modules. When diffusers cannot load the file offline (or peft is missing) the baseline says
  "not available" and why.
"""

from __future__ import annotations

import argparse
import gc
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["sd1"], choices=("sd1", "sdxl"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--smoke", action="store_true", help="tiny random models, 1 repeat")
    return parser


def _timed(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


def bench_family(family: str, paths: list[Path], loras: list[Path] | None, args: argparse.Namespace, tmp: Path) -> None:
    import torch

    from bench.bench_load import _config_dir, registry_over
    from modules.models.loader import Placement
    from modules.models.manager import ModelManager

    cuda = args.cuda
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dtype = torch.float16 if cuda else torch.float32
    placement = Placement(device=device, dtype=dtype, vae_dtype=dtype, text_encoder_dtype=dtype)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    a_path, b_path = paths
    registry = registry_over(tmp, a_path, b_path)
    registry.hashing = False
    print(f"\n{family}: {a_path.name} <-> {b_path.name} ({b_path.stat().st_size / 2**30:.2f} GiB), on {device}")

    # disk switch: ours (cache off) vs diffusers from_single_file
    import diffusers

    config_dir = _config_dir(b_path, tmp)
    cls = diffusers.StableDiffusionXLPipeline if "sdxl" in family else diffusers.StableDiffusionPipeline
    extra: dict[str, Any] = (
        {}
        if "sdxl" in family
        else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    )
    cold = ModelManager(registry, placement, cache_bytes=0, background_hashing=False)
    ours_disk, raw_disk = [], []
    for _ in range(args.repeats):
        cold.load(a_path.name)
        gc.collect()
        ours_disk.append(_timed(lambda: cold.load(b_path.name), sync))

        def theirs() -> None:
            pipe = cls.from_single_file(
                str(b_path), config=str(config_dir), local_files_only=True, torch_dtype=dtype, **extra
            )
            pipe.to(device)

        cold.unload()
        gc.collect()
        raw_disk.append(_timed(theirs, sync))
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    cold.unload()
    o, d = statistics.median(ours_disk), statistics.median(raw_disk)
    print(f"  disk switch  ours {o:7.3f}s  diffusers from_single_file+to {d:7.3f}s  ratio ours/raw {o / d:.2f}x")

    # RAM switch vs a fresh load
    warm = ModelManager(registry, placement, cache_bytes=1 << 42, background_hashing=False)
    warm.load(a_path.name)
    warm.load(b_path.name)
    ram = []
    for i in range(max(4, 2 * args.repeats)):
        name = (a_path if i % 2 == 0 else b_path).name
        ram.append(_timed(lambda name=name: warm.load(name), sync))  # type: ignore[misc]
    r = statistics.median(ram)
    print(f"  RAM switch   ours {r * 1000:7.1f}ms  fresh load (ours, disk) {o:7.3f}s  ratio {r / o:.4f}x")

    # LoRA switch
    if loras is None:
        warm.clear_cache()
        warm.unload()
        return
    from bench.bench_lora import write_lora
    from modules.models.lora_formats import read_network
    from modules.models.lora_patch import NetworkPatch
    from modules.models.spec import ModelSpec

    warm.load(a_path.name)
    model = warm.active.model  # type: ignore[union-attr]
    for seed, path in enumerate(loras, start=1):
        if not path.exists():
            write_lora(path, model, args.rank, seed)
    nets = [read_network(p) for p in loras]

    def lease(*patches: NetworkPatch) -> None:
        with warm.lease(ModelSpec(a_path.name, patches=patches)):
            pass

    def patch(i: int) -> NetworkPatch:
        return NetworkPatch(
            f"lora:{loras[i].stem}:te=0.8:unet=0.8:dyn=None", nets[i], te_multiplier=0.8, unet_multiplier=0.8
        )

    ours_lora: dict[str, list[float]] = {"apply": [], "swap": [], "remove": []}
    for _ in range(args.repeats):
        ours_lora["apply"].append(_timed(lambda: lease(patch(0)), sync))
        ours_lora["swap"].append(_timed(lambda: lease(patch(1)), sync))
        ours_lora["remove"].append(_timed(lambda: lease(), sync))
    raw_lora: dict[str, list[float]] = {"apply": [], "swap": [], "remove": []}
    why = ""
    try:
        if "sdxl" in family:
            pipe: Any = diffusers.StableDiffusionXLPipeline(
                vae=model.vae,
                text_encoder=model.text_encoders[0],
                text_encoder_2=model.text_encoders[1],
                tokenizer=model.tokenizers[0],
                tokenizer_2=model.tokenizers[1],
                unet=model.unet,
                scheduler=diffusers.EulerDiscreteScheduler.from_config(model.scheduler_config),
            )
        else:
            pipe = diffusers.StableDiffusionPipeline(
                vae=model.vae,
                text_encoder=model.text_encoders[0],
                tokenizer=model.tokenizers[0],
                unet=model.unet,
                scheduler=diffusers.EulerDiscreteScheduler.from_config(model.scheduler_config),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )

        def load_fuse(i: int) -> None:
            pipe.load_lora_weights(str(loras[i].parent), weight_name=loras[i].name, adapter_name=f"l{i}")
            pipe.fuse_lora(lora_scale=0.8)

        def unfuse() -> None:
            pipe.unfuse_lora()
            pipe.unload_lora_weights()

        for _ in range(args.repeats):
            raw_lora["apply"].append(_timed(lambda: load_fuse(0), sync))
            raw_lora["swap"].append(_timed(lambda: (unfuse(), load_fuse(1)), sync))
            raw_lora["remove"].append(_timed(unfuse, sync))
    except Exception as exc:  # the baseline cannot run here: say so, keep ours
        why = repr(exc)[:300]
    print(f"  LoRA rank {args.rank}, {loras[0].stat().st_size / 2**20:.0f} MiB each (file read once, cached):")
    for key, xs in ours_lora.items():
        ours_s = statistics.median(xs)
        if raw_lora[key] and not why:
            raw_s = statistics.median(raw_lora[key])
            print(f"    {key:7} ours {ours_s:7.3f}s  diffusers load+fuse {raw_s:7.3f}s  ratio {ours_s / raw_s:.2f}x")
        else:
            print(f"    {key:7} ours {ours_s:7.3f}s  diffusers baseline not available: {why or 'no runs'}")
    warm.clear_cache()
    warm.unload()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_grad_enabled(False)
    args.cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if args.smoke:
        args.repeats = 1
    print(f"switch benchmark, {args.repeats} repeats, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for family in args.families:
            if args.smoke:
                from tests.fixtures.ldm_checkpoints import write_checkpoint

                paths = [tmp / f"{family}-tiny-s{s}.safetensors" for s in (0, 2)]
                for s, p in zip((0, 2), paths, strict=True):
                    write_checkpoint(p, family, "tiny", dtype=torch.float16, seed=s)
                loras = [tmp / f"lora-{family}-tiny-s{s}.safetensors" for s in (1, 2)]
            else:
                from bench.bench_load import OUT, ensure_checkpoint

                paths = [ensure_checkpoint(family, "fp16"), ensure_checkpoint(f"{family}:2", "fp16")]
                loras = [OUT / f"lora-{family}-r{args.rank}-s{s}.safetensors" for s in (1, 2)]
            fam_tmp = tmp / family
            fam_tmp.mkdir()
            bench_family(family, paths, loras, args, fam_tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
