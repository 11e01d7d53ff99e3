"""Text conditioning with A1111's prompt semantics (a1111.md section 4).

positive prompt -> AND split -> per part a prompt-editing schedule -> each scheduled text ->
emphasis parse + BREAK + 75-token chunks -> each chunk [BOS] + 75 + [EOS] through every text
encoder (clip skip; emphasis multipliers with mean restore) -> chunks concatenated on the token
axis; SDXL concatenates both encoders on the channel axis and takes the pooled output of the
second encoder's first chunk. The negative prompt takes the same path without AND.
Each distinct text is encoded once per job.

Textual-inversion embeddings (a1111.md 4.5): a name found by its token ids takes as many chunk
positions as it has vectors and is never split across chunks; while a chunk runs through a text
encoder, a forward hook on the encoder's token-embedding module puts the vectors at those positions
(SDXL: `clip_l` into CLIP-L, `clip_g` into OpenCLIP-G), as A1111's `EmbeddingsWithFixes` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch

from modules.core import prompt_syntax as ps
from modules.engine.sampling import StepConds, TextCond
from modules.models.embeddings import Embedding, EmbeddingSet, encoder_slots
from modules.models.loader import StableDiffusionModel

CHUNK = 75
EmphasisName = Literal["Original", "No norm", "Ignore", "None"]


@dataclass
class ConditioningSettings:
    clip_skip: int = 1  # CLIP_stop_at_last_layers
    sdxl_clip_l_skip: bool = False  # A1111's option: clip skip for SDXL's CLIP-L too
    emphasis: EmphasisName = "Original"
    comma_padding_backtrack: int = 20
    use_old_scheduling: bool = False


ChunkIds = tuple[list[int], list[float], list[ps.PromptChunkFix]]


def _chunk_ids(
    tokenizer: object,
    text: str,
    settings: ConditioningSettings,
    find_embedding: ps.FindEmbedding | None = None,
) -> list[ChunkIds]:
    """[(77 token ids, 77 multipliers, embedding fixes)] for one text and one tokenizer; a fix's
    offset counts from the first token after BOS."""
    tok = tokenizer
    bos, eos = tok.bos_token_id, tok.eos_token_id  # type: ignore[attr-defined]
    pad = tok.pad_token_id  # type: ignore[attr-defined]
    if settings.emphasis == "None":
        parsed = [(text, 1.0)]
    else:
        parsed = ps.parse_emphasis(text)
        if settings.emphasis == "Ignore":
            parsed = [(t, 1.0 if w != -1.0 else w) for t, w in parsed]

    def tokenize(texts: list[str]) -> list[list[int]]:
        return tok(texts, add_special_tokens=False, truncation=False).input_ids  # type: ignore[operator]

    comma = tok.convert_tokens_to_ids(",</w>")  # type: ignore[attr-defined]
    chunks = ps.chunk_prompt(
        parsed,
        tokenize,
        chunk_length=CHUNK,
        comma_token=comma,
        comma_padding_backtrack=settings.comma_padding_backtrack,
        find_embedding=find_embedding,
    )
    out: list[ChunkIds] = []
    for chunk in chunks:
        tokens = list(chunk.tokens)[:CHUNK]
        mults = list(chunk.multipliers)[:CHUNK]
        used = getattr(chunk, "length", None)
        if used is not None:  # the chunker padded: re-pad with this encoder's end token
            tokens, mults = tokens[:used], mults[:used]
        tokens += [eos] * (CHUNK - len(tokens))
        mults += [1.0] * (CHUNK - len(mults))
        ids = [bos, *tokens, eos]
        if pad != eos:  # OpenCLIP: everything after the first end token is the pad token
            first_end = ids.index(eos)
            ids = ids[: first_end + 1] + [pad] * (len(ids) - first_end - 1)
        out.append((ids, [1.0, *mults, 1.0], list(chunk.fixes)))
    return out


def _put_vectors(output: torch.Tensor, fixes: Sequence[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """The token-embedding output [1, 77, width] with each fix's vectors at 1 + offset (after BOS);
    vectors that would run past the end are cut, as A1111 cuts them."""
    out = output.clone()
    length = out.shape[1]
    for offset, vectors in fixes:
        count = min(length - offset - 1, vectors.shape[0])
        if count > 0:
            out[0, offset + 1 : offset + 1 + count] = vectors[:count].to(device=out.device, dtype=out.dtype)
    return out


def _apply_emphasis(z: torch.Tensor, mults: torch.Tensor, mode: EmphasisName) -> torch.Tensor:
    if mode in ("Ignore", "None"):
        return z
    if mode == "No norm":
        return z * mults[..., None]
    original_mean = z.mean()
    z = z * mults[..., None]
    return z * (original_mean / z.mean())


@dataclass
class Encoder:
    """Encodes texts with one checkpoint's text encoders; caches per distinct text."""

    model: StableDiffusionModel
    settings: ConditioningSettings = field(default_factory=ConditioningSettings)
    embeddings: EmbeddingSet | None = None
    _cache: dict[str, TextCond] = field(default_factory=dict)
    used_embeddings: dict[str, Embedding] = field(default_factory=dict)
    """The embeddings that appeared in anything this encoder encoded (for `TI hashes`)."""

    @property
    def device(self) -> torch.device:
        return self.model.device

    def encode(self, text: str, *, is_negative: bool = False) -> TextCond:
        cached = self._cache.get(("-" if is_negative else "+") + text)
        if cached is not None:
            return cached
        cond = self._encode(text, is_negative)
        self._cache[("-" if is_negative else "+") + text] = cond
        return cond

    def _encode(self, text: str, is_negative: bool) -> TextCond:
        family = self.model.family
        if family.is_sdxl and is_negative and text == "":
            zero = self._encode(text, False)  # shape donor
            zero_pooled = None if zero.pooled is None else torch.zeros_like(zero.pooled)
            return TextCond(torch.zeros_like(zero.hidden), zero_pooled)
        hidden_parts: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        chunk_counts = set()
        per_encoder = []
        embeddings = self.embeddings if self.embeddings is not None and self.embeddings.loaded else None
        slots = encoder_slots(self.model) if embeddings is not None else ()
        for index, (tokenizer, encoder) in enumerate(zip(self.model.tokenizers, self.model.text_encoders, strict=True)):
            find = embeddings.finder_for_tokenizer(tokenizer) if embeddings is not None else None
            chunks = _chunk_ids(tokenizer, text, self.settings, find)
            chunk_counts.add(len(chunks))
            per_encoder.append((encoder, chunks, slots[index].key if slots else ""))
        if len(chunk_counts) != 1:  # same BPE, so this cannot happen; guard anyway
            raise RuntimeError("text encoders disagree on chunk count")
        for encoder, chunks, slot_key in per_encoder:
            zs = []
            for index, (ids, mults, fixes) in enumerate(chunks):
                vectors = self._fix_vectors(fixes, slot_key)
                z, p = self._run_encoder(encoder, ids, vectors)
                zs.append(
                    _apply_emphasis(z, torch.tensor([mults], dtype=z.dtype, device=z.device), self.settings.emphasis)
                )
                if index == 0 and p is not None:
                    pooled = p
            hidden_parts.append(torch.cat(zs, dim=1))
        hidden = torch.cat(hidden_parts, dim=-1) if len(hidden_parts) > 1 else hidden_parts[0]
        return TextCond(hidden, pooled if family.is_sdxl else None)

    def _fix_vectors(self, fixes: Sequence[ps.PromptChunkFix], slot_key: str) -> list[tuple[int, torch.Tensor]]:
        """Each fix's offset with the vectors this encoder takes; notes the embeddings as used."""
        if not fixes or self.embeddings is None:
            return []
        out = []
        for fix in fixes:
            embedding = self.embeddings.loaded[fix.name]
            self.used_embeddings[fix.name] = embedding
            vectors = embedding.vectors_for(slot_key)
            if vectors is None:  # `for_model` only loads embeddings that fit every encoder
                raise RuntimeError(f"embedding {fix.name!r} has no {slot_key} vectors")
            out.append((fix.offset, vectors))
        return out

    def _run_encoder(
        self, encoder: torch.nn.Module, ids: list[int], vectors: Sequence[tuple[int, torch.Tensor]] = ()
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = torch.tensor([ids], device=self.device)
        skip = max(1, self.settings.clip_skip)
        handle = None
        if vectors:
            token_embedding = cast(torch.nn.Module, encoder.get_input_embeddings())  # type: ignore[operator]

            def put(_module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
                # only this call's ids (an offload hook may have moved them to another device)
                ids_in = args[0] if args else None
                if not isinstance(ids_in, torch.Tensor) or ids_in.shape != tokens.shape:
                    return None
                if not torch.equal(ids_in.to(tokens.device), tokens):
                    return None
                return _put_vectors(output, vectors)

            handle = token_embedding.register_forward_hook(put)
        try:
            with torch.no_grad():
                out = encoder(tokens, output_hidden_states=True)
        finally:
            if handle is not None:
                handle.remove()
        if self.model.family.is_sdxl:
            # A1111's SDXL: both encoders give their penultimate layer without the final norm; clip
            # skip acts on CLIP-L only, and only with the `sdxl_clip_l_skip` option (then it picks
            # hidden_states[-clip_skip]); OpenCLIP-G (the one with a projection) never skips.
            pooled = getattr(out, "text_embeds", None)
            if pooled is None and self.settings.sdxl_clip_l_skip:
                return out.hidden_states[-skip], None
            return out.hidden_states[-2], pooled
        if skip == 1:
            return out.last_hidden_state, None
        text_model = getattr(encoder, "text_model", encoder)
        # a submodule read as an attribute types as Tensor | Module
        final_layer_norm = cast(torch.nn.Module, text_model.final_layer_norm)
        z = final_layer_norm(out.hidden_states[-skip])
        return z, None


@dataclass
class PromptPlan:
    """The conditioning of one batch of B images over `steps` steps."""

    positive: list[list[tuple[list[tuple[int, str]], float]]]  # per image: [(schedule, AND weight)]
    negative: list[list[tuple[int, str]]]  # per image: schedule

    @classmethod
    def build(
        cls,
        prompts: Sequence[str],
        negative_prompts: Sequence[str],
        steps: int,
        *,
        hires_steps: int | None = None,
        use_old_scheduling: bool = False,
    ) -> PromptPlan:
        positive = []
        for prompt in prompts:
            parts = ps.split_and(prompt)
            texts = [text for text, _ in parts]
            schedules = ps.prompt_schedules(
                texts, steps, hires_steps=hires_steps, use_old_scheduling=use_old_scheduling
            )
            positive.append([(sched, weight) for sched, (_, weight) in zip(schedules, parts, strict=True)])
        negative = ps.prompt_schedules(
            list(negative_prompts), steps, hires_steps=hires_steps, use_old_scheduling=use_old_scheduling
        )
        return cls(positive, negative)

    @property
    def changes_every_step(self) -> bool:
        return any(len(s) > 1 for per in self.positive for s, _ in per) or any(len(s) > 1 for s in self.negative)


def _at(schedule: list[tuple[int, str]], step: int) -> str:
    """A1111's lookup: the first entry whose end step is >= the 0-based sampler step."""
    return schedule[ps.prompt_at_step(schedule, step)][1]


def _stack(conds: list[TextCond]) -> TextCond:
    longest = max(c.hidden.shape[1] for c in conds)
    hidden = []
    for c in conds:
        h = c.hidden
        if h.shape[1] < longest:  # pad with repeats of the last vector (A1111's default)
            h = torch.cat([h, h[:, -1:].expand(-1, longest - h.shape[1], -1)], dim=1)
        hidden.append(h)
    pooled = None if conds[0].pooled is None else torch.cat([c.pooled for c in conds])  # type: ignore[misc]
    return TextCond(torch.cat(hidden), pooled)


def encode_plan(encoder: Encoder, plan: PromptPlan) -> None:
    """Encode every text the plan will ask for, now (the encoder caches them): the text encoders
    then run once, before sampling, and never between two UNet calls, which under a memory mode
    would move the UNet off the device and back (A1111 also conditions before it samples)."""
    for per_image in plan.positive:
        for schedule, _weight in per_image:
            for _end, text in schedule:
                encoder.encode(text)
    for schedule in plan.negative:
        for _end, text in schedule:
            encoder.encode(text, is_negative=True)


def step_conds(encoder: Encoder, plan: PromptPlan, step: int) -> StepConds:
    rows: list[TextCond] = []
    index: dict[str, int] = {}
    weights: list[list[tuple[int, float]]] = []
    for per_image in plan.positive:
        mine = []
        for schedule, weight in per_image:
            text = _at(schedule, step)
            if text not in index:
                index[text] = len(rows)
                rows.append(encoder.encode(text))
            mine.append((index[text], weight))
        weights.append(mine)
    uncond = _stack([encoder.encode(_at(s, step), is_negative=True) for s in plan.negative])
    return StepConds(cond=_stack(rows), weights=weights, uncond=uncond)
