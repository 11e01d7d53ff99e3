"""Training as jobs on the one worker.

A training run is a single job: it holds the model lease for its whole length, so generation
requests wait behind it (or, with the `training_generation_policy` option on "refuse", are
refused at once with a clear message while a run is queued or running). Progress for readers
lives in a `TrainingProgress` per run, kept by job id (the last few runs) for the Train tab's
loss plot and sample gallery and for `/sdapi/v1/train/status`.

Creating an embedding needs the model's token embeddings, so it is a (short) job too; creating
a hypernetwork only writes a file. After a run or a create, the registries are refreshed so the
new file shows in the extra-networks cards and `/embeddings`, `/hypernetworks`, `/loras` at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modules.core.errors import UserError
from modules.core.options import Options
from modules.core.paths import Paths
from modules.core.requests import Txt2ImgRequest
from modules.core.results import Result
from modules.core.training import (
    CreateEmbeddingRequest,
    CreateHypernetworkRequest,
    CreateResult,
    LoraTrainRequest,
    TrainEmbeddingRequest,
    TrainHypernetworkRequest,
    TrainRequest,
    TrainResult,
)
from modules.engine.service import GenerationService
from modules.engine.training.session import DONE, FAILED, INTERRUPTED, TrainingProgress, TrainingRun
from modules.engine.worker import Job, JobContext, JobInterrupted, Worker
from modules.models.embeddings import EmbeddingDatabase
from modules.models.manager import ModelManager
from modules.models.network_registry import NetworkRegistry

log = logging.getLogger(__name__)

POLICY_OPTION = "training_generation_policy"
POLICY_WAIT = "Wait behind the training run"
POLICY_REFUSE = "Refuse while training"
_KEEP_RUNS = 16


class TrainingBusyError(UserError):
    """Generation refused while a training run holds the GPU (the policy option says so)."""

    status_code = 409


def kind_of(request: TrainRequest) -> str:
    if isinstance(request, TrainEmbeddingRequest):
        return "embedding"
    if isinstance(request, TrainHypernetworkRequest):
        return "hypernetwork"
    return "lora"


def name_of(request: TrainRequest) -> str:
    if isinstance(request, TrainEmbeddingRequest):
        return request.embedding_name
    if isinstance(request, TrainHypernetworkRequest):
        return request.hypernetwork_name
    return request.name


class TrainingService:
    def __init__(
        self,
        *,
        worker: Worker,
        models: ModelManager,
        generation: GenerationService,
        embeddings: EmbeddingDatabase,
        networks: NetworkRegistry,
        paths: Paths,
        options: Options,
        selected_checkpoint: Callable[[], Any] = lambda: None,
    ) -> None:
        self._worker = worker
        self._models = models
        self._generation = generation
        self._embeddings = embeddings
        self._networks = networks
        self._paths = paths
        self._options = options
        self._selected_checkpoint = selected_checkpoint
        self._runs: OrderedDict[str, TrainingProgress] = OrderedDict()
        self._active: set[str] = set()  # queued or running training jobs
        self._lock = threading.Lock()

    # -- state ---------------------------------------------------------------------------------

    def busy(self) -> bool:
        """Whether a training run is queued or running."""
        with self._lock:
            return bool(self._active)

    def check_generation_allowed(self) -> None:
        """Raise `TrainingBusyError` when the policy refuses generation during training."""
        if self.busy() and str(self._options.get(POLICY_OPTION)) == POLICY_REFUSE:
            raise TrainingBusyError(
                "a training run is using the GPU; generation is refused until it ends (the "
                f"'{POLICY_OPTION}' setting can make requests wait behind it instead)"
            )

    def status(self, job_id: str | None = None) -> dict[str, Any] | None:
        """A run's progress snapshot (the latest run when no id is given); None when none."""
        with self._lock:
            if job_id is None:
                progress = next(reversed(self._runs.values()), None) if self._runs else None
            else:
                progress = self._runs.get(job_id)
        return None if progress is None else progress.snapshot()

    def runs(self) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._runs.values())
        return [p.snapshot() for p in items]

    # -- creating ------------------------------------------------------------------------------

    def create_embedding(self, request: CreateEmbeddingRequest) -> Job[CreateResult]:
        from modules.engine.training.creation import create_embedding

        target = self._paths.embeddings_dir

        def work(ctx: JobContext) -> CreateResult:
            with self._models.lease(self._spec()) as model:
                result = create_embedding(request, target, model)
            self._embeddings.refresh()
            return result

        return self._worker.submit(work, description="create-embedding")

    def create_hypernetwork(self, request: CreateHypernetworkRequest) -> CreateResult:
        from modules.engine.training.creation import create_hypernetwork

        result = create_hypernetwork(request, self._paths.hypernetwork_dir)
        self._networks.refresh("hypernetwork")
        return result

    # -- training ------------------------------------------------------------------------------

    def submit(self, request: TrainRequest) -> tuple[Job[TrainResult], TrainingProgress]:
        """Queue a training run (validated here first: a bad request raises before queueing)."""
        self._validate(request)
        progress = TrainingProgress(kind_of(request), name_of(request))

        def work(ctx: JobContext) -> TrainResult:
            try:
                result = self._run(request, ctx, progress)
            except JobInterrupted:
                progress.state = INTERRUPTED
                raise
            except BaseException as exc:
                progress.state = FAILED
                progress.message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
                raise
            else:
                progress.state = INTERRUPTED if result.interrupted else DONE
                progress.filename = result.filename
                progress.message = f"{progress.kind} saved to {result.filename}"
                return result
            finally:
                progress.finished = time.time()
                with self._lock:
                    self._active.discard(ctx.id)
                self._refresh_after(progress.kind)

        job = self._worker.submit(work, description=f"train-{progress.kind}")
        progress.job_id = job.context.id
        with self._lock:
            self._active.add(job.context.id)
            self._runs[job.context.id] = progress
            while len(self._runs) > _KEEP_RUNS:
                self._runs.popitem(last=False)
        if job.future.cancelled():  # cancelled before it ran (shutdown)
            with self._lock:
                self._active.discard(job.context.id)
        job.future.add_done_callback(lambda _f: self._forget_active(job.context.id))
        return job, progress

    def _forget_active(self, job_id: str) -> None:
        with self._lock:
            self._active.discard(job_id)

    def _validate(self, request: TrainRequest) -> None:
        name = name_of(request)
        if not name or not str(name).strip():
            raise UserError(f"the {kind_of(request)} to train needs a name")
        root = request.data_root
        if not root or not Path(root).expanduser().is_dir():
            raise UserError(f"the dataset directory {root!r} does not exist or is not a directory")

    def _spec(self) -> Any:
        from modules.models.spec import ModelSpec

        checkpoint = self._selected_checkpoint()
        return ModelSpec(checkpoint=checkpoint or None)

    def _run(self, request: TrainRequest, ctx: JobContext, progress: TrainingProgress) -> TrainResult:
        with self._models.lease(self._spec()) as model:
            if model.offloader is not None:
                raise UserError(
                    "training needs the whole model on the device: restart without --medvram / --lowvram to train"
                )
            run = TrainingRun(ctx, progress, model, sampler=self._sample, embeddings=self._embeddings)
            active = self._models.active
            checkpoint_hash = active.info.shorthash if active is not None else None
            if isinstance(request, LoraTrainRequest):
                from modules.engine.training.lora_trainer import train_lora

                output = Path(request.output_dir).expanduser() if request.output_dir else self._paths.lora_dir
                clip_skip = int(self._options.get("CLIP_stop_at_last_layers") or 1)  # type: ignore[call-overload]
                return train_lora(request, run, output_dir=output, clip_skip=clip_skip)
            if isinstance(request, TrainEmbeddingRequest):
                from modules.engine.training.embedding_trainer import train_embedding

                return train_embedding(
                    request,
                    run,
                    embeddings_dir=self._paths.embeddings_dir,
                    log_root=self._log_root(request.log_directory),
                    options=self._options,
                    checkpoint_hash=checkpoint_hash,
                )
            from modules.engine.training.hypernetwork_trainer import train_hypernetwork

            return train_hypernetwork(
                request,
                run,
                hypernetworks_dir=self._paths.hypernetwork_dir,
                log_root=self._log_root(request.log_directory),
                options=self._options,
                checkpoint_hash=checkpoint_hash,
            )

    def _log_root(self, log_directory: str) -> Path:
        """A1111 resolves a relative log directory against the data dir."""
        path = Path(log_directory or "textual_inversion").expanduser()
        return path if path.is_absolute() else self._paths.data_dir / path

    def _sample(self, request: Txt2ImgRequest, ctx: JobContext) -> Result:
        sample = request.replace(do_not_save_samples=True)
        assert isinstance(sample, Txt2ImgRequest)
        return self._generation.prepare_and_process(sample, ctx)

    def _refresh_after(self, kind: str) -> None:
        try:
            if kind == "embedding":
                self._embeddings.refresh()
            elif kind == "hypernetwork":
                self._networks.refresh("hypernetwork")
            else:
                self._networks.refresh("lora")
        except Exception:  # a refresh failure must not turn a finished run into a failed one
            log.exception("refreshing the network lists after training failed")
