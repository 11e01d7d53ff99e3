"""CLIP for ranking: OpenAI's TorchScript `ViT-L-14.pt` is read without running it (and refused
when its pickle asks for anything else), built with the archived weights; a transformers folder
works too; ranking is A1111's softmax over 100 x cosine similarity."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from modules.core.errors import UnsafeModelFileError
from modules.models.interrogators.clip_ranking import (
    find_clip,
    load_clip,
    missing_clip,
    read_openai_state_dict,
    read_torchscript_tensors,
)
from tests.interrogate.conftest import Weights

IMAGE = Image.new("RGB", (48, 40), (120, 20, 200))
TEXTS = ("a red apple", "a photo of a dog", "an oil painting", "blue sky", "cubism")


def test_the_torchscript_archive_gives_the_traced_weights(weights: Weights) -> None:
    path = weights.models / "CLIP" / "ViT-L-14.pt"
    assert find_clip(weights.models / "CLIP") == path
    assert zipfile.is_zipfile(path) and any("/code/" in n for n in zipfile.ZipFile(path).namelist())
    tensors = read_torchscript_tensors(path)
    expected = weights.clip.state_dict()
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in tensors
    state = read_openai_state_dict(path)
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_the_loaded_model_computes_the_originals_features(weights: Weights) -> None:
    ranker = load_clip(weights.models / "CLIP" / "ViT-L-14.pt")
    assert ranker.image_size == 32
    pixels = ranker.pixels(IMAGE)
    assert pixels.shape == (1, 3, 32, 32)
    with torch.inference_mode():
        want = weights.clip.encode_image(pixels)
    assert torch.allclose(ranker.image_features(IMAGE), want / want.norm(dim=-1, keepdim=True), atol=1e-5)


def _malicious_archive(path: Path, marker: Path) -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    buffer = io.BytesIO()
    pickle.dump({"visual": Boom()}, buffer, protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ViT-L-14/data.pkl", buffer.getvalue())
        archive.writestr("ViT-L-14/constants.pkl", b"")
        archive.writestr("ViT-L-14/code/__torch__/model.py", "")


def test_an_archive_asking_for_code_is_refused_without_running_it(tmp_path: Path) -> None:
    path, marker = tmp_path / "ViT-L-14.pt", tmp_path / "ran"
    _malicious_archive(path, marker)
    with pytest.raises(UnsafeModelFileError, match="system"):
        read_openai_state_dict(path)
    assert not marker.exists()


def test_ranking_is_a_softmax_over_similarities(weights: Weights) -> None:
    ranker = load_clip(weights.models / "CLIP" / "ViT-L-14.pt")
    features = ranker.image_features(IMAGE)
    ranked = ranker.rank(features, TEXTS, top_count=len(TEXTS))
    assert sorted(text for text, _ in ranked) == sorted(TEXTS)
    scores = [score for _, score in ranked]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(100.0, abs=1e-3)
    text_features = ranker.text_features(TEXTS)
    probs = (100.0 * features @ text_features.T).softmax(dim=-1)[0]
    best = int(probs.argmax())
    assert ranked[0] == (TEXTS[best], pytest.approx(float(probs[best]) * 100, rel=1e-4))
    assert ranker.rank(features, TEXTS, top_count=2) == ranked[:2]
    assert ranker.rank(features, TEXTS[:1], top_count=3) == [(TEXTS[0], pytest.approx(100.0))]
    # 77 tokens, longer texts truncated as clip.tokenize(truncate=True)
    assert ranker.text_features(["word " * 200]).shape == (1, 16)


def test_a_transformers_clip_folder(weights: Weights) -> None:
    clip_dir = weights.clip_folder.parent
    assert find_clip(clip_dir) == weights.clip_folder
    ranker = load_clip(weights.clip_folder)
    assert ranker.image_size == 32
    with torch.inference_mode():
        want = weights.clip_folder_model.get_image_features(pixel_values=ranker.pixels(IMAGE)).pooler_output
    assert torch.allclose(ranker.image_features(IMAGE), want / want.norm(dim=-1, keepdim=True), atol=1e-5)
    assert len(ranker.rank(ranker.image_features(IMAGE), TEXTS, top_count=3)) == 3


def test_missing_clip_weights_are_named(tmp_path: Path) -> None:
    note = missing_clip(tmp_path)
    assert note is not None and "ViT-L-14.pt" in note and str(tmp_path) in note
