"""Textual-inversion training with A1111's semantics (placeholder: filled in below)."""

from __future__ import annotations

import math

from modules.core.errors import UserError

_SCHEDULE_HELP = (
    'invalid learning rate schedule {text!r}: it should be a number or, for example, "0.001:100, 0.00001:1000, '
    '1e-5:10000" (0.001 until step 100, 0.00001 until 1000, 1e-5 until 10000)'
)


def parse_learn_rate(text: str, max_steps: int, current_step: int = 0) -> list[tuple[float, int]]:
    """A1111's learn-rate schedule string as (rate, until step) pairs. "rate:step" holds until that
    step (pairs that end at or before `current_step` are left out: a resumed run skips them),
    "rate:-1" or a bare rate holds until `max_steps` and ends the list, as does a step past
    `max_steps` (cut to it). Anything else is a `UserError` (also used for the gradient-clipping
    value, which takes the same syntax)."""
    rates: list[tuple[float, int]] = []
    try:
        for pair in str(text).split(","):
            if not pair.strip():
                continue
            parts = pair.split(":")
            if len(parts) > 2:
                raise ValueError(pair)
            rate = float(parts[0])
            if not math.isfinite(rate) or rate < 0:
                raise ValueError(pair)
            if len(parts) == 1:
                rates.append((rate, max_steps))
                break
            step = int(parts[1])
            if step > current_step:
                rates.append((rate, min(step, max_steps)))
                if step > max_steps:
                    break
            elif step == -1:
                rates.append((rate, max_steps))
                break
        if not rates:
            raise ValueError(text)
    except ValueError as exc:
        raise UserError(_SCHEDULE_HELP.format(text=text)) from exc
    return rates


class LearnRateSchedule:
    """The rate for the optimizer step that starts with `steps_done` steps behind it: the first
    segment that ends after it; None once every segment has ended (training stops there)."""

    def __init__(self, text: str, max_steps: int, current_step: int = 0) -> None:
        self.segments = parse_learn_rate(text, max_steps, current_step)

    def rate(self, steps_done: int) -> float | None:
        for rate, end in self.segments:
            if steps_done < end:
                return rate
        return None
