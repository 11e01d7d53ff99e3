"""CLIP tokenizers built offline from the BPE vocabulary that ships inside the open-clip-torch wheel.

The gz file holds a header line and the BPE merges. CLIP's vocabulary is, in order: the 256 byte
symbols, the same with ``</w>``, one token per merge (48,894 merges), then ``<|startoftext|>`` and
``<|endoftext|>``: 49,408 ids, the same ids openai/clip-vit-large-patch14 gives.

SD 1.x and SDXL's first encoder pad with ``<|endoftext|>`` (49407); SD 2.x and SDXL's second
(OpenCLIP) encoder pad with ``!`` (id 0), as the original OpenCLIP tokenizer does.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING

from modules.core.atomic import atomic_write_text
from modules.core.errors import ModelFileError

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

MAX_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
PAD_EOS = EOS
PAD_ZERO = "!"


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable-unicode symbols, in CLIP's vocabulary order.

    The printable bytes come first (mapped to themselves), then the other bytes mapped to 256+n.
    """
    order = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = order[:]
    extra = 0
    for b in range(256):
        if b not in order:
            order.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def bpe_vocab_path() -> Path:
    """Where the open-clip-torch wheel keeps the BPE file, found without importing open_clip
    (importing it pulls in torch and timm)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError("open-clip-torch is not installed: it carries the CLIP BPE vocabulary")
    for location in spec.submodule_search_locations:
        path = Path(location) / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    raise ModelFileError("bpe_simple_vocab_16e6.txt.gz is missing from the open-clip-torch install")


@functools.cache
def clip_vocab_and_merges() -> tuple[dict[str, int], tuple[str, ...]]:
    """The 49,408-token vocabulary and the 48,894 merges, read from the open-clip-torch wheel."""
    with gzip.open(bpe_vocab_path(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = tuple(lines[1 : NUM_MERGES + 1])
    symbols = _bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split(" ")) for m in merges]
    tokens += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return vocab, merges


@functools.cache
def _build(pad_token: str) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        # transformers annotates list[str]; its BPE model takes (left, right) pairs as well
        merges=[tuple(m.split(" ")) for m in merges],  # type: ignore[misc]
        pad_token=pad_token,
        model_max_length=MAX_LENGTH,
    )


def build_clip_tokenizer(pad_token: str = PAD_EOS) -> CLIPTokenizer:
    """A CLIPTokenizer with the standard ids; built once per pad token and shared (it is stateless)."""
    if pad_token not in (PAD_EOS, PAD_ZERO):
        raise ValueError(f"unsupported CLIP pad token {pad_token!r}")
    return _build(pad_token)


def write_tokenizer_files(dest: Path, pad_token: str = PAD_EOS) -> None:
    """Write vocab.json, merges.txt and the two small configs a diffusers ``tokenizer/`` folder holds."""
    vocab, merges = clip_vocab_and_merges()
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(dest / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    atomic_write_text(dest / "special_tokens_map.json", json.dumps(special, indent=2))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
        **special,
    }
    atomic_write_text(dest / "tokenizer_config.json", json.dumps(config, indent=2))
