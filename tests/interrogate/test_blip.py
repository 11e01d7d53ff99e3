"""BLIP: A1111's original checkpoint (BLIP's own key names, the BERT tokenizer from a local
folder) and a transformers folder load the same model and caption the same; the options reach
the generation; missing files are named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from modules.models.checkpoint_io import read_state_dict
from modules.models.interrogators.blip import (
    BLIP_FILE,
    BLIP_PROMPT,
    find_blip,
    load_blip,
    load_blip_file,
    missing_blip,
    original_to_transformers,
)
from tests.interrogate.conftest import Weights, make_interrogator

IMAGE = Image.new("RGB", (50, 40), (30, 160, 90))


def test_original_keys_map_onto_every_transformers_tensor(weights: Weights) -> None:
    original = read_state_dict(weights.models / "BLIP" / BLIP_FILE)
    assert "visual_encoder.blocks.1.attn.qkv.weight" in original and "visual_encoder.cls_token" in original
    mapped = original_to_transformers(original)
    expected = weights.blip.state_dict()
    assert set(expected) <= set(mapped)
    for key, value in expected.items():
        assert torch.equal(mapped[key], value), key


def test_the_original_file_and_the_folder_caption_alike(weights: Weights, tmp_path: Path) -> None:
    blip_dir = weights.models / "BLIP"
    source = find_blip(blip_dir)
    assert source is not None and source.path.name == BLIP_FILE and not source.is_folder
    from_file = load_blip(source, blip_dir)
    assert from_file.image_size == 32 and from_file.tokenizer.bos_token == "[DEC]"
    folder_only = tmp_path / "BLIP"
    shutil.copytree(blip_dir / "blip-tiny", folder_only / "blip-tiny")
    folder_source = find_blip(folder_only)
    assert folder_source is not None and folder_source.is_folder
    from_folder = load_blip(folder_source, folder_only)
    caption = from_file.caption(IMAGE, num_beams=1, min_length=5, max_length=12)
    assert caption and not caption.startswith(BLIP_PROMPT.strip())
    assert caption == from_folder.caption(IMAGE, num_beams=1, min_length=5, max_length=12)
    # max_length counts the prompt ([DEC] a picture of: 4 tokens) as BLIP does
    assert len(caption.split()) <= 12 - 4
    assert len(from_file.caption(IMAGE, num_beams=2, min_length=9, max_length=9).split()) <= 5


def test_the_interrogator_passes_the_blip_options(weights: Weights) -> None:
    short = make_interrogator(weights, interrogate_clip_min_length=5, interrogate_clip_max_length=6)
    long = make_interrogator(weights, interrogate_clip_min_length=20, interrogate_clip_max_length=20)
    a, b = short.blip_caption(IMAGE), long.blip_caption(IMAGE)
    assert 0 < len(a.split()) <= 2 < len(b.split())


def test_missing_blip_files_are_named(weights: Weights, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    note = missing_blip(empty)
    assert note is not None and BLIP_FILE in note and str(empty) in note and "nothing is downloaded" in note
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(weights.models / "BLIP" / BLIP_FILE, no_tokenizer / BLIP_FILE)
    note = missing_blip(no_tokenizer)  # the test session's HF cache is empty
    assert note is not None and "vocab.txt" in note and str(no_tokenizer / "bert-base-uncased") in note
    assert find_blip(no_tokenizer) is None
    with pytest.raises(Exception, match="bert-base-uncased"):
        load_blip_file(no_tokenizer / BLIP_FILE, no_tokenizer)
