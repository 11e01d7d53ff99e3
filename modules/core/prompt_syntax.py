"""A1111 prompt syntax, pure Python (reference: a1111.md section 4).

* `split_and` / `multicond_prompt_list`: composable diffusion `AND` with `:weight` (4.2).
* `prompt_schedules` / `prompt_at_step`: prompt editing `[from:to:when]` and alternation
  `[a|b]` (4.3), including the hires-pass offsets and the old timeline rules.
* `parse_emphasis` / `parse_for_mode`: attention brackets, escapes and `BREAK` (4.4).
* `chunk_prompt` / `count_tokens` / `chunk_token_ids`: 75-token chunks with comma backtrack,
  `BREAK` and textual-inversion placeholders (4.5), given any tokenizer function.
* `EmphasisMode`: the emphasis setting's values and what each asks of the engine (4.4).

No function here raises on a user prompt: syntax errors degrade to literal text as A1111's do.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

__all__ = [
    "BREAK_MARKER",
    "CLIP_END_TOKEN",
    "CLIP_START_TOKEN",
    "EMBEDDING_PLACEHOLDER_TOKEN",
    "EmbeddingMatch",
    "EmphasisMode",
    "PromptChunk",
    "PromptChunkFix",
    "chunk_prompt",
    "chunk_token_ids",
    "count_tokens",
    "is_break",
    "multicond_prompt_list",
    "parse_emphasis",
    "parse_for_mode",
    "prompt_at_step",
    "prompt_schedules",
    "prompt_token_count",
    "split_and",
]

Schedule = list[tuple[int, str]]
Tokenize = Callable[[list[str]], list[list[int]]]

BREAK_MARKER: tuple[str, float] = ("BREAK", -1.0)
"""The entry `parse_emphasis` emits for a `BREAK` keyword (A1111's `["BREAK", -1]`)."""

CLIP_START_TOKEN = 49406
"""`<|startoftext|>` in the CLIP BPE vocabulary (SD1 CLIP-L, SD2/SDXL OpenCLIP alike)."""
CLIP_END_TOKEN = 49407
"""`<|endoftext|>`: A1111 pads chunk content with it (`id_end`) for every family."""
EMBEDDING_PLACEHOLDER_TOKEN = 0
"""Id placed where a textual-inversion embedding's vectors go (replaced after encoding lookup)."""

ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1


# --------------------------------------------------------------------------- emphasis modes


class EmphasisMode(str, enum.Enum):
    """Values of A1111's `emphasis` option; the engine applies them to each encoded chunk."""

    ORIGINAL = "Original"
    """Parse brackets; z *= multipliers per token, then rescale so the chunk tensor's mean
    (over batch x 77 tokens x channels) equals its mean before multiplying. The default."""
    NO_NORM = "No norm"
    """Parse brackets; z *= multipliers per token, no mean restore (suggested for SDXL)."""
    IGNORE = "Ignore"
    """Parse (and remove) brackets, split text the same way, but apply no weights."""
    NONE = "None"
    """No parsing at all: brackets and `BREAK` are literal text, every weight is 1.0."""

    @property
    def parses_brackets(self) -> bool:
        return self is not EmphasisMode.NONE

    @property
    def applies_weights(self) -> bool:
        return self in (EmphasisMode.ORIGINAL, EmphasisMode.NO_NORM)

    @property
    def restores_mean(self) -> bool:
        return self is EmphasisMode.ORIGINAL

    @classmethod
    def from_option(cls, value: str | None) -> EmphasisMode:
        """Option value -> mode; unknown or missing values fall back to "Original"."""
        for mode in cls:
            if mode.value == value:
                return mode
        return cls.ORIGINAL


# --------------------------------------------------------------------------- AND (4.2)

_RE_AND = re.compile(r"\bAND\b")
_RE_AND_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Split on uppercase `AND`; each part may end in `:weight` (default 1.0, may be negative).

    Parts keep leading whitespace; trailing whitespace and the weight suffix are removed.
    Identical parts are not merged here (see `multicond_prompt_list`).
    """
    parts: list[tuple[str, float]] = []
    for sub in _RE_AND.split(prompt):
        match = _RE_AND_WEIGHT.search(sub)
        if match is None:  # defensive: this regex matches every string
            parts.append((sub, 1.0))
            continue
        text, weight = match.group(1), match.group(2)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


def multicond_prompt_list(prompts: Sequence[str]) -> tuple[list[str], list[list[tuple[int, float]]]]:
    """AND-split a batch: (distinct sub-prompt texts, per prompt [(index into them, weight)])."""
    flat: list[str] = []
    index_of: dict[str, int] = {}
    per_prompt: list[list[tuple[int, float]]] = []
    for prompt in prompts:
        entries: list[tuple[int, float]] = []
        for text, weight in split_and(prompt):
            index = index_of.get(text)
            if index is None:
                index = index_of[text] = len(flat)
                flat.append(text)
            entries.append((index, weight))
        per_prompt.append(entries)
    return flat, per_prompt


# --------------------------------------------------------------------------- editing (4.3)
#
# The spec's grammar, parsed by hand with the same outcomes as A1111's (lark, Earley):
# * inside brackets everything must nest: `(p)`, `(p:p)` and `[p]` are kept verbatim,
#   `[p:N]`/`[p:p:N]` (N = signed number, optional whitespace around it) are scheduled,
#   `[p|p|...]` alternates; `p` holds no `:` or `|` of its own;
# * at top level a `(`/`[` that does not start a valid construct, and any `)`, `]`, `:`, are
#   literal; a valid construct is always taken. (A1111's parse is ambiguous when a construct is
#   directly followed by such a stray character, e.g. `[a:b:5]]`: lark then keeps or drops the
#   schedule depending on the process's PYTHONHASHSEED. We always keep it.)
# * a `|` outside any alternation, or a `\` with nothing (or a newline) after it, fails the
#   whole parse: the prompt is then used literally for every step.
# Trees are walked with explicit stacks, so deep nesting cannot hit the recursion limit.

_RE_NUMBER = re.compile(r"[+-]?(?:\d+[eE][+-]?\d+|(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+)")
_RE_SPACES = re.compile(r"\s*")
_SPECIAL = frozenset("[]():|")  # a backslash escapes the next character inside a text run


class _ParseError(Exception):
    """The whole prompt does not parse (A1111 then uses it literally)."""


@dataclass(eq=False)
class _Scheduled:
    before: list[_Node] | None
    after: list[_Node]
    number: str
    when: int = 0


@dataclass(eq=False)
class _Alternate:
    options: list[list[_Node]]


_Node = str | _Scheduled | _Alternate


@dataclass(eq=False)
class _Frame:
    opener: str
    start: int
    segments: list[list[_Node]] = field(default_factory=lambda: [[]])
    segment_starts: list[int] = field(default_factory=list)
    separators: list[str] = field(default_factory=list)


class _ScheduleParser:
    """One prompt -> top-level node list (see the grammar notes above)."""

    def __init__(self, text: str) -> None:
        self.text = text
        # start position of a bracket -> (node list it renders to, end position) or None if invalid
        self.memo: dict[int, tuple[list[_Node], int] | None] = {}

    def _text_run(self, pos: int, stop: frozenset[str]) -> tuple[str, int]:
        text, end = self.text, len(self.text)
        start = pos
        while pos < end and text[pos] not in stop:
            if text[pos] == "\\":
                if pos + 1 >= end or text[pos + 1] == "\n":
                    raise _ParseError
                pos += 2
            else:
                pos += 1
        return text[start:pos], pos

    def parse(self) -> list[_Node]:
        text, end = self.text, len(self.text)
        nodes: list[_Node] = []
        pos = 0
        while pos < end:
            char = text[pos]
            if char == "|":
                raise _ParseError
            if char in "([":
                result = self._construct(pos)
                if result is not None:
                    nodes.extend(result[0])
                    pos = result[1]
                    continue
            if char in "([]):":
                nodes.append(char)
                pos += 1
                continue
            run, pos = self._text_run(pos, _SPECIAL)
            nodes.append(run)
        return nodes

    def _construct(self, start: int) -> tuple[list[_Node], int] | None:
        if start in self.memo:
            return self.memo[start]
        text, end = self.text, len(self.text)
        stack: list[_Frame] = [_Frame(text[start], start, segment_starts=[start + 1])]
        pos = start + 1
        while pos < end:
            char = text[pos]
            top = stack[-1]
            if char in "([":
                if pos not in self.memo:
                    stack.append(_Frame(char, pos, segment_starts=[pos + 1]))
                    pos += 1
                    continue
                known = self.memo[pos]
                if known is None:
                    self._fail(stack)
                    return None
                top.segments[-1].extend(known[0])
                pos = known[1]
            elif char in ":|":
                top.separators.append(char)
                top.segments.append([])
                top.segment_starts.append(pos + 1)
                pos += 1
            elif char in ")]":
                stack.pop()
                rendered = self._close(top, char, pos)
                if rendered is None:
                    self._fail([*stack, top])
                    return None
                self.memo[top.start] = (rendered, pos + 1)
                if not stack:
                    return self.memo[top.start]
                stack[-1].segments[-1].extend(rendered)
                pos += 1
            else:
                run, pos = self._text_run(pos, _SPECIAL)
                top.segments[-1].append(run)
        self._fail(stack)
        return None

    def _fail(self, stack: list[_Frame]) -> None:
        for frame in stack:
            self.memo[frame.start] = None

    def _close(self, frame: _Frame, closer: str, pos: int) -> list[_Node] | None:
        seps, segs = frame.separators, frame.segments
        if frame.opener == "(":
            if closer != ")" or "|" in seps or len(seps) > 1:
                return None
            return ["(", *segs[0], *([":", *segs[1]] if seps else []), ")"]
        if closer != "]":
            return None
        if not seps:
            return ["[", *segs[0], "]"]
        if all(sep == "|" for sep in seps):
            return [_Alternate(segs)]
        if "|" in seps or len(seps) > 2:
            return None
        number = self._number(frame.segment_starts[-1], pos)
        if number is None:
            return None
        before = segs[0] if len(seps) == 2 else None
        return [_Scheduled(before, segs[-2], number)]

    def _number(self, start: int, stop: int) -> str | None:
        """`[WHITESPACE] NUMBER [WHITESPACE]` filling text[start:stop] exactly, else None."""
        pos = _RE_SPACES.match(self.text, start, stop).end()  # type: ignore[union-attr]
        match = _RE_NUMBER.match(self.text, pos)
        if match is None or match.end() > stop:
            return None
        if _RE_SPACES.match(self.text, match.end(), stop).end() != stop:  # type: ignore[union-attr]
            return None
        return match.group(0)


def _walk(nodes: list[_Node]) -> Iterator[_Scheduled | _Alternate]:
    """Every scheduled/alternate node of a tree, including inside unused branches."""
    stack: list[list[_Node]] = [nodes]
    while stack:
        for node in stack.pop():
            if isinstance(node, _Scheduled):
                yield node
                stack.append(node.after)
                if node.before is not None:
                    stack.append(node.before)
            elif isinstance(node, _Alternate):
                yield node
                stack.extend(node.options)


def _render(nodes: list[_Node], step: int) -> str:
    out: list[str] = []
    stack: list[Iterator[_Node]] = [iter(nodes)]
    while stack:
        node = next(stack[-1], None)
        if node is None:
            stack.pop()
        elif isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            if step <= node.when:
                stack.append(iter(node.before or ()))
            else:
                stack.append(iter(node.after))
        else:
            stack.append(iter(node.options[(step - 1) % len(node.options)]))
    return "".join(out)


def _when(number: str, steps: int, int_offset: int, flt_offset: float, old: bool) -> int:
    value = float(number)
    if old:
        value = value * steps if value < 1 else value
    elif "." in number:
        value = (value - flt_offset) * steps
    else:
        value = value - int_offset
    if math.isinf(value):  # "1e999": A1111 crashes in int(); clamp instead
        return steps if value > 0 else -1
    return min(steps, int(value))


def _schedule(prompt: str, steps: int, int_offset: int, flt_offset: float, old: bool) -> Schedule:
    try:
        tree = _ScheduleParser(prompt).parse()
    except _ParseError:
        return [(steps, prompt)]
    boundaries = {steps}
    for node in _walk(tree):
        if isinstance(node, _Scheduled):
            node.when = _when(node.number, steps, int_offset, flt_offset, old)
            if node.when >= 1:
                boundaries.add(node.when)
        else:
            boundaries.update(range(1, steps + 1))
    return [(step, _render(tree, step)) for step in sorted(boundaries)]


def prompt_schedules(
    prompts: Sequence[str],
    steps: int,
    *,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[list[tuple[int, str]]]:
    """Per prompt, the texts to encode as [(end_step, text)], end steps ascending, last = steps.

    `steps` is the sampler's total (doubled for second-order samplers, as A1111 does). A number
    in `when` containing `.` is a fraction of the steps, otherwise an absolute step; results are
    truncated to int and clamped to `steps`. For the hires pass give the first pass's total as
    `steps` and the hires total as `hires_steps`: the schedule then covers 1..hires_steps, integers
    count on from the first pass (`when - steps`) and fractions from 1.0 (`(when - 1) * hires`).
    `use_old_scheduling` (A1111's "Old prompt editing timelines"): values < 1 are fractions,
    others absolute, and `hires_steps` is ignored. Prompts that do not parse give [(steps, prompt)].
    """
    if hires_steps is None or use_old_scheduling:
        total, int_offset, flt_offset = steps, 0, 0.0
    else:
        total, int_offset, flt_offset = hires_steps, steps, 1.0
    cache: dict[str, Schedule] = {}
    result: list[Schedule] = []
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = _schedule(prompt, total, int_offset, flt_offset, use_old_scheduling)
        result.append(list(cache[prompt]))
    return result


def prompt_at_step(schedule: Sequence[tuple[int, str]], current_step: int) -> int:
    """Index of the schedule entry A1111 uses at `current_step`.

    A1111 passes the number of denoiser calls made so far (0-based), and takes the first entry
    with `current_step <= end_step`, or entry 0 when none matches. So with `[a:b:5]` the first six
    calls use `a` (A1111's well-known off-by-one), and `[a|b]` gives a, a, b, a, b, ...
    """
    for index, (end_step, _) in enumerate(schedule):
        if current_step <= end_step:
            return index
    return 0


# --------------------------------------------------------------------------- emphasis (4.4)

_RE_ATTENTION = re.compile(
    r"""
    \\[()\[\]\\]                # escaped bracket or backslash
    | \\                        # lone backslash (dropped)
    | [(\[]                     # openers
    | :\s*([+-]?[.\d]+)\s*\)    # explicit weight, closes the innermost round bracket
    | [)\]]                     # closers
    | [^\\()\[\]:]+             # plain text
    | :                         # a colon that is not a weight
    """,
    re.VERBOSE,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


@dataclass(eq=False)
class _Piece:
    text: str
    weight: float
    marker: bool = False


def is_break(entry: tuple[str, float]) -> bool:
    """Whether a parsed entry is the `BREAK` marker."""
    return entry[0] == BREAK_MARKER[0] and entry[1] == BREAK_MARKER[1]


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """`(a)` x1.1, `[a]` /1.1, `(a:w)` xw, nesting multiplies; escapes `\\(` `\\)` `\\[` `\\]` `\\\\`.

    Unclosed brackets apply up to the end; unmatched closers are literal; a lone `\\` is dropped.
    `BREAK` (uppercase word) becomes `BREAK_MARKER` and is never weighted. Adjacent entries of
    equal weight are merged; no entries -> [("", 1.0)].
    """
    entries: list[_Piece] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for entry in entries[start:]:
            if not entry.marker:
                entry.weight *= factor

    def add_text(chunk: str) -> None:
        for index, part in enumerate(_RE_BREAK.split(chunk)):
            if index:
                entries.append(_Piece(BREAK_MARKER[0], BREAK_MARKER[1], marker=True))
            entries.append(_Piece(part, 1.0))

    for match in _RE_ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            entries.append(_Piece(token[1:], 1.0))
        elif token in ("(", "["):
            (round_open if token == "(" else square_open).append(len(entries))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:  # e.g. "(a:1.2.3)": A1111 raises; keep ":1.2.3" as text
                add_text(token[:-1])
                factor = ROUND_BRACKET_MULTIPLIER
            multiply(round_open.pop(), factor)
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND_BRACKET_MULTIPLIER)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE_BRACKET_MULTIPLIER)
        else:
            add_text(token)

    for start in round_open:
        multiply(start, ROUND_BRACKET_MULTIPLIER)
    for start in square_open:
        multiply(start, SQUARE_BRACKET_MULTIPLIER)

    merged: list[_Piece] = []
    for entry in entries:
        last = merged[-1] if merged else None
        if last is not None and not last.marker and not entry.marker and last.weight == entry.weight:
            last.text += entry.text
        else:
            merged.append(entry)
    return [(entry.text, entry.weight) for entry in merged] or [("", 1.0)]


def parse_for_mode(text: str, mode: EmphasisMode | str = EmphasisMode.ORIGINAL) -> list[tuple[str, float]]:
    """Parse as the emphasis option does: "None" keeps the text whole (no brackets, no BREAK).

    "Ignore" parses like "Original" (same pieces, same tokens); the engine skips the weights.
    """
    if EmphasisMode.from_option(mode.value if isinstance(mode, EmphasisMode) else mode) is EmphasisMode.NONE:
        return [(text, 1.0)]
    return parse_emphasis(text)


# --------------------------------------------------------------------------- chunks (4.5)


@dataclass(frozen=True)
class EmbeddingMatch:
    """A textual-inversion embedding found in a piece's tokens."""

    name: str
    vectors: int
    """How many token positions its vectors take."""
    token_length: int
    """How many of the piece's tokens spell its name (they are replaced by the vectors)."""


FindEmbedding = Callable[[Sequence[int], int], EmbeddingMatch | None]
"""(a piece's token ids, position) -> the embedding whose name starts there, or None."""


@dataclass(frozen=True)
class PromptChunkFix:
    """Embedding vectors to put at `offset` (index into `PromptChunk.tokens`, before BOS)."""

    offset: int
    name: str
    vectors: int


@dataclass(frozen=True)
class PromptChunk:
    """One chunk's content, without BOS/EOS.

    `tokens` has exactly `chunk_length` ids: the prompt's tokens, then `pad_token` (A1111 pads
    with the end token for every model). Embedding positions hold `EMBEDDING_PLACEHOLDER_TOKEN`
    and are listed in `fixes`. `multipliers` are the emphasis weights, 1.0 for padding.
    `length` is how many leading ids are content. `chunk_token_ids` adds BOS/EOS.
    """

    tokens: list[int]
    multipliers: list[float]
    fixes: list[PromptChunkFix] = field(default_factory=list)
    length: int = 0


class _Chunker:
    def __init__(
        self, chunk_length: int, comma_token: int | None, backtrack: int, pad_token: int, find: FindEmbedding | None
    ) -> None:
        self.chunk_length = chunk_length
        self.comma_token = comma_token
        self.backtrack = backtrack
        self.pad_token = pad_token
        self.find = find
        self.chunks: list[PromptChunk] = []
        self.tokens: list[int] = []
        self.multipliers: list[float] = []
        self.fixes: list[PromptChunkFix] = []
        self.token_count = 0
        self.last_comma = -1

    def next_chunk(self, *, is_last: bool = False) -> None:
        self.token_count += len(self.tokens) if is_last else self.chunk_length
        length = len(self.tokens)
        missing = self.chunk_length - length
        tokens = self.tokens + [self.pad_token] * max(missing, 0)
        multipliers = self.multipliers + [1.0] * max(missing, 0)
        self.chunks.append(PromptChunk(tokens, multipliers, self.fixes, length))
        self.tokens, self.multipliers, self.fixes = [], [], []
        self.last_comma = -1

    def add_piece(self, ids: list[int], weight: float) -> None:
        position = 0
        while position < len(ids):
            token = ids[position]
            if self.comma_token is not None and token == self.comma_token:
                self.last_comma = len(self.tokens)
            elif (
                self.backtrack != 0
                and len(self.tokens) == self.chunk_length
                and self.last_comma != -1
                and len(self.tokens) - self.last_comma <= self.backtrack
            ):
                cut = self.last_comma + 1
                moved_tokens, moved_multipliers = self.tokens[cut:], self.multipliers[cut:]
                moved_fixes = [f for f in self.fixes if f.offset >= cut]
                self.tokens, self.multipliers = self.tokens[:cut], self.multipliers[:cut]
                self.fixes = [f for f in self.fixes if f.offset < cut]
                self.next_chunk()
                self.tokens, self.multipliers = moved_tokens, moved_multipliers
                self.fixes = [PromptChunkFix(f.offset - cut, f.name, f.vectors) for f in moved_fixes]
            if len(self.tokens) >= self.chunk_length:
                self.next_chunk()

            embedding = self.find(ids, position) if self.find is not None else None
            if embedding is None:
                self.tokens.append(token)
                self.multipliers.append(weight)
                position += 1
                continue
            if self.tokens and len(self.tokens) + embedding.vectors > self.chunk_length:
                self.next_chunk()
            self.fixes.append(PromptChunkFix(len(self.tokens), embedding.name, embedding.vectors))
            self.tokens += [EMBEDDING_PLACEHOLDER_TOKEN] * embedding.vectors
            self.multipliers += [weight] * embedding.vectors
            position += max(embedding.token_length, 1)


def _chunk(
    parsed: Sequence[tuple[str, float]],
    tokenize: Tokenize,
    chunk_length: int,
    comma_token: int | None,
    comma_padding_backtrack: int,
    pad_token: int,
    find_embedding: FindEmbedding | None,
) -> tuple[list[PromptChunk], int]:
    chunker = _Chunker(chunk_length, comma_token, comma_padding_backtrack, pad_token, find_embedding)
    texts = [text for text, weight in parsed if not is_break((text, weight))]
    tokenized = tokenize(texts) if texts else []
    if len(tokenized) != len(texts):
        raise ValueError(f"tokenize returned {len(tokenized)} lists for {len(texts)} texts")
    pieces = iter(tokenized)
    for text, weight in parsed:
        if is_break((text, weight)):
            chunker.next_chunk()
        else:
            chunker.add_piece(list(next(pieces)), weight)
    if chunker.tokens or not chunker.chunks:
        chunker.next_chunk(is_last=True)
    return chunker.chunks, chunker.token_count


def chunk_prompt(
    parsed: list[tuple[str, float]],
    tokenize: Callable[[list[str]], list[list[int]]],
    *,
    chunk_length: int = 75,
    comma_token: int | None,
    comma_padding_backtrack: int = 20,
    pad_token: int = CLIP_END_TOKEN,
    find_embedding: FindEmbedding | None = None,
) -> list[PromptChunk]:
    """Split a parsed prompt into chunks of `chunk_length` tokens (A1111's `tokenize_line`).

    `tokenize` maps texts to ids without BOS/EOS and without truncation. A chunk ends when full,
    at each `BREAK` (the rest is padding), or before an embedding that does not fit. When a chunk
    is full and the last comma is at most `comma_padding_backtrack` tokens back (0 disables), the
    tokens after that comma move to the next chunk. An empty prompt gives one all-padding chunk; a
    trailing `BREAK` adds no empty chunk. `find_embedding` is the textual-inversion hook.
    """
    chunks, _ = _chunk(parsed, tokenize, chunk_length, comma_token, comma_padding_backtrack, pad_token, find_embedding)
    return chunks


def count_tokens(
    parsed: list[tuple[str, float]],
    tokenize: Callable[[list[str]], list[list[int]]],
    *,
    chunk_length: int = 75,
    comma_token: int | None,
    comma_padding_backtrack: int = 20,
    find_embedding: FindEmbedding | None = None,
) -> tuple[int, int]:
    """(tokens used, limit) for the UI counter: every chunk but the last counts `chunk_length`
    (so `BREAK` and comma backtracking use up space), the last its content; limit is that
    rounded up to a multiple of `chunk_length` (at least one chunk)."""
    _, used = _chunk(
        parsed, tokenize, chunk_length, comma_token, comma_padding_backtrack, CLIP_END_TOKEN, find_embedding
    )
    return used, math.ceil(max(used, 1) / chunk_length) * chunk_length


def chunk_token_ids(
    chunk: PromptChunk,
    *,
    start_token: int = CLIP_START_TOKEN,
    end_token: int = CLIP_END_TOKEN,
    pad_id: int | None = None,
) -> tuple[list[int], list[float]]:
    """The encoder input for one chunk: [BOS] + tokens + [EOS] (length chunk_length + 2), with
    multipliers 1.0 at BOS/EOS. With `pad_id` (OpenCLIP: 0) every id after the first `end_token`
    becomes `pad_id`, as A1111 does for SD2/SDXL's OpenCLIP encoder."""
    ids = [start_token, *chunk.tokens, end_token]
    if pad_id is not None and pad_id != end_token:
        first_end = ids.index(end_token, 1)
        ids[first_end + 1 :] = [pad_id] * (len(ids) - first_end - 1)
    return ids, [1.0, *chunk.multipliers, 1.0]


def prompt_token_count(
    prompt: str,
    tokenize: Callable[[list[str]], list[list[int]]],
    *,
    steps: int,
    is_positive: bool = True,
    mode: EmphasisMode | str = EmphasisMode.ORIGINAL,
    chunk_length: int = 75,
    comma_token: int | None,
    comma_padding_backtrack: int = 20,
    find_embedding: FindEmbedding | None = None,
) -> tuple[int, int]:
    """The UI's `used/limit` for a whole prompt (extra-network tags already removed): the largest
    `count_tokens` over every AND part (positive prompts only) and every scheduled text."""
    parts = [text for text, _ in split_and(prompt)] if is_positive else [prompt]
    texts = {text for schedule in prompt_schedules(parts, steps) for _, text in schedule}
    best = (0, chunk_length)
    for text in sorted(texts):
        counted = count_tokens(
            parse_for_mode(text, mode),
            tokenize,
            chunk_length=chunk_length,
            comma_token=comma_token,
            comma_padding_backtrack=comma_padding_backtrack,
            find_embedding=find_embedding,
        )
        best = max(best, counted)
    return best
