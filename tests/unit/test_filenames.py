"""File-name patterns and sequence numbers (reference a1111.md section 8)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from modules.core.filenames import (
    TOKENS,
    FilenameContext,
    apply_pattern,
    next_sequence_number,
    parse_sequence_number,
    safe_path_component,
    sanitize_filename_part,
    sequence_prefix,
    truncate_utf8,
)

NOW = datetime(2024, 7, 27, 13, 5, 9, tzinfo=timezone.utc)

CTX = FilenameContext(
    seed=1234567890,
    seed_first=1000,
    seed_last=1003,
    steps=20,
    cfg=7.5,
    width=512,
    height=768,
    styles=("Cinematic", "None", "Film grain"),
    sampler="DPM++ 2M",
    scheduler="Karras",
    model_hash="6ce0161689",
    model_name="v1-5-pruned-emaonly",
    prompt="a photo of a cat, best quality",
    prompt_no_styles="a photo of a cat",
    negative_prompt="blurry",
    batch_number=2,
    batch_size=4,
    generation_number=6,
    n_iter=2,
    clip_skip=2,
    denoising=0.7,
    user="alice",
    vae_filename="/models/VAE/sdxl_vae.safetensors",
    job_timestamp="20240727130000",
    image_hash=lambda: "ab" * 32,
    now=NOW,
)


def fill(pattern: str, ctx: FilenameContext = CTX, **kw: object) -> str:
    return apply_pattern(pattern, ctx, **kw)  # type: ignore[arg-type]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("[seed]", "1234567890"),
        ("[seed_first]", "1000"),
        ("[seed_last]", "1003"),
        ("[steps]", "20"),
        ("[cfg]", "7.5"),
        ("[width]x[height]", "512x768"),
        ("[styles]", "Cinematic, Film grain"),
        ("[sampler]", "DPM++ 2M"),
        ("[sampler_scheduler]", "DPM++ 2M Karras"),
        ("[scheduler]", "Karras"),
        ("[model_hash]", "6ce0161689"),
        ("[model_name]", "v1-5-pruned-emaonly"),
        ("[date]", "2024-07-27"),
        ("[datetime]", "20240727130509"),
        ("[datetime<%Y-%m-%d_%H>]", "2024-07-27_13"),
        ("[datetime<%H%M><Asia/Tokyo>]", "2205"),
        ("[datetime<><UTC>]", "20240727130509"),
        ("[job_timestamp]", "20240727130000"),
        ("[prompt_hash]", sha("a photo of a cat, best quality")[:8]),
        ("[prompt_hash<12>]", sha("a photo of a cat, best quality")[:12]),
        ("[negative_prompt_hash]", sha("blurry")[:8]),
        ("[full_prompt_hash<10>]", sha("a photo of a cat, best quality blurry")[:10]),
        ("[prompt]", "a_photo_of_a_cat,_best_quality"),
        ("[prompt_no_styles]", "a photo of a cat"),
        ("[prompt_spaces]", "a photo of a cat, best quality"),
        ("[prompt_words]", "a photo of a cat best quality"),
        ("[batch_number]", "2"),
        ("[batch_size]", "4"),
        ("[generation_number]", "6"),
        ("[hasprompt<cat>]", "cat"),
        ("[hasprompt<dog|nodog>]", "nodog"),
        ("[hasprompt<CAT|x><dog>]", "cat"),
        ("[hasprompt<dog|no dog>]", "no_dog"),
        ("[clip_skip]", "2"),
        ("[denoising]", "0.7"),
        ("[user]", "alice"),
        ("[vae_filename]", "sdxl_vae"),
        ("[none]", ""),
        ("[image_hash]", "ab" * 32),
        ("[image_hash<6>]", "ababab"),
    ],
)
def test_each_token(pattern: str, expected: str) -> None:
    assert fill(pattern) == expected


def test_every_spec_token_has_a_handler() -> None:
    spec_tokens = [
        "seed",
        "seed_first",
        "seed_last",
        "steps",
        "cfg",
        "width",
        "height",
        "styles",
        "sampler",
        "sampler_scheduler",
        "scheduler",
        "model_hash",
        "model_name",
        "date",
        "datetime",
        "job_timestamp",
        "prompt_hash",
        "negative_prompt_hash",
        "full_prompt_hash",
        "prompt",
        "prompt_no_styles",
        "prompt_spaces",
        "prompt_words",
        "batch_number",
        "batch_size",
        "generation_number",
        "hasprompt",
        "clip_skip",
        "denoising",
        "user",
        "vae_filename",
        "none",
        "image_hash",
    ]
    assert set(spec_tokens) == set(TOKENS)


def test_default_patterns() -> None:
    assert fill("[seed]-[prompt_spaces]") == "1234567890-a photo of a cat, best quality"


def test_tokens_are_case_insensitive_and_literal_text_is_kept() -> None:
    assert fill("img [SEED] at [Steps] steps!") == "img 1234567890 at 20 steps!"


def test_unknown_tokens_and_missing_values_stay_as_written() -> None:
    assert fill("[seed]-[nonsense]-[other<1>]") == "1234567890-[nonsense]-[other<1>]"
    empty = FilenameContext(now=NOW)
    assert fill("[seed]_[steps]_[sampler]_[user]_[model_name]", empty) == "[seed]_[steps]_[sampler]_[user]_[model_name]"
    assert fill("[prompt]", empty) == "[prompt]"
    assert fill("a[b", empty) == "a[b"


def test_vanishing_tokens_take_preceding_text() -> None:
    single = FilenameContext(seed=5, batch_size=1, n_iter=1, batch_number=1, generation_number=1, seed_last=5)
    assert fill("[seed]-[batch_number]-[generation_number]-[seed_last].x", single) == "5.x"
    assert fill("[seed]-[denoising]", FilenameContext(seed=5, denoising=0.0)) == "5"
    assert fill("[seed]-[denoising]", FilenameContext(seed=5)) == "5"
    assert fill("[seed] [sampler_scheduler] [scheduler]", FilenameContext(seed=5)) == "5"
    # a 1-image batch over several iterations still numbers generations
    gens = FilenameContext(seed=5, batch_size=1, n_iter=3, generation_number=3)
    assert fill("[seed]-[generation_number]", gens) == "5-3"


def test_seed_first_falls_back_to_seed() -> None:
    assert fill("[seed_first]", FilenameContext(seed=9)) == "9"


def test_scheduler_automatic_resolves_to_sampler_default_and_is_capitalized() -> None:
    ctx = FilenameContext(sampler="DPM++ 2M SDE", scheduler="Automatic")
    assert fill("[scheduler]", ctx) == "Exponential"
    assert fill("[sampler_scheduler]", ctx) == "DPM++ 2M SDE Exponential"
    assert fill("[scheduler]", FilenameContext(sampler="Euler", scheduler="Automatic")) == "Automatic"
    assert fill("[scheduler]", FilenameContext(sampler="Euler", scheduler="SGM Uniform")) == "Sgm uniform"


def test_styles_none() -> None:
    assert fill("[styles]", FilenameContext(styles=())) == "None"
    assert fill("[styles]", FilenameContext(styles=("None",))) == "None"


def test_prompt_words_limit_and_empty() -> None:
    ctx = FilenameContext(prompt="one, two; three... four! five six seven eight nine ten", max_prompt_words=3)
    assert fill("[prompt_words]", ctx) == "one two three"
    assert fill("[prompt_words]", FilenameContext(prompt="!!! ...")) == "empty"
    assert fill("[prompt_words]", FilenameContext(prompt="")) == "empty"


def test_vae_filename_variants() -> None:
    assert fill("[vae_filename]", FilenameContext()) == "NoneType"
    assert fill("[vae_filename]", FilenameContext(vae_filename="kl-f8.vae.pt")) == "kl-f8"
    assert fill("[vae_filename]", FilenameContext(vae_filename=".hidden.pt")) == "hidden"
    assert fill("[vae_filename]", FilenameContext(vae_filename="C:\\vae\\x.ckpt")) == "x"


def test_datetime_bad_timezone_and_now_default() -> None:
    local = NOW.astimezone(None).strftime("%H")
    assert fill("[datetime<%H><No/Such_Zone>]") == local
    assert fill("[datetime<%H><../../etc/passwd>]") == local
    before = datetime.now() - timedelta(seconds=2)
    stamp = fill("[datetime]", FilenameContext())
    assert datetime.strptime(stamp, "%Y%m%d%H%M%S") >= before.replace(microsecond=0)
    assert fill("[date]", FilenameContext()) == datetime.now().strftime("%Y-%m-%d")


def test_datetime_format_with_separators_is_sanitized() -> None:
    assert fill("[datetime<%Y/%m/%d>]") == "2024_07_27"


def test_image_hash_is_lazy() -> None:
    calls: list[int] = []

    def image_hash() -> str:
        calls.append(1)
        return "ff" * 32

    ctx = FilenameContext(seed=1, image_hash=image_hash)
    assert fill("[seed]", ctx) == "1"
    assert calls == []
    assert fill("[image_hash<4>]", ctx) == "ffff"
    assert calls == [1]
    assert fill("[image_hash]", FilenameContext()) == "[image_hash]"


# --- sanitizing -------------------------------------------------------------------------------

TRAVERSAL_PROMPTS = [
    "../../../../etc/passwd",
    "..",
    "...",
    "..\\..\\windows\\system32",
    "/absolute/path",
    "C:\\Windows\\evil",
    "a/../../b",
    " .. ",
    "\x00nul byte/..",
]


@pytest.mark.parametrize("prompt", TRAVERSAL_PROMPTS)
@pytest.mark.parametrize(
    "pattern",
    ["[prompt]", "[prompt_spaces]", "[prompt_words]", "[prompt_no_styles]", "[hasprompt<..|..>]", "[styles]"],
)
@pytest.mark.parametrize("unix", [False, True])
def test_prompt_text_cannot_make_path_components(prompt: str, pattern: str, unix: bool) -> None:
    ctx = FilenameContext(prompt=prompt, styles=(prompt,), now=NOW)
    out = fill(pattern, ctx, unix_sanitization=unix)
    assert "/" not in out
    assert "\x00" not in out
    assert out not in (".", "..")
    assert not out.endswith(".")
    if not unix:
        assert "\\" not in out and ":" not in out


def test_other_text_fields_are_sanitized_too() -> None:
    ctx = FilenameContext(
        model_name="../x", user="a/b", sampler="s/../x", model_hash="../..", vae_filename="../v.pt", now=NOW
    )
    for token in ("[model_name]", "[user]", "[sampler]", "[model_hash]", "[vae_filename]"):
        assert "/" not in fill(token, ctx)


def test_windows_reserved_characters_replaced() -> None:
    ctx = FilenameContext(prompt='a<b>c:d"e/f\\g|h?i*j#k\tl\nm')
    assert fill("[prompt_spaces]", ctx) == "a_b_c_d_e_f_g_h_i_j_k_l_m"
    assert fill("[prompt_spaces]", ctx, unix_sanitization=True) == 'a<b>c:d"e_f\\g|h?i*j#k\tl\nm'


def test_length_capped_per_token() -> None:
    ctx = FilenameContext(prompt="word " * 100, seed=1)
    out = fill("[seed]-[prompt_spaces]", ctx, max_length=50)
    assert out.startswith("1-word word")
    assert len(out) <= 2 + 50
    assert len(fill("[prompt]", ctx)) <= 128


def test_sanitize_filename_part() -> None:
    assert sanitize_filename_part("  a b. . ") == "__a_b._._"  # spaces become "_" before trimming
    assert sanitize_filename_part("  a b. . ", replace_spaces=False) == "a b"
    assert sanitize_filename_part("x" * 10, max_length=4) == "xxxx"
    assert sanitize_filename_part("..") == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-07-27", "2024-07-27"),
        ("..", "_"),
        (".", "_"),
        ("", "_"),
        ("a/b", "a_b"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("dir. ", "dir"),
    ],
)
def test_safe_path_component(text: str, expected: str) -> None:
    assert safe_path_component(text) == expected


def test_safe_path_component_unix() -> None:
    assert safe_path_component("..", unix_sanitization=True) == "_"
    assert safe_path_component("CON", unix_sanitization=True) == "CON"
    assert safe_path_component("a\\b:c", unix_sanitization=True) == "a\\b:c"


def test_truncate_utf8_never_splits_a_character() -> None:
    assert truncate_utf8("abc", 10) == "abc"
    assert truncate_utf8("猫猫猫", 7) == "猫猫"  # 3 bytes each
    assert len(truncate_utf8("é" * 200, 255).encode()) <= 255
    assert truncate_utf8("abc", 0) == ""


# --- sequence numbers -------------------------------------------------------------------------


def test_sequence_prefix() -> None:
    assert sequence_prefix(12) == "00012"
    assert sequence_prefix(123456) == "123456"
    assert sequence_prefix(3, "grid") == "grid-0003"


def test_parse_sequence_number() -> None:
    assert parse_sequence_number("00012-1234.png") == 12
    assert parse_sequence_number("00012.png") == 12
    assert parse_sequence_number("grid-0003.png") is None
    assert parse_sequence_number("grid-0003.png", "grid") == 3
    assert parse_sequence_number("grid-0003-1234.png", "grid") == 3
    assert parse_sequence_number("notes.txt") is None
    assert parse_sequence_number(".sdwebui-abc.tmp") is None
    assert parse_sequence_number("٣-x.png") is None  # non-ASCII digits are not numbers here


def test_next_sequence_number(tmp_path: Path) -> None:
    assert next_sequence_number(tmp_path / "missing") == 0
    assert next_sequence_number(tmp_path) == 0
    for name in ("00000-1.png", "00041-2.png", "00007-3.txt", "grid-0009.png", "readme.md"):
        (tmp_path / name).write_bytes(b"")
    assert next_sequence_number(tmp_path) == 42
    assert next_sequence_number(tmp_path, "grid") == 10
    assert next_sequence_number(["00001-a.png", "00002-b.png"]) == 3
