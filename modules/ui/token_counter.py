"""The prompt boxes' token counters (A1111's `used/limit`, 75 CLIP tokens per chunk), counting
the selected styles too when `include_styles_into_token_counters` is on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modules.services import Services
from modules.ui.common import PromptRow
from modules.ui.styles import text_for_token_counter


def token_counter_html(services: Services, prompt: str, steps: float, *, is_positive: bool = True) -> str:
    """A1111's `used/limit` counter (CLIP tokens, 75 per chunk), counted by the engine."""
    try:
        used, limit = services.engine.count_tokens(prompt, int(steps), is_positive=is_positive)
    except Exception:  # a half-typed prompt must never break the page
        return "<span>?/75</span>"
    return f"<span>{used}/{limit}</span>"


def wire_token_counters(services: Services, row: PromptRow, steps: Any) -> None:
    """Recount when a prompt, the selected styles or the steps (prompt editing) change."""

    def counter(positive: bool) -> Callable[[str, list[str] | None, float], str]:
        def count(text: str, names: list[str] | None, n: float) -> str:
            counted = text_for_token_counter(services.styles, services.options, text, names, is_positive=positive)
            return token_counter_html(services, counted, n, is_positive=positive)

        return count

    for box, out, positive in ((row.prompt, row.token_counter, True), (row.negative, row.neg_counter, False)):
        for trigger in (box.change, row.styles.change, steps.change):
            trigger(counter(positive), [box, row.styles, steps], out, queue=False, show_progress="hidden")
