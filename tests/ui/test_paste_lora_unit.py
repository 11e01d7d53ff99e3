"""Pasting an infotext renames its LoRA tags to the local files with the same hashes (A1111)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from modules.core.errors import NotFoundError
from modules.ui.paste import parse_for_paste

INFOTEXT = (
    "a cat <lora:theirname:0.8> <lora:unknown:1>\n"
    'Steps: 20, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 64x64, Lora hashes: "theirname: 0123456789ab"'
)


def _not_found(name: str) -> None:
    raise NotFoundError(name)


def _services(preferred: str) -> Any:
    mine = SimpleNamespace(name="my_file", alias="my alias")
    options = {"infotext_skip_pasting": [], "auto_backcompat": True, "lora_preferred_name": preferred}
    return SimpleNamespace(
        options=SimpleNamespace(get=options.get),
        networks=SimpleNamespace(lora_by_shorthash=lambda h: mine if h == "0123456789ab" else None),
        registry=SimpleNamespace(checkpoints=lambda: [], find_checkpoint=_not_found),
    )


def test_lora_tags_take_the_local_alias_of_the_same_hash() -> None:
    parsed = parse_for_paste(_services("Alias from file"), INFOTEXT)
    assert parsed["Prompt"] == "a cat <lora:my alias:0.8> <lora:unknown:1>"


def test_lora_tags_take_the_file_name_when_preferred() -> None:
    parsed = parse_for_paste(_services("Filename"), INFOTEXT)
    assert parsed["Prompt"] == "a cat <lora:my_file:0.8> <lora:unknown:1>"
