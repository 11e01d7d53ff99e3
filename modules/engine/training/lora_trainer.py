"""LoRA training (kohya's `train_network.py` options) on the leased model, as a worker job.

The run: the dataset (`dataset.TrainingDataset`: scan, buckets, captions; latents cached per
bucket with `cache_latents`), a `LoraNetwork` hooked into the model, the optimizer and schedule
(`optim`), then optimizer steps until `max_train_steps` (or `max_train_epochs` × the steps of one
epoch, which then wins, as in kohya). One optimizer step takes `gradient_accumulation_steps`
batches of the epoch (the epoch's last step may take fewer); its loss is the mean denoising loss
(`diffusion.TrainingView.loss`: noise offset, min-SNR gamma) under autocast for fp16 / bf16 (fp16
with a gradient scaler on CUDA), gradients clipped to `max_grad_norm`.

Randomness: the batches (order, flips, caption edits) come from the dataset's per-batch seeds, and
each batch's timesteps and noise from a generator seeded by (seed, step, batch of the step), so a
resumed run draws what the uninterrupted run would have.

Files (in `output_dir`): `<name>.safetensors` at the end, `<name>-step00000N.safetensors` every
`save_every_n_steps` (kohya's names), each with `<name>.training-state` beside it (a suffix no
model list reads, so the state never shows as a LoRA card: the LoRA weights in float32,
optimizer, scheduler and scaler states, the step and the position in the epoch, the RNG state, the
seed); samples every `sample_every_n_steps` as `<name>-samples/<name>-step00000N.png`,
made by `run.sample` with the LoRA in force. With `resume` and a state present, the run continues
from that state's step with its optimizer state. An interrupt (`run.should_stop()`, checked
before every step) saves the current weights as the final file plus the state and returns
`TrainResult(interrupted=True)`.

Whatever happens, the leased model is left as found: hooks removed, gradient checkpointing off,
each component's train/eval mode and every parameter's `requires_grad` restored.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from PIL.PngImagePlugin import PngInfo

from modules.core.atomic import atomic_write_bytes
from modules.core.errors import UserError
from modules.core.requests import Txt2ImgRequest
from modules.core.training import MIXED_PRECISIONS, LoraTrainRequest, TrainResult
from modules.engine.training.dataset import (
    BatchPlan,
    BucketBatchSampler,
    DatasetConfig,
    LatentCache,
    TrainingBatch,
    TrainingDataset,
    derive_seed,
    plan_placement,
)
from modules.engine.training.diffusion import TrainingView
from modules.engine.training.lora_files import SAVE_DTYPES, LoraRunFacts, lora_metadata, save_lora
from modules.engine.training.lora_network import LoraNetwork
from modules.engine.training.optim import (
    LR_SCHEDULERS,
    OPTIMIZERS,
    LrMultiplier,
    ParamGroup,
    build_optimizer,
    build_scheduler,
    clip_gradients,
    part_learning_rates,
)
from modules.engine.training.session import TrainingRun, load_state, rng_state, save_state, set_rng_state
from modules.models.loader import StableDiffusionModel

log = logging.getLogger(__name__)

STATE_FORMAT = 1
LATENT_CACHE_BATCH = 4


def output_paths(output_dir: Path, name: str) -> tuple[Path, Path]:
    """(final LoRA file, resume state) of a run named `name`."""
    return output_dir / f"{name}.safetensors", output_dir / f"{name}.training-state"


def step_file(output_dir: Path, name: str, step: int) -> Path:
    """kohya's name for the file saved at `step`."""
    return output_dir / f"{name}-step{step:08d}.safetensors"


def validate_request(request: LoraTrainRequest, model: StableDiffusionModel) -> None:
    """UserError for an option we cannot act on (before anything is loaded)."""
    if model.family.variant != "normal":
        raise UserError(f"LoRA training needs a normal checkpoint, not a {model.family.label} model")
    if request.mixed_precision not in MIXED_PRECISIONS:
        raise UserError(f"unknown mixed precision {request.mixed_precision!r} (one of {', '.join(MIXED_PRECISIONS)})")
    if request.optimizer_type not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {request.optimizer_type!r} (one of {', '.join(OPTIMIZERS)})")
    if request.lr_scheduler not in LR_SCHEDULERS:
        raise UserError(f"unknown lr scheduler {request.lr_scheduler!r} (one of {', '.join(LR_SCHEDULERS)})")
    if request.network_dim < 1:
        raise UserError("network_dim must be at least 1")
    if request.conv_dim < 0:
        raise UserError("conv_dim must be 0 (off) or more")
    if not (request.train_unet or request.train_text_encoder):
        raise UserError("train the UNet, the text encoder, or both")
    if request.train_batch_size < 1 or request.gradient_accumulation_steps < 1:
        raise UserError("the batch size and gradient accumulation steps must be at least 1")
    if request.max_train_epochs is None and request.max_train_steps < 1:
        raise UserError("max_train_steps must be at least 1")
    if request.max_train_epochs is not None and request.max_train_epochs < 1:
        raise UserError("max_train_epochs must be at least 1")


# -- model state ------------------------------------------------------------------------------


@dataclass
class _ModelState:
    """What training changes on the leased model, to put back."""

    training: dict[torch.nn.Module, bool] = field(default_factory=dict)
    requires_grad: dict[torch.nn.Parameter, bool] = field(default_factory=dict)

    @classmethod
    def capture(cls, model: StableDiffusionModel) -> _ModelState:
        state = cls()
        for component in model.modules():
            for module in component.modules():
                state.training[module] = module.training
            for param in component.parameters():
                state.requires_grad[param] = param.requires_grad
        return state

    def restore(self) -> None:
        for module, training in self.training.items():
            module.train(training)
        for param, flag in self.requires_grad.items():
            param.requires_grad_(flag)


@contextlib.contextmanager
def _gradient_checkpointing(model: StableDiffusionModel, unet: bool, text_encoders: bool) -> Iterator[None]:
    """Gradient checkpointing on the parts being trained (the encoders' non-reentrant variant:
    their inputs never need a gradient), and off again afterwards, with the input hook
    transformers adds for it removed again."""
    unet_module: Any = model.unet
    encoders: list[Any] = list(model.text_encoders) if text_encoders else []
    had_input_hooks = [bool(getattr(e, "_require_grads_hooks", None)) for e in encoders]
    try:
        if unet:
            unet_module.enable_gradient_checkpointing()
        for encoder in encoders:
            enable = getattr(encoder, "activation_checkpointing_enable", None)
            if enable is not None:  # transformers >= 5.x's name
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        yield
    finally:
        if unet and getattr(unet_module, "is_gradient_checkpointing", False):
            unet_module.disable_gradient_checkpointing()
        for encoder, had_hooks in zip(encoders, had_input_hooks, strict=True):
            if getattr(encoder, "is_gradient_checkpointing", False):
                disable = getattr(encoder, "activation_checkpointing_disable", None)
                if disable is not None:
                    disable()
                else:
                    encoder.gradient_checkpointing_disable()
            if not had_hooks and hasattr(encoder, "disable_input_require_grads"):
                encoder.disable_input_require_grads()


def _autocast(device: torch.device, mixed_precision: str) -> contextlib.AbstractContextManager[Any]:
    if mixed_precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    if mixed_precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- the dataset side ---------------------------------------------------------------------------


def tag_frequency(dataset: TrainingDataset) -> dict[str, dict[str, int]]:
    """kohya's `ss_tag_frequency`: per dataset folder, how many captions hold each comma-separated tag."""
    out: dict[str, Counter[str]] = {}
    for item in dataset.items:
        folder = item.source.folder or dataset.root.name
        tags = out.setdefault(folder, Counter())
        for tag in item.caption.text.split(","):
            tag = tag.strip()
            if tag:
                tags[tag] += 1
    return {folder: dict(counts) for folder, counts in out.items()}


def dataset_dirs(dataset: TrainingDataset) -> dict[str, dict[str, int]]:
    """kohya's `ss_dataset_dirs`: per folder, its repeats and image count."""
    out: dict[str, dict[str, int]] = {}
    for item in dataset.items:
        folder = item.source.folder or dataset.root.name
        entry = out.setdefault(folder, {"n_repeats": item.repeats, "img_count": 0})
        entry["img_count"] += 1
    return out


def _sdxl_sizes(
    dataset: TrainingDataset, batch: TrainingBatch
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """(original size, crop top/left, target size) per sample, (height, width) order, for SDXL's
    time ids: the image's own size, where the bucket's crop starts in the resized image (mirrored
    for a flipped sample), the bucket."""
    originals, crops, targets = [], [], []
    for index, flip in zip(batch.plan.indices, batch.flips, strict=True):
        item = dataset.items[index]
        placement = plan_placement(item.size, item.choice, fit=dataset.config.fit, flip=flip)
        left, top, right, _bottom = placement.box
        if flip:
            left = placement.resized[0] - right
        width, height = item.size
        originals.append((height, width))
        crops.append((top, left))
        targets.append((placement.bucket[1], placement.bucket[0]))
    return originals, crops, targets


# -- the run ------------------------------------------------------------------------------------


def _network_config(request: LoraTrainRequest) -> dict[str, Any]:
    return {
        "rank": request.network_dim,
        "alpha": float(request.network_alpha),
        "conv_rank": request.conv_dim,
        "conv_alpha": float(request.conv_alpha),
        "train_unet": request.train_unet,
        "train_text_encoder": request.train_text_encoder,
    }


def _save_sample(run: TrainingRun, request: LoraTrainRequest, sample_dir: Path, step: int, seed: int) -> Path | None:
    sample = Txt2ImgRequest(
        prompt=request.sample_prompt,
        negative_prompt=request.sample_negative_prompt,
        steps=request.sample_steps,
        sampler_name=request.sample_sampler_name,
        cfg_scale=request.sample_cfg_scale,
        seed=request.sample_seed if request.sample_seed >= 0 else seed,
        width=request.sample_width,
        height=request.sample_height,
        do_not_save_samples=True,
        do_not_save_grid=True,
    )
    try:
        result = run.sample(sample)
    except Exception as exc:  # a failed sample must not end the run
        log.exception("training sample at step %d failed", step)
        run.warn(f"the sample at step {step} failed: {type(exc).__name__}: {exc}")
        return None
    if not result.images:
        return None
    sample_dir.mkdir(parents=True, exist_ok=True)
    path = sample_dir / f"{request.name}-step{step:08d}.png"
    info = PngInfo()
    if result.infotexts:
        info.add_text("parameters", result.infotexts[0])
    buffer = io.BytesIO()
    result.images[0].save(buffer, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buffer.getvalue())
    run.note_sample(step, path)
    return path


def train_lora(
    request: LoraTrainRequest,
    run: TrainingRun,
    *,
    output_dir: Path,
    dataset: TrainingDataset | None = None,
    save_precision: str = "fp16",
    clip_skip: int = 1,
) -> TrainResult:
    """Train a LoRA on `run.model` (see the module docstring). `dataset` overrides the one read
    from `request.data_root`; `save_precision` is the dtype of the written files (fp16, fp32,
    bf16); `clip_skip` as the engine's setting (written as `ss_clip_skip`)."""
    model = run.model
    validate_request(request, model)
    if save_precision not in SAVE_DTYPES:
        raise UserError(f"unknown save precision {save_precision!r} (one of {', '.join(SAVE_DTYPES)})")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final_path, state_path = output_paths(output_dir, request.name)
    device = model.device

    if dataset is None:
        dataset = TrainingDataset.from_folder(request.data_root, DatasetConfig.for_lora(request))
    for warning in dataset.report.warnings:
        run.warn(warning)
    if dataset.report.skipped:
        run.warn(
            f"{len(dataset.report.skipped)} image(s) skipped: "
            + "; ".join(f"{name} ({why})" for name, why in dataset.report.skipped)
        )

    state = load_state(state_path) if request.resume else None
    if state is not None and state.get("network") != _network_config(request):
        raise UserError(
            f"{state_path.name} was saved by a run with other network settings; "
            "turn resume off or remove the state file to start again"
        )
    seed = int(state["seed"]) if state is not None else request.seed
    if seed < 0:
        seed = random.randrange(2**31)

    saved_state = _ModelState.capture(model)
    network: LoraNetwork | None = None
    try:
        view = TrainingView(model, clip_skip=clip_skip)
        network = LoraNetwork(
            model,
            rank=request.network_dim,
            alpha=request.network_alpha,
            conv_rank=request.conv_dim,
            conv_alpha=request.conv_alpha,
            train_unet=request.train_unet,
            train_text_encoder=request.train_text_encoder,
            seed=derive_seed(seed, 2),
        )
        trainer = _Trainer(request, run, model, view, network, dataset, seed, save_precision, clip_skip)
        trainer.output_dir, trainer.final_path, trainer.state_path = output_dir, final_path, state_path
        trainer.prepare(state, device)
        return trainer.train()
    finally:
        if network is not None:
            network.detach()
        saved_state.restore()


class _Trainer:
    """One run's moving parts (built by `train_lora`)."""

    output_dir: Path
    final_path: Path
    state_path: Path

    def __init__(
        self,
        request: LoraTrainRequest,
        run: TrainingRun,
        model: StableDiffusionModel,
        view: TrainingView,
        network: LoraNetwork,
        dataset: TrainingDataset,
        seed: int,
        save_precision: str,
        clip_skip: int,
    ) -> None:
        self.request, self.run, self.model, self.view = request, run, model, view
        self.network, self.dataset, self.seed = network, dataset, seed
        self.save_dtype = SAVE_DTYPES[save_precision]
        self.clip_skip = clip_skip
        self.device = model.device
        self.samples: list[str] = []
        self.saved: list[str] = []
        self.session_id = uuid.uuid4().hex
        self.started_at = time.time()
        self.step = 0
        self.last_loss: float | None = None
        self.optimizer_name = request.optimizer_type

    # -- setup ---------------------------------------------------------------------------------

    def prepare(self, state: dict[str, Any] | None, device: torch.device) -> None:
        r = self.request
        self.sampler = BucketBatchSampler.for_dataset(self.dataset, batch_size=r.train_batch_size, seed=self.seed)
        self.accumulation = r.gradient_accumulation_steps
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.accumulation)
        if r.max_train_epochs is not None:
            self.max_steps = r.max_train_epochs * self.steps_per_epoch
        else:
            self.max_steps = r.max_train_steps
        self.num_epochs = math.ceil(self.max_steps / self.steps_per_epoch)

        unet_lr, te_lr = part_learning_rates(r.learning_rate, r.unet_lr, r.text_encoder_lr)
        groups = [
            ParamGroup("text_encoder", self.network.text_encoder_parameters(), te_lr),
            ParamGroup("unet", self.network.unet_parameters(), unet_lr),
        ]
        self.train_te = bool(groups[0].params) and te_lr > 0
        self.train_unet_part = bool(groups[1].params) and unet_lr > 0
        groups = [g for g in groups if g.params and g.lr > 0]
        if not groups:
            raise UserError("every part to train has a learning rate of 0")
        for group in groups:
            for param in group.params:
                param.requires_grad_(True)
        self.params = [p for g in groups for p in g.params]
        self.optimizer, self.optimizer_name = build_optimizer(
            r.optimizer_type, groups, device=device, warn=self.run.warn
        )
        self.scheduler = build_scheduler(
            self.optimizer, r.lr_scheduler, warmup_steps=r.lr_warmup_steps, total_steps=self.max_steps
        )
        self.scaler: torch.amp.GradScaler | None = None
        if r.mixed_precision == "fp16" and device.type == "cuda":
            self.scaler = torch.amp.GradScaler("cuda")

        if state is not None:
            self._load(state)
        self.cache: LatentCache | None = None
        self.vae_generator = torch.Generator().manual_seed(derive_seed(self.seed, 1))

    def _load(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT or state.get("kind") != "lora":
            raise UserError(f"{self.state_path.name} is not a LoRA training state of this version")
        self.network.load_kohya_state_dict(state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        lambdas = [cast(LrMultiplier, lam) for lam in self.scheduler.lr_lambdas]
        totals = [(lam.total_steps, lam.warmup_steps) for lam in lambdas]
        self.scheduler.load_state_dict(state["scheduler"])
        for lam, (total, warmup) in zip(lambdas, totals, strict=True):
            lam.total_steps, lam.warmup_steps = total, warmup  # this run's length wins
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("rng"):
            set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.session_id = str(state.get("session_id", self.session_id))
        self.started_at = float(state.get("started_at", self.started_at))
        self.last_loss = state.get("last_loss")

    # -- saving --------------------------------------------------------------------------------

    def _facts(self, epoch: int) -> LoraRunFacts:
        from modules.core.hashes import old_model_hash

        source = self.model.source
        return LoraRunFacts(
            session_id=self.session_id,
            started_at=self.started_at,
            num_train_images=self.dataset.total_repeats,
            num_epochs=self.num_epochs,
            epoch=epoch,
            steps=self.step,
            max_train_steps=self.max_steps,
            seed=self.seed,
            num_batches_per_epoch=len(self.sampler),
            tag_frequency=tag_frequency(self.dataset),
            dataset_dirs=dataset_dirs(self.dataset),
            bucket_info=self.dataset.ss_bucket_info() if self.request.enable_bucket else None,
            sd_model_name=source.name,
            sd_model_hash=old_model_hash(source) if source.is_file() else "",
            optimizer=self._optimizer_text(),
            clip_skip=self.clip_skip,
        )

    def _optimizer_text(self) -> str:
        cls = type(self.optimizer)
        return f"{cls.__module__}.{cls.__name__}"

    def _save(self, path: Path, epoch: int) -> None:
        metadata = lora_metadata(self.request, self.model, self._facts(epoch))
        save_lora(path, self.network.kohya_state_dict(), metadata, dtype=self.save_dtype)
        state = {
            "format": STATE_FORMAT,
            "kind": "lora",
            "name": self.request.name,
            "network": _network_config(self.request),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "epoch_step": self.step % self.steps_per_epoch,
            "max_steps": self.max_steps,
            "seed": self.seed,
            "session_id": self.session_id,
            "started_at": self.started_at,
            "last_loss": self.last_loss,
            "lora": self.network.kohya_state_dict(torch.float32),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "file": path.name,
        }
        save_state(self.state_path, state)
        self.saved.append(str(path))
        self.run.note_saved(self.step, path)

    # -- the loop ------------------------------------------------------------------------------

    def _build_cache(self) -> bool:
        """The latent cache (cache_latents, no random crop); False when interrupted while building."""
        if not self.request.cache_latents:
            return True
        if self.request.random_crop:
            self.run.warn("cache_latents is off because random_crop changes every crop")
            return True
        self.cache = LatentCache(self.dataset, method="once")
        return self.cache.build(
            self.view.encode_images,
            batch_size=LATENT_CACHE_BATCH,
            generator=self.vae_generator,
            should_stop=self.run.should_stop,
        )

    def _plans(self) -> Iterator[tuple[int, int, list[BatchPlan]]]:
        """(epoch, step within it, the step's batches) from the current step on."""
        epoch, epoch_step = divmod(self.step, self.steps_per_epoch)
        while epoch < self.num_epochs:
            plans = self.sampler.epoch_plans(epoch)
            for index in range(epoch_step, self.steps_per_epoch):
                chunk = plans[index * self.accumulation : (index + 1) * self.accumulation]
                if chunk:
                    yield epoch, index, chunk
            epoch, epoch_step = epoch + 1, 0

    def train(self) -> TrainResult:
        r, run = self.request, self.run
        run.begin(self.max_steps, self.step)
        interrupted = False
        if self.step >= self.max_steps:
            run.warn(f"{self.state_path.name} is already at step {self.step} of {self.max_steps}: nothing to train")
        elif not self._build_cache():
            interrupted = True
        if not interrupted and self.step < self.max_steps:
            interrupted = self._loop()
        self._save(self.final_path, min(math.ceil(self.step / self.steps_per_epoch), self.num_epochs))
        return TrainResult(
            kind="lora",
            name=r.name,
            filename=str(self.final_path),
            steps_done=self.step,
            interrupted=interrupted,
            last_loss=self.last_loss,
            samples=tuple(self.samples),
            saved=tuple(self.saved),
            warnings=tuple(run.progress.warnings),
            skipped_images=tuple(self.dataset.report.skipped),
        )

    def _loop(self) -> bool:
        """Optimizer steps until the end; True when interrupted."""
        r = self.request
        sample_dir = self.output_dir / f"{r.name}-samples"
        modules: list[torch.nn.Module] = [self.model.unet] if self.train_unet_part else []
        modules += list(self.model.text_encoders) if self.train_te else []
        for module in modules:
            module.train()
        self.network.attach()
        checkpointing = (
            _gradient_checkpointing(self.model, self.train_unet_part, self.train_te)
            if r.gradient_checkpointing
            else contextlib.nullcontext()
        )
        with checkpointing:
            for epoch, _index, chunk in self._plans():
                if self.run.should_stop():
                    return True
                loss = self._optimizer_step(chunk)
                self.step += 1
                self.last_loss = loss
                self.run.step_done(self.step, loss, lr=float(self.scheduler.get_last_lr()[-1]), epoch=epoch + 1)
                if self.step >= self.max_steps:
                    break
                if r.save_every_n_steps > 0 and self.step % r.save_every_n_steps == 0:
                    self._save(step_file(self.output_dir, r.name, self.step), epoch + 1)
                if r.sample_every_n_steps > 0 and self.step % r.sample_every_n_steps == 0 and self._can_sample():
                    path = _save_sample(self.run, r, sample_dir, self.step, self.seed)
                    if path is not None:
                        self.samples.append(str(path))
        if r.sample_every_n_steps > 0 and self._can_sample() and self.step % r.sample_every_n_steps == 0:
            path = _save_sample(self.run, r, sample_dir, self.step, self.seed)
            if path is not None:
                self.samples.append(str(path))
        return False

    def _can_sample(self) -> bool:
        return bool(self.request.sample_prompt) and self.run.can_sample

    def _optimizer_step(self, chunk: Sequence[BatchPlan]) -> float:
        r = self.request
        total = 0.0
        for micro, plan in enumerate(chunk):
            batch = self.dataset.batch(plan, cache=self.cache)
            generator = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, self.step, micro))
            latents = self._latents(batch, generator)
            schedule = self.view.schedule
            timesteps = schedule.sample_timesteps(latents.shape[0], generator=generator)
            noise = schedule.sample_noise(latents, noise_offset=r.noise_offset, generator=generator)
            time_ids = None
            if self.view.is_sdxl:
                time_ids = self.view.time_ids(*_sdxl_sizes(self.dataset, batch))
            weights = batch.weights.to(self.device) if batch.weights is not None else None
            with _autocast(self.device, r.mixed_precision):
                cond = self.view.encode_text(batch.captions, grad=self.train_te)
                per_sample = self.view.loss(
                    latents,
                    cond,
                    timesteps,
                    noise,
                    time_ids=time_ids,
                    weight_map=weights,
                    min_snr_gamma=r.min_snr_gamma,
                )
            loss = per_sample.mean() / len(chunk)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            total += float(loss.detach())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.params, r.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            clip_gradients(self.params, r.max_grad_norm)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _latents(self, batch: TrainingBatch, generator: torch.Generator) -> torch.Tensor:
        if batch.latents is not None:
            return batch.latents.to(self.device, torch.float32)
        assert batch.pixels is not None
        mean, std = self.view.encode_images(batch.pixels.to(self.device))
        return self.view.sample_latents(mean, std, generator=generator)
