"""A1111's prompt token counter (`used/limit`, 75 CLIP tokens per chunk) for the prompt boxes.

The engine owns the tokenizer and the textual-inversion embeddings (an embedding's name costs its
vector count, and one that does not fit a chunk's remaining space starts the next chunk), so the UI
asks the engine facade (`Engine.count_tokens`) instead of building a tokenizer itself.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from modules.core.prompt_syntax import prompt_token_count
from modules.models.clip_tokenizer import build_clip_tokenizer
from modules.models.embeddings import EmbeddingSet


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    return build_clip_tokenizer()


def count_tokens(
    prompt: str, steps: int, *, is_positive: bool = True, embeddings: EmbeddingSet | None = None
) -> tuple[int, int]:
    """(tokens used, current limit): the limit grows by 75 per chunk, the most of any step's
    prompt (prompt editing) counts; a name in `embeddings.loaded` counts as its vectors. Raises on
    a prompt the parser cannot read."""
    if not prompt:
        return 0, 75
    tok = _tokenizer()

    def tokenize(texts: list[str]) -> list[list[int]]:
        ids: list[list[int]] = tok(texts, add_special_tokens=False, truncation=False).input_ids
        return ids

    return prompt_token_count(
        prompt,
        tokenize,
        steps=max(int(steps), 1),
        is_positive=is_positive,
        comma_token=tok.convert_tokens_to_ids(",</w>"),
        find_embedding=embeddings.finder_for_tokenizer(tok) if embeddings is not None and embeddings.loaded else None,
    )
