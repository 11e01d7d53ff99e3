"""The one job interface. Every door (API, UI, later scripts and replicas) hands the engine a
plain request from `modules.core` and gets a `JobHandle`; progress, interrupt, skip and results
are read by job id. Nothing outside the engine touches the worker or the model manager:

    engine.submit(Txt2ImgRequest(...))      -> JobHandle[Result]
    engine.submit(Img2ImgRequest(...))      -> JobHandle[Result]
    engine.submit(ExtrasRequest(...))       -> JobHandle[list[ExtrasResult]]
    engine.submit(MergeRequest(...))        -> JobHandle[MergeResult]
    engine.submit(SwitchModel(...)) / UnloadModel() / ReloadModel()  -> JobHandle[ModelSwitched]
    engine.submit(LoraTrainRequest(...) | TrainEmbeddingRequest | TrainHypernetworkRequest) -> JobHandle[TrainResult]
    engine.create_embedding(...) / create_hypernetwork(...) -> CreateResult; engine.training_status(job_id)
    engine.progress(job_id) / interrupt(job_id) / skip(job_id) / result(job_id) / queue_status(job_id)
    engine.model_status()                   -> ModelStatus (never waits)

Requests and results are plain data, so a job could run in another process (a replica). Model
switches are jobs on the worker like any other, so only the worker thread touches device weights;
`switch_model` waits for one (the options' callbacks use it, so `POST /options` answers only when
the model is loaded). Called from inside a job it runs at once instead of queueing behind itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from PIL import Image

from modules.core.errors import NotFoundError, UserError
from modules.core.jobs import (
    VAE_AUTOMATIC,
    VAE_NONE,
    ExtractLoraRequest,
    ExtrasRequest,
    MergeRequest,
    ModelJob,
    ReloadModel,
    SwitchModel,
    UnloadModel,
)
from modules.core.options import Options
from modules.core.requests import GenerationRequest, Limits
from modules.core.results import (
    ExtractLoraResult,
    ExtrasResult,
    MergeResult,
    ModelStatus,
    ModelSwitched,
    Result,
)
from modules.core.training import (
    CreateEmbeddingRequest,
    CreateHypernetworkRequest,
    CreateResult,
    LoraTrainRequest,
    TrainEmbeddingRequest,
    TrainHypernetworkRequest,
)
from modules.engine import upscaling
from modules.engine.extras import check_extras_size, dest_side, run_extras
from modules.engine.hooks import Hooks
from modules.engine.interrogation import Interrogator
from modules.engine.service import GenerationService
from modules.engine.token_count import count_tokens
from modules.engine.training.service import TrainingService
from modules.engine.worker import Job, JobContext, Worker, idle_progress
from modules.engine.worker import JobCancelled as JobCancelled  # adapters catch it from here
from modules.engine.worker import JobInterrupted as JobInterrupted  # adapters catch it from here
from modules.models import merge as merging
from modules.models.embeddings import EmbeddingSet
from modules.models.face_restoration import FaceRestorers
from modules.models.lora_extract import extract_lora
from modules.models.manager import ModelManager
from modules.models.registry import CheckpointInfo, ModelRegistry
from modules.models.upscalers import UpscalerRegistry

log = logging.getLogger(__name__)

T = TypeVar("T")
TRAIN_REQUESTS = (LoraTrainRequest, TrainEmbeddingRequest, TrainHypernetworkRequest)
Request = (
    GenerationRequest
    | ExtrasRequest
    | MergeRequest
    | ExtractLoraRequest
    | SwitchModel
    | UnloadModel
    | ReloadModel
    | LoraTrainRequest
    | TrainEmbeddingRequest
    | TrainHypernetworkRequest
)

_KEEP_HANDLES = 256


class JobHandle(Generic[T]):
    """A submitted job: its id, its future, and its own progress."""

    def __init__(self, job: Job[T], worker: Worker, kind: str) -> None:
        self._job = job
        self._worker = worker
        self.kind = kind

    @property
    def id(self) -> str:
        return self._job.context.id

    @property
    def future(self) -> Future[T]:
        return self._job.future

    def result(self, timeout: float | None = None) -> T:
        return self._job.future.result(timeout)

    def done(self) -> bool:
        return self._job.future.done()

    def is_running(self) -> bool:
        current = self._worker.current
        return current is not None and current is self._job.context

    def preview(self) -> Any:
        """The live preview of this job while it runs, else None."""
        return self._job.context.preview() if self.is_running() else None

    def progress(self, *, with_preview: bool = False) -> dict[str, Any]:
        """A1111's `/progress` body for this job (the idle shape unless it is running)."""
        if not self.is_running():
            return idle_progress()
        return self._worker.progress(with_preview=with_preview)

    @property
    def textinfo(self) -> str | None:
        return self._job.context.textinfo

    @property
    def interrupted(self) -> bool:
        """Interrupt was asked for this job (it returns what it has)."""
        return self._job.context.interrupted

    def fraction(self) -> float:
        """Progress in [0, 1] (A1111's formula)."""
        return self._job.context.progress()

    def eta(self) -> float:
        return self._job.context.eta()

    def preview_version(self) -> int:
        """Grows by one whenever a new live preview source is set."""
        return self._job.context.preview_version


class DoneCall(Generic[T]):
    """What `submit_call` gives for a call that ran inline inside the running job."""

    def __init__(self, future: Future[T], job_id: str) -> None:
        self.future = future
        self.id = job_id

    def result(self, timeout: float | None = None) -> T:
        return self.future.result(timeout)


@dataclass(frozen=True)
class QueueStatus:
    """Where a job stands (A1111's `/internal/progress`)."""

    active: bool
    queued: bool
    completed: bool
    position: int  # 1-based place in the queue, 0 when not queued
    pending: int  # jobs waiting behind the running one


class Engine:
    """The facade the composition root hands to the adapters as `services.engine`."""

    def __init__(
        self,
        *,
        worker: Worker,
        models: ModelManager,
        registry: ModelRegistry,
        options: Options,
        generation: GenerationService,
        upscalers: UpscalerRegistry | None = None,
        face_restorers: FaceRestorers | None = None,
        merge_dir: Path | None = None,
        training: TrainingService | None = None,
        interrogator: Interrogator | None = None,
    ) -> None:
        self._worker = worker
        self._models = models
        self._registry = registry
        self._options = options
        self._generation = generation
        self._upscalers = upscalers
        self._face_restorers = face_restorers
        self._merge_dir = merge_dir
        self._training = training
        # BLIP / CLIP / DeepDanbooru: img2img's 📎 📦, `/interrogate`, the Train tab's captions
        # (its jobs go through `submit_call`; see `modules.engine.interrogation`)
        self.interrogator = interrogator
        self.hooks: Hooks = generation.hooks  # extensions register here; every generation job fires them
        self._handles: OrderedDict[str, JobHandle[Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._selected: CheckpointInfo | None = None
        generation.selected_checkpoint = lambda: self._selected

    # -- submitting --------------------------------------------------------------------------

    def submit(self, request: Request) -> JobHandle[Any]:
        """Validate `request` on the caller's thread (a user error is raised before anything is
        queued), then queue it on the worker. A full queue is `QueueFullError` (429)."""
        if isinstance(request, GenerationRequest):
            if self._training is not None:
                self._training.check_generation_allowed()
            job: Job[Any] = self._generation.submit(request)
            kind = job.context.description
        elif isinstance(request, ExtrasRequest):
            job, kind = self._submit_extras(request), "extras"
        elif isinstance(request, MergeRequest):
            job, kind = self._submit_merge(request), "model-merge"
        elif isinstance(request, ExtractLoraRequest):
            job, kind = self._submit_extract(request), "lora-extract"
        elif isinstance(request, SwitchModel | UnloadModel | ReloadModel):
            job, kind = self._submit_model_job(request), "model-switch"
        elif isinstance(request, TRAIN_REQUESTS):
            job = self._trainer().submit(request)[0]
            kind = job.context.description
        else:
            raise TypeError(f"not a job request: {type(request).__name__}")
        handle: JobHandle[Any] = JobHandle(job, self._worker, kind)
        with self._lock:
            self._handles[handle.id] = handle
            while len(self._handles) > _KEEP_HANDLES:
                self._handles.popitem(last=False)
        return handle

    def submit_call(self, fn: Callable[[JobContext], T], description: str = "script") -> JobHandle[T] | DoneCall[T]:
        """Run `fn(ctx)` as a job of its own (script code that generates outside a job). Called on
        the worker thread (from inside a job) it runs at once in that job instead of queueing
        behind itself."""
        if self._worker.on_worker_thread():
            ctx = self._worker.current
            assert ctx is not None
            done: Future[T] = Future()
            try:
                done.set_result(fn(ctx))
            except BaseException as exc:
                done.set_exception(exc)
            return DoneCall(done, ctx.id)
        job = self._worker.submit(fn, description=description)
        handle: JobHandle[T] = JobHandle(job, self._worker, description)
        with self._lock:
            self._handles[handle.id] = handle
            while len(self._handles) > _KEEP_HANDLES:
                self._handles.popitem(last=False)
        return handle

    def run_sync(self, request: Request, timeout: float | None = None) -> Any:
        """Submit and wait for the result (tests, scripts on another thread)."""
        return self.submit(request).result(timeout)

    def process(self, request: GenerationRequest, ctx: JobContext, *, hooks: Hooks | None = None) -> Result:
        """Process a generation request now, inside the running job (worker thread only): for
        code that runs many generations in one job (loopback, X/Y/Z plot, SD upscale)."""
        return self._generation.prepare_and_process(request, ctx, hooks)

    # -- reading and control -----------------------------------------------------------------

    def handle(self, job_id: str) -> JobHandle[Any]:
        with self._lock:
            handle = self._handles.get(job_id)
        if handle is None:
            raise NotFoundError(f"job {job_id!r} not found")
        return handle

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        return self.handle(job_id).result(timeout)

    def running(self, job_id: str) -> JobHandle[Any] | None:
        """The handle of `job_id` while it is the running job, else None."""
        with self._lock:
            handle = self._handles.get(job_id)
        return handle if handle is not None and handle.is_running() else None

    def progress(self, job_id: str | None = None, *, with_preview: bool = True) -> dict[str, Any]:
        """A1111's `/sdapi/v1/progress` body for the running job (or for `job_id` only)."""
        current = self._worker.current
        if job_id is not None and (current is None or current.id != job_id):
            return idle_progress()
        return self._worker.progress(with_preview=with_preview)

    def current_job_id(self) -> str | None:
        current = self._worker.current
        return current.id if current is not None else None

    def interrupt(self, job_id: str | None = None) -> None:
        self._worker.interrupt(job_id)

    def cancel(self, future: Future[Any]) -> bool:
        """Drop the job behind `future` (a handle's future) if it is still queued: it never runs
        and fails with `JobCancelled`; True. A running job is interrupted instead (False); False
        too when it is over, or not a job of this process's worker (a Ray replica's)."""
        return self._worker.cancel(future)

    def begin_shutdown(self) -> None:
        """Take no new job, fail the queued ones with `ServerShuttingDown` (503) and interrupt the
        running one (the server's graceful stop)."""
        self._worker.begin_shutdown()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end after `begin_shutdown`; True when it has."""
        return self._worker.join(timeout)

    def skip(self, job_id: str | None = None) -> None:
        self._worker.skip(job_id)

    def stop_generating(self, job_id: str | None = None) -> None:
        self._worker.stop_generating(job_id)

    def queue_status(self, job_id: str) -> QueueStatus:
        active, queued, completed, position = self._worker.queue_status(job_id)
        return QueueStatus(active, queued, completed, position, self._worker.pending_count())

    def pending_count(self) -> int:
        return self._worker.pending_count()

    def count_tokens(self, prompt: str, steps: int, *, is_positive: bool = True) -> tuple[int, int]:
        """A1111's prompt token counter: (CLIP tokens used, limit in chunks of 75); an embedding the
        active model can use counts as its vectors."""
        return count_tokens(prompt, steps, is_positive=is_positive, embeddings=self.embeddings())

    def embeddings(self) -> EmbeddingSet | None:
        """The textual-inversion embeddings for the active model (loaded) and those that do not fit
        it (skipped, with the reason); None when the engine has no embeddings or no model yet."""
        networks = self._generation.networks
        active = self._models.active
        if networks is None or active is None:
            return None
        return networks.embeddings.for_model(active.model)

    def refresh_embeddings(self) -> None:
        """Read the embeddings folders again (A1111's `/refresh-embeddings`)."""
        if self._generation.networks is not None:
            self._generation.networks.embeddings.refresh()

    # -- models ------------------------------------------------------------------------------

    def model_status(self) -> ModelStatus:
        status = self._models.status()
        active = self._models.active
        info = status.checkpoint
        family = active.model.family if active is not None else None
        return ModelStatus(
            checkpoint=info.title if info else None,
            checkpoint_name=info.name if info else None,
            model_name=info.model_name if info else None,
            checkpoint_hash=info.shorthash if info else None,
            sha256=info.sha256 if info else None,
            family=family.label if family else None,
            variant="" if family is None or family.variant == "normal" else family.variant,
            is_sdxl=bool(family and family.is_sdxl),
            vae=status.vae.name if status.vae else None,
            vae_choice=self._models.vae_choice,
            loading=status.loading,
            last_error=status.last_error,
            cached=status.cached,
            cache_bytes_used=status.cache_bytes_used,
        )

    @property
    def selected_checkpoint(self) -> str | None:
        """The title of the checkpoint plain jobs run with (the last one switched to)."""
        return self._selected.title if self._selected is not None else None

    def switch_model(self, checkpoint: str | None = None, vae: str | None = None) -> ModelSwitched:
        """Switch on the worker and wait until it is done (errors raised here). From inside a
        job (e.g. `override_settings_restore_afterwards: false`) it runs at once."""
        request = SwitchModel(checkpoint=checkpoint, vae=vae)
        if self._worker.on_worker_thread():
            return self._run_model_job(request)
        return self.submit(request).result()

    def _submit_model_job(self, request: ModelJob) -> Job[ModelSwitched]:
        if isinstance(request, SwitchModel):
            if request.checkpoint:
                self._registry.find_checkpoint(request.checkpoint)  # 404 before queueing
            if request.vae and request.vae not in (VAE_AUTOMATIC, VAE_NONE):
                self._registry.find_vae(request.vae)

        def work(ctx: JobContext) -> ModelSwitched:
            return self._run_model_job(request, ctx)

        return self._worker.submit(work, description="model-switch")

    def _run_model_job(self, request: ModelJob, ctx: JobContext | None = None) -> ModelSwitched:
        started = time.perf_counter()
        if isinstance(request, SwitchModel):
            if ctx is not None:
                ctx.textinfo = f"Loading {request.checkpoint}" if request.checkpoint else "Changing VAE"
            if request.vae is not None:
                self._models.set_vae(request.vae)
            if request.checkpoint is not None:
                info = self._models.load(request.checkpoint)
                self._select(info)
        elif isinstance(request, UnloadModel):
            self._models.unload()
        elif isinstance(request, ReloadModel):
            info_or_none = self._models.reload()
            if info_or_none is not None:
                self._select(info_or_none)
        status = self._models.status()
        return ModelSwitched(
            checkpoint=status.checkpoint.title if status.checkpoint else None,
            vae=status.vae.name if status.vae else None,
            seconds=time.perf_counter() - started,
        )

    def _select(self, info: CheckpointInfo) -> None:
        """`info` is what plain jobs run with from now on; `sd_model_checkpoint` reports its title
        (and hash) and is saved so the next start comes back to it."""
        self._selected = info
        self.report_checkpoint(info)

    def report_checkpoint(self, info: CheckpointInfo) -> None:
        """Write the selected checkpoint's title and hash into the options (after a switch, or when
        its background hash lands)."""
        if self._selected is None or info.filename != self._selected.filename:
            return
        changed = self._options.set_readonly("sd_model_checkpoint", info.title)
        changed = self._options.set_readonly("sd_checkpoint_hash", info.sha256 or "") or changed
        if changed and self._options.path is not None:
            try:
                self._options.save()
            except OSError as exc:
                log.warning("could not save %s: %s", self._options.path, exc)

    # -- extras and merge --------------------------------------------------------------------

    def _submit_extras(self, request: ExtrasRequest) -> Job[list[ExtrasResult]]:
        """A1111's postprocessing over the request's images as one job (queued behind generation,
        as A1111's lock does), with the shared upscalers and face restorers."""
        options = self._options
        tiles = upscaling.tile_settings(options)
        # a list of operation names (Options validates the value against its default's type)
        order = cast(
            "list[str]",
            options.get("postprocessing_operation_order") if "postprocessing_operation_order" in options else [],
        )
        upscalers, restorers = self._upscalers, self._face_restorers
        kwargs = request.operation_kwargs()
        images: Sequence[Image.Image] = [image for image in request.images if isinstance(image, Image.Image)]
        if len(images) != len(request.images):
            raise UserError("extras: every image must be a decoded image")
        wanted = [request.upscaler_1] + ([request.upscaler_2] if request.extras_upscaler_2_visibility > 0 else [])
        for name in wanted:  # an unknown upscaler is a 404 before anything is queued (also with no images)
            if name and name not in upscaling.BUILTIN_NAMES:
                if upscalers is None:
                    raise NotFoundError(f"upscaler not found: {name!r}")
                upscalers.get(name)
        limits = Limits.from_options(options)
        for i, image in enumerate(images):
            check_extras_size(
                image.size,
                resize_mode=request.resize_mode,
                upscaling_resize=request.upscaling_resize,
                upscaling_resize_w=request.upscaling_resize_w,
                upscaling_resize_h=request.upscaling_resize_h,
                upscaler_1=request.upscaler_1,
                max_side=limits.max_side,
                max_pixels=limits.max_pixels_times_batch,
                field="image" if len(images) == 1 else f"imageList[{i}]",
            )

        def upscale(image: Image.Image, name: str, scale: float) -> Image.Image:
            if upscalers is None:
                raise NotFoundError(f"upscaler {name!r} not found")
            size = (dest_side(image.width, scale), dest_side(image.height, scale))
            return upscaling.upscale(image, name, scale, registry=upscalers, tiles=tiles, size=size)

        def restore(image: Image.Image, name: str, visibility: float, weight: float) -> Image.Image:
            if restorers is None:
                raise NotFoundError(f"{name}: face restoration is not available")
            return restorers.get(name, visibility=visibility, codeformer_weight=weight).restore(image)

        def work(ctx: JobContext) -> list[ExtrasResult]:
            results = []
            ctx.begin_image(0, len(images))
            for n, image in enumerate(images):
                ctx.begin_image(n)
                ctx.check()
                results.append(
                    run_extras(
                        image,
                        upscale=upscale,
                        restore_faces=restore,
                        operation_order=list(order or []),
                        **kwargs,  # type: ignore[arg-type]
                    )
                )
            return results

        return self._worker.submit(work, description="extras")

    # -- training --------------------------------------------------------------------------------

    def _trainer(self) -> TrainingService:
        if self._training is None:
            raise UserError("training is not available in this server")
        return self._training

    def create_embedding(self, request: CreateEmbeddingRequest, timeout: float | None = None) -> CreateResult:
        """Create an embedding file (a short job: it reads the model's token embeddings)."""
        return self._trainer().create_embedding(request).future.result(timeout)

    def create_hypernetwork(self, request: CreateHypernetworkRequest) -> CreateResult:
        return self._trainer().create_hypernetwork(request)

    def training_status(self, job_id: str | None = None) -> dict[str, Any] | None:
        """A training run's progress (step, losses, samples, state...), the latest when no id."""
        return self._trainer().status(job_id)

    def training_busy(self) -> bool:
        return self._training is not None and self._training.busy()

    def _submit_merge(self, request: MergeRequest) -> Job[MergeResult]:
        """Validate on the caller's thread, then merge as one job on the worker (progress: one
        step per tensor of A; interrupt aborts it and leaves no file)."""
        merging.validate_request(request)
        if self._merge_dir is None:
            raise UserError("the checkpoint merger has no output folder configured")
        registry, target = self._registry, self._merge_dir
        find_lora = self._lora_finder() if request.bake_loras else None
        if request.bake_loras and find_lora is None:
            raise UserError("baking LoRAs needs the LoRA folder, which this server does not have")
        for name, _weight in request.bake_loras:
            assert find_lora is not None
            find_lora(name)  # an unknown LoRA is a user error now, not a failed job

        def work(ctx: JobContext) -> MergeResult:
            return merging.merge_checkpoints(
                request, registry, target, progress=_tensor_progress(ctx), find_lora=find_lora
            )

        return self._worker.submit(work, description="model-merge")

    def _lora_finder(self) -> Callable[[str], Path] | None:
        networks = self._generation.networks
        if networks is None:
            return None
        registry = networks.registry
        return lambda name: registry.find_lora(name).filename

    def _submit_extract(self, request: ExtractLoraRequest) -> Job[ExtractLoraResult]:
        """A LoRA from the difference of two checkpoints, as one job (progress: one step per layer)."""
        merging.validate_extract_request(request)
        networks = self._generation.networks
        if networks is None or not networks.registry.lora_dirs:
            raise UserError("extracting a LoRA needs the LoRA folder, which this server does not have")
        lora_registry = networks.registry
        original = self._single_file(request.original_model_name)
        tuned = self._single_file(request.tuned_model_name)
        target = lora_registry.lora_dirs[0] / f"{request.name.strip()}.safetensors"
        if target.exists():
            raise UserError(f"{target.name} already exists in the LoRA folder; choose another name")

        def work(ctx: JobContext) -> ExtractLoraResult:
            done = extract_lora(
                original.filename,
                tuned.filename,
                target,
                rank=request.rank,
                conv_rank=request.conv_rank,
                clamp_quantile=request.clamp_quantile,
                min_diff=request.min_diff,
                save_fp16=request.save_as_half,
                progress=_tensor_progress(ctx),
            )
            lora_registry.refresh("lora")
            return ExtractLoraResult(
                path=done.path,
                modules=done.modules,
                text_encoder_included=not done.text_encoder_skipped,
                seconds=done.seconds,
            )

        return self._worker.submit(work, description="lora-extract")

    def _single_file(self, name: str) -> CheckpointInfo:
        info = self._registry.find_checkpoint(name)
        if info.is_folder:
            raise UserError(f"{info.name}: diffusers folders cannot be used here; choose a single-file checkpoint")
        return info


def _tensor_progress(ctx: JobContext) -> Callable[[int, int, str], None]:
    """A merge-style progress callback on a job: (done, total, what); raises on interrupt."""
    ctx.begin_image(0, 1)

    def progress(done: int, total: int, what: str) -> None:
        if ctx.sampling_steps != total:
            ctx.begin_pass(total)
        ctx.textinfo = what
        ctx.step(done)

    return progress


def wire_model_options(options: Options, engine: Engine, models: ModelManager) -> list[Callable[[], None]]:
    """Setting `sd_model_checkpoint` / `sd_vae` (API, Settings, top bar, a kept override) switches
    models through a job on the worker and returns once it is done; a background hash that lands
    for the selected checkpoint is reported into the options. Returns the unsubscribe functions."""

    def on_checkpoint(_key: str, value: object) -> None:
        if value:
            engine.switch_model(checkpoint=str(value))

    def on_vae(_key: str, value: object) -> None:
        engine.switch_model(vae=str(value))

    models.on_hash.append(engine.report_checkpoint)
    return [options.on_change("sd_model_checkpoint", on_checkpoint), options.on_change("sd_vae", on_vae)]
