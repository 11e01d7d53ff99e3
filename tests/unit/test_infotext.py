"""Infotext build/parse against the A1111 format (reference a1111.md 3.1-3.3, ecosystem 4.7).

Sample strings are written from the spec, not copied from A1111's tests.
"""

from __future__ import annotations

import json

import pytest

from modules.core.infotext import (
    DEFAULTS_FOR_MISSING_KEYS,
    EXTRA_PARAM_KEYS,
    INFOTEXT_KEYS_BEFORE_EXTRA,
    build_infotext,
    format_params_line,
    infotext_key_order,
    order_params,
    parse_infotext,
    parse_params_line,
    parse_version,
    quote,
    split_sampler_scheduler,
    unquote,
)

CANONICAL = (
    "a photo of a cat, (masterpiece:1.2) <lora:add_detail:0.8>\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.7, Hires upscale: 2, "
    'Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1'
)


# --- building ---------------------------------------------------------------------------------


def test_canonical_case_exact_text_and_key_order() -> None:
    # Given in a scrambled order, as an engine might collect them; order_params restores A1111's.
    main = {
        "Version": "v1.10.1",
        "Seed": 1234567890,
        "Model": "v1-5-pruned-emaonly",
        "Steps": 20,
        "Size": "512x768",
        "CFG scale": 7,
        "Sampler": "DPM++ 2M",
        "Model hash": "6ce0161689",
        "Schedule type": "Karras",
        "Clip skip": None,
        "RNG": None,
    }
    extra = {
        "Lora hashes": "add_detail: 7c6bad76eb54",
        "Hires upscaler": "Latent",
        "Denoising strength": 0.7,
        "Hires upscale": 2,
    }
    params = order_params(main, extra)
    assert list(params)[:9] == [
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Seed",
        "Size",
        "Model hash",
        "Model",
        "Denoising strength",
    ]
    text = build_infotext("a photo of a cat, (masterpiece:1.2) <lora:add_detail:0.8>", "blurry, lowres", params)
    assert text == CANONICAL


def test_key_order_constant_matches_spec() -> None:
    order = infotext_key_order()
    assert order[:10] == (
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Image CFG scale",
        "Seed",
        "Face restoration",
        "Size",
        "Model hash",
        "Model",
    )
    assert order.index("VAE hash") < order.index("VAE") < order.index("Variation seed")
    assert order.index("Denoising strength") < order.index("Clip skip") < order.index("RNG") < order.index("Tiling")
    assert INFOTEXT_KEYS_BEFORE_EXTRA[-1] == "Tiling"
    assert order[-2:] == ("Version", "User")
    assert EXTRA_PARAM_KEYS[:3] == ("Hires upscale", "Hires resize", "Hires steps")
    assert len(set(order)) == len(order)


def test_order_params_puts_unknown_extras_before_version_in_insertion_order() -> None:
    params = order_params(
        {"User": "bob", "Version": "v1", "Steps": 20, "My script key": "a"},
        {"Zeta": 1, "Lora hashes": "x: 1", "Alpha": 2, "Hires steps": 5},
    )
    assert list(params) == ["Steps", "Hires steps", "Lora hashes", "My script key", "Zeta", "Alpha", "Version", "User"]


def test_extra_value_overrides_but_keeps_fixed_position() -> None:
    params = order_params({"Steps": 20, "Denoising strength": None, "Seed": 1}, {"Denoising strength": 0.5})
    assert list(params) == ["Steps", "Seed", "Denoising strength"]
    assert params["Denoising strength"] == 0.5


def test_negative_line_omitted_when_empty_and_none_values_skipped() -> None:
    text = build_infotext("cat", "", {"Steps": 20, "Face restoration": None, "Seed": 5})
    assert text == "cat\nSteps: 20, Seed: 5"
    assert build_infotext("cat", "", {}) == "cat"
    assert build_infotext("", "", {"Steps": 1}) == "Steps: 1"


def test_value_equal_to_key_is_written_bare() -> None:
    assert format_params_line({"Tiling": "Tiling", "Steps": 3}) == "Tiling, Steps: 3"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("Latent", "Latent"),
        (7, "7"),
        (7.0, "7.0"),
        (True, "True"),
        ("a, b", '"a, b"'),
        ("a: b", '"a: b"'),
        ("two\nlines", '"two\\nlines"'),
        ('say "hi", ok', '"say \\"hi\\", ok"'),
        ("猫, ü", '"猫, ü"'),  # ensure_ascii=False
        ('no "comma"', 'no "comma"'),  # quotes alone do not trigger quoting
    ],
)
def test_quote_rules(value: object, written: str) -> None:
    assert quote(value) == written


def test_unquote() -> None:
    assert unquote('"a, b"') == "a, b"
    assert unquote('"\\u732b"') == "猫"
    assert unquote("plain") == "plain"
    assert unquote('"broken') == '"broken'
    assert unquote('"not json\\x"') == '"not json\\x"'
    assert unquote('"') == '"'


# --- round trips ------------------------------------------------------------------------------

ROUND_TRIP_PROMPTS = [
    "simple",
    "a cat, a dog, (masterpiece:1.2), [from:to:0.5]",
    'he said "hello", then: "bye"',
    "line one\nline two, with comma\nline three: colon",
    "日本語のプロンプト, émoji 🐱, ü",
    "<lora:add_detail:0.8> BREAK second chunk",
    "trailing backslash \\",
]


@pytest.mark.parametrize("prompt", ROUND_TRIP_PROMPTS)
@pytest.mark.parametrize("negative", ["", "blurry, lowres", "neg: one\nneg two", "ü, 猫"])
def test_round_trip_prompts(prompt: str, negative: str) -> None:
    params = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.5, "Seed": 42, "Size": "512x768"}
    parsed = parse_infotext(build_infotext(prompt, negative, params))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    assert parsed["Steps"] == "20"
    assert parsed["Sampler"] == "Euler a"
    assert parsed["CFG scale"] == "7.5"
    assert parsed["Size-1"] == "512" and parsed["Size-2"] == "768"


@pytest.mark.parametrize(
    "value",
    [
        "comma, value",
        "colon: value",
        "multi\nline",
        'quote " inside, and comma',
        'backslash \\ and "quote": x',
        "猫: ü, 🐱",
        '{"json": [1, 2]}',
    ],
)
def test_round_trip_param_values(value: str) -> None:
    text = build_infotext("p", "n", {"Steps": 1, "Hires prompt": value, "Seed": 2, "Custom key": value})
    assert "\n" not in text.split("\n", 2)[2]  # params stay on one line
    parsed = parse_infotext(text)
    assert parsed["Hires prompt"] == value
    assert parsed["Custom key"] == value
    assert parsed["Seed"] == "2"


# --- parsing samples written from the spec -----------------------------------------------------


def test_parse_canonical() -> None:
    res = parse_infotext(CANONICAL)
    assert res["Prompt"] == "a photo of a cat, (masterpiece:1.2) <lora:add_detail:0.8>"
    assert res["Negative prompt"] == "blurry, lowres"
    assert res["Steps"] == "20"
    assert res["Sampler"] == "DPM++ 2M"
    assert res["Schedule type"] == "Karras"
    assert res["Seed"] == "1234567890"
    assert (res["Size-1"], res["Size-2"]) == ("512", "768")
    assert "Size" not in res
    assert res["Model hash"] == "6ce0161689"
    assert res["Denoising strength"] == "0.7"
    assert res["Hires upscale"] == "2"
    assert res["Hires upscaler"] == "Latent"
    assert res["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert res["Version"] == "v1.10.1"
    assert "Downcast alphas_cumprod" not in res  # v1.10.1 needs no shim


def test_parse_hires_lora_ti_and_clip_skip() -> None:
    text = (
        "masterpiece, 1girl, <lora:detail:0.5> <lora:style b:1>\n"
        "Negative prompt: worst quality, embedding_bad\n"
        "Steps: 28, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, Seed: 3141592653, "
        "Size: 832x1216, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, "
        "VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, "
        "Denoising strength: 0.35, Clip skip: 2, Hires resize: 1248x1824, Hires steps: 12, "
        "Hires upscaler: R-ESRGAN 4x+, Hires sampler: DPM++ 2M SDE, Hires schedule type: Exponential, "
        'Hires prompt: "masterpiece, detailed", Lora hashes: "detail: 0123456789ab, style b: ba9876543210", '
        'TI hashes: "embedding_bad: 1a2b3c4d5e6f", Version: v1.10.1'
    )
    res = parse_infotext(text)
    assert res["Lora hashes"] == "detail: 0123456789ab, style b: ba9876543210"
    assert isinstance(res["Lora hashes"], str)
    assert res["TI hashes"] == "embedding_bad: 1a2b3c4d5e6f"
    assert (res["Hires resize-1"], res["Hires resize-2"]) == ("1248", "1824")
    assert res["Hires steps"] == "12"
    assert res["Hires upscaler"] == "R-ESRGAN 4x+"
    assert res["Hires sampler"] == "DPM++ 2M SDE"
    assert res["Hires schedule type"] == "Exponential"
    assert res["Hires prompt"] == "masterpiece, detailed"
    assert res["Hires negative prompt"] == ""  # default
    assert res["Hires checkpoint"] == "Use same checkpoint"  # default
    assert res["Clip skip"] == "2"
    assert res["VAE"] == "sdxl_vae.safetensors"
    assert res["Sampler"] == "Euler a"
    assert res["Schedule type"] == "Automatic"


def test_parse_forge_style_infotext() -> None:
    text = (
        "a lighthouse at dusk\n"
        "Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 7, "
        "Size: 896x1152, Model hash: abcdef1234, Model: flux1-dev-bnb-nf4-v2, "
        'Diffusion in Low Bits: "Automatic (fp16 LoRA)", Module 1: ae, Version: f2.0.1v1.10.1-previous-313-g8a042934'
    )
    res = parse_infotext(text)
    assert res["Prompt"] == "a lighthouse at dusk"
    assert res["Negative prompt"] == ""
    assert res["Schedule type"] == "Simple"
    assert res["Distilled CFG Scale"] == "3.5"
    assert res["Module 1"] == "ae"
    assert res["Diffusion in Low Bits"] == "Automatic (fp16 LoRA)"
    assert res["Version"] == "f2.0.1v1.10.1-previous-313-g8a042934"
    assert "Downcast alphas_cumprod" not in res  # Forge versions do not parse: no shims


@pytest.mark.parametrize(
    ("sampler", "expected_sampler", "expected_schedule"),
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "Karras"),
        ("DPM++ 2M SDE Heun Exponential", "DPM++ 2M SDE Heun", "Exponential"),
        ("DPM2 a Karras", "DPM2 a", "Karras"),
        ("Euler SGMUniform", "Euler", "SGM Uniform"),
        ("Euler a", "Euler a", "Automatic"),
        ("DDIM", "DDIM", "Automatic"),
        ("DPM++ SDE", "DPM++ SDE", "Automatic"),
    ],
)
def test_old_combined_sampler_names_are_split(sampler: str, expected_sampler: str, expected_schedule: str) -> None:
    res = parse_infotext(f"cat\nSteps: 20, Sampler: {sampler}, CFG scale: 7, Seed: 1, Size: 512x512")
    assert res["Sampler"] == expected_sampler
    assert res["Schedule type"] == expected_schedule


def test_old_combined_hires_sampler_is_split() -> None:
    res = parse_infotext("cat\nSteps: 20, Sampler: Euler, Seed: 1, Hires sampler: DPM++ 2M Karras")
    assert res["Hires sampler"] == "DPM++ 2M"
    assert res["Hires schedule type"] == "Karras"


def test_split_sampler_scheduler_helper() -> None:
    assert split_sampler_scheduler("Restart karras") == ("Restart", "Karras")
    assert split_sampler_scheduler("Karras") == ("Karras", None)
    assert split_sampler_scheduler("UniPC") == ("UniPC", None)


def test_last_line_with_fewer_than_three_pairs_is_prompt() -> None:
    res = parse_infotext("a cat\nstyle: anime, mood: calm")
    assert res["Prompt"] == "a cat\nstyle: anime, mood: calm"
    assert "style" not in res
    res = parse_infotext("just a prompt")
    assert res["Prompt"] == "just a prompt"
    assert res["Negative prompt"] == ""
    assert "Steps" not in res


def test_multiline_prompt_and_negative_prompt() -> None:
    text = "line 1\nline 2\n\nline 4\nNegative prompt: bad 1\nbad 2\nSteps: 5, Seed: 1, CFG scale: 2"
    res = parse_infotext(text)
    assert res["Prompt"] == "line 1\nline 2\n\nline 4"
    assert res["Negative prompt"] == "bad 1\nbad 2"
    assert res["Steps"] == "5"


def test_defaults_for_missing_keys() -> None:
    res = parse_infotext("cat\nSteps: 20, Seed: 1, CFG scale: 7")
    for key, default in DEFAULTS_FOR_MISSING_KEYS:
        assert res[key] == default, key
    assert res["Clip skip"] == "1"
    assert res["RNG"] == "GPU"
    assert res["Schedule type"] == "Automatic"
    assert res["Hires sampler"] == "Use same sampler"
    assert res["Masked area padding"] == 32
    assert "Emphasis" not in res  # no brackets in the prompt


def test_present_keys_are_not_overridden_by_defaults() -> None:
    res = parse_infotext("cat\nSteps: 20, Seed: 1, RNG: CPU, Clip skip: 2, Masked area padding: 64")
    assert res["RNG"] == "CPU"
    assert res["Clip skip"] == "2"
    assert res["Masked area padding"] == "64"


def test_emphasis_default_when_prompt_uses_brackets() -> None:
    assert parse_infotext("(cat:1.2)\nSteps: 1, Seed: 1, CFG scale: 1")["Emphasis"] == "Original"
    res = parse_infotext("(cat:1.2)\nSteps: 1, Seed: 1, Emphasis: No norm")
    assert res["Emphasis"] == "No norm"


def test_backcompat_shims_for_old_versions() -> None:
    res = parse_infotext("a [cat:dog:5]\nSteps: 20, Sampler: DDIM, Seed: 1, Refiner: xl_refiner, Version: v1.5.2")
    assert res["Old prompt editing timelines"] is True
    assert res["Pad conds v0"] is True
    assert res["Downcast alphas_cumprod"] is True
    assert res["Refiner switch by sampling steps"] is True

    res = parse_infotext("a [cat:dog:5]\nSteps: 20, Sampler: DDIM, Seed: 1, Version: v1.7.0-224-gabcdef0")
    assert "Old prompt editing timelines" not in res
    assert "Pad conds v0" not in res
    assert res["Downcast alphas_cumprod"] is True

    res = parse_infotext("a\nSteps: 20, Seed: 1, Refiner: r, Version: v1.7.0-225-gabcdef0")
    assert "Downcast alphas_cumprod" not in res
    assert res["Refiner switch by sampling steps"] is True

    res = parse_infotext("a [b:c:1]\nSteps: 20, Sampler: DDIM, Seed: 1")  # no Version: nothing
    assert "Old prompt editing timelines" not in res
    assert res["Refiner switch by sampling steps"] is False

    res = parse_infotext("a [b:c:1]\nSteps: 20, Sampler: DDIM, Seed: 1, Version: v1.5.0", backcompat=False)
    assert "Old prompt editing timelines" not in res


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v1.10.1", (1, 10, 1, 0)),
        ("v1.10.1-92-g6685e532", (1, 10, 1, 92)),
        ("v1.7.0-RC-5-gabc", (1, 7, 0, 5)),
        ("v1.6.0", (1, 6, 0, 0)),
        ("1.8.0", (1, 8, 0, 0)),
        ("f2.0.1v1.10.1-previous-313-g8a042934", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_version(text: object, expected: tuple[int, int, int, int] | None) -> None:
    assert parse_version(text) == expected


def test_hypernet_is_appended_to_prompt() -> None:
    res = parse_infotext("cat\nSteps: 20, Seed: 1, Hypernet: anime, Hypernet strength: 0.6")
    assert res["Prompt"] == "cat<hypernet:anime:0.6>"
    res = parse_infotext("cat\nSteps: 20, Seed: 1, Hypernet: anime")
    assert res["Prompt"] == "cat<hypernet:anime:1.0>"


def test_old_first_pass_size_becomes_hires_fields() -> None:
    res = parse_infotext("cat\nSteps: 20, Seed: 1, Size: 1024x1024, First pass size: 512x512")
    assert (res["Size-1"], res["Size-2"]) == (512, 512)
    assert (res["Hires resize-1"], res["Hires resize-2"]) == (1024, 1024)
    # 0x0 meant "about 512x512 at the same aspect, multiples of 64"
    res = parse_infotext("cat\nSteps: 20, Seed: 1, Size: 1024x768, First pass size: 0x0")
    assert (res["Size-1"], res["Size-2"]) == (640, 448)
    assert (res["Hires resize-1"], res["Hires resize-2"]) == (1024, 768)


def test_skip_keys_removed() -> None:
    res = parse_infotext(CANONICAL, skip_keys=["Seed", "Model hash", "Not there"])
    assert "Seed" not in res and "Model hash" not in res
    assert res["Steps"] == "20"


def test_parse_params_line_helper() -> None:
    line = 'Steps: 20, Seed resize from: 640x480, Note: "a, b", Empty: , Last: x'
    assert parse_params_line(line) == {
        "Steps": "20",
        "Seed resize from-1": "640",
        "Seed resize from-2": "480",
        "Note": "a, b",
        "Last": "x",
    }


def test_parse_ignores_surrounding_whitespace() -> None:
    res = parse_infotext("\n\n  cat  \nSteps: 20, Seed: 1, CFG scale: 7\n\n")
    assert res["Prompt"] == "cat"
    assert res["Steps"] == "20"


def test_json_value_in_params_line_survives() -> None:
    hashes = json.dumps({"model": "6ce0161689", "lora:x": "0123456789"})
    res = parse_infotext(build_infotext("p", "", {"Steps": 1, "Seed": 1, "Hashes": hashes}))
    assert json.loads(str(res["Hashes"])) == {"model": "6ce0161689", "lora:x": "0123456789"}
