"""LoRA training step time: our hook LoRA + diffusion loss against a plain diffusers + peft loop.

    venv/bin/python bench/bench_train_lora.py [--device cpu|cuda] [--full-size] [--rank 16]
        [--resolution 256] [--batch 1] [--steps 10] [--rounds 3] [--precision no|fp16|bf16]
        [--checkpointing] [--threads N]

One process, one SD 1.5-layout UNet (the tiny fixture by default; `--full-size`: the real SD 1.5
architecture with random weights, `bench/out/sd1-full-fp16.safetensors` as
`bench/write_full_checkpoints.py` writes it, written here once when missing), one batch of
latents / noise / timesteps / text conditioning per step, shared by both:

- baseline: a deep copy of the UNet with `unet.add_adapter(peft.LoraConfig(...))` on the same
  target layers (rank, alpha, zero-initialised up), torch AdamW over the adapter weights, and the
  epsilon loss written out inline (add noise, UNet, MSE);
- ours: `LoraNetwork` (forward hooks, UNet part only) on the original UNet, the same AdamW, and
  `TrainingView.loss` (the trainer's loss).

The two alternate step by step for `--steps` × `--rounds` timed steps each (after warm-up
steps), so drift in machine load hits both; the median (and minimum) step time of each is printed
with the ratio ours / baseline (target: within 5 %), it/s, and peak memory: on CUDA each loop's
peak allocated during its steps, and the most a step of it allocated above what was resident
before it (activations, gradients, optimizer state); on the CPU only the process's RSS high-water
mark (both loops share the process). The text encoders are frozen and the conditioning
precomputed (what differs between the two is the LoRA mechanics and the loss code).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

OUT = ROOT / "bench" / "out"


def _checkpoint(full: bool) -> Path:
    from tests.fixtures import ldm_checkpoints as lc

    if full:
        path = OUT / "sd1-full-fp16.safetensors"
        if not path.is_file():
            print(f"writing {path} (once) ...", flush=True)
            OUT.mkdir(parents=True, exist_ok=True)
            lc.write_checkpoint(path, "sd1", "full", dtype=torch.float16, seed=0)
        return path
    return lc.write_checkpoint(Path(tempfile.mkdtemp(prefix="bench-train-lora-")) / "sd1-tiny.safetensors", "sd1")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Method:
    """One training loop; `step(i)` runs optimizer step i on the shared batch i."""

    name = ""

    def step(self, i: int) -> float:
        raise NotImplementedError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-size", action="store_true", help="the real SD 1.5 UNet (random weights)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=None, help="default: rank / 2")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: 512 full-size, 256 tiny)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", choices=("no", "fp16", "bf16"), default=None, help="default: fp16 on cuda")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in both")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from peft import LoraConfig

    from modules.engine.training.diffusion import TrainingView
    from modules.engine.training.lora_network import LoraNetwork
    from modules.models.loader import Placement, load_single_file

    device = torch.device(args.device)
    precision = args.precision or ("fp16" if device.type == "cuda" else "no")
    weight_dtype = torch.float16 if device.type == "cuda" else torch.float32
    resolution = args.resolution or (512 if args.full_size else 256)
    alpha = args.alpha if args.alpha is not None else args.rank / 2
    total = args.warmup + args.steps * args.rounds

    started = time.perf_counter()
    path = _checkpoint(args.full_size)
    placement = Placement(device=device, dtype=weight_dtype, vae_dtype=weight_dtype, text_encoder_dtype=weight_dtype)
    model = load_single_file(path, placement)
    unet: Any = model.unet
    params_m = sum(p.numel() for p in unet.parameters()) / 1e6
    print(
        f"model: {'SD 1.5 full size' if args.full_size else 'tiny SD1'} UNet ({params_m:.0f} M params, {weight_dtype}) "
        f"on {device}, {resolution}x{resolution} px, batch {args.batch}, rank {args.rank} alpha {alpha:g}, "
        f"precision {precision}, checkpointing {'on' if args.checkpointing else 'off'}; "
        f"loaded in {time.perf_counter() - started:.1f} s",
        flush=True,
    )

    view = TrainingView(model)
    # the shared data: one batch per step
    gen = torch.Generator().manual_seed(0)
    side = resolution // 8
    width = int(unet.config.cross_attention_dim)
    latents = [torch.randn(args.batch, 4, side, side, generator=gen).to(device) for _ in range(total)]
    noises = [torch.randn(args.batch, 4, side, side, generator=gen).to(device) for _ in range(total)]
    timesteps = [torch.randint(0, 1000, (args.batch,), generator=gen).to(device) for _ in range(total)]
    with torch.no_grad():
        cond = view.encode_text(["a photo of a red cube on a table"] * args.batch, grad=False)
    assert cond.hidden.shape[-1] == width
    alphas = view.schedule.alphas_cumprod.to(device)

    # -- ours ------------------------------------------------------------------------------
    network = LoraNetwork(model, rank=args.rank, alpha=alpha, train_text_encoder=False, seed=0)
    targets = [t.name for t in network.targets.values()]
    ours_params = [p.requires_grad_(True) for p in network.parameters()]
    ours_opt = torch.optim.AdamW(ours_params, lr=1e-4)

    class Ours(Method):
        name = "ours (hook LoRA + diffusion.py loss)"

        def step(self, i: int) -> float:
            with _autocast(device, precision):
                loss = view.loss(latents[i], cond, timesteps[i], noises[i]).mean()
            loss.backward()
            ours_opt.step()
            ours_opt.zero_grad(set_to_none=True)
            return float(loss.detach())

    # -- the diffusers + peft baseline ------------------------------------------------------
    base_unet: Any = copy.deepcopy(unet)
    assert isinstance(base_unet, UNet2DConditionModel)
    base_unet.add_adapter(
        LoraConfig(r=args.rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, init_lora_weights=True)
    )
    base_params = [p for p in base_unet.parameters() if p.requires_grad]
    for p in base_params:  # trainable adapter weights in fp32, as ours
        p.data = p.data.float()
    base_opt = torch.optim.AdamW(base_params, lr=1e-4)
    peft_layers = sum(1 for n, _ in base_unet.named_modules() if n.endswith(".lora_A"))
    ours_m = sum(p.numel() for p in ours_params) / 1e6
    base_m = sum(p.numel() for p in base_params) / 1e6
    print(
        f"targets: {len(targets)} UNet layers; trainable params ours {ours_m:.2f} M, "
        f"peft {base_m:.2f} M ({peft_layers} peft LoRA layers); torch threads {torch.get_num_threads()}",
        flush=True,
    )
    hidden = cond.hidden.to(weight_dtype)

    class Baseline(Method):
        name = "baseline (diffusers + peft)"

        def step(self, i: int) -> float:
            x0, noise, t = latents[i], noises[i], timesteps[i]
            ac = alphas[t].view(-1, 1, 1, 1)
            noisy = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
            with _autocast(device, precision):
                pred = base_unet(noisy.to(weight_dtype), t, encoder_hidden_states=hidden).sample
                loss = F.mse_loss(pred.float(), noise.float())
            loss.backward()
            base_opt.step()
            base_opt.zero_grad(set_to_none=True)
            return float(loss.detach())

    if args.checkpointing:
        unet.enable_gradient_checkpointing()
        base_unet.enable_gradient_checkpointing()
    unet.train()
    base_unet.train()

    methods: list[Method] = [Baseline(), Ours()]
    times: dict[str, list[float]] = {m.name: [] for m in methods}
    peaks: dict[str, str] = {}
    peaks_cuda: dict[str, tuple[int, int]] = {}
    network.attach()
    try:
        for method in methods:  # warm-up (kernel selection, allocator)
            for i in range(args.warmup):
                method.step(i)
        _sync(device)
        # alternate step by step (A B B A A B ...) so drift in machine load hits both alike
        for k in range(args.steps * args.rounds):
            i = args.warmup + k
            for method in methods if k % 2 == 0 else methods[::-1]:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    before = torch.cuda.memory_allocated(device)
                _sync(device)
                t0 = time.perf_counter()
                method.step(i)
                _sync(device)
                times[method.name].append(time.perf_counter() - t0)
                if device.type == "cuda":
                    peak = torch.cuda.max_memory_allocated(device)
                    old_peak, old_extra = peaks_cuda.get(method.name, (0, 0))
                    peaks_cuda[method.name] = (max(old_peak, peak), max(old_extra, peak - before))
            if k == args.steps - 1 and device.type != "cuda":
                for method in methods:
                    peaks[method.name] = f"RSS high-water {_rss_mb():.0f} MiB (the process, both loops)"
        for name, (peak, extra) in peaks_cuda.items():
            peaks[name] = f"peak {peak / 2**20:.0f} MiB allocated, {extra / 2**20:.0f} MiB above the resident"
    finally:
        network.detach()

    medians = {name: statistics.median(values) for name, values in times.items()}
    for method in methods:
        median = medians[method.name]
        best = min(times[method.name])
        print(
            f"{method.name:40s} median {median * 1000:8.1f} ms/step (min {best * 1000:.1f}), {1 / median:6.2f} it/s; "
            f"{peaks[method.name]}",
            flush=True,
        )
    ratio = medians[Ours.name] / medians[Baseline.name]
    best_ratio = min(times[Ours.name]) / min(times[Baseline.name])
    paired = statistics.median(a / b for a, b in zip(times[Ours.name], times[Baseline.name], strict=True))
    verdict = "within" if ratio <= 1.05 else "OUTSIDE"
    print(
        f"ratio ours / baseline: {ratio:.3f} of medians ({verdict} the 5 % target); {best_ratio:.3f} of minima; "
        f"{paired:.3f} median of per-step pairs",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
