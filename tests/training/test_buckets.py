"""kohya's aspect-ratio bucketing, checked against lists and arithmetic written out by hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from modules.core.errors import UserError
from modules.engine.training.buckets import (
    NO_UPSCALE_WARNING,
    BucketConfig,
    BucketConfigError,
    BucketSelector,
    assign_buckets,
    crop_box,
    make_bucket_resolutions,
    validate_reso_steps,
)
from modules.engine.training.dataset import DatasetConfig, TrainingDataset
from tests.fixtures.training_data import FULL_SIZE_IMAGES, SMALL_BUCKETS, SUBJECT_FOLDER, make_training_set

# 512x512, min 256, max 1024, steps 64: area 262144. Square: floor(512/64)*64 = 512.
# w=256: 262144//256 = 1024 -> 1024 (256,1024)+(1024,256) | w=320: 819 -> 768 | w=384: 682 -> 640
# w=448: 585 -> 576 | w=512: 512 | w=576: 455 -> 448 | w=640: 409 -> 384 | w=704: 372 -> 320
# w=768: 341 -> 320 | w=832: 315 -> 256 | w=896: 292 -> 256 | w=960: 273 -> 256 | w=1024: 256
KOHYA_512_BUCKETS = [
    (256, 832), (256, 896), (256, 960), (256, 1024),
    (320, 704), (320, 768),
    (384, 640),
    (448, 576),
    (512, 512),
    (576, 448),
    (640, 384),
    (704, 320), (768, 320),
    (832, 256), (896, 256), (960, 256), (1024, 256),
]  # fmt: skip


def test_512_defaults_give_kohyas_17_buckets() -> None:
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == KOHYA_512_BUCKETS
    assert len(KOHYA_512_BUCKETS) == 17
    assert BucketConfig().predefined() == KOHYA_512_BUCKETS


# (image size, bucket, resized size, aspect error = bucket ratio - image ratio), kohya's defaults:
# * 512x512: a bucket itself.
# * 768x512 (1.5): nearest ratios 640/384 = 1.667 (error .167) and 576/448 = 1.286 (.214) -> (640,384);
#   1.5 is not wider than 1.667, so the width matches: scale 640/768, height 512*.8333 = 426.7 -> 427.
# * 512x768 (.667): 384/640 = .6 (.067) beats 448/576 = .778 (.111) -> (384,640); .667 > .6, so the
#   height matches: scale 640/768, width 426.7 -> 427.
# * 720x400 (1.8): 640/384 = 1.667 (.133) beats 704/320 = 2.2 (.4) -> (640,384); 1.8 > 1.667: height
#   matches, scale 384/400 = .96, width 691.2 -> 691.
# * 400x720 (.556): 384/640 = .6 (.044) beats 320/704 = .455 (.101) -> (384,640); .556 < .6: width
#   matches, scale .96, height 691.2 -> 691.
# * 960x240 (4.0): 1024/256 = 4.0 exactly -> (1024,256); width matches, scale 1024/960, height 256.
HAND_COMPUTED = [
    ((512, 512), (512, 512), (512, 512), 0.0),
    ((768, 512), (640, 384), (640, 427), 640 / 384 - 1.5),
    ((512, 768), (384, 640), (427, 640), 0.6 - 512 / 768),
    ((720, 400), (640, 384), (691, 384), 640 / 384 - 1.8),
    ((400, 720), (384, 640), (384, 691), 0.6 - 400 / 720),
    ((960, 240), (1024, 256), (1024, 256), 0.0),
]


def test_each_image_goes_to_the_hand_computed_bucket() -> None:
    assert [size for _stem, size in FULL_SIZE_IMAGES] == [size for size, *_ in HAND_COMPUTED]
    selector = BucketSelector(BucketConfig())
    for size, bucket, resized, error in HAND_COMPUTED:
        choice = selector.select(*size)
        assert (choice.bucket, choice.resized) == (bucket, resized), size
        assert choice.ar_error == pytest.approx(error), size
        assert resized[0] >= bucket[0] and resized[1] >= bucket[1]  # covers the bucket


def test_ss_bucket_info_counts_repeats_and_averages_errors_over_images() -> None:
    sizes = [size for size, *_ in HAND_COMPUTED]
    assignment = assign_buckets(BucketConfig(), sizes, repeats=[10, 10, 10, 10, 10, 2])
    # used buckets sorted: (384,640) x2 images, (512,512), (640,384) x2, (1024,256) (repeats 2)
    info = assignment.ss_bucket_info()
    assert info == {
        "buckets": {
            0: {"resolution": [384, 640], "count": 20},
            1: {"resolution": [512, 512], "count": 10},
            2: {"resolution": [640, 384], "count": 20},
            3: {"resolution": [1024, 256], "count": 2},
        },
        "mean_img_ar_error": pytest.approx((1 / 6 + 1 / 15 + 2 / 15 + 2 / 45) / 6),
    }
    json.dumps(info)  # goes into the safetensors metadata as JSON


def test_the_fixture_lands_in_the_same_buckets_divided_by_eight(tmp_path: Path) -> None:
    """The shared fixture (1/8 of the sizes above) with kohya's defaults / 8: every bucket / 8.
    Resized sizes round on their own: 96x64 -> 80 x (64*80/96 = 53.3 -> 53); 90x50 -> 48/50 = .96,
    86.4 -> 86; 120x30 -> 128/120, 32."""
    dataset = TrainingDataset.from_folder(
        make_training_set(tmp_path), DatasetConfig(buckets=BucketConfig(**SMALL_BUCKETS))
    )
    got = {item.name: (item.choice.bucket, item.choice.resized, item.repeats) for item in dataset.items}
    assert got == {
        f"{SUBJECT_FOLDER}/banner.png": ((80, 48), (86, 48), 10),
        f"{SUBJECT_FOLDER}/portrait.png": ((48, 80), (48, 86), 10),
        f"{SUBJECT_FOLDER}/square.png": ((64, 64), (64, 64), 10),
        f"{SUBJECT_FOLDER}/strip.png": ((128, 32), (128, 32), 10),
        f"{SUBJECT_FOLDER}/tall.png": ((48, 80), (53, 80), 10),
        f"{SUBJECT_FOLDER}/wide.png": ((80, 48), (80, 53), 10),
    }
    assert dataset.ss_bucket_info() == {
        "buckets": {
            0: {"resolution": [48, 80], "count": 20},
            1: {"resolution": [64, 64], "count": 10},
            2: {"resolution": [80, 48], "count": 20},
            3: {"resolution": [128, 32], "count": 10},
        },
        "mean_img_ar_error": pytest.approx(37 / 540),  # (1/6 + 1/15 + 2/15 + 2/45) / 6
    }


def test_no_upscale_shrinks_large_images_keeps_small_ones_and_ignores_min_max() -> None:
    # min/max would be refused with buckets (2000 > the resolution); no_upscale ignores them
    config = BucketConfig(bucket_no_upscale=True, min_bucket_reso=2000, max_bucket_reso=100)
    assert config.warnings() == [NO_UPSCALE_WARNING]
    assert config.predefined() == []
    selector = BucketSelector(config)
    # 1100x700 (1.5714) > 262144 pixels: sqrt(262144*1.5714) = 641.8 wide, 408.4 high.
    #   by width: 641.8 -> 642 -> 640; 640/1.5714 = 407.3 -> 407 -> 384; 640/384 = 1.667 (error .095)
    #   by height: 408.4 -> 408 -> 384; 384*1.5714 = 603.4 -> 603 -> 576; 576/384 = 1.5 (error .071)
    #   height wins: resized (603, 384), bucket floored to 64: (576, 384)
    choice = selector.select(1100, 700)
    assert (choice.bucket, choice.resized) == ((576, 384), (603, 384))
    # 700x1100 (.6364): width 408.4 -> 384, 384/.6364 = 603.4 -> 576: 384/576 = .667 (error .030)
    #   height 641.8 -> 640, 640*.6364 = 407.3 -> 384: 384/640 = .6 (error .036) -> width wins:
    #   resized (384, 603.4 -> 603), bucket (384, 576)
    choice = selector.select(700, 1100)
    assert (choice.bucket, choice.resized) == ((384, 576), (384, 603))
    # smaller than the area: kept, bucket = size floored to 64 (never enlarged)
    choice = selector.select(300, 200)
    assert (choice.bucket, choice.resized) == ((256, 192), (300, 200))
    assert choice.ar_error == pytest.approx(256 / 192 - 1.5)
    # a large square shrinks to the resolution
    assert selector.select(2000, 2000).bucket == (512, 512)
    with pytest.raises(ValueError, match="too small"):
        selector.select(50, 300)  # 50 floored to 64 is 0


@pytest.mark.parametrize("steps", [0, -64, 4, 12, 60, 100])
def test_bucket_reso_steps_must_be_a_multiple_of_eight(steps: int) -> None:
    with pytest.raises(BucketConfigError, match="multiple of 8") as caught:
        BucketConfig(bucket_reso_steps=steps)
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)


def test_steps_of_eight_and_thirty_two_are_accepted() -> None:
    assert validate_reso_steps(8) == 8
    config = BucketConfig(bucket_reso_steps=32)
    assert (320, 800) in config.predefined()  # 262144 // 320 = 819 -> 800 (floored to 32)


def test_min_and_max_must_bracket_the_resolution_and_are_rounded_to_steps() -> None:
    with pytest.raises(BucketConfigError, match="min_bucket_reso"):
        BucketConfig(min_bucket_reso=576)  # larger than 512
    with pytest.raises(BucketConfigError, match="max_bucket_reso"):
        BucketConfig(resolution=(768, 512), max_bucket_reso=704)
    with pytest.raises(BucketConfigError, match="multiples of 8"):
        BucketConfig(resolution=(500, 500))
    with pytest.raises(BucketConfigError, match="mode"):
        BucketConfig(mode="crop")
    config = BucketConfig(min_bucket_reso=250, max_bucket_reso=1000)
    assert config.adjusted_min_max() == (192, 1024)  # kohya: min floored, max raised to steps
    assert len(config.warnings()) == 2
    assert config.predefined()[0] == (192, 1024)


def test_fixed_mode_covers_the_resolution_and_centre_crops() -> None:
    config = BucketConfig(mode="fixed", resolution=(512, 512))
    assert config.predefined() == [(512, 512)]
    choice = BucketSelector(config).select(768, 512)
    # 1.5 is wider than 1.0: heights match, scale 1, (768, 512); 256 overhang, 128 each side
    assert (choice.bucket, choice.resized) == ((512, 512), (768, 512))
    assert crop_box(choice.resized, choice.bucket) == (128, 0, 640, 512)
    small = BucketSelector(config).select(100, 200)  # enlarged: width matches, 512 x 1024
    assert small.resized == (512, 1024)
    assert assign_buckets(config, [(768, 512)]).ss_bucket_info() is None  # kohya: no bucket info


def test_varsize_keeps_each_size_floored_to_the_step() -> None:
    config = BucketConfig(mode="varsize", varsize_step=8)
    choice = BucketSelector(config).select(100, 70)
    assert (choice.bucket, choice.resized) == ((96, 64), (100, 70))  # 100-4, 70-6: no scaling
    assert crop_box(choice.resized, choice.bucket) == (2, 3, 98, 67)
    assert BucketSelector(BucketConfig(mode="varsize", varsize_step=64)).select(100, 70).bucket == (64, 64)
    with pytest.raises(ValueError, match="too small"):
        BucketSelector(config).select(5, 100)
    with pytest.raises(BucketConfigError):
        BucketConfig(mode="varsize", varsize_step=10)


def test_random_crop_draws_from_the_rng_within_the_overhang() -> None:
    boxes = [crop_box((100, 80), (64, 64), random_crop=True, rng=random.Random(seed)) for seed in range(40)]
    assert all(0 <= left <= 36 and 0 <= top <= 16 for left, top, _r, _b in boxes)
    assert all(right - left == 64 and bottom - top == 64 for left, top, right, bottom in boxes)
    assert len({box[:2] for box in boxes}) > 10  # really random
    again = [crop_box((100, 80), (64, 64), random_crop=True, rng=random.Random(seed)) for seed in range(40)]
    assert boxes == again  # and only from the rng
    assert crop_box((100, 64), (64, 64), random_crop=True, rng=random.Random(0))[1] == 0  # no overhang
    with pytest.raises(ValueError, match="rng"):
        crop_box((100, 80), (64, 64), random_crop=True)
