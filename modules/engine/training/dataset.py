"""Training datasets: a folder of images scanned, opened safely, bucketed, cached and batched.

How a trainer uses it::

    dataset = TrainingDataset.from_folder(root, DatasetConfig.for_lora(request))
    run.warn(...) for dataset.report.warnings; log dataset.describe()
    cache = LatentCache(dataset, method="once")           # optional (cache_latents)
    cache.build(encode, batch_size=4, generator=torch.Generator().manual_seed(seed))
    sampler = BucketBatchSampler.for_dataset(dataset, batch_size=request.train_batch_size, seed=seed)
    epoch, step = sampler.position(global_step)            # resuming: where the saved step was
    for plan in sampler.iterate(start_epoch=epoch, start_step=step):
        batch = dataset.batch(plan, cache=cache)           # latents (or pixels), captions, weights

Folder layouts (`scan_folder`): kohya's, ``<root>/<repeats>_<class tokens>/`` sub-folders whose
images are seen `repeats` times per epoch, plus images directly in the root (repeats 1), which is
also A1111's flat folder. Image files: png, jpg, jpeg, webp, bmp; ``*.preview.*`` files, hidden
files, other files and other folders are ignored (listed in the report). Order is by name, so two
scans give the same items.

Opening (`open_training_image`) never raises on a bad file: truncated or undecodable files, files
with more pixels than `max_pixels` (checked from the header before decoding, per call; Pillow's
global limit is left alone) and empty images are skipped and reported by name with the reason.
Other modes become RGB and are noted: CMYK, palette (with its transparency as alpha), LA,
16-bit greyscale (scaled to 8 bits, not clipped), float. The EXIF orientation is applied. The
alpha channel is kept apart for A1111's `use_weight` (a loss weight per latent pixel).

Every random choice of a batch (flip, random crop, caption edits, the latent sample) comes from
the `BatchPlan`'s seed, which depends only on (seed, epoch, step): a resumed run repeats an
uninterrupted one exactly.
"""

from __future__ import annotations

import math
import random
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from modules.core.errors import UserError
from modules.core.training import (
    LATENT_SAMPLING_METHODS,
    LoraTrainRequest,
    TrainEmbeddingRequest,
    TrainHypernetworkRequest,
)
from modules.engine.training.buckets import (
    BucketAssignment,
    BucketChoice,
    BucketConfig,
    BucketSelector,
    Size,
    crop_box,
)
from modules.engine.training.captions import (
    CAPTION_FALLBACKS,
    Caption,
    CaptionOptions,
    load_caption,
    normalize_extension,
)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
TEXT_EXTENSIONS = frozenset({".txt", ".caption"})  # caption files: not reported as ignored
DEFAULT_MAX_PIXELS = 8192 * 8192
LAYOUTS = ("auto", "flat")
FIT_MODES = ("crop", "pad", "stretch")
RESAMPLE_MODES = ("auto", "lanczos", "area", "bicubic")
LATENT_FACTOR = 8  # VAE downscale: a bucket of W x H pixels is W/8 x H/8 latent pixels
PAD_FILL = (127, 127, 127)  # "pad": the border colour (about 0 in [-1, 1]); its weight is 0
KOHYA_FOLDER = re.compile(r"^(\d+)_(.*)$")

_RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
}


# -- scanning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceImage:
    path: Path
    name: str  # path relative to the dataset root, "/"-separated (what reports show)
    repeats: int
    class_tokens: str | None  # kohya: the folder name after "<repeats>_"; None for root images
    folder: str  # "" for the root, else the sub-folder's name


@dataclass
class ScanResult:
    images: list[SourceImage]
    ignored: list[tuple[str, str]]  # (name, why)


def scan_folder(root: Path, *, layout: str = "auto", caption_extension: str = ".txt") -> ScanResult:
    """The training images under `root` (see the module text). `layout` ``"flat"`` reads only
    the root's own images (A1111); ``"auto"`` also reads kohya's ``<repeats>_<name>`` folders."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown dataset layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"the dataset folder {str(root)!r} does not exist or is not a folder")
    texts = TEXT_EXTENSIONS | {normalize_extension(caption_extension).lower()}
    result = ScanResult([], [])
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            match = KOHYA_FOLDER.match(entry.name)
            if layout == "flat":
                result.ignored.append((entry.name + "/", "a folder (the flat layout reads the root's images only)"))
            elif not match or int(match.group(1)) < 1:
                result.ignored.append((entry.name + "/", "not a <repeats>_<name> folder"))
            else:
                tokens = match.group(2).strip() or None
                for file in sorted(entry.iterdir(), key=lambda p: p.name):
                    _add_file(result, file, f"{entry.name}/{file.name}", int(match.group(1)), tokens, entry.name, texts)
        else:
            _add_file(result, entry, entry.name, 1, None, "", texts)
    return result


def _add_file(
    result: ScanResult, path: Path, name: str, repeats: int, tokens: str | None, folder: str, texts: frozenset[str]
) -> None:
    suffix = path.suffix.lower()
    if path.name.startswith("."):
        return
    if path.is_dir():
        result.ignored.append((name + "/", "a nested folder"))
    elif ".preview." in path.name.lower():
        result.ignored.append((name, "a preview image"))
    elif suffix in IMAGE_EXTENSIONS:
        result.images.append(SourceImage(path, name, repeats, tokens, folder))
    elif suffix not in texts and suffix != ".npz":
        result.ignored.append((name, "not a training image (png, jpg, jpeg, webp, bmp)"))


# -- opening -------------------------------------------------------------------------------------


class ImageSkipped(ValueError):
    """An image that cannot be used; `reason` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class LoadedImage:
    rgb: Image.Image  # mode "RGB", upright
    alpha: Image.Image | None  # mode "L" (None: no alpha, or fully opaque)
    note: str  # "" or how it was converted, e.g. "CMYK converted to RGB"


def open_training_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """`path` decoded, upright, as RGB plus its alpha. Raises `ImageSkipped` (never anything
    else) for a file that cannot be used."""
    try:
        if path.stat().st_size == 0:
            raise ImageSkipped("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is below
            with Image.open(path) as image:
                width, height = image.size
                if width <= 0 or height <= 0:
                    raise ImageSkipped(f"zero-size image ({width}x{height})")
                if width * height > max_pixels:
                    raise ImageSkipped(f"too many pixels ({width}x{height}, the limit is {max_pixels})")
                image.load()
                upright = ImageOps.exif_transpose(image)
                return _to_rgb(upright)
    except ImageSkipped:
        raise
    except Image.DecompressionBombError:
        raise ImageSkipped("too many pixels (decompression bomb)") from None
    except Image.UnidentifiedImageError:
        raise ImageSkipped("not an image Pillow can read") from None
    except MemoryError:
        raise ImageSkipped("out of memory while decoding") from None
    except Exception as exc:  # a bad file must never stop a run
        text = str(exc) or type(exc).__name__
        reason = "truncated" if "truncat" in text.lower() else "unreadable"
        raise ImageSkipped(f"{reason} ({text})") from None


def _to_rgb(image: Image.Image) -> LoadedImage:
    mode = image.mode
    if mode == "RGB":
        return LoadedImage(image, None, "")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        low, _high = alpha.getextrema()
        note = "" if mode == "RGBA" else f"{mode} converted to RGB (alpha kept)"
        return LoadedImage(rgba.convert("RGB"), None if low == 255 else alpha, note)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return LoadedImage(_grey_to_rgb(image), None, f"{mode} ({_depth(mode)}) scaled to 8-bit RGB")
    return LoadedImage(image.convert("RGB"), None, f"{mode} converted to RGB")


def _depth(mode: str) -> str:
    return "16-bit" if mode.startswith("I;16") else ("float" if mode == "F" else "32-bit integer")


def _grey_to_rgb(image: Image.Image) -> Image.Image:
    """High-depth greyscale scaled (not clipped) to 8 bits: I;16 by 255/65535; I by the same when
    any value is above 255 (a 16-bit source), else as is; F from 0..1 when it stays within 1."""
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        data = values.astype(np.float64) * (255.0 / 65535.0)
    elif image.mode == "I":
        wide = values.astype(np.float64)
        data = wide * (255.0 / 65535.0) if wide.max(initial=0) > 255 else wide
    else:
        floats = values.astype(np.float64)
        data = floats * 255.0 if floats.max(initial=0) <= 1.0 else floats
    grey = np.clip(np.rint(data), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")


# -- transforms ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """How an image becomes its bucket's pixels: scale to `resized`, keep `box` of that, put it
    at `offset` on a `bucket`-sized canvas (only "pad" leaves a border), then mirror if `flip`."""

    bucket: Size
    resized: Size
    box: tuple[int, int, int, int]
    offset: tuple[int, int]
    flip: bool


def plan_placement(
    size: Size,
    choice: BucketChoice,
    *,
    fit: str = "crop",
    random_crop: bool = False,
    rng: random.Random | None = None,
    flip: bool = False,
) -> Placement:
    """`fit` ``"crop"``: kohya's cover-and-crop (`choice.resized`, centre or random crop);
    ``"pad"``: scaled to fit inside the bucket, centred on a border; ``"stretch"``: scaled to the
    bucket, aspect ratio ignored (A1111's fixed-size TI dataset)."""
    bucket = choice.bucket
    if fit == "crop":
        box = crop_box(choice.resized, bucket, random_crop=random_crop, rng=rng)
        return Placement(bucket, choice.resized, box, (0, 0), flip)
    if fit == "stretch":
        return Placement(bucket, bucket, (0, 0, bucket[0], bucket[1]), (0, 0), flip)
    if fit == "pad":
        scale = min(bucket[0] / size[0], bucket[1] / size[1])
        resized = (
            min(bucket[0], max(1, int(size[0] * scale + 0.5))),
            min(bucket[1], max(1, int(size[1] * scale + 0.5))),
        )
        offset = ((bucket[0] - resized[0]) // 2, (bucket[1] - resized[1]) // 2)
        return Placement(bucket, resized, (0, 0, resized[0], resized[1]), offset, flip)
    raise UserError(f"unknown fit {fit!r}; expected one of {', '.join(FIT_MODES)}")


def apply_placement(
    image: Image.Image, placement: Placement, *, resample: str = "auto", fill: int | tuple[int, ...] = 0
) -> Image.Image:
    """`image` (any mode) placed on its bucket: `resample` ``"auto"`` is area averaging when
    shrinking and Lanczos when enlarging (kohya's choice), or one of lanczos / area / bicubic."""
    if image.size != placement.resized:
        image = image.resize(placement.resized, _resample_for(image.size, placement.resized, resample))
    if placement.box != (0, 0, image.width, image.height):
        image = image.crop(placement.box)
    if image.size != placement.bucket:
        canvas = Image.new(image.mode, placement.bucket, fill)
        canvas.paste(image, placement.offset)
        image = canvas
    if placement.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def _resample_for(have: Size, want: Size, mode: str) -> Image.Resampling:
    if mode == "auto":
        shrinking = want[0] <= have[0] and want[1] <= have[1]
        return Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS
    if mode not in _RESAMPLE:
        raise UserError(f"unknown resample mode {mode!r}; expected one of {', '.join(RESAMPLE_MODES)}")
    return _RESAMPLE[mode]


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as float32 [3, H, W] in [-1, 1]."""
    array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0


def alpha_weight(alpha: Image.Image | None, latent_hw: tuple[int, int]) -> torch.Tensor:
    """A1111's `use_weight` map, [1, h, w] float32: the alpha (already placed on the bucket)
    area-averaged to the latent size, shifted to a minimum of 0 and scaled to a mean of 1 (so the
    loss stays comparable). All ones without alpha or when the alpha is flat."""
    height, width = latent_hw
    if alpha is None:
        return torch.ones(1, height, width)
    small = alpha.convert("L").resize((width, height), Image.Resampling.BOX)
    weight = torch.from_numpy(np.asarray(small, dtype=np.float32).copy())[None]
    weight -= weight.min()
    mean = float(weight.mean())
    if mean <= 0.0:
        return torch.ones(1, height, width)
    return weight / mean


# -- the dataset ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DatasetConfig:
    """Everything about a dataset that is not the folder. `for_lora` / `for_a1111` map requests."""

    buckets: BucketConfig = field(default_factory=BucketConfig)
    layout: str = "auto"  # LAYOUTS
    caption_extension: str = ".txt"
    caption_fallback: str = "auto"  # captions.CAPTION_FALLBACKS
    filename_word_regex: str = ""  # A1111's dataset_filename_word_regex option
    filename_join_string: str = " "  # A1111's dataset_filename_join_string option
    captions: CaptionOptions = field(default_factory=CaptionOptions)
    fit: str = "crop"  # FIT_MODES
    random_crop: bool = False
    resample: str = "auto"  # RESAMPLE_MODES
    flip_aug: bool = False
    use_weight: bool = False  # A1111: loss weight from the alpha channel
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise UserError(f"unknown dataset layout {self.layout!r}; expected one of {', '.join(LAYOUTS)}")
        if self.fit not in FIT_MODES:
            raise UserError(f"unknown fit {self.fit!r}; expected one of {', '.join(FIT_MODES)}")
        if self.resample not in RESAMPLE_MODES:
            raise UserError(f"unknown resample mode {self.resample!r}; expected one of {', '.join(RESAMPLE_MODES)}")
        if self.caption_fallback not in CAPTION_FALLBACKS:
            raise UserError(f"unknown caption fallback {self.caption_fallback!r}")
        normalize_extension(self.caption_extension)

    @classmethod
    def for_lora(cls, request: LoraTrainRequest) -> DatasetConfig:
        """kohya's options: buckets (or the fixed resolution), caption file extension, caption
        edits, random crop, flip. Images without a caption file in a ``<n>_<tokens>`` folder get
        the tokens (kohya), elsewhere their file name."""
        width, height = request.resolution
        return cls(
            buckets=BucketConfig(
                resolution=(int(width), int(height)),
                mode="bucket" if request.enable_bucket else "fixed",
                min_bucket_reso=request.min_bucket_reso,
                max_bucket_reso=request.max_bucket_reso,
                bucket_reso_steps=request.bucket_reso_steps,
                bucket_no_upscale=request.bucket_no_upscale,
            ),
            caption_extension=request.caption_extension,
            captions=CaptionOptions(
                shuffle_caption=request.shuffle_caption,
                keep_tokens=request.keep_tokens,
                caption_dropout_rate=request.caption_dropout_rate,
            ),
            random_crop=request.random_crop,
            flip_aug=request.flip_aug,
        )

    @classmethod
    def for_a1111(
        cls,
        request: TrainEmbeddingRequest | TrainHypernetworkRequest,
        *,
        filename_word_regex: str = "",
        filename_join_string: str = " ",
    ) -> DatasetConfig:
        """A1111's embedding / hypernetwork dataset: training_width x training_height (cover and
        centre crop; A1111 stretches, `fit="stretch"` does that), or with `varsize` each image's
        own size floored to 8; `.txt` captions (all lines) else the file name words; shuffle_tags,
        tag_drop_out, use_weight. The two filename options are A1111 settings (opts)."""
        return cls(
            buckets=BucketConfig(
                resolution=(request.training_width, request.training_height),
                mode="varsize" if request.varsize else "fixed",
            ),
            caption_fallback="filename",
            filename_word_regex=filename_word_regex,
            filename_join_string=filename_join_string,
            captions=CaptionOptions(
                shuffle_tags=request.shuffle_tags, tag_drop_out=request.tag_drop_out, first_line=False
            ),
            use_weight=request.use_weight,
        )


@dataclass(frozen=True)
class TrainingItem:
    index: int
    source: SourceImage
    size: Size  # upright size in pixels
    caption: Caption
    choice: BucketChoice
    has_alpha: bool

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def repeats(self) -> int:
        return self.source.repeats

    @property
    def bucket(self) -> Size:
        return self.choice.bucket


@dataclass
class DatasetReport:
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason): not trained on
    notes: list[tuple[str, str]] = field(default_factory=list)  # (name, what): converted, caption oddities
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (name, why): not images / folders
    warnings: list[str] = field(default_factory=list)  # settings (kohya's no_upscale warning, ...)


@dataclass
class PreparedImage:
    pixels: torch.Tensor  # float32 [3, H, W] in [-1, 1], H x W = the bucket
    alpha: Image.Image | None  # mode "L", bucket-sized, placed like the pixels (only with use_weight)
    placement: Placement


@dataclass(frozen=True)
class BatchPlan:
    """One optimizer batch: items of one bucket (an item twice when its repeats fall so) and the
    seed of its random choices."""

    epoch: int  # 0-based
    step: int  # 0-based, within the epoch
    bucket: Size
    indices: tuple[int, ...]
    seed: int


@dataclass
class TrainingBatch:
    plan: BatchPlan
    captions: list[str]
    flips: list[bool]
    latents: torch.Tensor | None  # [B, C, h, w] (from the LatentCache)
    pixels: torch.Tensor | None  # [B, 3, H, W] in [-1, 1] (no cache)
    weights: torch.Tensor | None  # [B, 1, h, w] with use_weight (latent size), else None


class TrainingDataset:
    """The usable images of a folder with their captions and buckets (see the module text)."""

    def __init__(self, root: Path, config: DatasetConfig, items: list[TrainingItem], report: DatasetReport) -> None:
        if not items:
            raise UserError(_no_images_message(root, report))
        self.root = root
        self.config = config
        self.items = items
        self.report = report
        self.assignment = BucketAssignment(
            config.buckets, [item.choice for item in items], [item.repeats for item in items]
        )

    @classmethod
    def from_folder(cls, root: Path | str, config: DatasetConfig | None = None) -> TrainingDataset:
        """Scan `root`, decode every image once (bad ones skipped and reported), read captions,
        choose buckets. UserError when the folder is missing or has no usable image."""
        config = config or DatasetConfig()
        root = Path(root)
        scan = scan_folder(root, layout=config.layout, caption_extension=config.caption_extension)
        report = DatasetReport(ignored=list(scan.ignored), warnings=config.buckets.warnings())
        selector = BucketSelector(config.buckets)
        items: list[TrainingItem] = []
        for source in scan.images:
            try:
                loaded = open_training_image(source.path, max_pixels=config.max_pixels)
            except ImageSkipped as exc:
                report.skipped.append((source.name, exc.reason))
                continue
            size = loaded.rgb.size
            has_alpha = loaded.alpha is not None
            loaded.rgb.close()
            try:
                choice = selector.select(*size)
            except ValueError as exc:
                report.skipped.append((source.name, str(exc)))
                continue
            caption = load_caption(
                source.path,
                extension=config.caption_extension,
                class_tokens=source.class_tokens,
                fallback=config.caption_fallback,
                word_regex=config.filename_word_regex,
                join_string=config.filename_join_string,
            )
            if loaded.note:
                report.notes.append((source.name, loaded.note))
            if caption.note:
                report.notes.append((source.name, caption.note))
            items.append(TrainingItem(len(items), source, size, caption, choice, has_alpha))
        return cls(root, config, items, report)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def total_repeats(self) -> int:
        """Images counted with their repeats (one epoch's images)."""
        return sum(item.repeats for item in self.items)

    @property
    def buckets(self) -> dict[Size, list[int]]:
        """Bucket -> item indices, buckets sorted."""
        return self.assignment.members()

    def ss_bucket_info(self) -> dict[str, object] | None:
        return self.assignment.ss_bucket_info()

    def load(self, index: int, *, flip: bool = False, rng: random.Random | None = None) -> PreparedImage:
        """Item `index` decoded and placed on its bucket (random crop drawn from `rng`). A file
        that became unreadable or changed size since the scan is a UserError naming it."""
        item = self.items[index]
        config = self.config
        try:
            loaded = open_training_image(item.path, max_pixels=config.max_pixels)
        except ImageSkipped as exc:
            raise UserError(f"{item.name} can no longer be read: {exc.reason}") from None
        if loaded.rgb.size != item.size:
            raise UserError(f"{item.name} changed since the dataset was read ({item.size} -> {loaded.rgb.size})")
        placement = plan_placement(
            item.size, item.choice, fit=config.fit, random_crop=config.random_crop, rng=rng, flip=flip
        )
        pixels = image_to_tensor(apply_placement(loaded.rgb, placement, resample=config.resample, fill=PAD_FILL))
        alpha = None
        if config.use_weight:
            source_alpha = loaded.alpha
            if source_alpha is None and config.fit == "pad":
                source_alpha = Image.new("L", item.size, 255)  # the border gets weight 0
            if source_alpha is not None:
                alpha = apply_placement(source_alpha, placement, resample=config.resample, fill=0)
        return PreparedImage(pixels, alpha, placement)

    def caption(self, index: int, rng: random.Random) -> str:
        """Item `index`'s caption with this step's edits."""
        return self.config.captions.apply(self.items[index].caption.text, rng)

    def batch(self, plan: BatchPlan, *, cache: LatentCache | None = None) -> TrainingBatch:
        """The batch `plan` names: per item (in order) a flip draw (flip_aug), the random crop (no
        cache), the caption edits; latents from `cache` (a fresh sample per call with "random") or
        decoded pixels. Same plan, same batch."""
        rng = random.Random(plan.seed)
        generator = torch.Generator().manual_seed(plan.seed)
        captions: list[str] = []
        flips: list[bool] = []
        tensors: list[torch.Tensor] = []
        weights: list[torch.Tensor] = []
        for index in plan.indices:
            flip = self.config.flip_aug and rng.random() < 0.5
            flips.append(flip)
            if cache is not None:
                tensors.append(cache.latent(index, flip=flip, generator=generator))
                weight = cache.weight(index, flip=flip)
                if weight is not None:
                    weights.append(weight)
            else:
                prepared = self.load(index, flip=flip, rng=rng)
                tensors.append(prepared.pixels)
                if self.config.use_weight:
                    height, width = prepared.pixels.shape[-2:]
                    weights.append(alpha_weight(prepared.alpha, (height // LATENT_FACTOR, width // LATENT_FACTOR)))
            captions.append(self.caption(index, rng))
        stacked = torch.stack(tensors)
        return TrainingBatch(
            plan=plan,
            captions=captions,
            flips=flips,
            latents=stacked if cache is not None else None,
            pixels=None if cache is not None else stacked,
            weights=torch.stack(weights) if weights else None,
        )

    def describe(self) -> str:
        """A few lines for the log / UI: images, repeats per folder, buckets with counts (with
        repeats), skipped and converted files, ignored files, warnings."""
        lines = [f"{len(self.items)} images, {self.total_repeats} per epoch with repeats, from {self.root}"]
        folders: dict[str, list[TrainingItem]] = {}
        for item in self.items:
            folders.setdefault(item.source.folder, []).append(item)
        for folder, items in folders.items():
            lines.append(f"  {folder or '(root)'}: {len(items)} images x {items[0].repeats} repeats")
        counts = self.assignment.counts()
        mode = self.config.buckets.mode
        title = {"bucket": "buckets", "fixed": "fixed size", "varsize": "sizes (varsize)"}[mode]
        if mode == "bucket":
            title += f", mean aspect error {self.assignment.mean_img_ar_error:.4f}"
        lines.append(f"{title}:")
        lines.extend(f"  {w}x{h}: {count}" for (w, h), count in counts.items())
        for heading, entries in (
            ("skipped", self.report.skipped),
            ("notes", self.report.notes),
            ("ignored", self.report.ignored),
        ):
            if entries:
                lines.append(f"{heading} ({len(entries)}):")
                lines.extend(f"  {name}: {why}" for name, why in entries)
        lines.extend(f"warning: {text}" for text in self.report.warnings)
        return "\n".join(lines)


def _no_images_message(root: Path, report: DatasetReport) -> str:
    text = f"no usable training images in {str(root)!r}"
    if report.skipped:
        text += "; skipped: " + "; ".join(f"{name} ({why})" for name, why in report.skipped)
    folders = [name for name, _why in report.ignored if name.endswith("/")]
    if folders:
        text += "; ignored folders: " + ", ".join(folders)
    return text


# -- latent cache --------------------------------------------------------------------------------

EncodeResult = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
EncodeFn = Callable[[torch.Tensor], EncodeResult]


class LatentCache:
    """Latents of every item (and of its mirror image with flip_aug), encoded bucket by bucket and
    kept on the CPU.

    The `encode` contract: it gets a CPU float32 batch [B, 3, H, W] in [-1, 1] (one bucket, so
    one size) and moves it where it likes. It returns either

    * a tensor [B, C, h, w]: latents ready for the UNet (sampled, shifted and scaled by the
      caller), or
    * a pair ``(mean, std)``, each [B, C, h, w]: the VAE posterior, both already in UNet units
      (``mean = (posterior.mean - shift) * scale``, ``std = posterior.std * scale``).

    `method` (A1111's latent_sampling_method): ``"once"`` keeps one sample (the tensor as given,
    or ``mean + std * noise`` drawn once at build time); ``"deterministic"`` keeps the mean;
    ``"random"`` keeps mean and std and draws a new sample on every `latent` call. Given a plain
    tensor, "deterministic" and "random" fall back to "once" (as A1111 does when the posterior is
    not available) and say so in `notes`. Latents keep the dtype `encode` gave them.

    Random crops are refused: a cached latent has one crop (kohya refuses the same).
    """

    def __init__(self, dataset: TrainingDataset, *, method: str = "once") -> None:
        if method not in LATENT_SAMPLING_METHODS:
            raise UserError(
                f"unknown latent sampling method {method!r}; expected one of {', '.join(LATENT_SAMPLING_METHODS)}"
            )
        if dataset.config.random_crop:
            raise UserError("random_crop cannot be used with cached latents: turn one of them off")
        self.dataset = dataset
        self.requested_method = method
        self.method = method
        self.flips: tuple[bool, ...] = (False, True) if dataset.config.flip_aug else (False,)
        self.notes: list[str] = []
        self._latents: dict[tuple[int, bool], torch.Tensor] = {}
        self._stds: dict[tuple[int, bool], torch.Tensor] = {}
        self._weights: dict[tuple[int, bool], torch.Tensor] = {}

    @property
    def built(self) -> bool:
        return len(self._latents) == len(self.dataset.items) * len(self.flips)

    def jobs(self, batch_size: int) -> list[list[tuple[int, bool]]]:
        """The encode batches, in order: bucket by bucket (sorted), items ascending, each item's
        plain then flipped copy; at most `batch_size` per batch, never two buckets in one."""
        if batch_size < 1:
            raise UserError(f"the encode batch size must be at least 1 (got {batch_size})")
        out: list[list[tuple[int, bool]]] = []
        for indices in self.dataset.buckets.values():
            keys = [(index, flip) for index in indices for flip in self.flips]
            out.extend(keys[start : start + batch_size] for start in range(0, len(keys), batch_size))
        return out

    def build(
        self,
        encode: EncodeFn,
        *,
        batch_size: int = 1,
        generator: torch.Generator | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> bool:
        """Encode everything not cached yet. `generator` (CPU) draws the "once" samples.
        `on_batch(done, total)` after each batch. Returns False when `should_stop` ended it early
        (what was encoded stays; a later `build` continues)."""
        batches = [[key for key in batch if key not in self._latents] for batch in self.jobs(batch_size)]
        batches = [batch for batch in batches if batch]
        for number, batch in enumerate(batches, start=1):
            if should_stop is not None and should_stop():
                return False
            prepared = [self.dataset.load(index, flip=flip) for index, flip in batch]
            pixels = torch.stack([item.pixels for item in prepared])
            with torch.no_grad():
                result = encode(pixels)
            mean, std = self._split(result, len(batch))
            for position, key in enumerate(batch):
                self._store(key, mean[position], None if std is None else std[position], generator)
                if self.dataset.config.use_weight:
                    latent_hw = (int(mean.shape[-2]), int(mean.shape[-1]))
                    self._weights[key] = alpha_weight(prepared[position].alpha, latent_hw)
            if on_batch is not None:
                on_batch(number, len(batches))
        return True

    def _split(self, result: EncodeResult, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(result, tuple):
            if len(result) != 2:
                raise TypeError("encode must return a tensor or a (mean, std) pair")
            mean, std = (part.detach().to("cpu") for part in result)
            if mean.shape != std.shape:
                raise ValueError(f"encode gave mean {tuple(mean.shape)} and std {tuple(std.shape)}")
        else:
            mean, std = result.detach().to("cpu"), None
            if self.method != "once":
                self.notes.append(
                    f'encode gave latents, not a posterior: latent sampling "{self.method}" works as "once"'
                )
                self.method = "once"
        if mean.ndim != 4 or mean.shape[0] != count:
            raise ValueError(f"encode gave shape {tuple(mean.shape)} for a batch of {count}")
        return mean, std

    def _store(
        self, key: tuple[int, bool], mean: torch.Tensor, std: torch.Tensor | None, generator: torch.Generator | None
    ) -> None:
        if std is None or self.method == "deterministic":
            self._latents[key] = mean.clone()
        elif self.method == "once":
            self._latents[key] = _sample(mean, std, generator)
        else:  # random
            self._latents[key] = mean.clone()
            self._stds[key] = std.clone()

    def latent(self, index: int, *, flip: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Item `index`'s latent [C, h, w] (its mirror's with `flip`); with "random" a new sample
        from `generator` each call."""
        key = (index, flip and self.dataset.config.flip_aug)
        if key not in self._latents:
            raise KeyError(f"item {index} (flip={flip}) is not cached: build the cache first")
        std = self._stds.get(key)
        if std is None:
            return self._latents[key]
        return _sample(self._latents[key], std, generator)

    def weight(self, index: int, *, flip: bool = False) -> torch.Tensor | None:
        """Item `index`'s use_weight map [1, h, w] (None without use_weight)."""
        return self._weights.get((index, flip and self.dataset.config.flip_aug))

    @property
    def nbytes(self) -> int:
        tensors = [*self._latents.values(), *self._stds.values(), *self._weights.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


def _sample(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
    return (mean.float() + std.float() * noise).to(mean.dtype)


# -- batching ------------------------------------------------------------------------------------


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (any sign), stable across runs and platforms."""
    words = [part % 2**64 for part in parts]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & (2**63 - 1)


class BucketBatchSampler:
    """Each epoch: every item `repeats` times, grouped by bucket, shuffled within its bucket,
    cut into batches of `batch_size` (a bucket's last batch may be smaller, as in kohya, unless
    `drop_last`), the batches shuffled. A batch never mixes buckets. Epoch e's order depends only
    on (seed, e), so `iterate(start_epoch, start_step)` continues an interrupted run exactly."""

    def __init__(
        self,
        buckets: Mapping[Size, Sequence[int]],
        repeats: Sequence[int],
        *,
        batch_size: int,
        seed: int,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"the batch size must be at least 1 (got {batch_size})")
        self.buckets = {bucket: list(indices) for bucket, indices in sorted(buckets.items())}
        self.repeats = list(repeats)
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self._sizes = {bucket: sum(self.repeats[i] for i in indices) for bucket, indices in self.buckets.items()}
        if len(self) == 0:
            raise UserError(
                f"no full batch of {batch_size}: every bucket has fewer images (with repeats); "
                "lower the batch size or keep partial batches"
            )

    @classmethod
    def for_dataset(
        cls, dataset: TrainingDataset, *, batch_size: int, seed: int, drop_last: bool = False
    ) -> BucketBatchSampler:
        return cls(
            dataset.buckets,
            [item.repeats for item in dataset.items],
            batch_size=batch_size,
            seed=seed,
            drop_last=drop_last,
        )

    def __len__(self) -> int:
        """Batches (optimizer steps without accumulation) per epoch."""
        if self.drop_last:
            return sum(size // self.batch_size for size in self._sizes.values())
        return sum(math.ceil(size / self.batch_size) for size in self._sizes.values())

    def epochs_for(self, steps: int) -> int:
        """Epochs needed for `steps` batches."""
        return math.ceil(steps / len(self))

    def position(self, global_step: int) -> tuple[int, int]:
        """(epoch, step within it) of the 0-based `global_step`-th batch."""
        return divmod(global_step, len(self))

    def epoch_plans(self, epoch: int) -> list[BatchPlan]:
        rng = random.Random(derive_seed(self.seed, epoch))
        groups: list[tuple[Size, list[int]]] = []
        for bucket, indices in self.buckets.items():
            pool = [index for index in indices for _ in range(self.repeats[index])]
            rng.shuffle(pool)
            for start in range(0, len(pool), self.batch_size):
                chunk = pool[start : start + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    groups.append((bucket, chunk))
        rng.shuffle(groups)
        return [
            BatchPlan(epoch, step, bucket, tuple(chunk), derive_seed(self.seed, epoch, step))
            for step, (bucket, chunk) in enumerate(groups)
        ]

    def iterate(self, *, start_epoch: int = 0, start_step: int = 0, epochs: int | None = None) -> Iterator[BatchPlan]:
        """Batches from (start_epoch, start_step) on, through `epochs` epochs in all counted from
        epoch 0 (None: without end)."""
        epoch = start_epoch
        step = start_step
        while epochs is None or epoch < epochs:
            yield from self.epoch_plans(epoch)[step:]
            epoch += 1
            step = 0
