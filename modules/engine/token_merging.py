"""Token merging (ToMe for Stable Diffusion; A1111's `token_merging_ratio` options), our own code.

In the UNet's transformer blocks at the latent's full resolution (where self-attention is most
expensive: every latent pixel is a token), the tokens going into self-attention are merged first
and the attention's output is unmerged back, so attention runs over fewer tokens:

- destinations: one token per 2x2 window of the latent grid (which one is drawn from a generator
  seeded per job, so a job is reproducible); every other token is a source;
- each source's most similar destination by cosine similarity of the (normalised) hidden states;
- the `ratio * N` sources with the highest similarity are averaged into their destinations (a
  mean with the destination), the others are kept;
- after attention, each merged source takes its destination's output.

It is installed for a job as attention processors wrapping the self-attention's own processor
(`token_merging(unet, ...)`, a `with` block) and removed after. A forward pre-hook on the UNet
notes the latent's size (to know which blocks are at full resolution). Ratio 0 installs nothing.
The ratio in force is read at every UNet call (`ratio()`), so the hires pass can use its own.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

MAX_RATIO = 0.9


@dataclass
class MergePlan:
    """How one (B, N, C) token set is merged and unmerged."""

    n: int
    dst_idx: torch.Tensor  # (Nd,) token positions of the destinations
    src_idx: torch.Tensor  # (Ns,) token positions of the sources
    kept: torch.Tensor  # (B, Ns - r) indices into the sources that stay
    merged: torch.Tensor  # (B, r) indices into the sources that are merged
    into: torch.Tensor  # (B, r) the destination (index into dst_idx) each merged source goes to

    @property
    def merged_count(self) -> int:
        return int(self.merged.shape[1])

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        src, dst = x[:, self.src_idx], x[:, self.dst_idx]
        kept = src.gather(1, self.kept[..., None].expand(-1, -1, c))
        moving = src.gather(1, self.merged[..., None].expand(-1, -1, c))
        dst = dst.scatter_reduce(1, self.into[..., None].expand(-1, -1, c), moving, reduce="mean", include_self=True)
        return torch.cat([kept, dst], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        b, _, c = y.shape
        n_kept = self.kept.shape[1]
        y_kept, y_dst = y[:, :n_kept], y[:, n_kept:]
        y_moved = y_dst.gather(1, self.into[..., None].expand(-1, -1, c))
        out = y.new_zeros(b, self.n, c)
        out[:, self.dst_idx] = y_dst
        src_idx = self.src_idx.to(y.device)
        out.scatter_(1, src_idx[self.kept][..., None].expand(-1, -1, c), y_kept)
        out.scatter_(1, src_idx[self.merged][..., None].expand(-1, -1, c), y_moved)
        return out


def plan_merge(x: torch.Tensor, h: int, w: int, ratio: float, generator: torch.Generator) -> MergePlan | None:
    """A merge plan for tokens `x` (B, h*w, C) laid out on an h x w grid; None if nothing merges."""
    n = x.shape[1]
    if n != h * w or h < 2 or w < 2:
        return None
    hs, ws = h // 2, w // 2
    pick = torch.randint(4, (hs, ws), generator=generator)  # which token of each 2x2 window is a destination
    rows = torch.arange(hs)[:, None] * 2 + pick // 2
    cols = torch.arange(ws)[None, :] * 2 + pick % 2
    dst_idx = (rows * w + cols).flatten()
    is_dst = torch.zeros(n, dtype=torch.bool)
    is_dst[dst_idx] = True
    src_idx = (~is_dst).nonzero().squeeze(1)
    r = min(int(n * min(ratio, MAX_RATIO)), src_idx.numel())
    if r <= 0:
        return None
    device = x.device
    dst_idx, src_idx = dst_idx.to(device), src_idx.to(device)
    metric = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    scores = metric[:, src_idx] @ metric[:, dst_idx].transpose(1, 2)  # (B, Ns, Nd)
    best, best_dst = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    merged, kept = order[:, :r], order[:, r:]
    return MergePlan(n, dst_idx, src_idx, kept, merged, best_dst.gather(1, merged))


class _State:
    def __init__(self, ratio: Callable[[], float], seed: int) -> None:
        self.ratio = ratio
        self.generator = torch.Generator().manual_seed(seed)
        self.latent_hw: tuple[int, int] | None = None
        self.tokens_in: list[int] = []  # per merged self-attention call: tokens before merging
        self.tokens_out: list[int] = []  # ... and after (what attention attended)

    def plan(self, x: torch.Tensor) -> MergePlan | None:
        ratio = self.ratio()
        if ratio <= 0 or self.latent_hw is None or x.ndim != 3:
            return None
        h, w = self.latent_hw
        if x.shape[1] != h * w:  # a lower-resolution block: left as it is
            return None
        return plan_merge(x, h, w, ratio, self.generator)


class TokenMergingProcessor:
    """Wraps a self-attention's processor: merge, attend, unmerge."""

    def __init__(self, inner: Any, state: _State) -> None:
        self.inner = inner
        self.state = state

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        plan = self.state.plan(hidden_states) if encoder_hidden_states is None else None
        if plan is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        merged = plan.merge(hidden_states)
        self.state.tokens_in.append(hidden_states.shape[1])
        self.state.tokens_out.append(merged.shape[1])
        out = self.inner(attn, merged, None, attention_mask, temb, **kwargs)
        return plan.unmerge(out)


def self_attentions(unet: torch.nn.Module) -> list[Any]:
    """The self-attention (`attn1`) of every transformer block of the UNet."""
    from diffusers.models.attention import BasicTransformerBlock

    return [m.attn1 for m in unet.modules() if isinstance(m, BasicTransformerBlock)]


@dataclass
class TokenMerging:
    """What a job's token merging did (for tests and the log)."""

    state: _State

    @property
    def tokens_in(self) -> list[int]:
        return self.state.tokens_in

    @property
    def tokens_out(self) -> list[int]:
        return self.state.tokens_out


@contextlib.contextmanager
def token_merging(unet: torch.nn.Module, ratio: Callable[[], float], *, seed: int = 0) -> Iterator[TokenMerging]:
    """Inside the block the UNet's full-resolution self-attentions merge tokens at `ratio()`."""
    state = _State(ratio, seed)

    def note_size(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else kwargs.get("sample")
        if isinstance(sample, torch.Tensor):
            state.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))

    attentions = self_attentions(unet)
    originals = [a.processor for a in attentions]
    handle = unet.register_forward_pre_hook(note_size, with_kwargs=True)
    try:
        for attention, original in zip(attentions, originals, strict=True):
            attention.set_processor(TokenMergingProcessor(original, state))
        yield TokenMerging(state)
    finally:
        handle.remove()
        for attention, original in zip(attentions, originals, strict=True):
            attention.set_processor(original)


def job_ratios(get: Callable[[str, float], float], *, img2img: bool, overridden: bool) -> tuple[float, float]:
    """(first pass, hires pass) ratios as A1111 picks them: img2img uses `token_merging_ratio_img2img`
    unless `token_merging_ratio` is overridden for the request; the hires pass uses
    `token_merging_ratio_hr`, else the first pass's."""
    base = float(get("token_merging_ratio", 0.0))
    first = base if (not img2img or overridden) else (float(get("token_merging_ratio_img2img", 0.0)) or base)
    hr = float(get("token_merging_ratio_hr", 0.0)) or first
    clamp = lambda v: 0.0 if math.isnan(v) else max(0.0, min(MAX_RATIO, v))  # noqa: E731
    return clamp(first), clamp(hr)
