"""The Checkpoint Merger from the command line, for scripts and cron jobs:

    python -m modules.merge PRIMARY SECONDARY [TERTIARY] --method weighted_sum|add_difference
        --alpha M --out OUT.safetensors [--block-weights "w0,...,w24"] [--base-alpha B]
        [--fp16] [--bake-vae VAE] [--bake-lora NAME:W ...] [--discard REGEX] ...

Checkpoints, the VAE and LoRAs are files given as paths (a LoRA also as a name in ``--lora-dir``).
It does what the Checkpoint Merger tab does with the same recipe (the same code: the file is
byte for byte the tab's when the inputs sit at the top of the checkpoint folder and the tab's
Custom Name is OUT's stem), streamed key by key; ``--out`` is written atomically and never over an
existing file. A server sees the result in its checkpoint list after a refresh when OUT is in its
checkpoint folder. Exit status: 0 done, 1 failed, 2 bad arguments or refused input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from modules.core.errors import SdWebuiError
from modules.core.hashes import HashCache
from modules.core.jobs import ADD_DIFFERENCE, CONFIG_SOURCES, NO_INTERPOLATION, NO_VAE, WEIGHTED_SUM, MergeRequest
from modules.models.merge import merge_checkpoints
from modules.models.registry import ModelRegistry

METHODS = {"weighted_sum": WEIGHTED_SUM, "add_difference": ADD_DIFFERENCE, "no_interpolation": NO_INTERPOLATION}
CONFIG_FROM = {"auto": CONFIG_SOURCES[0], "B": CONFIG_SOURCES[1], "C": CONFIG_SOURCES[2], "none": CONFIG_SOURCES[3]}
FORMATS = {".safetensors": "safetensors", ".ckpt": "ckpt"}
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modules.merge",
        description="Merge Stable Diffusion checkpoints as the Checkpoint Merger tab does.",
    )
    parser.add_argument("models", nargs="+", type=Path, metavar="MODEL", help="PRIMARY [SECONDARY [TERTIARY]]")
    parser.add_argument("--method", choices=list(METHODS), default="weighted_sum")
    parser.add_argument("--alpha", "-M", type=float, default=0.3, help="the multiplier M (default 0.3)")
    parser.add_argument("--out", type=Path, required=True, help="the new checkpoint (.safetensors or .ckpt)")
    parser.add_argument(
        "--block-weights",
        default="",
        help="per-block alphas: 25 values IN00-IN11,M00,OUT00-OUT11 (19 for SDXL), sparse 'IN03:0.6, M00:0.1', "
        "or a preset name (GRAD_V, WRAP08, ...); keys outside the blocks take --base-alpha",
    )
    parser.add_argument("--base-alpha", type=float, default=None, help="with block weights (default: --alpha)")
    parser.add_argument("--fp16", action="store_true", help="save as float16")
    parser.add_argument("--bake-vae", type=Path, default=None, metavar="VAE", help="a VAE file to bake in")
    parser.add_argument(
        "--bake-lora",
        action="append",
        default=[],
        metavar="NAME:W",
        help="bake a LoRA in at weight W (a path, or a name in --lora-dir); repeatable",
    )
    parser.add_argument("--lora-dir", type=Path, default=Path("models/Lora"), help="where LoRA names are looked up")
    parser.add_argument("--discard", default="", metavar="REGEX", help="discard weights whose name matches")
    parser.add_argument("--config-from", choices=list(CONFIG_FROM), default="auto", help="copy the .yaml of A/B/C")
    parser.add_argument("--no-metadata", action="store_true", help="save no metadata")
    parser.add_argument("--no-recipe", action="store_true", help="no sd_merge_recipe / sd_merge_models")
    parser.add_argument("--no-copy-metadata", action="store_true", help="do not copy the inputs' metadata")
    parser.add_argument("--metadata-json", default="{}", help="extra metadata, a JSON object")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    return parser


def parse_lora(spec: str, lora_dir: Path) -> tuple[str, Path, float]:
    """``NAME:W`` (W defaults to 1) -> (name as recorded, file, weight)."""
    name, sep, weight_text = spec.rpartition(":")
    if not sep or not name:
        name, weight_text = spec, "1"
    try:
        weight = float(weight_text)
    except ValueError:
        raise SystemExit(f"--bake-lora {spec!r}: the weight {weight_text!r} is not a number") from None
    path = Path(name)
    if not path.is_file():
        found = [lora_dir / f"{name}{suffix}" for suffix in LORA_SUFFIXES if (lora_dir / f"{name}{suffix}").is_file()]
        if not found:
            raise SystemExit(f"--bake-lora {spec!r}: no such file, and no {name}.safetensors in {lora_dir}")
        path = found[0]
    stem = path.name
    for suffix in LORA_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem, path.resolve(), weight


def request_from_args(args: argparse.Namespace) -> MergeRequest:
    method = METHODS[args.method]
    needed = {NO_INTERPOLATION: 1, WEIGHTED_SUM: 2, ADD_DIFFERENCE: 3}[method]
    if len(args.models) != needed:
        raise SystemExit(f"--method {args.method} takes {needed} model(s), got {len(args.models)}")
    names = [path.name for path in args.models]
    suffix = args.out.suffix.lower()
    if suffix not in FORMATS:
        raise SystemExit(f"--out must end in .safetensors or .ckpt, not {args.out.name!r}")
    loras = [parse_lora(spec, args.lora_dir) for spec in args.bake_lora]
    return MergeRequest(
        primary_model_name=names[0],
        secondary_model_name=names[1] if needed > 1 else None,
        tertiary_model_name=names[2] if needed > 2 else None,
        interp_method=method,
        multiplier=args.alpha,
        custom_name=args.out.name[: -len(suffix)],
        checkpoint_format=FORMATS[suffix],
        save_as_half=args.fp16,
        config_source=CONFIG_FROM[args.config_from],
        bake_in_vae=args.bake_vae.name if args.bake_vae else NO_VAE,
        discard_weights=args.discard,
        save_metadata=not args.no_metadata,
        add_merge_recipe=not args.no_recipe,
        copy_metadata_fields=not args.no_copy_metadata,
        metadata_json=args.metadata_json,
        block_weights=args.block_weights,
        base_alpha=args.base_alpha,
        bake_loras=tuple((name, weight) for name, _path, weight in loras),
    )


def _progress_printer(quiet: bool) -> Callable[[int, int, str], None]:
    last = [-1]

    def progress(done: int, total: int, what: str) -> None:
        if quiet or not total:
            return
        percent = done * 100 // total
        if percent // 5 != last[0] // 5 or done == total:
            last[0] = percent
            print(f"\r{what}: {percent:3d}% ({done}/{total} tensors)", end="", file=sys.stderr, flush=True)

    return progress


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        request = request_from_args(args)
    except SystemExit as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in args.models:
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    names = [path.name for path in args.models]
    if len(set(names)) != len(names) and len({p.resolve() for p in args.models}) != len(names):
        print("error: two inputs have the same file name; the recipe names models by file name", file=sys.stderr)
        return 2
    if args.bake_vae is not None and not args.bake_vae.is_file():
        print(f"error: {args.bake_vae}: no such file", file=sys.stderr)
        return 2
    lora_files = {name: path for name, path, _w in (parse_lora(s, args.lora_dir) for s in args.bake_lora)}

    def find_lora(name: str) -> Path:
        return lora_files[name]

    with tempfile.TemporaryDirectory(prefix="sdw-merge-") as scratch:
        # the inputs as a registry of their own (names = file names, as at the top of a checkpoint folder)
        registry = ModelRegistry(
            (),
            (args.bake_vae.parent,) if args.bake_vae else (),
            HashCache(Path(scratch) / "cache.json"),
            extra_checkpoints=tuple(path.resolve() for path in args.models),
        )
        try:
            result = merge_checkpoints(
                request,
                registry,
                args.out.parent,
                progress=_progress_printer(args.quiet),
                find_lora=find_lora,
                target=args.out,
            )
        except KeyboardInterrupt:
            print("\ninterrupted: nothing was saved", file=sys.stderr)
            return 130
        except SdWebuiError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 2
    if not args.quiet:
        print(file=sys.stderr)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{result.message} ({result.tensors} tensors, {result.merged} merged, {result.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
