"""Textual-inversion training with A1111's semantics (its Train tab's "Train Embedding").

The run (shared with the hypernetwork trainer, `run_a1111_training`):

* the learning rate is A1111's schedule string ("0.005:100, 1e-3:1000, 1e-5": a rate until a
  step, parse errors are a `UserError`); training starts at the step stored in the file and ends
  at `steps` (A1111's "Max steps") or when the schedule runs out; a file already at or past it is
  left alone with a warning;
* the data set is A1111's, read through `dataset.py` (flat folder, bad files skipped and
  reported by name in `TrainResult.skipped_images` and as warnings; CMYK, 16-bit and the like
  converted): each image stretched to the training size (bicubic), or with `varsize` kept at its
  own size (floored to 8) and batched with images of the same size; a caption from its `.txt`
  file or its file name (`[filewords]`, the filename options applied); a random line of the
  prompt template with `[name]` and `[filewords]` filled; `shuffle_tags` / `tag_drop_out` edit
  the file words every time (otherwise an image keeps the line it drew first, as in A1111);
  `batch_size` and `gradient_step` (accumulation) are capped by the image count as A1111 caps
  them, and an epoch drops the batches that do not fill an accumulation;
* latents: `latent_sampling_method` "once" (one draw cached), "deterministic" (the posterior
  mean) or "random" (a new draw every time); `use_weight` weighs the loss per pixel with the
  image's alpha channel (at latent size, shifted to min 0 and scaled to mean 1);
* gradient clipping "value" / "norm" with its own schedule string (A1111's `clip_grad_value`);
* every `save_*_every` steps a copy `<name>-<step>.pt` in `<log>/<date>/<name>/embeddings`
  (`hypernetworks`), and the file itself updated in place (atomic), so a crash loses at most the
  steps since; with the `save_optimizer_state` option the optimizer state goes to `<file>.optim`
  beside each saved file (A1111's name and keys, with a checksum of the weights it belongs to)
  and a later run resumes with it; every `create_image_every` steps a preview image in
  `<log>/<date>/<name>/images` made with the weights as they are (txt2img's preview settings when
  `preview_from_txt2img`, else the batch's first prompt at the training size and 20 steps, as
  A1111 does); embeddings also save that image with the embedding in a text chunk in
  `image_embeddings` when `save_image_with_stored_embedding`; the loss goes to
  `textual_inversion_loss.csv` (`hypernetwork_loss.csv`) every `training_write_csv_every` steps,
  and the run's settings to `settings-<date-time>.json` with `save_training_settings_to_txt`;
* the interrupt saves the file as it is and returns `interrupted=True`; the model is left as it
  was found.

Noise and timesteps come from a generator seeded by the step number, and the data order from the
sampler's seed and the epoch, so a resumed run sees what an uninterrupted one would have (the
optimizer state too, with `save_optimizer_state`).

Deliberate differences from A1111: the step stored in a saved file is the number of optimizer
steps done (A1111 names its copies one step ahead of the step inside them); the run stops at
exactly `steps`.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modules.core.atomic import atomic_write_bytes
from modules.core.errors import UserError
from modules.core.requests import Txt2ImgRequest
from modules.core.training import (
    CLIP_GRAD_MODES,
    LATENT_SAMPLING_METHODS,
    TrainEmbeddingRequest,
    TrainHypernetworkRequest,
    TrainResult,
)
from modules.engine.sampling import TextCond
from modules.engine.training import templates
from modules.engine.training.creation import (
    embedding_file_bytes,
    embedding_suffix,
    safetensors_step,
    torch_bytes,
)
from modules.engine.training.dataset import (
    BatchPlan,
    BucketBatchSampler,
    DatasetConfig,
    LatentCache,
    TrainingBatch,
    TrainingDataset,
)
from modules.engine.training.diffusion import TokenHook, TrainingView
from modules.engine.training.session import TrainingRun, load_state

if TYPE_CHECKING:
    from modules.models.embeddings import Embedding

log = logging.getLogger(__name__)

_SCHEDULE_HELP = (
    'invalid learning rate schedule {text!r}: it should be a number or, for example, "0.001:100, 0.00001:1000, '
    '1e-5:10000" (0.001 until step 100, 0.00001 until 1000, 1e-5 until 10000)'
)
_SEED = 0x5D7A1  # base of the per-step / per-epoch seeds


# --------------------------------------------------------------------------- learning rates


def parse_learn_rate(text: str, max_steps: int, current_step: int = 0) -> list[tuple[float, int]]:
    """A1111's learn-rate schedule string as (rate, until step) pairs. "rate:step" holds until that
    step (pairs that end at or before `current_step` are left out: a resumed run skips them),
    "rate:-1" or a bare rate holds until `max_steps` and ends the list, as does a step past
    `max_steps` (cut to it). Anything else is a `UserError` (also used for the gradient-clipping
    value, which takes the same syntax)."""
    rates: list[tuple[float, int]] = []
    try:
        for pair in str(text).split(","):
            if not pair.strip():
                continue
            parts = pair.split(":")
            if len(parts) > 2:
                raise ValueError(pair)
            rate = float(parts[0])
            if not math.isfinite(rate) or rate < 0:
                raise ValueError(pair)
            if len(parts) == 1:
                rates.append((rate, max_steps))
                break
            step = int(parts[1])
            if step > current_step:
                rates.append((rate, min(step, max_steps)))
                if step > max_steps:
                    break
            elif step == -1:
                rates.append((rate, max_steps))
                break
        if not rates:
            raise ValueError(text)
    except ValueError as exc:
        raise UserError(_SCHEDULE_HELP.format(text=text)) from exc
    return rates


class LearnRateSchedule:
    """The rate for the optimizer step that starts with `steps_done` steps behind it: the first
    segment that ends after it; None once every segment has ended (training stops there)."""

    def __init__(self, text: str, max_steps: int, current_step: int = 0) -> None:
        self.segments = parse_learn_rate(text, max_steps, current_step)

    def rate(self, steps_done: int) -> float | None:
        for rate, end in self.segments:
            if steps_done < end:
                return rate
        return None


# --------------------------------------------------------------------------- the data set


def option_value(options: Any, key: str, default: Any) -> Any:
    """An option's value (`default` without options or for an unknown key)."""
    if options is None:
        return default
    try:
        value = options.get(key)
    except Exception:
        return default
    return default if value is None else value


@dataclass
class DataSet:
    """The data set of one run: the images (`dataset.py`), their cached latents, the batch order,
    the template lines, and A1111's caps on batch size and accumulation."""

    dataset: TrainingDataset
    cache: LatentCache
    sampler: BucketBatchSampler
    lines: list[str]
    fixed_lines: dict[int, str]  # item -> the template line it drew once (no tag edits)
    batch_size: int
    gradient_step: int
    _plans: dict[int, list[BatchPlan]] = field(default_factory=dict)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return list(self.dataset.report.skipped)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: A1111 drops the batches that do not fill an accumulation."""
        return max(1, len(self.sampler) // self.gradient_step)

    def group(self, step: int) -> list[BatchPlan]:
        """The batches of the optimizer step that starts with `step` steps done."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if epoch not in self._plans:
            self._plans = {epoch: self.sampler.epoch_plans(epoch)}
        plans = self._plans[epoch]
        return plans[within * self.gradient_step : (within + 1) * self.gradient_step]

    def captions(self, batch: TrainingBatch, name: str) -> list[str]:
        """The prompts of a batch: a template line with `[name]` and the (edited) file words."""
        rng = random.Random(batch.plan.seed ^ 0x7E3)
        out = []
        for index, words in zip(batch.plan.indices, batch.captions, strict=True):
            line = self.fixed_lines.get(index)
            out.append(templates.fill(line if line is not None else rng.choice(self.lines), name, words))
        return out


def prepare_data(
    request: TrainEmbeddingRequest | TrainHypernetworkRequest,
    view: TrainingView,
    run: TrainingRun,
    *,
    lines: list[str],
    options: Any,
) -> DataSet | None:
    """Read and encode the data set (see the module docstring); None when interrupted."""
    root = Path(request.data_root).expanduser()
    if not request.data_root or not root.is_dir():
        raise UserError(f"the dataset directory {request.data_root!r} does not exist or is not a directory")
    config = replace(
        DatasetConfig.for_a1111(
            request,
            filename_word_regex=str(option_value(options, "dataset_filename_word_regex", "") or ""),
            filename_join_string=str(option_value(options, "dataset_filename_join_string", " ") or ""),
        ),
        layout="flat",  # A1111 reads the folder's own images
        fit="stretch",  # and resizes each to the training size
        resample="bicubic",
    )
    dataset = TrainingDataset.from_folder(root, config)
    for name, reason in dataset.report.skipped:
        run.warn(f"skipped {name}: {reason}")
    log.info("training data set:\n%s", dataset.describe())
    cache = LatentCache(dataset, method=request.latent_sampling_method)
    if not cache.build(view.encode_images, generator=torch.Generator().manual_seed(_SEED), should_stop=run.should_stop):
        return None
    for note in cache.notes:
        run.warn(note)
    count = len(dataset)
    batch_size = max(1, min(int(request.batch_size), count))
    gradient_step = max(1, min(int(request.gradient_step), count // batch_size))
    sampler = BucketBatchSampler.for_dataset(
        dataset, batch_size=batch_size, seed=_SEED, drop_last=not request.varsize and count >= batch_size
    )
    fixed: dict[int, str] = {}
    if not (request.shuffle_tags or request.tag_drop_out):
        rng = random.Random(_SEED)
        fixed = {index: rng.choice(lines) for index in range(count)}
    return DataSet(dataset, cache, sampler, lines, fixed, batch_size, gradient_step)


# --------------------------------------------------------------------------- the loop


@dataclass
class Trainable:
    """What the shared loop trains and how it saves it."""

    kind: str  # "embedding" | "hypernetwork"
    name: str
    filename: Path  # the file updated in place
    params: list[torch.Tensor]
    start_step: int
    encode: Callable[[list[str]], TextCond]
    write: Callable[[Path, int], None]  # the weights as a file at `path`, storing `step`
    checksum: Callable[[], str]
    attach: Callable[[], AbstractContextManager[Any]]  # in force while training and sampling
    train_mode: Callable[[bool], None] = lambda _mode: None
    weight_decay: float = 0.0
    csv_name: str = "textual_inversion_loss.csv"
    copies_folder: str = "embeddings"
    after_sample: Callable[[Any, int, Path], None] | None = None  # (image, step, last copy)
    settings: dict[str, Any] = field(default_factory=dict)  # extra keys of the settings file
    saved: list[str] = field(default_factory=list)


def log_folder(log_root: Path, name: str) -> Path:
    """A1111's `<log directory>/<YYYY-MM-DD>/<name>`."""
    return Path(log_root) / datetime.date.today().strftime("%Y-%m-%d") / name


def weights_checksum(params: Sequence[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for param in params:
        digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _save_optimizer(path: Path, optimizer: torch.optim.Optimizer, checksum: str) -> None:
    data = {
        "hash": checksum,
        "optimizer_name": type(optimizer).__name__,
        "optimizer_state_dict": optimizer.state_dict(),
    }
    atomic_write_bytes(Path(f"{path}.optim"), torch_bytes(data))


def _load_optimizer(path: Path, optimizer: torch.optim.Optimizer, checksum: str, run: TrainingRun) -> bool:
    optim_path = Path(f"{path}.optim")
    try:
        saved = load_state(optim_path)
    except Exception as exc:
        run.warn(f"{optim_path.name} could not be read ({exc}); starting a new optimizer")
        return False
    if saved is None:
        return False
    if saved.get("hash") != checksum or saved.get("optimizer_name", "AdamW") != type(optimizer).__name__:
        run.warn(f"{optim_path.name} belongs to other weights; starting a new optimizer")
        return False
    try:
        optimizer.load_state_dict(saved["optimizer_state_dict"])
    except (KeyError, ValueError, RuntimeError) as exc:
        run.warn(f"cannot resume from {optim_path.name} ({exc}); starting a new optimizer")
        return False
    return True


def _write_loss(folder: Path, name: str, step: int, steps_per_epoch: int, loss: float, rate: float) -> None:
    path = folder / name
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=["step", "epoch", "epoch_step", "loss", "learn_rate"])
        if new:
            writer.writeheader()
        writer.writerow(
            {
                "step": step,
                "epoch": (step - 1) // steps_per_epoch,
                "epoch_step": (step - 1) % steps_per_epoch,
                "loss": f"{loss:.7f}",
                "learn_rate": rate,
            }
        )


_SETTINGS_KEYS = frozenset(
    {
        "batch_size",
        "clip_grad_mode",
        "clip_grad_value",
        "create_image_every",
        "data_root",
        "gradient_step",
        "latent_sampling_method",
        "learn_rate",
        "log_directory",
        "steps",
        "training_height",
        "training_width",
        "embedding_name",
        "save_embedding_every",
        "save_image_with_stored_embedding",
        "hypernetwork_name",
        "save_hypernetwork_every",
    }
)
_PREVIEW_KEYS = frozenset(
    {
        "preview_cfg_scale",
        "preview_height",
        "preview_negative_prompt",
        "preview_prompt",
        "preview_sampler_name",
        "preview_seed",
        "preview_steps",
        "preview_width",
    }
)


def write_settings(folder: Path, request: Any, extra: dict[str, Any]) -> Path:
    """A1111's `settings-<date-time>.json` in the log folder (the `save_training_settings_to_txt`
    option): the run's main settings, the preview ones when previews come from txt2img."""
    now = datetime.datetime.now()
    keys = _SETTINGS_KEYS | (_PREVIEW_KEYS if request.preview_from_txt2img else frozenset())
    params: dict[str, Any] = {"datetime": now.strftime("%Y-%m-%d %H:%M:%S")}
    params.update({k: getattr(request, k) for k in sorted(keys) if hasattr(request, k)})
    params.update(extra)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"settings-{now.strftime('%Y-%m-%d-%H-%M-%S')}.json"
    atomic_write_bytes(path, json.dumps(params, indent=4, default=str).encode("utf-8"))
    return path


def _save_png(image: Any, path: Path, infotext: str | None) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buffer.getvalue())


@contextmanager
def model_kept(model: Any) -> Iterator[None]:
    """The leased model's parameters frozen while inside (gradients flow through it, never into
    it); every `requires_grad` flag and train/eval mode restored on the way out."""
    modules = [m for part in model.modules() for m in part.modules()]
    modes = [(m, m.training) for m in modules]
    flags = [(p, p.requires_grad) for part in model.modules() for p in part.parameters()]
    try:
        for param, _flag in flags:
            param.requires_grad_(False)
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, training in modes:
            module.train(training)


def _check_request(request: TrainEmbeddingRequest | TrainHypernetworkRequest, save_every: int) -> None:
    if int(request.batch_size) < 1:
        raise UserError("batch size must be a positive integer")
    if int(request.gradient_step) < 1:
        raise UserError("gradient accumulation steps must be a positive integer")
    if int(request.steps) < 1:
        raise UserError("max steps must be a positive integer")
    if save_every < 0 or int(request.create_image_every) < 0:
        raise UserError("the save / image intervals must be 0 (off) or positive")
    if request.clip_grad_mode not in CLIP_GRAD_MODES:
        raise UserError(f"gradient clipping must be one of {', '.join(CLIP_GRAD_MODES)}")
    if request.latent_sampling_method not in LATENT_SAMPLING_METHODS:
        raise UserError(f"latent sampling method must be one of {', '.join(LATENT_SAMPLING_METHODS)}")
    if not 0.0 <= float(request.tag_drop_out) <= 1.0:
        raise UserError("tag dropout must be between 0 and 1")
    if not request.varsize and (int(request.training_width) < 64 or int(request.training_height) < 64):
        raise UserError("training width and height must be at least 64")
    if (save_every or request.create_image_every) and not str(request.log_directory or "").strip():
        raise UserError("the log directory is empty")


def preview_request(request: TrainEmbeddingRequest | TrainHypernetworkRequest, prompt: str) -> Txt2ImgRequest:
    """A1111's preview: txt2img's preview settings when `preview_from_txt2img`, else the batch's
    first prompt at the training size with 20 steps and the other settings at their defaults."""
    if request.preview_from_txt2img:
        return Txt2ImgRequest(
            prompt=request.preview_prompt,
            negative_prompt=request.preview_negative_prompt,
            steps=int(request.preview_steps),
            sampler_name=request.preview_sampler_name,
            cfg_scale=float(request.preview_cfg_scale),
            seed=int(request.preview_seed),
            width=int(request.preview_width),
            height=int(request.preview_height),
            do_not_save_samples=True,
            do_not_save_grid=True,
        )
    return Txt2ImgRequest(
        prompt=prompt,
        steps=20,
        width=int(request.training_width),
        height=int(request.training_height),
        do_not_save_samples=True,
        do_not_save_grid=True,
    )


def run_a1111_training(
    request: TrainEmbeddingRequest | TrainHypernetworkRequest,
    run: TrainingRun,
    target: Trainable,
    *,
    view: TrainingView,
    save_every: int,
    log_root: Path,
    options: Any = None,
    template_dirs: Sequence[Path] | None = None,
    repeat_noise: bool = False,
) -> TrainResult:
    """The loop both A1111 trainers share (see the module docstring). `repeat_noise` gives
    every step the same timesteps and noise (tests: loss on a repeated batch)."""
    _check_request(request, save_every)
    steps = int(request.steps)
    start = target.start_step
    if start >= steps:
        message = f"{target.name} has already been trained to step {start}, at or past max steps {steps}"
        run.warn(message)
        return TrainResult(target.kind, target.name, str(target.filename), start, warnings=(message,))
    rates = LearnRateSchedule(request.learn_rate, steps, start)
    clip_rates = (
        LearnRateSchedule(request.clip_grad_value, steps, start) if request.clip_grad_mode != "disabled" else None
    )
    lines = templates.read_template(request.template_filename, template_dirs)
    folder = log_folder(log_root, target.name)
    copies = folder / target.copies_folder if save_every > 0 else None
    images = folder / "images" if int(request.create_image_every) > 0 else None
    for made in (copies, images):
        if made is not None:
            made.mkdir(parents=True, exist_ok=True)
    run.ctx.textinfo = f"Preparing dataset from {request.data_root}..."
    data = prepare_data(request, view, run, lines=lines, options=options)
    if data is None:  # interrupted while encoding the images: nothing trained, the file untouched
        return TrainResult(target.kind, target.name, str(target.filename), start, interrupted=True)
    if bool(option_value(options, "save_training_settings_to_txt", True)):
        extra = {
            "initial_step": start,
            "template_file": request.template_filename,
            "num_of_dataset_images": len(data.dataset),
            "model_name": Path(str(getattr(run.model, "source", ""))).stem,
            **target.settings,
        }
        write_settings(folder, request, extra)
    first_rate = rates.rate(start)
    optimizer = torch.optim.AdamW(target.params, lr=first_rate or 0.0, weight_decay=target.weight_decay)
    save_optimizer = bool(option_value(options, "save_optimizer_state", False))
    if save_optimizer and _load_optimizer(target.filename, optimizer, target.checksum(), run):
        log.info("training %s: optimizer state resumed from %s.optim", target.name, target.filename.name)
    device = view.device
    unet_dtype = next(view.unet.parameters()).dtype
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and unet_dtype == torch.float16)
    csv_every = int(option_value(options, "training_write_csv_every", 500) or 0)
    accumulation = data.gradient_step
    run.begin(steps, start)

    step = start
    interrupted = False
    last_loss: float | None = None
    samples: list[str] = []
    last_copy: Path | None = None

    def save(path: Path) -> None:
        target.write(path, step)
        if save_optimizer:
            _save_optimizer(path, optimizer, target.checksum())
        run.note_saved(step, path)
        target.saved.append(str(path))

    with ExitStack() as stack:
        stack.enter_context(model_kept(run.model))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(target.attach())
        target.train_mode(True)
        stack.callback(target.train_mode, False)
        while step < steps:
            rate = rates.rate(step)
            if rate is None:
                break
            if run.should_stop():
                interrupted = True
                break
            for param_group in optimizer.param_groups:
                param_group["lr"] = rate
            gen = torch.Generator().manual_seed(_SEED if repeat_noise else _SEED + 7919 * (step + 1))
            loss_sum = 0.0
            first_prompt = ""
            for plan in data.group(step):
                batch = data.dataset.batch(plan, cache=data.cache)
                captions = data.captions(batch, target.name)
                first_prompt = first_prompt or captions[0]
                assert batch.latents is not None
                latents = batch.latents.to(device=device, dtype=torch.float32)
                timesteps = view.schedule.sample_timesteps(latents.shape[0], generator=gen)
                noise = view.schedule.sample_noise(latents, generator=gen)
                cond = target.encode(captions)
                weight = batch.weights.to(device) if batch.weights is not None else None
                loss = view.loss(latents, cond, timesteps, noise, weight_map=weight).mean() / accumulation
                scaler.scale(loss).backward()
                loss_sum += float(loss.detach())
            if clip_rates is not None:
                scaler.unscale_(optimizer)
                limit = clip_rates.rate(step) or 0.0
                if request.clip_grad_mode == "value":
                    torch.nn.utils.clip_grad_value_(target.params, limit)
                else:
                    torch.nn.utils.clip_grad_norm_(target.params, limit)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            epoch = step // data.steps_per_epoch
            step += 1
            last_loss = loss_sum
            run.step_done(step, loss_sum, lr=rate, epoch=epoch)
            if csv_every > 0 and step % csv_every == 0:
                folder.mkdir(parents=True, exist_ok=True)
                _write_loss(folder, target.csv_name, step, data.steps_per_epoch, loss_sum, rate)
            if copies is not None and step % save_every == 0:
                last_copy = copies / f"{target.name}-{step}{target.filename.suffix}"
                save(last_copy)
                save(target.filename)
            if images is not None and step % int(request.create_image_every) == 0 and run.can_sample:
                preview = _preview(request, run, target, images, step, first_prompt)
                if preview is not None:
                    samples.append(str(preview[1]))
                    if target.after_sample is not None and last_copy is not None:
                        target.after_sample(preview[0], step, last_copy)
                        last_copy = None
        save(target.filename)
    message = f"{target.kind} {target.name} saved to {target.filename} at step {step}"
    log.info("training: %s%s", message, " (interrupted)" if interrupted else "")
    return TrainResult(
        target.kind,
        target.name,
        str(target.filename),
        step,
        interrupted=interrupted,
        last_loss=last_loss,
        samples=tuple(samples),
        saved=tuple(target.saved),
        warnings=tuple(run.progress.warnings),
        skipped_images=tuple(data.skipped),
    )


def _preview(
    request: TrainEmbeddingRequest | TrainHypernetworkRequest,
    run: TrainingRun,
    target: Trainable,
    folder: Path,
    step: int,
    prompt: str,
) -> tuple[Any, Path] | None:
    target.train_mode(False)
    try:
        result = run.sample(preview_request(request, prompt))
    except Exception as exc:  # a failed preview is reported; training goes on
        run.warn(f"preview image at step {step} failed: {exc}")
        return None
    finally:
        target.train_mode(True)
    if not result.images:
        return None
    image = result.images[0]
    path = folder / f"{target.name}-{step}.png"
    _save_png(image, path, result.infotexts[0] if result.infotexts else None)
    run.note_sample(step, path)
    return image, path


# --------------------------------------------------------------------------- embeddings


def _find_embedding(name: str, run: TrainingRun, embeddings_dir: Path) -> Embedding:
    from modules.models.embeddings import read_embedding_file

    if run.embeddings is not None:
        run.embeddings.refresh_if_changed()
        found = run.embeddings.all().get(name)
        if found is not None and found.filename is not None:
            return found
    for suffix in (".pt", ".safetensors"):
        path = Path(embeddings_dir) / f"{name}{suffix}"
        if path.is_file():
            _stem, embedding, _reason = read_embedding_file(path)
            if embedding is not None:
                return embedding
    raise UserError(f"embedding {name!r} not found (create it first, or refresh the embeddings list)", status_code=404)


def png_embedding_chunk(data: dict[str, Any]) -> str:
    """A1111's `sd-ti-embedding` PNG text: the file's dict as JSON, tensors as
    {"TORCHTENSOR": nested lists}, base64-encoded."""
    import base64
    import json

    def encode(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return {"TORCHTENSOR": value.detach().cpu().float().tolist()}
        if isinstance(value, dict):
            return {str(k): encode(v) for k, v in value.items()}
        return value

    return base64.b64encode(json.dumps(encode(data)).encode("utf-8")).decode("ascii")


def train_embedding(
    request: TrainEmbeddingRequest,
    run: TrainingRun,
    *,
    embeddings_dir: Path,
    log_root: Path,
    options: Any = None,
    template_dirs: Sequence[Path] | None = None,
    checkpoint_hash: str | None = None,
    repeat_noise: bool = False,
) -> TrainResult:
    """Train the embedding `request.embedding_name` (A1111's `train_embedding`; see the module
    docstring). `checkpoint_hash`: the model's short hash, stored as `sd_checkpoint`."""
    from modules.models.embeddings import Embedding, encoder_slots

    name = (request.embedding_name or "").strip()
    if not name:
        raise UserError("choose an embedding to train")
    model = run.model
    embedding = _find_embedding(name, run, embeddings_dir)
    slots = encoder_slots(model)
    misfit = embedding.misfit(slots, f"this {model.family.label} model")
    if misfit is not None:
        raise UserError(f"embedding {name!r} cannot be trained on this model: {misfit}")
    keys = [slot.key for slot in slots]
    assert embedding.filename is not None
    filename = Path(embedding.filename)
    if filename.suffix.lower() != embedding_suffix(keys):
        raise UserError(
            f"embedding {name!r} is a {filename.suffix} file; training writes A1111's layout "
            f"({embedding_suffix(keys)} for this model): create a new embedding to train"
        )
    start = embedding.step if filename.suffix.lower() == ".pt" else safetensors_step(filename)
    view = TrainingView(model, clip_skip=int(option_value(options, "CLIP_stop_at_last_layers", 1) or 1))
    device = view.device
    params: list[torch.Tensor] = []
    for key in keys:
        vectors = embedding.vectors_for(key)
        assert vectors is not None
        params.append(vectors.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True))
    ids: list[int] = model.tokenizers[0]([name], add_special_tokens=False, truncation=False).input_ids[0]
    hook = TokenHook(tuple(ids), tuple(params))
    live = Embedding(
        name=name,
        vectors={key: param.detach() for key, param in zip(keys, params, strict=True)},
        vector_count=int(params[0].shape[0]),
        shape=embedding.shape,
        step=start,
        filename=filename,
    )
    checkpoint_name = Path(model.source).stem if getattr(model, "source", None) else None

    def current() -> dict[str, torch.Tensor]:
        return {key: param.detach() for key, param in zip(keys, params, strict=True)}

    def write(path: Path, step: int) -> None:
        live.step = step
        data = embedding_file_bytes(
            current(), name=path.stem, step=step, sd_checkpoint=checkpoint_hash, sd_checkpoint_name=checkpoint_name
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)

    def attach() -> AbstractContextManager[Any]:
        return run.embeddings.override(live) if run.embeddings is not None else nullcontext()

    def with_embedding(image: Any, step: int, copy: Path) -> None:
        if not request.save_image_with_stored_embedding:
            return
        from PIL import PngImagePlugin

        vectors = current()
        data: dict[str, Any] = (
            {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors["clip"]}}
            if keys == ["clip"]
            else dict(vectors)
        )
        data.update(
            {"name": name, "step": step, "sd_checkpoint": checkpoint_hash, "sd_checkpoint_name": checkpoint_name}
        )
        folder = copy.parent.parent / "image_embeddings"
        folder.mkdir(parents=True, exist_ok=True)
        info = PngImagePlugin.PngInfo()
        info.add_text("sd-ti-embedding", png_embedding_chunk(data))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        atomic_write_bytes(folder / f"{name}-{step}.png", buffer.getvalue())

    target = Trainable(
        kind="embedding",
        name=name,
        filename=filename,
        params=params,
        start_step=int(start or 0),
        encode=lambda captions: view.encode_text(captions, grad=True, token_hook=hook),
        write=write,
        checksum=lambda: weights_checksum(params),
        attach=attach,
        weight_decay=0.0,
        csv_name="textual_inversion_loss.csv",
        copies_folder="embeddings",
        after_sample=with_embedding,
        settings={"num_vectors_per_token": int(params[0].shape[0]), "model_hash": checkpoint_hash},
    )
    return run_a1111_training(
        request,
        run,
        target,
        view=view,
        save_every=int(request.save_embedding_every or 0),
        log_root=log_root,
        options=options,
        template_dirs=template_dirs,
        repeat_noise=repeat_noise,
    )
