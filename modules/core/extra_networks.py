"""Extra-network tags in prompts (`<lora:name:0.8>`, `<hypernet:name:1>`), as A1111 reads them.

A tag is `<kind:arg1:arg2...>` (regex `<(\\w+):([^>]+)>`); its arguments split on `:`, and an
argument of the form `key=value` is a named one. Tags are taken out of the prompt before it is
encoded; the infotext keeps the prompt as written. For a batch, only the first prompt's tags are
activated (A1111's `parse_prompts`), and only positive prompts are read: a tag in a negative prompt
is encoded as text, as A1111 does.

LoRA arguments (`lora`, and `lyco` for old LyCORIS prompts): `<lora:name:te[:unet[:dyn]]>` or
named `te=`, `unet=`, `dyn=`; te defaults to 1.0, unet to te, dyn to none. Hypernetworks:
`<hypernet:name[:strength]>`, strength 1.0 by default.

Infotext: `Lora hashes: "alias: 0123456789ab, ..."` (the name as written in the prompt, with `:`
and `,` removed); pasting maps each hash back to the local LoRA with that hash. An old infotext's
`Hypernet: name` / `Hypernet strength` becomes a `<hypernet:...>` tag on the prompt
(`core.infotext.parse_infotext`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")
HYPERNET_KIND = "hypernet"
_REMOVED_FROM_NAMES = str.maketrans("", "", ":,")


@dataclass(frozen=True)
class NetworkParams:
    """The arguments of one tag: `items` as written, split into positional and named."""

    kind: str
    items: tuple[str, ...]
    positional: tuple[str, ...] = field(init=False)
    named: Mapping[str, str] = field(init=False)

    def __post_init__(self) -> None:
        positional: list[str] = []
        named: dict[str, str] = {}
        for item in self.items:
            parts = item.split("=", 2)
            if len(parts) == 2:
                named[parts[0]] = parts[1]
            else:
                positional.append(item)
        object.__setattr__(self, "positional", tuple(positional))
        object.__setattr__(self, "named", named)

    @property
    def text(self) -> str:
        return f"<{self.kind}:{':'.join(self.items)}>"


def parse_prompt(prompt: str) -> tuple[str, list[NetworkParams]]:
    """The prompt without its tags, and the tags in order."""
    found: list[NetworkParams] = []

    def take(match: re.Match[str]) -> str:
        found.append(NetworkParams(match.group(1), tuple(match.group(2).split(":"))))
        return ""

    return EXTRA_NETWORK_TAG.sub(take, prompt), found


def strip_tags(prompt: str) -> str:
    return EXTRA_NETWORK_TAG.sub("", prompt)


def batch_networks(prompts: Sequence[str]) -> list[NetworkParams]:
    """The tags a batch activates: the first prompt's (A1111)."""
    return parse_prompt(prompts[0])[1] if prompts else []


@dataclass(frozen=True)
class LoraArgs:
    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None

    @classmethod
    def parse(cls, params: NetworkParams) -> LoraArgs:
        """A1111's reading of a LoRA tag; ValueError (naming the tag) for a bad number."""
        if not params.positional or not params.positional[0].strip():
            raise ValueError(f"{params.text}: no network name")
        pos, named = params.positional, params.named
        try:
            te = float(pos[1]) if len(pos) > 1 else 1.0
            te = float(named.get("te", te))
            unet = float(pos[2]) if len(pos) > 2 else te
            unet = float(named.get("unet", unet))
            dyn = int(pos[3]) if len(pos) > 3 else None
            dyn = int(named["dyn"]) if "dyn" in named else dyn
        except ValueError as exc:
            raise ValueError(f"{params.text}: {exc}") from None
        if dyn is not None and dyn < 1:
            raise ValueError(f"{params.text}: dyn must be at least 1")
        return cls(pos[0], te, unet, dyn)


@dataclass(frozen=True)
class HypernetArgs:
    name: str
    strength: float = 1.0

    @classmethod
    def parse(cls, params: NetworkParams) -> HypernetArgs:
        items = params.items
        if not items or not items[0].strip():
            raise ValueError(f"{params.text}: no hypernetwork name")
        try:
            strength = float(items[1]) if len(items) > 1 else 1.0
        except ValueError as exc:
            raise ValueError(f"{params.text}: {exc}") from None
        return cls(items[0], strength)


def with_default_network(prompt: str, kind: str, name: str, multiplier: float) -> str:
    """A1111's "Add network to prompt" options (`sd_lora`, `sd_hypernetwork`): the tag is appended
    unless the prompt already names that network."""
    if not name or name == "None":
        return prompt
    kinds = LORA_KINDS if kind in LORA_KINDS else (kind,)
    if any(p.kind in kinds and p.items and p.items[0] == name for p in parse_prompt(prompt)[1]):
        return prompt
    return f"{prompt}<{kind}:{name}:{multiplier}>"


def hashes_text(pairs: Mapping[str, str]) -> str:
    """`Lora hashes` / `TI hashes` value: "name: hash, name2: hash2" (names without `:` and `,`)."""
    return ", ".join(f"{name.translate(_REMOVED_FROM_NAMES)}: {value}" for name, value in pairs.items())


def parse_hashes_text(text: str) -> dict[str, str]:
    """The inverse of `hashes_text` (as A1111 reads it when pasting)."""
    out: dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition(":")
        if sep:
            out[name.strip()] = value.strip()
    return out


_LORA_NAME = re.compile(r"<lora:([^:>]+):")


def restore_lora_names(prompt: str, lora_hashes: str, alias_for_hash: Callable[[str], str | None]) -> str:
    """A pasted prompt's `<lora:NAME:` tags renamed to the local LoRA whose hash the infotext's
    `Lora hashes` gives for NAME (another machine may call the same file something else)."""
    hashes = parse_hashes_text(lora_hashes)

    def rename(match: re.Match[str]) -> str:
        shorthash = hashes.get(match.group(1))
        local = alias_for_hash(shorthash) if shorthash else None
        return f"<lora:{local}:" if local else match.group(0)

    return _LORA_NAME.sub(rename, prompt)
