"""Optimizers, schedules and clipping for LoRA training (modules/engine/training/optim.py)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from modules.engine.training import optim
from modules.engine.training.optim import (
    LrMultiplier,
    ParamGroup,
    build_optimizer,
    build_scheduler,
    clip_gradients,
    part_learning_rates,
)


def _groups() -> list[ParamGroup]:
    return [
        ParamGroup("text_encoder", [torch.nn.Parameter(torch.ones(3))], 5e-5),
        ParamGroup("unet", [torch.nn.Parameter(torch.ones(4))], 1e-4),
    ]


def test_part_learning_rates_fall_back_to_the_learning_rate() -> None:
    assert part_learning_rates(1e-4, None, None) == (1e-4, 1e-4)
    assert part_learning_rates(1e-4, 2e-4, None) == (2e-4, 1e-4)
    assert part_learning_rates(1e-4, None, 0.0) == (1e-4, 0.0)


@pytest.mark.parametrize(("kind", "cls"), [("AdamW", torch.optim.AdamW), ("SGD", torch.optim.SGD)])
def test_optimizers_keep_per_part_rates(kind: str, cls: type) -> None:
    optimizer, name = build_optimizer(kind, _groups(), device=torch.device("cpu"))
    assert isinstance(optimizer, cls) and name == kind
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("text_encoder", 5e-5), ("unet", 1e-4)]


def test_adamw8bit_falls_back_to_adamw_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optim, "_adamw8bit", lambda device: (None, "bitsandbytes is not usable (test)"))
    warnings: list[str] = []
    optimizer, name = build_optimizer("AdamW8bit", _groups(), device=torch.device("cpu"), warn=warnings.append)
    assert isinstance(optimizer, torch.optim.AdamW) and name == "AdamW"
    assert len(warnings) == 1 and "AdamW8bit" in warnings[0] and "(test)" in warnings[0]


def test_adamw8bit_probe_reports_why_on_this_machine() -> None:
    factory, why = optim._adamw8bit(torch.device("cpu"))
    try:
        import bitsandbytes  # type: ignore[import-not-found]  # noqa: F401
    except Exception:
        assert factory is None and "bitsandbytes" in why
    else:  # pragma: no cover - depends on the machine
        assert (factory is None) == bool(why)


def test_unknown_optimizer_and_empty_groups_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("Lion", _groups(), device=torch.device("cpu"))
    with pytest.raises(ValueError, match="nothing to train"):
        build_optimizer("AdamW", [ParamGroup("unet", [], 1.0)], device=torch.device("cpu"))


def test_schedule_shapes() -> None:
    total, warmup = 100, 10
    constant = LrMultiplier("constant", warmup_steps=warmup, total_steps=total)
    assert constant(0) == 1.0 and constant(50) == 1.0  # kohya's constant ignores warmup
    with_warmup = LrMultiplier("constant_with_warmup", warmup_steps=warmup, total_steps=total)
    assert with_warmup(0) == 0.0 and with_warmup(5) == 0.5 and with_warmup(10) == 1.0 and with_warmup(99) == 1.0
    cosine = LrMultiplier("cosine", warmup_steps=warmup, total_steps=total)
    assert cosine(5) == 0.5 and cosine(10) == 1.0
    assert cosine(55) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
    restarts = LrMultiplier("cosine_with_restarts", warmup_steps=0, total_steps=100, num_cycles=2)
    assert restarts(0) == 1.0 and restarts(25) == pytest.approx(0.5) and restarts(50) == pytest.approx(1.0)
    assert restarts(100) == 0.0
    linear = LrMultiplier("linear", warmup_steps=warmup, total_steps=total)
    assert linear(10) == 1.0 and linear(55) == pytest.approx(0.5) and linear(100) == 0.0
    poly = LrMultiplier("polynomial", warmup_steps=0, total_steps=100, power=2.0, lr_end_ratio=0.1)
    assert poly(0) == 1.0 and poly(50) == pytest.approx(0.9 * 0.25 + 0.1) and poly(200) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown lr scheduler"):
        LrMultiplier("step")


def test_scheduler_resumes_from_a_weights_only_state() -> None:
    optimizer, _ = build_optimizer("AdamW", _groups(), device=torch.device("cpu"))
    scheduler = build_scheduler(optimizer, "cosine", warmup_steps=2, total_steps=10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"opt": optimizer.state_dict(), "sched": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    again, _ = build_optimizer("AdamW", _groups(), device=torch.device("cpu"))
    resumed = build_scheduler(again, "cosine", warmup_steps=2, total_steps=10)
    again.load_state_dict(state["opt"])
    resumed.load_state_dict(state["sched"])
    assert resumed.get_last_lr() == scheduler.get_last_lr()
    optimizer.step()
    scheduler.step()
    again.step()
    resumed.step()
    assert resumed.get_last_lr() == scheduler.get_last_lr()
    expected = 0.5 * (1 + math.cos(math.pi * 3 / 8))
    assert scheduler.get_last_lr()[1] == pytest.approx(1e-4 * expected)


def test_polynomial_ends_at_1e_7_of_each_groups_rate() -> None:
    optimizer, _ = build_optimizer("SGD", _groups(), device=torch.device("cpu"))
    scheduler = build_scheduler(optimizer, "polynomial", warmup_steps=0, total_steps=3)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([1e-7, 1e-7])


def test_clip_gradients() -> None:
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 3.0)
    norm = clip_gradients([p], 1.0)
    assert norm == pytest.approx(6.0)
    assert float(p.grad.norm()) == pytest.approx(1.0, rel=1e-4)
    assert clip_gradients([p], 0.0) is None
