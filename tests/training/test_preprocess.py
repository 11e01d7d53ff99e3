"""The Train tab's preprocessing step: sizes, centre crop, flipped copies, splitting long images
into overlapping tiles, captions (generated and the source's own `.txt`), bad images reported by
name and skipped, refusals for bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.core.errors import UserError
from modules.engine.training.preprocess import (
    combine_caption,
    open_image,
    preprocess_images,
    split_tiles,
)


def _gradient(width: int, height: int) -> Image.Image:
    """An image whose every pixel differs from its neighbours (so crops and flips are visible)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    return folder


def test_images_are_cropped_to_size_flipped_and_captioned(src: Path, tmp_path: Path) -> None:
    _gradient(300, 200).save(src / "wide.png")
    _gradient(100, 160).save(src / "tall.jpg")
    (src / "notes.md").write_text("not an image, not looked at")
    seen: list[tuple[int, int]] = []

    def caption(image: Image.Image) -> str:
        seen.append(image.size)
        return f"a picture {len(seen)}"

    dst = tmp_path / "out"
    report = preprocess_images(src, dst, width=64, height=96, flip=True, caption=caption)

    names = sorted(p.name for p in dst.iterdir())
    assert names == [
        "00000-0-tall.png",
        "00000-0-tall.txt",
        "00000-1-tall.png",
        "00000-1-tall.txt",
        "00001-0-wide.png",
        "00001-0-wide.txt",
        "00001-1-wide.png",
        "00001-1-wide.txt",
    ]
    assert [p.name for p in report.written] == [n for n in names if n.endswith(".png")]
    assert report.captions == 4 and report.skipped == () and not report.stopped
    for path in report.written:
        with Image.open(path) as image:
            assert image.size == (64, 96) and image.mode == "RGB"
    # one caption per crop (computed on the 64x96 crop), shared by its flipped copy
    assert seen == [(64, 96), (64, 96)]
    assert (dst / "00000-0-tall.txt").read_text() == "a picture 1"
    assert (dst / "00000-1-tall.txt").read_text() == "a picture 1"
    # the copy is the mirror image of the crop
    assert np.array_equal(_pixels(dst / "00001-1-wide.png"), _pixels(dst / "00001-0-wide.png")[:, ::-1])
    # centre crop: the wide source's middle column ends up in the middle
    crop = _pixels(dst / "00001-0-wide.png")
    assert abs(int(crop[48, 32, 0]) - 128) <= 6
    assert not list(dst.glob(".*.tmp"))
    assert "4 images written, 4 captions" in report.summary()


def test_without_flip_or_caption_only_the_images_are_written(src: Path, tmp_path: Path) -> None:
    _gradient(80, 80).save(src / "a.png")
    report = preprocess_images(src, tmp_path / "out", width=64, height=64)
    assert [p.name for p in report.written] == ["00000-0-a.png"]
    assert report.captions == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000-0-a.png"]


def test_a_long_image_is_split_into_overlapping_tiles(src: Path, tmp_path: Path) -> None:
    _gradient(64, 256).save(src / "long.png")
    _gradient(64, 80).save(src / "nearly_square.png")  # ratio 0.8 > threshold 0.5: cropped
    report = preprocess_images(src, tmp_path / "out", width=64, height=64, split=True, split_threshold=0.5)
    tiles = [p for p in report.written if "long" in p.name]
    # 256 px at tiles of 64 overlapping by 20 %: ceil((256 - 12.8) / 51.2) = 5 tiles
    assert [p.name for p in tiles] == [f"00000-{i}-long.png" for i in range(5)]
    whole = np.asarray(_gradient(64, 256), dtype=np.int16)
    assert np.array_equal(_pixels(tiles[0]), whole[:64])
    assert np.array_equal(_pixels(tiles[-1]), whole[-64:])
    assert [p.name for p in report.written if "nearly" in p.name] == ["00001-0-nearly_square.png"]


def test_split_tiles_along_the_width_and_not_for_a_fitting_shape() -> None:
    tiles = split_tiles(_gradient(400, 100), 100, 100, threshold=0.5, overlap=0.0)
    assert tiles is not None and len(tiles) == 4 and all(t.size == (100, 100) for t in tiles)
    assert split_tiles(_gradient(120, 100), 100, 100, threshold=0.5, overlap=0.2) is None
    # the shape is judged against the target's: 2:1 into a 2:1 target is not split
    assert split_tiles(_gradient(400, 200), 128, 64, threshold=0.5, overlap=0.2) is None


def test_bad_images_are_reported_by_name_and_skipped(src: Path, tmp_path: Path) -> None:
    _gradient(64, 64).save(src / "good.png")
    data = (src / "good.png").read_bytes()
    (src / "truncated.png").write_bytes(data[: len(data) // 2])
    (src / "text.jpg").write_text("hello")
    _gradient(200, 200).save(src / "huge.png")
    Image.new("CMYK", (70, 70), (0, 255, 0, 0)).save(src / "cmyk.jpg")
    grey16 = Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16), "I;16")
    grey16.save(src / "grey16.png")

    report = preprocess_images(src, tmp_path / "out", width=64, height=64, max_pixels=150 * 150)

    skipped = dict(report.skipped)
    assert set(skipped) == {"truncated.png", "text.jpg", "huge.png"}
    assert skipped["text.jpg"] == "not an image Pillow can read"
    assert "too many pixels" in skipped["huge.png"]
    assert skipped["truncated.png"].startswith("truncated")
    assert sorted(p.name.split("-", 2)[2] for p in report.written) == ["cmyk.png", "good.png", "grey16.png"]
    # 16-bit grey is scaled to 8 bits (not clipped to white)
    grey = next(p for p in report.written if "grey16" in p.name)
    assert 0 < _pixels(grey).mean() < 250
    assert "skipped 3" in report.summary() and "text.jpg (not an image Pillow can read)" in report.summary()


def test_the_sources_own_caption_file(src: Path, tmp_path: Path) -> None:
    _gradient(64, 64).save(src / "a.png")
    (src / "a.txt").write_text("mine\n")
    for action, expected in (
        ("ignore", "made"),
        ("copy", "mine"),
        ("prepend", "mine made"),
        ("append", "made mine"),
    ):
        out = tmp_path / action
        preprocess_images(src, out, width=64, height=64, caption=lambda _i: "made", existing_caption=action)
        assert (out / "00000-0-a.txt").read_text() == expected, action
    # no generated caption: the own one is copied whatever the action but "ignore"
    out = tmp_path / "own"
    preprocess_images(src, out, width=64, height=64, existing_caption="append")
    assert (out / "00000-0-a.txt").read_text() == "mine"
    assert combine_caption("", "mine", "ignore") == ""


def test_transparency_is_kept(src: Path, tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    rgba.paste((0, 255, 0, 255), (0, 0, 32, 64))
    rgba.save(src / "alpha.png")
    report = preprocess_images(src, tmp_path / "out", width=64, height=64)
    with Image.open(report.written[0]) as image:
        assert image.mode == "RGBA"
        assert image.getpixel((10, 10))[3] == 255 and image.getpixel((50, 10))[3] == 0
    assert open_image(src / "alpha.png").mode == "RGBA"


@pytest.mark.parametrize(
    ("source", "target", "kwargs", "message"),
    [
        ("missing", "out", {}, "does not exist"),
        ("src", "src", {}, "must not be the source"),
        ("src", "", {}, "destination directory is empty"),
        ("src", "out", {"width": 10}, "between 64 and 8192"),
        ("src", "out", {"existing_caption": "merge"}, "existing caption action"),
    ],
)
def test_bad_arguments_are_user_errors(
    src: Path, tmp_path: Path, source: str, target: str, kwargs: dict[str, object], message: str
) -> None:
    dst = str(tmp_path / target) if target else ""
    with pytest.raises(UserError, match=message):
        preprocess_images(tmp_path / source, dst, **kwargs)  # type: ignore[arg-type]


def test_progress_is_reported_and_a_stop_is_obeyed(src: Path, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        _gradient(64, 64).save(src / f"{name}.png")
    calls: list[tuple[int, int]] = []
    report = preprocess_images(
        src, tmp_path / "out", width=64, height=64, on_progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert len(report.written) == 3

    stop_after = iter([False, True])
    report = preprocess_images(src, tmp_path / "out2", width=64, height=64, should_stop=lambda: next(stop_after))
    assert report.stopped and [p.name for p in report.written] == ["00000-0-a.png"]
    assert "stopped" in report.summary()
