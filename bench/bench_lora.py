"""LoRA cost on a full-size checkpoint: apply, unchanged, change weight, swap, remove, per-step.

    venv/bin/python bench/bench_lora.py [--family sd1|sdxl] [--rank 128] [--size 256] [--steps 3]

Writes (once, into bench/out) two random full-size-shaped kohya LoRAs of the given rank over every
layer kohya's trainer targets (the UNet's attention / feed-forward / proj layers and the text
encoders' attention and MLP layers), loads the full-size random checkpoint from bench/out through
the real model manager, and times, through `ModelManager.lease(ModelSpec(patches=...))`:

- read     parsing the LoRA file (once; later uses hit the RAM cache)
- apply    the first LoRA at 0.8 (no LoRA in force before)
- same     the same set again (must be ~0: nothing is recomputed)
- weight   the same LoRA at 0.5
- swap     the second LoRA instead of the first
- swap back  the first one again
- remove   back to no LoRA (pristine weights put back)

The baseline is A1111's way of applying a set: every targeted weight restored from its backup
and `W + (up @ down) * scale * multiplier` recomputed with the delta materialised, done on each
generation; it runs in the same process on the same model and the ratios are ours / baseline.
Then the UNet step time at `--size` px with the LoRA in force vs none (merged weights: the ratio
should be ~1.0).
"""

from __future__ import annotations

import argparse
import gc
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


def _targets(model: Any) -> list[tuple[str, str, Any]]:
    """(kohya module key, namespaced parameter name, module) for every layer kohya trains."""
    import torch

    out: list[tuple[str, str, Any]] = []
    for name, module in model.unet.named_modules():
        if ".transformer_blocks." not in f".{name}." and not name.endswith(("proj_in", "proj_out")):
            continue
        pointwise = isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1)
        if (isinstance(module, torch.nn.Linear) or pointwise) and ".attentions." in name:
            out.append(("lora_unet_" + name.replace(".", "_"), f"unet.{name}.weight", module))
    for index, encoder in enumerate(model.text_encoders):
        prefix = "lora_te_" if len(model.text_encoders) == 1 else f"lora_te{index + 1}_"
        space = "text_encoder" if index == 0 else f"text_encoder_{index + 1}"
        for name, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and (".self_attn." in name or ".mlp." in name):
                out.append((prefix + name.replace(".", "_"), f"{space}.{name}.weight", module))
    return out


def write_lora(path: Path, model: Any, rank: int, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for key, _param, module in _targets(model):
        weight = module.weight
        out_dim, in_dim = weight.shape[0], weight.shape[1]
        r = min(rank, out_dim, in_dim)
        down = torch.randn(r, in_dim, generator=gen) * (1.0 / in_dim**0.5)
        up = torch.randn(out_dim, r, generator=gen) * 0.01
        if weight.ndim == 4:
            down, up = down[:, :, None, None], up[:, :, None, None]
        tensors[f"{key}.lora_down.weight"] = down.to(torch.float16).contiguous()
        tensors[f"{key}.lora_up.weight"] = up.to(torch.float16).contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(r // 2), dtype=torch.float16)
    metadata = {"ss_network_dim": str(rank), "ss_network_alpha": str(rank // 2), "ss_output_name": path.stem}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


class A1111Style:
    """The baseline: restore every targeted weight from its backup, then add the materialised
    `up @ down * scale * multiplier` (what A1111 does for a changed set, and Forge on each run)."""

    def __init__(self, model: Any, targets: list[tuple[str, str, Any]]) -> None:
        self.targets = targets
        self.backup = {key: module.weight.detach().to("cpu", copy=True) for key, _p, module in targets}

    def apply(self, weights: Any, multiplier: float) -> None:
        import torch

        with torch.no_grad():
            for key, _param, module in self.targets:
                w = module.weight
                w.copy_(self.backup[key])
                parts = weights.modules.get(key)
                if parts is None:
                    continue
                up = parts["lora_up.weight"].float().flatten(1)
                down = parts["lora_down.weight"].float().flatten(1)
                scale = float(parts["alpha"]) / down.shape[0] if "alpha" in parts else 1.0
                delta = (up @ down).reshape(w.shape) * (scale * multiplier)
                w.copy_((w.float() + delta).to(w.dtype))

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for key, _param, module in self.targets:
                module.weight.copy_(self.backup[key])


def _time(fn: Any, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _baseline(base: A1111Style, a: Any, b: Any) -> dict[str, float]:
    return {
        "apply": _time(lambda: base.apply(a, 0.8)),
        "same": _time(lambda: base.apply(a, 0.8)),  # A1111 skips an unchanged set too; Forge redid it
        "weight": _time(lambda: base.apply(a, 0.5)),
        "swap": _time(lambda: base.apply(b, 0.5)),
        "swap back": _time(lambda: base.apply(a, 0.8)),
        "remove": _time(base.restore),
    }


def _step_time(model: Any, size: int, steps: int) -> float:
    import torch

    unet = model.unet
    latent = torch.randn(2, 4, size // 8, size // 8, dtype=unet.dtype, device=model.device)
    width = model.text_encoders[0].config.hidden_size
    if model.family.is_sdxl:
        width = sum(e.config.hidden_size for e in model.text_encoders)
    context = torch.randn(2, 77, width, dtype=unet.dtype, device=model.device)
    kwargs: dict[str, Any] = {}
    if model.family.is_sdxl:
        pooled = model.text_encoders[-1].config.projection_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, pooled, dtype=unet.dtype, device=model.device),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=unet.dtype, device=model.device),
        }
    t = torch.tensor([500.0, 500.0], device=model.device)
    times = []
    with torch.no_grad():
        unet(latent, t, encoder_hidden_states=context, **kwargs)  # warm-up
        for _ in range(steps):
            started = time.perf_counter()
            unet(latent, t, encoder_hidden_states=context, **kwargs)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("sd1", "sdxl"), default="sd1")
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--size", type=int, default=256, help="image size for the per-step timing")
    parser.add_argument("--steps", type=int, default=3, help="UNet steps timed per case and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of none / LoRA in force, alternated")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the baseline (it keeps a full copy of every targeted weight)"
    )
    args = parser.parse_args()

    import torch

    from bench.bench_load import ensure_checkpoint, registry_over
    from modules.models.loader import Placement
    from modules.models.lora_formats import read_network
    from modules.models.lora_patch import NetworkPatch
    from modules.models.manager import ModelManager
    from modules.models.memory import MemoryBudget
    from modules.models.spec import ModelSpec

    torch.set_grad_enabled(False)
    cuda = torch.cuda.is_available()
    path = ensure_checkpoint(args.family, "fp16")
    with tempfile.TemporaryDirectory() as tmp:
        if cuda:
            dev = torch.device("cuda", 0)
            placement = Placement(
                device=dev, dtype=torch.float16, vae_dtype=torch.float16, text_encoder_dtype=torch.float16
            )
        else:
            placement = Placement()
        budget = MemoryBudget(4 << 30)  # the app's default sd_checkpoint_cache_bytes
        models = ModelManager(registry_over(Path(tmp), path), placement, budget=budget, background_hashing=False)
        models.load(path.name)
        model = models.active.model  # type: ignore[union-attr]
        dtype = next(model.unet.parameters()).dtype
        print(f"{args.family} full size, weights {dtype} on {model.device}, LoRA rank {args.rank}")
        files = []
        for seed in (1, 2):
            lora_path = OUT / f"lora-{args.family}-r{args.rank}-s{seed}.safetensors"
            if not lora_path.exists():
                print(f"writing {lora_path.name} ...", flush=True)
                write_lora(lora_path, model, args.rank, seed)
            files.append(lora_path)
        targets = _targets(model)
        print(f"{len(targets)} layers targeted, file {files[0].stat().st_size / 2**20:.0f} MiB")

        read_s = _time(lambda: read_network(files[0]))
        a, b = read_network(files[0]), read_network(files[1])

        def patch(weights: Any, name: str, m: float) -> NetworkPatch:
            return NetworkPatch(f"lora:{name}:te={m}:unet={m}:dyn=None", weights, te_multiplier=m, unet_multiplier=m)

        def lease(*patches: NetworkPatch) -> None:
            with models.lease(ModelSpec(path.name, patches=patches)):
                pass
            if cuda:
                torch.cuda.synchronize()

        ours = {
            "apply": _time(lambda: lease(patch(a, "a", 0.8))),
            "same": _time(lambda: lease(patch(a, "a", 0.8))),
            "weight": _time(lambda: lease(patch(a, "a", 0.5))),
            "swap": _time(lambda: lease(patch(b, "b", 0.5))),
            "swap back": _time(lambda: lease(patch(a, "a", 0.8))),
            "remove": _time(lambda: lease()),
        }
        stats = models.patcher.stats if models.patcher is not None else None
        gc.collect()

        nan = float("nan")
        baseline = dict.fromkeys(ours, nan) if args.no_baseline else _baseline(A1111Style(model, targets), a, b)
        gc.collect()

        print(f"\nread LoRA file: {read_s:.3f} s (once; then cached in RAM)")
        print(f"{'':10} {'ours s':>8} {'baseline s':>11} {'ratio':>7}")
        for key in ours:
            ratio = ours[key] / baseline[key] if baseline[key] > 0 else nan
            print(f"{key:10} {ours[key]:8.3f} {baseline[key]:11.3f} {ratio:7.2f}")
        if stats is not None:
            print(f"patcher: applied {stats.applied}, skipped {stats.skipped}, restored {stats.restored_tensors}")

        # alternate the two cases (this VM's timings drift): the best of each
        lora = (patch(a, "a", 0.8),)
        none_times, with_times = [], []
        for _ in range(args.rounds):
            lease()
            none_times.append(_step_time(model, args.size, args.steps))
            lease(*lora)
            with_times.append(_step_time(model, args.size, args.steps))
        none_s, with_s = min(none_times), min(with_times)
        print(
            f"\nUNet step at {args.size}px, batch 2: none {none_s:.3f} s, LoRA in force {with_s:.3f} s, "
            f"ratio {with_s / none_s:.3f}"
        )


if __name__ == "__main__":
    main()
