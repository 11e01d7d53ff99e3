"""A1111's `modules.prompt_parser` for extension code (a facade: internal packages never import it):
emphasis, prompt editing and `AND` parsing over `modules.core.prompt_syntax`, with A1111's return
shapes (lists, not tuples)."""

from __future__ import annotations

from typing import Any

from modules.core.prompt_syntax import multicond_prompt_list, parse_emphasis, prompt_schedules

__all__ = [
    "SdConditioning",
    "get_learned_conditioning_prompt_schedules",
    "get_multicond_prompt_list",
    "parse_prompt_attention",
]


class SdConditioning(list[str]):
    """A list of prompts with the size / negativity A1111's encoders read."""

    def __init__(
        self,
        prompts: Any,
        is_negative_prompt: bool = False,
        width: int | None = None,
        height: int | None = None,
        copy_from: Any = None,
    ) -> None:
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


def parse_prompt_attention(text: str) -> list[list[Any]]:
    """`[[text, weight], ...]`: `(a)` x1.1, `[a]` /1.1, `(a:w)`; `BREAK` is `["BREAK", -1]`."""
    return [[piece, weight] for piece, weight in parse_emphasis(text)]


def get_learned_conditioning_prompt_schedules(
    prompts: list[str], base_steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[list[list[Any]]]:
    """Per prompt, `[[end_at_step, text], ...]` for its prompt editing / alternation."""
    schedules = prompt_schedules(prompts, base_steps, hires_steps=hires_steps, use_old_scheduling=use_old_scheduling)
    return [[[step, text] for step, text in schedule] for schedule in schedules]


def get_multicond_prompt_list(prompts: list[str]) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """(per prompt `[(index, weight)]` of its `AND` parts, the distinct parts, part -> index)."""
    flat, per_prompt = multicond_prompt_list(prompts)
    return per_prompt, flat, {text: i for i, text in enumerate(flat)}
