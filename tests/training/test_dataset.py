"""Training datasets: folder scanning, safe opening (bad files skipped and named, odd modes
converted), transforms, the per-bucket latent cache, the resumable bucket batch sampler."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core.errors import UserError
from modules.core.training import LoraTrainRequest, TrainEmbeddingRequest
from modules.engine.training.buckets import BucketConfig
from modules.engine.training.captions import CaptionOptions
from modules.engine.training.dataset import (
    PAD_FILL,
    BucketBatchSampler,
    DatasetConfig,
    ImageSkipped,
    LatentCache,
    TrainingDataset,
    alpha_weight,
    open_training_image,
    scan_folder,
)
from tests.fixtures.training_data import (
    CAPTIONS,
    SMALL_BUCKETS,
    SUBJECT_FOLDER,
    gradient_image,
    make_training_set,
    write_problem_images,
)

SMALL = BucketConfig(**SMALL_BUCKETS)


def _dataset(root: Path, **config: object) -> TrainingDataset:
    return TrainingDataset.from_folder(root, DatasetConfig(buckets=SMALL, **config))


def _pool8(pixels: torch.Tensor) -> torch.Tensor:
    """A fake VAE: 8x8 average pooling, so a latent is a small copy of its image."""
    return torch.nn.functional.avg_pool2d(pixels, 8)


class RecordingEncoder:
    def __init__(self, posterior: bool = False) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.posterior = posterior

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        assert pixels.dtype == torch.float32 and pixels.min() >= -1.0 and pixels.max() <= 1.0
        self.shapes.append(tuple(pixels.shape))
        mean = _pool8(pixels)
        return (mean, torch.full_like(mean, 0.5)) if self.posterior else mean


# -- scanning ------------------------------------------------------------------------------------


def test_scan_reads_kohya_folders_and_root_images_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "3_sks dog").mkdir()
    (tmp_path / "10_cat").mkdir()
    (tmp_path / "misc").mkdir()
    (tmp_path / "0_none").mkdir()
    for name in (
        "3_sks dog/b.png",
        "3_sks dog/a.JPG",
        "3_sks dog/a.txt",
        "10_cat/c.webp",
        "root.bmp",
        "root.jpeg",
        "notes.md",
        "x.preview.png",
        ".hidden.png",
        "misc/m.png",
        "0_none/n.png",
    ):
        (tmp_path / name).write_bytes(b"")  # fmt: skip
    scan = scan_folder(tmp_path)
    assert [(i.name, i.repeats, i.class_tokens) for i in scan.images] == [
        ("10_cat/c.webp", 10, "cat"),
        ("3_sks dog/a.JPG", 3, "sks dog"),
        ("3_sks dog/b.png", 3, "sks dog"),
        ("root.bmp", 1, None),
        ("root.jpeg", 1, None),
    ]
    ignored = dict(scan.ignored)
    assert set(ignored) == {"0_none/", "misc/", "notes.md", "x.preview.png"}
    assert "repeats" in ignored["misc/"] and "preview" in ignored["x.preview.png"]
    flat = scan_folder(tmp_path, layout="flat")
    assert [i.name for i in flat.images] == ["root.bmp", "root.jpeg"]  # A1111: the root only
    with pytest.raises(UserError, match="does not exist"):
        scan_folder(tmp_path / "nope")


def test_the_fixture_dataset(tmp_path: Path) -> None:
    dataset = _dataset(make_training_set(tmp_path))
    assert len(dataset) == 6 and dataset.total_repeats == 60
    assert [item.caption.text for item in dataset.items] == [
        CAPTIONS[stem] for stem in ("banner", "portrait", "square", "strip", "tall", "wide")
    ]
    assert dataset.report.skipped == [] and dataset.report.notes == []
    text = dataset.describe()
    assert "6 images, 60 per epoch" in text and f"{SUBJECT_FOLDER}: 6 images x 10 repeats" in text
    assert "48x80: 20" in text and "128x32: 10" in text


def test_no_usable_image_is_a_user_error_naming_the_skipped(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"no usable training images.*empty\.png \(empty file\)"):
        _dataset(tmp_path)


# -- opening -------------------------------------------------------------------------------------


def _zero_width_png(path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 0, 16, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_bad_files_are_skipped_by_name_with_the_reason(tmp_path: Path) -> None:
    folder = make_training_set(tmp_path) / SUBJECT_FOLDER
    write_problem_images(folder)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not a jpeg")
    _zero_width_png(folder / "zero.png")
    gradient_image((300, 300)).save(folder / "huge.png")
    limit_before = Image.MAX_IMAGE_PIXELS
    dataset = _dataset(tmp_path, max_pixels=200 * 200)
    assert limit_before == Image.MAX_IMAGE_PIXELS  # the limit is ours, per call
    skipped = dict(dataset.report.skipped)
    assert set(skipped) == {
        f"{SUBJECT_FOLDER}/{name}" for name in ("broken.png", "empty.png", "text.jpg", "zero.png", "huge.png")
    }
    assert skipped[f"{SUBJECT_FOLDER}/broken.png"].startswith("truncated")
    assert skipped[f"{SUBJECT_FOLDER}/empty.png"] == "empty file"
    assert "too many pixels" in skipped[f"{SUBJECT_FOLDER}/huge.png"]
    assert len(dataset) == 8  # the six + the CMYK JPEG + the 16-bit PNG
    assert "broken.png: truncated" in dataset.describe()


def test_cmyk_and_16_bit_images_become_rgb_and_are_noted(tmp_path: Path) -> None:
    files = write_problem_images(tmp_path)
    cmyk = open_training_image(files["cmyk.jpg"])
    assert cmyk.rgb.mode == "RGB" and "CMYK" in cmyk.note
    assert np.abs(np.asarray(cmyk.rgb, dtype=int) - [0, 255, 255]).max() <= 2  # pure cyan
    grey = open_training_image(files["grey16.png"])
    row = np.asarray(grey.rgb)[5, :, 0]
    # scaled, not clipped: the 0..65535 ramp becomes 0..255 (clipping would make almost all 255)
    expected = np.rint(np.linspace(0, 65535, 32).round() * 255 / 65535)
    assert np.array_equal(row, expected) and "16-bit" in grey.note
    assert np.array_equal(np.asarray(grey.rgb)[..., 0], np.asarray(grey.rgb)[..., 2])
    with pytest.raises(ImageSkipped, match="truncated"):
        open_training_image(files["broken.png"])


def test_alpha_palette_and_exif_orientation(tmp_path: Path) -> None:
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 8:, 3] = 255  # left half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    loaded = open_training_image(tmp_path / "rgba.png")
    assert loaded.rgb.mode == "RGB" and loaded.note == "" and loaded.rgb.getpixel((0, 0)) == (200, 0, 0)
    assert loaded.alpha is not None and loaded.alpha.getpixel((0, 0)) == 0 and loaded.alpha.getpixel((15, 0)) == 255

    Image.new("RGBA", (8, 8), (1, 2, 3, 255)).save(tmp_path / "opaque.png")
    assert open_training_image(tmp_path / "opaque.png").alpha is None  # nothing to weigh

    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "palette.png", transparency=0)
    loaded = open_training_image(tmp_path / "palette.png")
    assert loaded.rgb.getpixel((1, 1)) == (255, 0, 0) and "P" in loaded.note
    assert loaded.alpha is not None and loaded.alpha.getpixel((0, 0)) == 0

    Image.new("LA", (8, 4), (90, 128)).save(tmp_path / "la.png")
    loaded = open_training_image(tmp_path / "la.png")
    assert loaded.rgb.getpixel((0, 0)) == (90, 90, 90) and loaded.alpha is not None

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to show
    gradient_image((40, 20)).save(tmp_path / "sideways.jpg", exif=exif)
    assert open_training_image(tmp_path / "sideways.jpg").rgb.size == (20, 40)


# -- transforms ----------------------------------------------------------------------------------


def test_load_gives_the_bucket_as_chw_in_minus_one_to_one_and_flips(tmp_path: Path) -> None:
    dataset = _dataset(make_training_set(tmp_path))
    wide = next(i for i, item in enumerate(dataset.items) if item.name.endswith("wide.png"))
    prepared = dataset.load(wide)
    assert prepared.pixels.shape == (3, 48, 80) and prepared.pixels.dtype == torch.float32
    assert float(prepared.pixels.min()) >= -1.0 and float(prepared.pixels.max()) <= 1.0
    assert prepared.placement.box == (0, 2, 80, 50)  # 80x53 resized, (53 - 48) // 2 = 2 off the top
    # red rises left to right across the whole width (a cover crop keeps the full width here)
    red = prepared.pixels[0, 10]
    assert float(red[0]) < -0.9 and float(red[-1]) > 0.9 and bool((red[1:] >= red[:-1]).all())
    flipped = dataset.load(wide, flip=True)
    assert torch.equal(flipped.pixels, prepared.pixels.flip(-1))


def test_random_crop_is_drawn_from_the_rng(tmp_path: Path) -> None:
    dataset = _dataset(make_training_set(tmp_path), random_crop=True)
    tall = next(i for i, item in enumerate(dataset.items) if item.name.endswith("tall.png"))  # 53x80 -> 48x80
    boxes = {dataset.load(tall, rng=random.Random(seed)).placement.box for seed in range(20)}
    assert len(boxes) > 1 and all(box[2] - box[0] == 48 and 0 <= box[0] <= 5 for box in boxes)
    first = dataset.load(tall, rng=random.Random(7))
    assert torch.equal(first.pixels, dataset.load(tall, rng=random.Random(7)).pixels)


def test_pad_fit_leaves_a_border_of_weight_zero(tmp_path: Path) -> None:
    gradient_image((96, 64)).save(tmp_path / "wide.png")
    config = BucketConfig(mode="fixed", resolution=(64, 64))
    dataset = TrainingDataset.from_folder(tmp_path, DatasetConfig(buckets=config, fit="pad", use_weight=True))
    prepared = dataset.load(0)
    # 96x64 into 64x64: scale 2/3 -> 64x43, centred: 10 rows of border above, 11 below
    assert prepared.placement.resized == (64, 43) and prepared.placement.offset == (0, 10)
    border = PAD_FILL[0] / 127.5 - 1.0
    assert torch.allclose(prepared.pixels[:, :10], torch.full((3, 10, 64), border))
    assert torch.allclose(prepared.pixels[:, 53:], torch.full((3, 11, 64), border))
    weight = alpha_weight(prepared.alpha, (8, 8))
    assert float(weight[0, 0].max()) == 0.0 and float(weight[0, 4].min()) > 0.0
    assert float(weight.mean()) == pytest.approx(1.0)


def test_alpha_weight_is_a1111s_normalised_map() -> None:
    alpha = Image.new("L", (16, 16), 0)
    alpha.paste(255, (8, 0, 16, 16))  # right half opaque
    weight = alpha_weight(alpha, (2, 2))
    assert weight.shape == (1, 2, 2)
    assert torch.equal(weight, torch.tensor([[[0.0, 2.0], [0.0, 2.0]]]))  # min 0, mean 1
    assert torch.equal(alpha_weight(None, (2, 3)), torch.ones(1, 2, 3))
    assert torch.equal(alpha_weight(Image.new("L", (8, 8), 255), (1, 1)), torch.ones(1, 1, 1))  # flat: no NaN


# -- latent cache --------------------------------------------------------------------------------


def test_latent_cache_encodes_bucket_by_bucket_in_batches(tmp_path: Path) -> None:
    dataset = _dataset(make_training_set(tmp_path), flip_aug=True)
    encoder = RecordingEncoder()
    cache = LatentCache(dataset)
    calls: list[tuple[int, int]] = []
    assert cache.build(encoder, batch_size=3, on_batch=lambda done, total: calls.append((done, total)))
    # 6 items x 2 (flip) in 4 buckets: (48,80) 4 -> 3+1, (64,64) 2, (80,48) 4 -> 3+1, (128,32) 2
    assert encoder.shapes == [
        (3, 3, 80, 48), (1, 3, 80, 48), (2, 3, 64, 64), (3, 3, 48, 80), (1, 3, 48, 80), (2, 3, 32, 128),
    ]  # fmt: skip
    assert calls[-1] == (6, 6) and cache.built
    for index in range(len(dataset)):
        plain = cache.latent(index)
        assert torch.allclose(plain, _pool8(dataset.load(index).pixels[None])[0])
        assert torch.allclose(cache.latent(index, flip=True), plain.flip(-1))  # the mirror's own latent
    assert cache.build(encoder) and len(encoder.shapes) == 6  # nothing left to encode
    assert cache.nbytes > 0


def test_latent_sampling_methods(tmp_path: Path) -> None:
    dataset = _dataset(make_training_set(tmp_path))
    mean = _pool8(dataset.load(0).pixels[None])[0]

    once = LatentCache(dataset, method="once")
    once.build(RecordingEncoder(posterior=True), generator=torch.Generator().manual_seed(1))
    again = LatentCache(dataset, method="once")
    again.build(RecordingEncoder(posterior=True), generator=torch.Generator().manual_seed(1))
    assert torch.equal(once.latent(0), again.latent(0))  # reproducible
    assert not torch.allclose(once.latent(0), mean)  # a sample: mean + 0.5 * noise
    assert torch.equal(once.latent(0), once.latent(0, generator=torch.Generator().manual_seed(9)))  # fixed

    deterministic = LatentCache(dataset, method="deterministic")
    deterministic.build(RecordingEncoder(posterior=True))
    assert torch.allclose(deterministic.latent(0), mean)

    sampled = LatentCache(dataset, method="random")
    sampled.build(RecordingEncoder(posterior=True))
    first = sampled.latent(0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, sampled.latent(0, generator=torch.Generator().manual_seed(3)))
    second = sampled.latent(0, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(first, second)
    assert float((first - mean).std()) == pytest.approx(0.5, rel=0.5)

    plain = LatentCache(dataset, method="random")
    plain.build(RecordingEncoder(posterior=False))
    assert plain.method == "once" and "works as" in plain.notes[0]
    assert torch.equal(plain.latent(0, generator=torch.Generator().manual_seed(3)), plain.latent(0))

    with pytest.raises(UserError, match="latent sampling"):
        LatentCache(dataset, method="twice")


def test_latent_cache_refuses_random_crop_and_stops_when_asked(tmp_path: Path) -> None:
    root = make_training_set(tmp_path)
    with pytest.raises(UserError, match="random_crop"):
        LatentCache(_dataset(root, random_crop=True))
    cache = LatentCache(_dataset(root))
    encoder = RecordingEncoder()
    assert not cache.build(encoder, should_stop=lambda: len(encoder.shapes) >= 2)
    assert len(encoder.shapes) == 2 and not cache.built
    assert cache.build(encoder) and cache.built and len(encoder.shapes) == 6  # the other 4 of 6


def test_use_weight_maps_are_cached_at_latent_size(tmp_path: Path) -> None:
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, 32:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "half.png")
    gradient_image((64, 64)).save(tmp_path / "plain.png")
    dataset = TrainingDataset.from_folder(tmp_path, DatasetConfig(buckets=SMALL, use_weight=True))
    cache = LatentCache(dataset)
    cache.build(RecordingEncoder(), batch_size=2)
    half = cache.weight(0)
    assert half is not None and half.shape == (1, 8, 8)
    assert torch.equal(half[0, :, :4], torch.zeros(8, 4)) and torch.equal(half[0, :, 4:], torch.full((8, 4), 2.0))
    assert torch.equal(cache.weight(1), torch.ones(1, 8, 8))
    batch = dataset.batch(BucketBatchSampler.for_dataset(dataset, batch_size=2, seed=0).epoch_plans(0)[0], cache=cache)
    assert batch.weights is not None and batch.weights.shape == (2, 1, 8, 8)
    assert LatentCache(_dataset(make_training_set(tmp_path / "other"))).weight(0) is None


# -- batching ------------------------------------------------------------------------------------


def test_sampler_batches_never_mix_buckets_and_cover_every_repeat(tmp_path: Path) -> None:
    dataset = _dataset(make_training_set(tmp_path, repeats=3))
    sampler = BucketBatchSampler.for_dataset(dataset, batch_size=4, seed=11)
    # per bucket (items x 3 repeats): (48,80) 6 -> 2 batches, (64,64) 3 -> 1, (80,48) 6 -> 2, (128,32) 3 -> 1
    assert len(sampler) == 6 and sampler.epochs_for(13) == 3 and sampler.position(13) == (2, 1)
    plans = sampler.epoch_plans(0)
    assert [plan.step for plan in plans] == list(range(6))
    for plan in plans:
        assert {dataset.items[i].bucket for i in plan.indices} == {plan.bucket}
        assert 1 <= len(plan.indices) <= 4
    seen = sorted(i for plan in plans for i in plan.indices)
    assert seen == sorted(list(range(6)) * 3)
    assert [p.indices for p in sampler.epoch_plans(1)] != [p.indices for p in plans]  # reshuffled
    same = BucketBatchSampler.for_dataset(dataset, batch_size=4, seed=11)
    assert same.epoch_plans(0) == plans
    other = BucketBatchSampler.for_dataset(dataset, batch_size=4, seed=12)
    assert other.epoch_plans(0) != plans
    dropping = BucketBatchSampler.for_dataset(dataset, batch_size=4, seed=11, drop_last=True)
    assert len(dropping) == 2 and all(len(p.indices) == 4 for p in dropping.epoch_plans(0))
    with pytest.raises(UserError, match="no full batch"):
        BucketBatchSampler.for_dataset(dataset, batch_size=7, seed=0, drop_last=True)


def test_a_resumed_run_sees_the_same_batches(tmp_path: Path) -> None:
    dataset = _dataset(
        make_training_set(tmp_path, repeats=2),
        flip_aug=True,
        captions=CaptionOptions(shuffle_caption=True, keep_tokens=1),
    )
    cache = LatentCache(dataset, method="random")
    cache.build(RecordingEncoder(posterior=True), batch_size=4)
    sampler = BucketBatchSampler.for_dataset(dataset, batch_size=2, seed=5)
    whole = list(sampler.iterate(epochs=3))
    assert len(whole) == 3 * len(sampler)
    epoch, step = sampler.position(10)  # interrupted after 10 batches
    resumed = list(
        BucketBatchSampler.for_dataset(dataset, batch_size=2, seed=5).iterate(
            start_epoch=epoch, start_step=step, epochs=3
        )
    )
    assert resumed == whole[10:]
    for plan in (whole[10], whole[-1]):
        a, b = dataset.batch(plan, cache=cache), dataset.batch(plan, cache=cache)
        assert a.captions == b.captions and a.flips == b.flips
        assert a.latents is not None and b.latents is not None and torch.equal(a.latents, b.latents)
    batches = [dataset.batch(plan, cache=cache) for plan in whole]
    assert {flip for batch in batches for flip in batch.flips} == {False, True}
    captions = {c for batch in batches for c in batch.captions}
    assert all(c.startswith("a red cube, ") for c in captions)  # keep_tokens=1
    assert len(captions) > 6  # shuffled differently across steps


def test_batches_without_a_cache_carry_pixels(tmp_path: Path) -> None:
    dataset = _dataset(make_training_set(tmp_path), random_crop=True, use_weight=True)
    plan = BucketBatchSampler.for_dataset(dataset, batch_size=2, seed=1).epoch_plans(0)[0]
    batch = dataset.batch(plan)
    width, height = plan.bucket
    assert batch.latents is None and batch.pixels is not None
    assert batch.pixels.shape == (len(plan.indices), 3, height, width)
    assert batch.weights is not None and batch.weights.shape == (len(plan.indices), 1, height // 8, width // 8)
    assert torch.equal(dataset.batch(plan).pixels, batch.pixels)


# -- requests ------------------------------------------------------------------------------------


def test_configs_from_requests(tmp_path: Path) -> None:
    lora = DatasetConfig.for_lora(
        LoraTrainRequest(
            name="x", data_root=str(tmp_path), resolution=(768, 512), enable_bucket=False, caption_extension=".caption",
            shuffle_caption=True, keep_tokens=2, caption_dropout_rate=0.1, random_crop=True, flip_aug=True,
        )
    )  # fmt: skip
    assert lora.buckets.mode == "fixed" and lora.buckets.resolution == (768, 512)
    assert lora.caption_extension == ".caption" and lora.random_crop and lora.flip_aug
    assert lora.captions == CaptionOptions(shuffle_caption=True, keep_tokens=2, caption_dropout_rate=0.1)
    with pytest.raises(UserError, match="bucket_reso_steps"):
        DatasetConfig.for_lora(LoraTrainRequest(name="x", data_root="d", bucket_reso_steps=12))

    ti = DatasetConfig.for_a1111(
        TrainEmbeddingRequest(embedding_name="e", training_width=448, training_height=576, varsize=True,
                              shuffle_tags=True, tag_drop_out=0.25, use_weight=True),
        filename_word_regex=r"\w+", filename_join_string=", ",
    )  # fmt: skip
    assert ti.buckets.mode == "varsize" and ti.caption_fallback == "filename" and ti.use_weight
    assert ti.captions == CaptionOptions(shuffle_tags=True, tag_drop_out=0.25, first_line=False)
    assert (ti.filename_word_regex, ti.filename_join_string) == (r"\w+", ", ")
    fixed = DatasetConfig.for_a1111(TrainEmbeddingRequest(embedding_name="e"))
    assert fixed.buckets.mode == "fixed" and fixed.buckets.resolution == (512, 512)
