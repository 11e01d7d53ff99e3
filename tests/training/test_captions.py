"""Training captions: caption files, kohya class tokens, A1111 filewords, and the per-step edits
(kohya's shuffle / keep_tokens / dropout, A1111's shuffle_tags / tag_drop_out) drawn only from
the rng passed in."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from modules.core.errors import UserError
from modules.engine.training.captions import (
    CaptionOptions,
    a1111_tags,
    caption_file,
    filename_caption,
    kohya_caption,
    load_caption,
)

TAGS = "sks dog, red collar, grass, sunny, park, running"


def _image(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(b"")  # captions never open the image
    return path


def test_the_caption_file_beside_the_image_wins(tmp_path: Path) -> None:
    image = _image(tmp_path, "0001.png")
    (tmp_path / "0001.txt").write_text("  a photo of sks dog\n", encoding="utf-8")
    (tmp_path / "0001.caption").write_text("from the caption file", encoding="utf-8")
    caption = load_caption(image, class_tokens="dog")
    assert (caption.text, caption.origin, caption.note) == ("a photo of sks dog", "file", "")
    assert load_caption(image, extension=".caption").text == "from the caption file"
    assert load_caption(image, extension="caption").text == "from the caption file"  # dot optional
    assert caption_file(image, ".caption") == tmp_path / "0001.caption"
    with pytest.raises(UserError, match="empty"):
        load_caption(image, extension=" ")


def test_a_bom_is_dropped_and_bad_bytes_are_replaced_and_noted(tmp_path: Path) -> None:
    image = _image(tmp_path, "a.png")
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfcat, hat")
    assert load_caption(image).text == "cat, hat"
    (tmp_path / "a.txt").write_bytes(b"caf\xe9 cat")
    caption = load_caption(image)
    assert caption.text == "caf\ufffd cat"
    assert "not UTF-8" in caption.note


def test_without_a_file_kohya_folders_give_their_class_tokens_else_the_file_name(tmp_path: Path) -> None:
    image = _image(tmp_path, "00012-0-a red cube.png")
    assert load_caption(image, class_tokens="sks dog") == load_caption(image, class_tokens="sks dog", fallback="class")
    assert load_caption(image, class_tokens="sks dog").text == "sks dog"
    assert load_caption(image, class_tokens="sks dog").origin == "class"
    by_name = load_caption(image, class_tokens="sks dog", fallback="filename")
    assert (by_name.text, by_name.origin) == ("a red cube", "filename")
    assert load_caption(image).text == "a red cube"  # no class tokens: the file name
    with pytest.raises(UserError, match="fallback"):
        load_caption(image, fallback="folder")


def test_filewords_strip_the_counter_and_apply_the_word_regex() -> None:
    # A1111: "^[-\d]+\s*" removed, then the regex's matches joined with the join string
    assert filename_caption("00005-1-cat sitting.png") == "cat sitting"
    assert filename_caption("12 cat.png") == "cat"
    assert filename_caption("cat-2.png") == "cat-2"  # only a leading counter
    assert filename_caption("00003-a_cat_(sitting).png", word_regex=r"\w+", join_string=", ") == "a_cat_, sitting"
    assert filename_caption("00003-a_cat_(sitting).png", word_regex=r"[a-z]+", join_string=" ") == "a cat sitting"
    assert filename_caption("3-x.png", word_regex=r"x", join_string="") == "x"
    with pytest.raises(UserError, match="dataset_filename_word_regex"):
        filename_caption("a.png", word_regex="(")


def test_kohya_shuffle_keeps_the_first_tokens_and_uses_only_the_given_rng() -> None:
    tokens = [t.strip() for t in TAGS.split(",")]
    out = kohya_caption(TAGS, random.Random(3), shuffle_caption=True, keep_tokens=2)
    flex = tokens[2:]
    random.Random(3).shuffle(flex)  # the first draws of a fresh rng with that seed
    assert out == ", ".join(tokens[:2] + flex)
    assert out != ", ".join(tokens)
    assert kohya_caption(TAGS, random.Random(3), shuffle_caption=True, keep_tokens=2) == out
    outs = {kohya_caption(TAGS, random.Random(seed), shuffle_caption=True, keep_tokens=1) for seed in range(20)}
    assert len(outs) > 5
    assert all(o.startswith("sks dog, ") and sorted(o.split(", ")) == sorted(tokens) for o in outs)


def test_kohya_dropout_and_first_line() -> None:
    assert kohya_caption(TAGS, random.Random(0), caption_dropout_rate=1.0) == ""
    assert kohya_caption(TAGS, random.Random(0), caption_dropout_rate=0.0) == TAGS
    dropped = [kohya_caption(TAGS, random.Random(seed), caption_dropout_rate=0.5) for seed in range(40)]
    assert 5 < dropped.count("") < 35 and set(dropped) == {"", TAGS}
    assert kohya_caption("first line\nsecond line", random.Random(0)) == "first line"
    tag_drop = kohya_caption(TAGS, random.Random(1), keep_tokens=1, caption_tag_dropout_rate=1.0)
    assert tag_drop == "sks dog"  # every tag after the kept one dropped


def test_a1111_tags_drop_and_shuffle_with_the_rng() -> None:
    assert a1111_tags(TAGS, random.Random(0)) == TAGS  # nothing asked: untouched
    assert a1111_tags(TAGS, random.Random(0), tag_drop_out=1.0) == ""
    shuffled = a1111_tags(TAGS, random.Random(5), shuffle_tags=True)
    tags = TAGS.split(",")
    random.Random(5).shuffle(tags)
    assert shuffled == ",".join(tags)  # A1111 joins with "," and keeps the spaces
    assert sorted(shuffled.split(",")) == sorted(TAGS.split(","))
    kept = [a1111_tags(TAGS, random.Random(seed), tag_drop_out=0.5).count(",") for seed in range(30)]
    assert min(kept) < max(kept)


def test_caption_options_apply_kohya_then_a1111_and_validate() -> None:
    options = CaptionOptions(shuffle_caption=True, keep_tokens=1)
    assert options.varies
    assert options.apply(TAGS, random.Random(2)) == options.apply(TAGS, random.Random(2))
    assert not CaptionOptions().varies
    assert CaptionOptions().apply("a\nb", random.Random(0)) == "a"  # kohya: the first line
    assert CaptionOptions(first_line=False).apply("a\nb", random.Random(0)) == "a\nb"  # A1111: all of it
    assert CaptionOptions(first_line=False, tag_drop_out=1.0).apply("a, b", random.Random(0)) == ""
    with pytest.raises(UserError, match="caption_dropout_rate"):
        CaptionOptions(caption_dropout_rate=1.5)
    with pytest.raises(UserError, match="keep_tokens"):
        CaptionOptions(keep_tokens=-1)
