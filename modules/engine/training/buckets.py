"""Aspect-ratio bucketing for training images (kohya's sd-scripts rules) and the two fixed modes.

Three modes, chosen by `BucketConfig.mode`:

* ``"bucket"`` (kohya `--enable_bucket`): `make_bucket_resolutions` lists the buckets for the
  training resolution's area; an image goes to the bucket whose aspect ratio is closest to its own
  (its own size when that is a bucket), is scaled so that it *covers* the bucket (the side that
  fits first matches, rounded half up; the other overhangs) and the overhang is cropped (centre,
  or random with kohya's `random_crop`). With `bucket_no_upscale` there is no list: an image
  larger than the resolution's area is shrunk to that area keeping its aspect ratio (its width or
  its height rounded to `bucket_reso_steps`, whichever keeps the ratio better), a smaller one
  keeps its size, and the bucket is that size floored to `bucket_reso_steps` (so the crop removes
  less than one step). `min_bucket_reso` / `max_bucket_reso` are then ignored, with kohya's
  warning.
* ``"fixed"`` (no bucketing): one bucket, the resolution itself; every image is scaled to cover it
  and cropped (kohya without `--enable_bucket`).
* ``"varsize"`` (A1111's "Do not resize images"): every image keeps its size, floored to
  `varsize_step` pixels by a centre crop (the VAE needs multiples of 8); images of one size share
  a bucket.

All sizes are ``(width, height)`` in pixels. Nothing here touches pixels: `BucketSelector.select`
says where an image goes and to what size it is scaled first; `crop_box` says which part of the
scaled image is kept. `BucketAssignment.ss_bucket_info` is kohya's metadata dict for the saved
LoRA.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from modules.core.errors import UserError

Size = tuple[int, int]  # (width, height)

BUCKET_MODES = ("bucket", "fixed", "varsize")
NO_UPSCALE_WARNING = (
    "min_bucket_reso and max_bucket_reso are ignored if bucket_no_upscale is set, "
    "because bucket reso is defined by image size automatically"
)
MIN_STEP = 8  # the VAE's downscale factor: every bucket side must be a multiple of it


class BucketConfigError(UserError, ValueError):
    """An unusable bucketing option (a `UserError` for the API / UI, a `ValueError` for code)."""


def validate_reso_steps(steps: int, *, min_step: int = MIN_STEP, name: str = "bucket_reso_steps") -> int:
    """`steps` when it is a positive multiple of `min_step` (8, the VAE factor), else
    BucketConfigError."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0 or steps % min_step:
        raise BucketConfigError(
            f"{name} is {steps!r}: it must be a positive multiple of {min_step} "
            f"(64 is the usual value; {min_step} is the smallest the VAE allows)"
        )
    return steps


def make_bucket_resolutions(
    max_reso: Size, min_size: int = 256, max_size: int = 1024, divisible: int = 64
) -> list[Size]:
    """kohya's bucket list for the area of `max_reso`: the square of that area (side floored to
    `divisible`), and for every width from `min_size` to `max_size` in `divisible` steps the height
    that keeps the area (floored, at most `max_size`) when it is at least `min_size`, both ways
    round. Sorted, no duplicates."""
    max_area = max_reso[0] * max_reso[1]
    resos: set[Size] = set()
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((side, side))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


@dataclass(frozen=True, kw_only=True)
class BucketConfig:
    """How images are sized for training (kohya's option names and defaults). Checked when made:
    a bad combination is a BucketConfigError."""

    resolution: Size = (512, 512)
    mode: str = "bucket"  # "bucket" | "fixed" | "varsize" (BUCKET_MODES)
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    varsize_step: int = 8  # "varsize": sizes are floored to this many pixels

    def __post_init__(self) -> None:
        if self.mode not in BUCKET_MODES:
            raise BucketConfigError(f"unknown bucket mode {self.mode!r}; expected one of {', '.join(BUCKET_MODES)}")
        width, height = self.resolution
        if width <= 0 or height <= 0 or width % MIN_STEP or height % MIN_STEP:
            raise BucketConfigError(
                f"the training resolution {width}x{height} must be positive multiples of {MIN_STEP}"
            )
        if self.mode == "varsize":
            validate_reso_steps(self.varsize_step, name="varsize_step")
        if self.mode == "bucket":
            validate_reso_steps(self.bucket_reso_steps)
            if not self.bucket_no_upscale:
                if self.min_bucket_reso <= 0 or self.min_bucket_reso > self.max_bucket_reso:
                    raise BucketConfigError(
                        f"min_bucket_reso ({self.min_bucket_reso}) must be positive and at most "
                        f"max_bucket_reso ({self.max_bucket_reso})"
                    )
                low, high = self.adjusted_min_max()
                if min(self.resolution) < low:
                    raise BucketConfigError(
                        f"min_bucket_reso ({low}) must be at most the resolution's shorter side "
                        f"({min(self.resolution)})"
                    )
                if max(self.resolution) > high:
                    raise BucketConfigError(
                        f"max_bucket_reso ({high}) must be at least the resolution's longer side "
                        f"({max(self.resolution)})"
                    )

    def adjusted_min_max(self) -> Size:
        """kohya's adjustment: min_bucket_reso floored and max_bucket_reso raised to multiples of
        bucket_reso_steps."""
        steps = self.bucket_reso_steps
        low = self.min_bucket_reso - self.min_bucket_reso % steps
        high = self.max_bucket_reso
        if high % steps:
            high += steps - high % steps
        return low, high

    @property
    def max_area(self) -> int:
        return self.resolution[0] * self.resolution[1]

    def warnings(self) -> list[str]:
        """What kohya would log about these settings."""
        out: list[str] = []
        if self.mode != "bucket":
            return out
        if self.bucket_no_upscale:
            out.append(NO_UPSCALE_WARNING)
            return out
        low, high = self.adjusted_min_max()
        if low != self.min_bucket_reso:
            out.append(f"min_bucket_reso adjusted to a multiple of bucket_reso_steps: {self.min_bucket_reso} -> {low}")
        if high != self.max_bucket_reso:
            out.append(f"max_bucket_reso adjusted to a multiple of bucket_reso_steps: {self.max_bucket_reso} -> {high}")
        return out

    def predefined(self) -> list[Size]:
        """The buckets an image can be put in ("bucket" without no_upscale: kohya's list;
        "fixed": the resolution). Empty where buckets come from image sizes (no_upscale,
        varsize)."""
        if self.mode == "fixed":
            return [self.resolution]
        if self.mode == "bucket" and not self.bucket_no_upscale:
            low, high = self.adjusted_min_max()
            return make_bucket_resolutions(self.resolution, low, high, self.bucket_reso_steps)
        return []


@dataclass(frozen=True)
class BucketChoice:
    """Where one image goes: scale it to `resized`, then crop `bucket` out of that."""

    bucket: Size
    resized: Size
    ar_error: float  # bucket aspect ratio minus the image's (kohya's signed error)


class BucketSelector:
    """`select(width, height)` for one `BucketConfig` (the predefined list computed once)."""

    def __init__(self, config: BucketConfig) -> None:
        self.config = config
        self.predefined = config.predefined()
        self._predefined_set = set(self.predefined)
        self._ratios = [w / h for w, h in self.predefined]

    def select(self, width: int, height: int) -> BucketChoice:
        """The bucket of an upright `width` x `height` image. ValueError when it is empty, or
        (no_upscale / varsize) smaller than one step on a side."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image size {width}x{height} is empty")
        config = self.config
        aspect = width / height
        if config.mode == "varsize":
            step = config.varsize_step
            bucket = (width - width % step, height - height % step)
            _check_bucket(bucket, width, height, step)
            return BucketChoice(bucket, (width, height), bucket[0] / bucket[1] - aspect)
        if self.predefined:
            reso = (width, height)
            if reso not in self._predefined_set:
                errors = [abs(ratio - aspect) for ratio in self._ratios]
                reso = self.predefined[errors.index(min(errors))]  # the first of the least, as argmin
            return BucketChoice(reso, cover_size(width, height, reso), reso[0] / reso[1] - aspect)
        # bucket_no_upscale: shrink only
        steps = config.bucket_reso_steps
        if width * height > config.max_area:
            resized = _shrink_to_area(width, height, config.max_area, steps)
        else:
            resized = (width, height)
        bucket = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
        _check_bucket(bucket, width, height, steps)
        return BucketChoice(bucket, resized, bucket[0] / bucket[1] - aspect)


def select_bucket(config: BucketConfig, width: int, height: int) -> BucketChoice:
    """One image's bucket (builds the predefined list each call: use `BucketSelector` for many)."""
    return BucketSelector(config).select(width, height)


def cover_size(width: int, height: int, bucket: Size) -> Size:
    """kohya's cover scale: an image relatively wider than `bucket` matches its height, else its
    width; sides rounded half up."""
    wider = width / height > bucket[0] / bucket[1]
    scale = bucket[1] / height if wider else bucket[0] / width
    return (int(width * scale + 0.5), int(height * scale + 0.5))


def _round_to_steps(value: float, steps: int) -> int:
    rounded = int(value + 0.5)
    return rounded - rounded % steps


def _shrink_to_area(width: int, height: int, max_area: int, steps: int) -> Size:
    """kohya's no_upscale shrink: the size of area `max_area` with this aspect ratio, with either
    its width or its height rounded to `steps` (whichever keeps the ratio better; the height on a
    tie)."""
    aspect = width / height
    resized_width = math.sqrt(max_area * aspect)
    resized_height = max_area / resized_width
    w_rounded = _round_to_steps(resized_width, steps)
    h_in_w = _round_to_steps(w_rounded / aspect, steps)
    h_rounded = _round_to_steps(resized_height, steps)
    w_in_h = _round_to_steps(h_rounded * aspect, steps)
    error_by_width = abs(w_rounded / h_in_w - aspect) if h_in_w else math.inf
    error_by_height = abs(w_in_h / h_rounded - aspect) if h_rounded else math.inf
    if error_by_width < error_by_height:
        return (w_rounded, int(w_rounded / aspect + 0.5))
    return (int(h_rounded * aspect + 0.5), h_rounded)


def _check_bucket(bucket: Size, width: int, height: int, step: int) -> None:
    if bucket[0] <= 0 or bucket[1] <= 0:
        raise ValueError(f"too small ({width}x{height}): a side is under {step} pixels")


def crop_box(
    resized: Size, bucket: Size, *, random_crop: bool = False, rng: random.Random | None = None
) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) part of an image scaled to `resized` that fills `bucket`:
    the overhang split evenly (the odd pixel on the right / bottom), or at a random offset drawn
    from `rng` (left offset first, then top; each only when that side overhangs)."""
    offsets = []
    for have, want in zip(resized, bucket, strict=True):
        if have < want:
            raise ValueError(f"a {resized[0]}x{resized[1]} image cannot fill a {bucket[0]}x{bucket[1]} bucket")
        trim = have - want
        if trim and random_crop:
            if rng is None:
                raise ValueError("random_crop needs an rng")
            offsets.append(rng.randint(0, trim))
        else:
            offsets.append(trim // 2)
    left, top = offsets
    return (left, top, left + bucket[0], top + bucket[1])


@dataclass
class BucketAssignment:
    """Every image's choice plus kohya's per-bucket counts (images x repeats)."""

    config: BucketConfig
    choices: list[BucketChoice]
    repeats: list[int]
    warnings: list[str] = field(default_factory=list)

    @property
    def buckets(self) -> list[Size]:
        """The buckets in use, sorted (kohya's order: their ids in `ss_bucket_info`)."""
        return sorted({choice.bucket for choice in self.choices})

    def members(self) -> dict[Size, list[int]]:
        """Bucket -> the indices of its images (ascending), buckets in `buckets` order."""
        out: dict[Size, list[int]] = {bucket: [] for bucket in self.buckets}
        for index, choice in enumerate(self.choices):
            out[choice.bucket].append(index)
        return out

    def counts(self) -> dict[Size, int]:
        """Bucket -> its images counted with their repeats."""
        return {bucket: sum(self.repeats[i] for i in indices) for bucket, indices in self.members().items()}

    @property
    def mean_img_ar_error(self) -> float:
        """Mean |aspect error| over images, without repeats (0 when there are none)."""
        if not self.choices:
            return 0.0
        return sum(abs(choice.ar_error) for choice in self.choices) / len(self.choices)

    def ss_bucket_info(self) -> dict[str, object] | None:
        """kohya's `ss_bucket_info`: ``{"buckets": {id: {"resolution": [w, h], "count": n}},
        "mean_img_ar_error": x}``; id = the bucket's index among the buckets in use (kohya only
        registers a bucket when an image takes it, then sorts them), count with repeats, the
        error averaged over images. None without bucketing ("fixed"): kohya writes none then."""
        if self.config.mode == "fixed":
            return None
        buckets = {
            index: {"resolution": [bucket[0], bucket[1]], "count": count}
            for index, (bucket, count) in enumerate(self.counts().items())
        }
        return {"buckets": buckets, "mean_img_ar_error": self.mean_img_ar_error}


def assign_buckets(
    config: BucketConfig, sizes: Sequence[Size], repeats: Iterable[int] | None = None
) -> BucketAssignment:
    """Choose a bucket for every `(width, height)` in `sizes` (ValueError for an image too small
    for any bucket: callers skip such images first)."""
    selector = BucketSelector(config)
    choices = [selector.select(w, h) for w, h in sizes]
    counts = list(repeats) if repeats is not None else [1] * len(choices)
    if len(counts) != len(choices):
        raise ValueError("one repeat count per image")
    return BucketAssignment(config, choices, counts, config.warnings())
