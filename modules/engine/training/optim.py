"""Optimizers, learning-rate schedules and gradient clipping for the LoRA trainer.

Optimizers: `AdamW` (torch's defaults, as kohya builds it), `SGD` (plain) and `AdamW8bit`
(bitsandbytes' 8-bit AdamW, used only when bitsandbytes imports AND one optimizer step on the
training device works; otherwise AdamW, with a warning that says why). Parameter groups carry
their own learning rate: the text encoders' `text_encoder_lr` and the UNet's `unet_lr`, each
falling back to `learning_rate` (kohya's rule).

Schedules (`LambdaLR` over optimizer steps, so `state_dict` / `load_state_dict` resume them):
`constant`, `constant_with_warmup`, `cosine` (half a cosine after warmup), `cosine_with_restarts`
(`num_cycles` hard restarts), `linear` (to 0) and `polynomial` (power 1 to lr_end = 1e-7), all
with a linear warmup of `warmup_steps` (diffusers' / transformers' definitions, which kohya uses).
The multiplier functions are plain objects holding numbers, so the state saves in a form
`torch.load(weights_only=True)` reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "LR_SCHEDULERS",
    "OPTIMIZERS",
    "LrMultiplier",
    "ParamGroup",
    "build_optimizer",
    "build_scheduler",
    "clip_gradients",
    "part_learning_rates",
]

OPTIMIZERS = ("AdamW", "AdamW8bit", "SGD")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial")
POLYNOMIAL_LR_END = 1e-7


@dataclass
class ParamGroup:
    name: str  # "unet" | "text_encoder"
    params: list[torch.nn.Parameter]
    lr: float


def part_learning_rates(
    learning_rate: float, unet_lr: float | None, text_encoder_lr: float | None
) -> tuple[float, float]:
    """(unet lr, text encoder lr): each part's own, else `learning_rate`."""
    return (
        learning_rate if unet_lr is None else unet_lr,
        learning_rate if text_encoder_lr is None else text_encoder_lr,
    )


def _adamw8bit(device: torch.device) -> tuple[Callable[..., torch.optim.Optimizer] | None, str]:
    """bitsandbytes' AdamW8bit when it imports and steps on `device`; else (None, why)."""
    try:
        import bitsandbytes as bnb  # type: ignore[import-not-found,unused-ignore]
    except Exception as exc:  # ImportError, or a broken native library
        return None, f"bitsandbytes is not usable ({type(exc).__name__}: {exc})"
    try:
        probe = torch.nn.Parameter(torch.ones(8192, device=device))
        optimizer = bnb.optim.AdamW8bit([probe], lr=1e-3)
        probe.grad = torch.ones_like(probe)
        optimizer.step()
        if not torch.isfinite(probe).all() or torch.equal(probe.detach(), torch.ones_like(probe)):
            return None, "bitsandbytes' AdamW8bit did not update a test parameter on this device"
    except Exception as exc:
        return None, f"bitsandbytes' AdamW8bit failed a test step on {device.type} ({type(exc).__name__}: {exc})"
    return bnb.optim.AdamW8bit, ""


def build_optimizer(
    optimizer_type: str,
    groups: Sequence[ParamGroup],
    *,
    device: torch.device,
    warn: Callable[[str], None] = lambda message: None,
) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer over the non-empty groups (each with its `lr` and a `name` entry), and the
    name of the one actually used."""
    param_groups: list[dict[str, Any]] = [
        {"params": list(g.params), "lr": float(g.lr), "name": g.name} for g in groups if g.params
    ]
    if not param_groups:
        raise ValueError("nothing to train")
    if optimizer_type not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer_type!r} (one of {', '.join(OPTIMIZERS)})")
    if optimizer_type == "AdamW8bit":
        factory, why = _adamw8bit(device)
        if factory is not None:
            return factory(param_groups), "AdamW8bit"
        warn(f"AdamW8bit is not available: {why}; training with AdamW instead")
        optimizer_type = "AdamW"
    if optimizer_type == "SGD":
        return torch.optim.SGD(param_groups, lr=param_groups[0]["lr"]), "SGD"
    return torch.optim.AdamW(param_groups, lr=param_groups[0]["lr"]), "AdamW"


class LrMultiplier:
    """The learning-rate factor at an optimizer step (picklable, numbers only)."""

    def __init__(
        self,
        kind: str,
        *,
        warmup_steps: int = 0,
        total_steps: int = 1,
        num_cycles: int = 1,
        power: float = 1.0,
        lr_end_ratio: float = 0.0,
    ) -> None:
        if kind not in LR_SCHEDULERS:
            raise ValueError(f"unknown lr scheduler {kind!r} (one of {', '.join(LR_SCHEDULERS)})")
        self.kind = kind
        self.warmup_steps = max(int(warmup_steps), 0)
        self.total_steps = max(int(total_steps), 1)
        self.num_cycles = max(int(num_cycles), 1)
        self.power = float(power)
        self.lr_end_ratio = float(lr_end_ratio)

    def __call__(self, step: int) -> float:
        kind, warmup = self.kind, self.warmup_steps
        if kind == "constant":
            return 1.0
        if step < warmup:
            return step / max(1, warmup)
        if kind == "constant_with_warmup":
            return 1.0
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        if kind == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        if kind == "cosine_with_restarts":
            if progress >= 1.0:
                return 0.0
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((self.num_cycles * progress) % 1.0))))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        # polynomial: from 1 down to lr_end / lr_init, then held there
        if step > self.total_steps:
            return self.lr_end_ratio
        return (1.0 - self.lr_end_ratio) * (1.0 - progress) ** self.power + self.lr_end_ratio


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    *,
    warmup_steps: int,
    total_steps: int,
    num_cycles: int = 1,
    power: float = 1.0,
) -> LambdaLR:
    """A `LambdaLR` with one `LrMultiplier` per parameter group (polynomial ends at 1e-7 of
    each group's own rate)."""
    lambdas = []
    for group in optimizer.param_groups:
        lr = float(group.get("initial_lr", group["lr"]))
        end_ratio = min(POLYNOMIAL_LR_END / lr, 1.0) if lr > 0 else 0.0
        lambdas.append(
            LrMultiplier(
                kind,
                warmup_steps=warmup_steps,
                total_steps=total_steps,
                num_cycles=num_cycles,
                power=power,
                lr_end_ratio=end_ratio,
            )
        )
    return LambdaLR(optimizer, lambdas)  # type: ignore[arg-type]


def clip_gradients(params: Iterable[torch.nn.Parameter], max_grad_norm: float) -> float | None:
    """Clip the total gradient norm to `max_grad_norm` (0 or less: no clipping); the norm before."""
    if max_grad_norm <= 0:
        return None
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return None
    return float(torch.nn.utils.clip_grad_norm_(with_grad, max_grad_norm))
