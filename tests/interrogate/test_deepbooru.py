"""DeepDanbooru: A1111's file layout loads into our network (sizes from shapes), the tag line is
thresholded, sorted, filtered, spaced, escaped and ranked as A1111's options say."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from modules.core.errors import ModelFileError
from modules.models.interrogators.deepbooru import (
    BLOCK_LAYOUT,
    HEAD,
    TagOptions,
    find_deepbooru_file,
    format_tags,
    load_deepbooru,
)
from tests.fixtures import interrogate_models as fx
from tests.interrogate.conftest import Weights, make_interrogator

RED = Image.new("RGB", (96, 64), (200, 30, 30))
NOISE = Image.effect_noise((64, 80), 60).convert("RGB")


def test_the_layout_numbers_every_conv_of_the_file_once() -> None:
    numbered = [i for b in BLOCK_LAYOUT for i in (*b.main, *([b.shortcut] if b.shortcut is not None else []))]
    assert sorted(numbered) == list(range(1, HEAD)) and HEAD == 178
    assert set(fx.deepbooru_conv_shapes(4)) == {0, *numbered, HEAD}


def test_the_file_loads_with_its_tags_and_sizes_from_its_shapes(weights: Weights) -> None:
    path = find_deepbooru_file([weights.models / "torch_deepdanbooru"])
    assert path is not None and path.name == "model-resnet_custom_v3.pt"
    tagger = load_deepbooru(path)
    assert tagger.tags == fx.DEEPBOORU_TAGS
    assert tagger.net.conv(0).out_channels == 2 and tagger.net.conv(HEAD).in_channels == 128
    assert tagger.net.conv(HEAD).bias is None
    pixels = torch.rand(1, 512, 512, 3)
    scores = dict(tagger.scores(pixels))
    assert scores == pytest.approx(dict(zip(fx.DEEPBOORU_TAGS, fx.DEEPBOORU_PROBS, strict=True)), abs=1e-5)


def test_random_weights_run_the_whole_graph(tmp_path: Path) -> None:
    path = tmp_path / "model-resnet_custom_v3.pt"
    torch.save(fx.deepbooru_state_dict(probs=None, seed=3), path)
    tagger = load_deepbooru(path)
    a = torch.rand(1, 512, 512, 3, generator=torch.Generator().manual_seed(1))
    b = torch.rand(1, 512, 512, 3, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        out_a, out_b = tagger.net(a), tagger.net(b)
        assert tagger.net.conv(0)(a.permute(0, 3, 1, 2)).shape[-1] == 253  # 7x7 stride 2, padded by the net
    assert out_a.shape == (1, len(fx.DEEPBOORU_TAGS))
    assert bool(((out_a > 0) & (out_a < 1)).all()) and not torch.equal(out_a, out_b)


def test_a_file_that_is_not_the_network_is_refused(tmp_path: Path) -> None:
    state = fx.deepbooru_state_dict()
    del state["n_Conv_57.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ModelFileError, match="n_Conv_57"):
        load_deepbooru(tmp_path / "broken.pt")
    state = fx.deepbooru_state_dict()
    state["tags"] = ["only", "two"]
    torch.save(state, tmp_path / "tags.pt")
    with pytest.raises(ModelFileError, match="2 tags for 8 outputs"):
        load_deepbooru(tmp_path / "tags.pt")


SCORES = list(zip(fx.DEEPBOORU_TAGS, fx.DEEPBOORU_PROBS, strict=True))


def test_tags_above_the_threshold_sorted_by_name_with_spaces_and_escapes() -> None:
    assert format_tags(SCORES, TagOptions()) == "1girl, back\\\\slash, hat \\(object\\), long hair, smile, solo"


def test_tag_options_as_a1111() -> None:
    by_score = format_tags(SCORES, TagOptions(sort_alpha=False, use_spaces=False, escape=False))
    assert by_score == "1girl, solo, back\\slash, long_hair, hat_(object), smile"
    assert format_tags(SCORES, TagOptions(threshold=0.85)) == "1girl, solo"
    assert format_tags(SCORES, TagOptions(threshold=0.25)).startswith("1girl, back\\\\slash, blue eyes, ")
    filtered = format_tags(SCORES, TagOptions(filter_tags="long hair, solo ,smile"))
    assert filtered == "1girl, back\\\\slash, hat \\(object\\)"
    ranked = format_tags(SCORES, TagOptions(threshold=0.85, return_ranks=True))
    assert ranked == "(1girl:0.950), (solo:0.900)"
    assert "rating" not in format_tags(SCORES, TagOptions(threshold=0.0))


def test_the_interrogator_reads_the_options(weights: Weights) -> None:
    default = make_interrogator(weights)
    assert default.interrogate(RED, "deepdanbooru") == "1girl, back\\\\slash, hat \\(object\\), long hair, smile, solo"
    assert default.interrogate(NOISE, "deepdanbooru") == default.interrogate(RED, "deepdanbooru")
    tuned = make_interrogator(
        weights,
        interrogate_deepbooru_score_threshold=0.75,
        deepbooru_sort_alpha=False,
        deepbooru_use_spaces=False,
        deepbooru_escape=False,
        deepbooru_filter_tags="solo",
        interrogate_return_ranks=True,
    )
    assert tuned.interrogate(RED, "deepdanbooru") == "(1girl:0.950), (back\\slash:0.800)"
    # preprocessing captions never carry ranks unless asked (A1111's tag_multi keeps them)
    assert tuned.deepbooru_tags(RED, force_disable_ranks=True) == "1girl, back\\slash"
