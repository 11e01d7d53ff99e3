"""A1111 prompt syntax (a1111.md section 4): expected values are derived from the spec text."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence

import pytest

from modules.core.prompt_syntax import (
    BREAK_MARKER,
    CLIP_END_TOKEN,
    CLIP_START_TOKEN,
    EMBEDDING_PLACEHOLDER_TOKEN,
    EmbeddingMatch,
    EmphasisMode,
    PromptChunk,
    PromptChunkFix,
    chunk_prompt,
    chunk_token_ids,
    count_tokens,
    is_break,
    multicond_prompt_list,
    parse_emphasis,
    parse_for_mode,
    prompt_at_step,
    prompt_schedules,
    prompt_token_count,
    split_and,
)

UP = 1.1
DOWN = 1 / 1.1
COMMA = 267
PAD = CLIP_END_TOKEN


def fake_tokenize(texts: list[str]) -> list[list[int]]:
    """One token per word: `tN` -> 1000 + N, `,` -> COMMA, any other word -> 5000 + its length."""
    out: list[list[int]] = []
    for text in texts:
        ids: list[int] = []
        for word in re.findall(r",|[^\s,]+", text):
            if word == ",":
                ids.append(COMMA)
            elif re.fullmatch(r"t\d+", word):
                ids.append(1000 + int(word[1:]))
            else:
                ids.append(5000 + len(word))
        out.append(ids)
    return out


def words(start: int, stop: int) -> str:
    return " ".join(f"t{i}" for i in range(start, stop))


def ids(start: int, stop: int) -> list[int]:
    return [1000 + i for i in range(start, stop)]


def content(chunk: PromptChunk) -> list[int]:
    return chunk.tokens[: chunk.length]


def assert_parsed(actual: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [text for text, _ in actual] == [text for text, _ in expected]
    assert [weight for _, weight in actual] == pytest.approx([weight for _, weight in expected])


# --------------------------------------------------------------------------- emphasis (4.4)


def test_emphasis_brief_example() -> None:
    assert_parsed(
        parse_emphasis("a (b:1.5) [c] \\(d\\)"),
        [("a ", 1.0), ("b", 1.5), (" ", 1.0), ("c", DOWN), (" (d)", 1.0)],
    )


def test_emphasis_round_and_square_brackets() -> None:
    assert parse_emphasis("an (important) word") == [("an ", 1.0), ("important", 1.1), (" word", 1.0)]
    assert_parsed(parse_emphasis("a [minor] word"), [("a ", 1.0), ("minor", DOWN), (" word", 1.0)])
    assert parse_emphasis("plain text") == [("plain text", 1.0)]


@pytest.mark.parametrize(
    ("prompt", "weight"),
    [
        ("((a))", 1.21),
        ("(((a)))", 1.331),
        ("[[a]]", DOWN * DOWN),
        ("((a:1.5))", 1.65),
        ("([a])", 1.0),
        ("(a:0.5)", 0.5),
        ("(a : 0.5 )", 0.5),
        ("(a:-1)", -1.0),
        ("(a:+.5)", 0.5),
        ("(a:2.)", 2.0),
    ],
)
def test_emphasis_nesting_multiplies_and_explicit_weights(prompt: str, weight: float) -> None:
    ((text, actual),) = parse_emphasis(prompt)
    assert text.strip() == "a"
    assert actual == pytest.approx(weight)


def test_emphasis_float_products_follow_bracket_closing_order() -> None:
    # weights are multiplied as brackets close (inner first), unclosed ones at the end
    assert parse_emphasis("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).") == [
        ("a ", 1.0),
        ("house", 1.0 * 1.3 * 1.1 * 1.1),
        (" ", 1.1),
        ("on", 1.0 * DOWN * 1.1),
        (" a ", 1.1),
        ("hill", 0.5 * 1.1),
        (", sun, ", 1.1),
        ("sky", 1.0 * 1.1 * 1.1 * 1.1 * 1.1),
        (".", 1.1),
    ]


def test_emphasis_escapes_are_literal_and_lone_backslash_is_dropped() -> None:
    assert parse_emphasis("\\(literal\\]") == [("(literal]", 1.0)]
    assert parse_emphasis("\\[x\\)") == [("[x)", 1.0)]
    assert parse_emphasis("a\\\\b") == [("a\\b", 1.0)]
    assert parse_emphasis("a\\b") == [("ab", 1.0)]
    assert parse_emphasis("(\\(x\\))") == [("(x)", 1.1)]


def test_emphasis_unbalanced_brackets() -> None:
    assert parse_emphasis("(unbalanced") == [("unbalanced", 1.1)]
    assert_parsed(parse_emphasis("a [b"), [("a ", 1.0), ("b", DOWN)])
    assert_parsed(parse_emphasis("a ( b ]"), [("a ", 1.0), (" b ]", 1.1)])  # `]` without `[` is text
    assert parse_emphasis("a) b] c") == [("a) b] c", 1.0)]
    assert parse_emphasis("x:1.5) y") == [("x:1.5) y", 1.0)]  # a weight without `(` is text


def test_emphasis_merges_equal_neighbours() -> None:
    assert parse_emphasis("(unnecessary)(parens)") == [("unnecessaryparens", 1.1)]
    assert parse_emphasis("a(b:1)c") == [("abc", 1.0)]


def test_emphasis_colons_that_are_not_weights() -> None:
    assert parse_emphasis("(a:b)") == [("a:b", 1.1)]
    # only round brackets take explicit weights; `[a:1.2]` is prompt-editing syntax
    assert_parsed(parse_emphasis("[a:1.2]"), [("a:1.2", DOWN)])
    assert parse_emphasis("time: 12:30") == [("time: 12:30", 1.0)]


def test_emphasis_malformed_weight_degrades_to_text() -> None:
    # `[.\d]+` also matches "1.2.3", which is no number: kept as text, the bracket closes as 1.1
    assert parse_emphasis("(a:1.2.3) b") == [("a:1.2.3", 1.1), (" b", 1.0)]
    assert parse_emphasis("(a:.)") == [("a:.", 1.1)]


def test_emphasis_empty_prompt() -> None:
    assert parse_emphasis("") == [("", 1.0)]
    assert parse_emphasis("()") == [("", 1.0)]
    assert parse_emphasis("[]") == [("", 1.0)]


def test_break_markers() -> None:
    assert parse_emphasis("a BREAK b") == [("a", 1.0), BREAK_MARKER, ("b", 1.0)]
    assert parse_emphasis("a,BREAK,b") == [("a,", 1.0), BREAK_MARKER, (",b", 1.0)]
    assert parse_emphasis("BREAK") == [("", 1.0), BREAK_MARKER, ("", 1.0)]
    assert parse_emphasis("a BREAK BREAK b") == [("a", 1.0), BREAK_MARKER, ("", 1.0), BREAK_MARKER, ("b", 1.0)]
    # uppercase whole words only
    assert parse_emphasis("a break b") == [("a break b", 1.0)]
    assert parse_emphasis("BREAKS xBREAK BREAK_") == [("BREAKS xBREAK BREAK_", 1.0)]


def test_break_inside_brackets_stays_an_unweighted_marker() -> None:
    assert parse_emphasis("(a BREAK b)") == [("a", 1.1), BREAK_MARKER, ("b", 1.1)]
    parsed = parse_emphasis("[x BREAK")
    assert parsed[1] == BREAK_MARKER and is_break(parsed[1])
    assert not is_break(("BREAK", 1.0))


def test_emphasis_modes() -> None:
    assert [mode.value for mode in EmphasisMode] == ["Original", "No norm", "Ignore", "None"]
    assert EmphasisMode.ORIGINAL.applies_weights and EmphasisMode.ORIGINAL.restores_mean
    assert EmphasisMode.NO_NORM.applies_weights and not EmphasisMode.NO_NORM.restores_mean
    assert EmphasisMode.IGNORE.parses_brackets and not EmphasisMode.IGNORE.applies_weights
    assert not EmphasisMode.NONE.parses_brackets and not EmphasisMode.NONE.applies_weights
    assert EmphasisMode.from_option("No norm") is EmphasisMode.NO_NORM
    assert EmphasisMode.from_option("bogus") is EmphasisMode.ORIGINAL
    assert EmphasisMode.from_option(None) is EmphasisMode.ORIGINAL


def test_parse_for_mode() -> None:
    prompt = "a (b) BREAK [c]"
    assert parse_for_mode(prompt, EmphasisMode.NONE) == [(prompt, 1.0)]
    assert parse_for_mode(prompt, "None") == [(prompt, 1.0)]
    assert parse_for_mode(prompt, EmphasisMode.IGNORE) == parse_emphasis(prompt)  # same pieces, same tokens
    assert parse_for_mode(prompt, "Original") == parse_emphasis(prompt)


# --------------------------------------------------------------------------- AND (4.2)


def test_split_and_without_and() -> None:
    assert split_and("a cat") == [("a cat", 1.0)]
    assert split_and("") == [("", 1.0)]
    assert split_and("a (cat:1.2)") == [("a (cat:1.2)", 1.0)]
    assert split_and("[a:b:0.5]") == [("[a:b:0.5]", 1.0)]


def test_split_and_weights() -> None:
    assert split_and("a AND b") == [("a", 1.0), (" b", 1.0)]  # leading space kept, trailing dropped
    assert split_and("a cat:1.5 AND a dog : 0.5 AND x:-2") == [("a cat", 1.5), (" a dog", 0.5), (" x", -2.0)]
    assert split_and("a:.5 AND b:2.") == [("a", 0.5), (" b", 2.0)]
    assert split_and("a:1:2") == [("a:1", 2.0)]  # a trailing weight applies even without AND
    assert split_and("a AND") == [("a", 1.0), ("", 1.0)]


def test_split_and_is_uppercase_word_only() -> None:
    assert split_and("salt and pepper") == [("salt and pepper", 1.0)]
    assert split_and("ANDROID ANDY") == [("ANDROID ANDY", 1.0)]
    assert split_and("a,AND,b") == [("a,", 1.0), (",b", 1.0)]


def test_multicond_prompt_list_deduplicates_texts() -> None:
    flat, per_prompt = multicond_prompt_list(["a AND b:2", "b AND c", "a"])
    assert flat == ["a", " b", "b", " c"]
    assert per_prompt == [[(0, 1.0), (1, 2.0)], [(2, 1.0), (3, 1.0)], [(0, 1.0)]]


# --------------------------------------------------------------------------- editing (4.3)


def one(prompt: str, steps: int, **kwargs: object) -> list[tuple[int, str]]:
    return prompt_schedules([prompt], steps, **kwargs)[0]  # type: ignore[arg-type]


def test_no_editing_is_one_entry() -> None:
    assert one("a cat", 20) == [(20, "a cat")]
    assert one("", 20) == [(20, "")]
    assert one("(a:1.2) [b] \\(c\\)", 20) == [(20, "(a:1.2) [b] \\(c\\)")]  # emphasis kept verbatim


def test_from_to_when_switches_exactly_at_step() -> None:
    assert one("[from:to:10]", 20) == [(10, "from"), (20, "to")]
    assert one("a [b:c:10] d", 20) == [(10, "a b d"), (20, "a c d")]


def test_add_and_remove_forms() -> None:
    assert one("a [to:10]", 20) == [(10, "a "), (20, "a to")]
    assert one("a [from::10]", 20) == [(10, "a from"), (20, "a ")]
    assert one("[:5]", 20) == [(5, ""), (20, "")]


def test_fraction_of_steps() -> None:
    assert one("a [b:c:0.25] d", 20) == [(5, "a b d"), (20, "a c d")]
    assert one("[a:b:.5]", 20) == [(10, "a"), (20, "b")]
    # int() truncates the float product: 0.29 * 100 = 28.999999999999996
    assert one("[a:b:0.29]", 100) == [(28, "a"), (100, "b")]


def test_when_clamping_and_number_forms() -> None:
    assert one("[a:b:30]", 20) == [(20, "a")]  # clamped to steps: never switches
    assert one("[a:b:0]", 20) == [(20, "b")]  # 0 is never >= a step
    assert one("[a:b:-5]", 20) == [(20, "b")]
    assert one("[a:b:1]", 20) == [(1, "a"), (20, "b")]  # integer literal: absolute step
    assert one("[a:b:1.0]", 20) == [(20, "a")]  # contains "." -> fraction: 1.0 * 20
    assert one("[a:b:2.5]", 20) == [(20, "a")]
    assert one("[a:b:1e1]", 20) == [(10, "a"), (20, "b")]  # no ".": absolute
    assert one("[a:b:+5]", 20) == [(5, "a"), (20, "b")]
    assert one("[a:b: 5 ]", 20) == [(5, "a"), (20, "b")]
    assert one("[a:b:1e999]", 20) == [(20, "a")]  # huge numbers clamp instead of failing


def test_nested_editing() -> None:
    assert one("[a:[b:c:5]:10]", 20) == [(5, "a"), (10, "a"), (20, "c")]
    assert one("[[a:b:5]:c:10]", 20) == [(5, "a"), (10, "b"), (20, "c")]
    assert one("([a:b:5]:1.2)", 20) == [(5, "(a:1.2)"), (20, "(b:1.2)")]
    assert one("[(a:b:5)]", 20) == [(20, "[(a:b:5)]")]  # round brackets never schedule


def test_alternation() -> None:
    assert one("[a|b]", 4) == [(1, "a"), (2, "b"), (3, "a"), (4, "b")]
    assert one("x [a|b|c] y", 5) == [(1, "x a y"), (2, "x b y"), (3, "x c y"), (4, "x a y"), (5, "x b y")]
    assert one("[fe|]male", 3) == [(1, "female"), (2, "male"), (3, "female")]
    assert one("[|x]", 2) == [(1, ""), (2, "x")]
    assert one("[a|b] [c:d:2]", 4) == [(1, "a c"), (2, "b c"), (3, "a d"), (4, "b d")]
    assert one("[[a|b]:c:2]", 4) == [(1, "a"), (2, "b"), (3, "c"), (4, "c")]


def test_syntax_errors_degrade_to_literal_text() -> None:
    for prompt in ["a|b [c:d:5]", "x [a:b:5] \\", "[a:b:5] a\\\nb"]:
        assert one(prompt, 20) == [(20, prompt)]  # `|` outside [..|..], dangling backslash


def test_malformed_constructs_stay_literal_text() -> None:
    assert one("[a:b:c:5]", 20) == [(20, "[a:b:c:5]")]
    assert one("[a:b:5x]", 20) == [(20, "[a:b:5x]")]
    assert one("[a:b]", 20) == [(20, "[a:b]")]
    assert one("(a:b:5)", 20) == [(20, "(a:b:5)")]
    assert one("\\[a:b:5\\]", 20) == [(20, "\\[a:b:5\\]")]  # escaped brackets are text


def test_unbalanced_brackets_around_editing() -> None:
    assert one("(a [b:c:5]", 20) == [(5, "(a b"), (20, "(a c")]
    assert one("a) [b:c:5]", 20) == [(5, "a) b"), (20, "a) c")]
    assert one("[[b:c:5]", 20) == [(5, "[b"), (20, "[c")]
    assert one("[b:c:5] :x", 20) == [(5, "b :x"), (20, "c :x")]


def test_hires_pass_offsets() -> None:
    # first pass 20 steps, hires 10: integers count on from 20, fractions from 1.0
    assert one("[a:b:25]", 20, hires_steps=10) == [(5, "a"), (10, "b")]
    assert one("[a:b:1.5]", 20, hires_steps=10) == [(5, "a"), (10, "b")]
    assert one("[a:b:10]", 20, hires_steps=10) == [(10, "b")]  # already past in the hires pass
    assert one("[a:b:0.5]", 20, hires_steps=10) == [(10, "b")]
    assert one("x", 20, hires_steps=10) == [(10, "x")]
    assert one("[a|b]", 20, hires_steps=3) == [(1, "a"), (2, "b"), (3, "a")]


def test_old_scheduling() -> None:
    assert one("[a:b:0.5]", 20, use_old_scheduling=True) == [(10, "a"), (20, "b")]
    assert one("[a:b:1.5]", 20, use_old_scheduling=True) == [(1, "a"), (20, "b")]  # >= 1: absolute
    assert one("[a:b:1.5]", 20) == [(20, "a")]
    assert one("[a:b:1.0]", 20, use_old_scheduling=True) == [(1, "a"), (20, "b")]
    # the old rules ignore hires offsets
    assert one("[a:b:0.5]", 20, hires_steps=10, use_old_scheduling=True) == [(10, "a"), (20, "b")]


def test_schedules_for_several_prompts() -> None:
    result = prompt_schedules(["[a:b:2]", "c", "[a:b:2]"], 4)
    assert result == [[(2, "a"), (4, "b")], [(4, "c")], [(2, "a"), (4, "b")]]
    result[0].append((9, "x"))
    assert result[2] == [(2, "a"), (4, "b")]  # independent lists


def test_prompt_at_step_uses_a1111_zero_based_lookup() -> None:
    schedule = [(10, "a"), (20, "b")]
    assert [prompt_at_step(schedule, step) for step in (0, 9, 10, 11, 19, 20)] == [0, 0, 0, 1, 1, 1]
    assert prompt_at_step(schedule, 25) == 0  # past the end: the first entry, as A1111
    alternating = one("[a|b]", 4)
    assert [alternating[prompt_at_step(alternating, s)][1] for s in range(4)] == ["a", "a", "b", "a"]


def test_deep_nesting_does_not_recurse() -> None:
    deep = "(" * 3000 + "[a:b:5]" + ")" * 3000
    assert one(deep, 10) == [(5, "(" * 3000 + "a" + ")" * 3000), (10, "(" * 3000 + "b" + ")" * 3000)]
    assert one("[" * 3000, 10) == [(10, "[" * 3000)]
    assert parse_emphasis("(" * 3000 + "a")[0][0] == "a"


# --------------------------------------------------------------------------- chunks (4.5)


def chunks_of(prompt: str, **kwargs: object) -> list[PromptChunk]:
    options: dict[str, object] = {"comma_token": COMMA, **kwargs}
    return chunk_prompt(parse_emphasis(prompt), fake_tokenize, **options)  # type: ignore[arg-type]


def counted(prompt: str, **kwargs: object) -> tuple[int, int]:
    options: dict[str, object] = {"comma_token": COMMA, **kwargs}
    return count_tokens(parse_emphasis(prompt), fake_tokenize, **options)  # type: ignore[arg-type]


def test_empty_prompt_is_one_padding_chunk() -> None:
    (chunk,) = chunks_of("")
    assert chunk.tokens == [PAD] * 75 and chunk.multipliers == [1.0] * 75
    assert chunk.length == 0 and chunk.fixes == []
    assert counted("") == (0, 75)


def test_exactly_75_tokens_stay_in_one_chunk() -> None:
    (chunk,) = chunks_of(words(0, 75))
    assert chunk.tokens == ids(0, 75) and chunk.length == 75
    assert counted(words(0, 75)) == (75, 75)


def test_76_tokens_make_two_chunks() -> None:
    first, second = chunks_of(words(0, 76))
    assert first.tokens == ids(0, 75)
    assert content(second) == ids(75, 76) and second.tokens[1:] == [PAD] * 74
    assert counted(words(0, 76)) == (76, 150)


def test_100_tokens_backtrack_to_last_comma() -> None:
    # 60 words, a comma (index 60), 39 words = 100 tokens; the comma is 15 tokens back when full
    prompt = words(0, 60) + " , " + words(60, 99)
    first, second = chunks_of(prompt)
    assert content(first) == [*ids(0, 60), COMMA]
    assert first.tokens[61:] == [PAD] * 14 and first.multipliers == [1.0] * 75
    assert content(second) == ids(60, 99)
    assert len(second.tokens) == 75
    assert counted(prompt) == (75 + 39, 150)


def test_no_backtrack_when_comma_is_too_far_or_disabled() -> None:
    prompt = words(0, 50) + " , " + words(50, 99)  # comma at index 50: 25 tokens back
    first, second = chunks_of(prompt)
    assert content(first) == [*ids(0, 50), COMMA, *ids(50, 74)]
    assert content(second) == ids(74, 99)
    near = words(0, 60) + " , " + words(60, 99)
    assert content(chunks_of(near, comma_padding_backtrack=0)[0]) == [*ids(0, 60), COMMA, *ids(60, 74)]
    assert content(chunk_prompt(parse_emphasis(near), fake_tokenize, comma_token=None)[0])[-1] == 1073
    assert content(chunks_of(near, comma_padding_backtrack=15)[0])[-1] == COMMA  # 75 - 60 = 15 <= 15


def test_comma_as_last_token_of_a_full_chunk() -> None:
    prompt = words(0, 74) + " , " + words(74, 80)
    first, second = chunks_of(prompt)
    assert content(first) == [*ids(0, 74), COMMA]
    assert content(second) == ids(74, 80)


def test_break_starts_a_new_chunk() -> None:
    first, second = chunks_of("t0 t1 BREAK t2")
    assert content(first) == ids(0, 2) and first.tokens[2:] == [PAD] * 73
    assert content(second) == ids(2, 3)
    assert counted("t0 t1 BREAK t2") == (76, 150)  # a broken chunk counts as full


def test_break_edges() -> None:
    assert len(chunks_of("t0 BREAK")) == 1  # a trailing BREAK adds no empty chunk
    assert counted("t0 BREAK") == (75, 75)
    empty, second = chunks_of("BREAK t0")
    assert empty.length == 0 and content(second) == ids(0, 1)
    assert len(chunks_of("(t0 BREAK t1)")) == 2


def test_multipliers_follow_tokens() -> None:
    (chunk,) = chunks_of("(t0 t1) [t2] t3")
    assert chunk.multipliers[:4] == pytest.approx([1.1, 1.1, DOWN, 1.0])
    assert chunk.multipliers[4:] == [1.0] * 71


def test_moved_tokens_keep_their_multipliers() -> None:
    prompt = words(0, 60) + " , (" + words(60, 80) + ":1.5)"
    first, second = chunks_of(prompt)
    assert first.multipliers[:61] == [1.0] * 61
    assert second.multipliers[:20] == [1.5] * 20 and second.multipliers[20:] == [1.0] * 55


def test_chunk_length_and_pad_token_options() -> None:
    chunks = chunks_of(words(0, 12), chunk_length=5, pad_token=0)
    assert [c.tokens for c in chunks] == [ids(0, 5), ids(5, 10), [*ids(10, 12), 0, 0, 0]]
    assert counted(words(0, 12), chunk_length=5) == (12, 15)


def test_count_tokens_limit_rounds_up() -> None:
    assert counted(words(0, 1)) == (1, 75)
    assert counted(words(0, 150)) == (150, 150)
    assert counted(words(0, 151)) == (151, 225)


def fake_embeddings(tokens: Sequence[int], position: int) -> EmbeddingMatch | None:
    """Token 999 is the name of a 3-vector embedding."""
    return EmbeddingMatch("emb", vectors=3, token_length=1) if tokens[position] == 999 else None


def test_embedding_placeholders_and_fixes() -> None:
    def tokenize(texts: list[str]) -> list[list[int]]:
        return [[999 if w == "emb" else 1000 + int(w[1:]) for w in t.split()] for t in texts]

    (chunk,) = chunk_prompt(
        [("t1 emb t2", 1.0), ("emb", 1.5)], tokenize, comma_token=None, find_embedding=fake_embeddings
    )
    z = EMBEDDING_PLACEHOLDER_TOKEN
    assert content(chunk) == [1001, z, z, z, 1002, z, z, z]
    assert chunk.multipliers[:8] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 1.5, 1.5]
    assert chunk.fixes == [PromptChunkFix(1, "emb", 3), PromptChunkFix(5, "emb", 3)]
    # an embedding that does not fit starts a new chunk, never split
    first, second = chunk_prompt(
        [("t1 t2 t3 emb", 1.0)], tokenize, chunk_length=5, comma_token=None, find_embedding=fake_embeddings
    )
    assert first.tokens == [1001, 1002, 1003, PAD, PAD] and first.fixes == []
    assert second.tokens == [z, z, z, PAD, PAD] and second.fixes == [PromptChunkFix(0, "emb", 3)]


def test_chunk_token_ids_add_bos_eos_and_openclip_padding() -> None:
    (chunk,) = chunks_of("(t0) t1")
    sd1, multipliers = chunk_token_ids(chunk)
    assert len(sd1) == 77 and sd1[:3] == [CLIP_START_TOKEN, 1000, 1001] and sd1[3:] == [CLIP_END_TOKEN] * 74
    assert multipliers[:3] == pytest.approx([1.0, 1.1, 1.0]) and multipliers[-1] == 1.0 and len(multipliers) == 77
    openclip, _ = chunk_token_ids(chunk, pad_id=0)
    assert openclip[:4] == [CLIP_START_TOKEN, 1000, 1001, CLIP_END_TOKEN] and openclip[4:] == [0] * 73
    (full,) = chunks_of(words(0, 75))
    assert chunk_token_ids(full, pad_id=0)[0] == [CLIP_START_TOKEN, *ids(0, 75), CLIP_END_TOKEN]


def test_prompt_token_count_takes_the_largest_text() -> None:
    assert prompt_token_count("t0 AND t1 t2", fake_tokenize, steps=20, comma_token=COMMA) == (2, 75)
    assert prompt_token_count("[t0 t1 t2:t3:5]", fake_tokenize, steps=20, comma_token=COMMA) == (3, 75)
    negative = prompt_token_count("t0 AND t1", fake_tokenize, steps=20, is_positive=False, comma_token=COMMA)
    assert negative == (3, 75)  # negative prompts are not AND-split: "AND" is a word
    literal = prompt_token_count("(t0) BREAK t1", fake_tokenize, steps=20, mode="None", comma_token=COMMA)
    assert literal == (3, 75)
    assert prompt_token_count("", fake_tokenize, steps=20, comma_token=COMMA) == (0, 75)


# --------------------------------------------------------------------------- properties

NOISE = [
    "a",
    "b c",
    " ",
    ",",
    "(",
    ")",
    "[",
    "]",
    ":",
    ":1.5",
    ":-0.5)",
    "|",
    "\\",
    "\\(",
    "\\\\",
    "BREAK",
    "1.2.3",
    "\n",
]


def test_property_nothing_raises_on_random_prompts() -> None:
    rng = random.Random(1234)
    for _ in range(2000):
        prompt = "".join(rng.choice(NOISE) for _ in range(rng.randint(0, 25)))
        parsed = parse_emphasis(prompt)
        assert parsed and all(isinstance(t, str) and isinstance(w, float) for t, w in parsed)
        steps, hires = rng.randint(1, 12), rng.choice([None, 5])
        for schedule in prompt_schedules([prompt], steps, hires_steps=hires):
            ends = [end for end, _ in schedule]
            assert ends == sorted(set(ends)) and ends[0] >= 1 and ends[-1] == (hires or steps)
        for text, _ in split_and(prompt):
            chunks = chunk_prompt(parse_emphasis(text), fake_tokenize, comma_token=COMMA)
            assert all(len(c.tokens) == len(c.multipliers) == 75 for c in chunks)


def random_emphasis(rng: random.Random, depth: int, weight: float) -> tuple[str, list[tuple[str, float]], int]:
    """(source, expected [(char, weight)], BREAK count) for a random well-formed prompt."""
    source: list[str] = []
    chars: list[tuple[str, float]] = []
    breaks = 0
    for _ in range(rng.randint(0, 4)):
        kind = rng.choice(["word", "word", "escape", "break", "round", "square", "weight"] if depth < 4 else ["word"])
        if kind == "word":
            text = "".join(rng.choice("abc ,") for _ in range(rng.randint(1, 5))).strip() or "x"
            source.append(text)
            chars += [(c, weight) for c in text]
        elif kind == "escape":
            char = rng.choice("()[]\\")
            source.append("\\" + char)
            chars.append((char, weight))
        elif kind == "break":
            source.append(" BREAK ")
            breaks += 1
        else:
            factor = {"round": 1.1, "square": 1 / 1.1, "weight": rng.choice([0.5, 1.3, 2.0])}[kind]
            inner, inner_chars, inner_breaks = random_emphasis(rng, depth + 1, weight * factor)
            opener, closer = ("[", "]") if kind == "square" else ("(", ")")
            if kind == "weight":
                closer = f":{factor})"
            source.append(opener + inner + closer)
            chars += inner_chars
            breaks += inner_breaks
    return "".join(source), chars, breaks


def test_property_text_and_weights_survive_parsing() -> None:
    rng = random.Random(99)
    for _ in range(1000):
        prompt, expected, breaks = random_emphasis(rng, 0, 1.0)
        parsed = parse_emphasis(prompt)
        assert sum(1 for entry in parsed if is_break(entry)) == breaks
        got = [(c, w) for text, w in parsed if not is_break((text, w)) for c in text]
        assert "".join(c for c, _ in got) == "".join(c for c, _ in expected), prompt
        assert [w for _, w in got] == pytest.approx([w for _, w in expected]), prompt
        # merged: no two neighbouring text entries share a weight
        assert all(a[1] != b[1] for a, b in itertools.pairwise(parsed) if not is_break(a) and not is_break(b))


def test_property_chunks_preserve_the_token_stream() -> None:
    rng = random.Random(7)
    for _ in range(300):
        pieces: list[tuple[str, float]] = []
        for _ in range(rng.randint(0, 8)):
            if rng.random() < 0.15:
                pieces.append(BREAK_MARKER)
            else:
                n = rng.randint(0, 60)
                pieces.append((" ".join(rng.choice(["t1", "t2", ","]) for _ in range(n)), rng.choice([1.0, 1.1])))
        length = rng.choice([5, 20, 75])
        chunks = chunk_prompt(pieces, fake_tokenize, chunk_length=length, comma_token=COMMA, pad_token=PAD)
        assert chunks and all(len(c.tokens) == len(c.multipliers) == length for c in chunks)
        assert all(c.tokens[c.length :] == [PAD] * (length - c.length) for c in chunks)
        stream = [(tok, w) for text, w in pieces if not is_break((text, w)) for tok in fake_tokenize([text])[0]]
        got = [(c.tokens[i], c.multipliers[i]) for c in chunks for i in range(c.length)]
        assert got == stream
        used, limit = count_tokens(pieces, fake_tokenize, chunk_length=length, comma_token=COMMA)
        # every chunk but the last counts in full; so does the last when a BREAK closed it
        assert used in (length * (len(chunks) - 1) + chunks[-1].length, length * len(chunks))
        assert limit % length == 0 and limit >= max(used, 1)
