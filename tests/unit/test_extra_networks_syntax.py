"""Extra-network tags as A1111 reads them: arguments, defaults, first prompt of a batch, hashes."""

from __future__ import annotations

import pytest

from modules.core.extra_networks import (
    HypernetArgs,
    LoraArgs,
    batch_networks,
    hashes_text,
    parse_hashes_text,
    parse_prompt,
    restore_lora_names,
    with_default_network,
)


def test_tags_are_taken_out_in_order_with_their_arguments() -> None:
    text, tags = parse_prompt("a cat <lora:add_detail:0.8> in a hat <hypernet:h:1><lora:x:te=0.5:unet=1>")
    assert text == "a cat  in a hat "
    assert [(t.kind, t.items) for t in tags] == [
        ("lora", ("add_detail", "0.8")),
        ("hypernet", ("h", "1")),
        ("lora", ("x", "te=0.5", "unet=1")),
    ]
    assert tags[2].positional == ("x",) and dict(tags[2].named) == {"te": "0.5", "unet": "1"}


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("<lora:a>", LoraArgs("a", 1.0, 1.0, None)),
        ("<lora:a:0.8>", LoraArgs("a", 0.8, 0.8, None)),  # unet defaults to te
        ("<lora:a:0.8:0.3>", LoraArgs("a", 0.8, 0.3, None)),
        ("<lora:a:1:1:16>", LoraArgs("a", 1.0, 1.0, 16)),
        ("<lora:a:-0.5>", LoraArgs("a", -0.5, -0.5, None)),
        ("<lora:a:te=0.2:unet=0.7:dyn=4>", LoraArgs("a", 0.2, 0.7, 4)),
        ("<lora:a:0.9:unet=0>", LoraArgs("a", 0.9, 0.0, None)),
    ],
)
def test_lora_arguments_read_as_a1111_reads_them(tag: str, expected: LoraArgs) -> None:
    assert LoraArgs.parse(parse_prompt(tag)[1][0]) == expected


def test_bad_numbers_are_value_errors_naming_the_tag() -> None:
    with pytest.raises(ValueError, match="<lora:a:lots>"):
        LoraArgs.parse(parse_prompt("<lora:a:lots>")[1][0])
    with pytest.raises(ValueError, match="dyn"):
        LoraArgs.parse(parse_prompt("<lora:a:1:1:0>")[1][0])
    assert HypernetArgs.parse(parse_prompt("<hypernet:h>")[1][0]) == HypernetArgs("h", 1.0)
    with pytest.raises(ValueError):
        HypernetArgs.parse(parse_prompt("<hypernet:h:x>")[1][0])


def test_a_batch_activates_the_first_prompts_tags() -> None:
    assert [t.items[0] for t in batch_networks(["<lora:a:1>", "<lora:b:1>"])] == ["a"]
    assert batch_networks([]) == []


def test_default_network_option_appends_a_tag_unless_named() -> None:
    assert with_default_network("cat", "lora", "x", 1.0) == "cat<lora:x:1.0>"
    assert with_default_network("cat <lora:x:0.2>", "lora", "x", 1.0) == "cat <lora:x:0.2>"
    assert with_default_network("cat", "lora", "None", 1.0) == "cat"


def test_hashes_text_round_trips_and_paste_maps_names_to_local_aliases() -> None:
    text = hashes_text({"my:lora,v2": "0123456789ab", "b": "ba9876543210"})
    assert text == "mylorav2: 0123456789ab, b: ba9876543210"
    assert parse_hashes_text(text) == {"mylorav2": "0123456789ab", "b": "ba9876543210"}
    local = {"ba9876543210": "b_local"}
    prompt = "cat <lora:b:0.8> <lora:unknown:1>"
    assert restore_lora_names(prompt, "b: ba9876543210", local.get) == "cat <lora:b_local:0.8> <lora:unknown:1>"
