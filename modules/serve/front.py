"""RayEngine: the `Engine` the adapters get with `--ray`.

Routes, UI and scripts keep calling the one job interface; generation and Extras jobs are forwarded
to the Serve deployment of engine replicas (modules.serve.replica), everything else (merges, LoRA
extraction, training, token counts, embeddings listing) runs on this process's own engine as before.

- submit(): validates on the caller's thread as the single process does (4xx before queueing), gives
  the job its task id, its multiplexed model id (the checkpoint's name: `override_settings`'s
  `sd_model_checkpoint`, else the selected checkpoint) and a local future the routes await; a full
  cluster is QueueFullError (429 + Retry-After) before anything is sent.
- progress / interrupt / skip / queue status by task id read and write the JobBoard actor, so they
  reach the job on whichever replica runs it; the queue counts the jobs of every replica.
- model switches only select: the selected checkpoint routes the next plain jobs, and replicas load
  it when the first job for it arrives (Serve's multiplexing).
- a replica that dies while running a job fails that job with WorkerDiedError (503) and Serve
  starts another; a job that had not begun running yet is sent again once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from modules.core.errors import NotFoundError, SdWebuiError, ValidationError
from modules.core.jobs import VAE_AUTOMATIC, VAE_NONE, ExtrasRequest, ReloadModel, SwitchModel, UnloadModel
from modules.core.requests import GenerationRequest
from modules.core.results import ModelStatus, ModelSwitched, Result
from modules.engine.facade import Engine, JobHandle, QueueStatus, Request
from modules.engine.hooks import Hooks
from modules.engine.worker import Job, JobContext, JobInterrupted, QueueFullError, Worker, idle_progress
from modules.serve.board import TaskState
from modules.serve.messages import ForwardedJob, Outcome, WorkerDiedError

log = logging.getLogger(__name__)

STATE_TTL_S = 0.1  # a board read serves the handle's several getters in one UI poll
Saver = Callable[[Result, GenerationRequest, Hooks], None]


class RemoteJob:
    """The front's record of one forwarded job."""

    def __init__(self, task_id: str, request: Any, model_id: str, kind: str) -> None:
        self.task_id = task_id
        self.request = request
        self.model_id = model_id
        self.kind = kind
        self.job: Job[Any] = Job(context=JobContext(id=task_id, description=kind), fn=_never)
        self.response: Any = None  # the Serve DeploymentResponse while in flight
        self.cancelled = False
        self.done = False
        self.state: TaskState | None = None
        self.state_at = 0.0


def _fail(future: Any, exc: BaseException) -> None:
    if not future.done():  # a cancelled job's future stays cancelled
        future.set_exception(exc)


def _never(_ctx: JobContext) -> Any:
    raise RuntimeError("a forwarded job runs on a replica")


class RemoteJobHandle(JobHandle[Any]):
    """A JobHandle whose job runs on a replica: its state is read from the JobBoard."""

    def __init__(self, remote: RemoteJob, engine: RayEngine) -> None:
        super().__init__(remote.job, engine.front_worker, remote.kind)
        self._remote = remote
        self._engine = engine

    def _state(self, want_preview: bool = False) -> TaskState | None:
        return self._engine.task_state(self._remote, want_preview=want_preview)

    def is_running(self) -> bool:
        state = self._state()
        return state is not None and state.running and not self.done()

    def preview(self) -> Any:
        state = self._state(want_preview=True)
        return state.preview if state is not None and state.running else None

    def progress(self, *, with_preview: bool = False) -> dict[str, Any]:
        state = self._state(want_preview=with_preview)
        return _progress_body(state, with_preview)

    @property
    def textinfo(self) -> str | None:
        state = self._state()
        return (state.progress or {}).get("textinfo") if state is not None else None

    @property
    def interrupted(self) -> bool:
        state = self._state()
        return self._remote.cancelled or (state is not None and state.interrupt)

    def fraction(self) -> float:
        state = self._state()
        return float((state.progress or {}).get("progress", 0.0)) if state is not None else 0.0

    def eta(self) -> float:
        state = self._state()
        return float((state.progress or {}).get("eta_relative", 0.0)) if state is not None else 0.0

    def preview_version(self) -> int:
        state = self._state(want_preview=True)
        return state.preview_version if state is not None else 0


def _progress_body(state: TaskState | None, with_preview: bool) -> dict[str, Any]:
    if state is None or not state.running or state.progress is None:
        return idle_progress()
    body = dict(state.progress)
    body["current_image"] = state.preview if with_preview else None
    return body


class RayEngine(Engine):
    """The facade with generation on Ray Serve replicas (see the module docstring)."""

    def __init__(
        self,
        *,
        deployment: Any,  # DeploymentHandle of the replicas
        board: Any,  # ActorHandle of the JobBoard
        capacity: int,  # jobs that may be in the cluster at once (running + queued)
        slots: int,  # jobs sent to the replicas at once (one per replica); the others wait here
        save_on_replica: bool = True,
        front_saver: Saver | None = None,  # with --ray-outputs front: saves what comes back
        **engine_kwargs: Any,
    ) -> None:
        super().__init__(**engine_kwargs)
        self.front_worker: Worker = engine_kwargs["worker"]
        self._deployment = deployment
        self._board = board
        self.capacity = capacity
        self._slots = asyncio.Semaphore(slots)
        self._save_on_replica = save_on_replica
        self._front_saver = front_saver
        self._remote: OrderedDict[str, RemoteJob] = OrderedDict()
        self._remote_lock = threading.Lock()
        self._durations: list[float] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ray dispatcher", daemon=True)
        self._thread.start()

    # -- submitting --------------------------------------------------------------------------

    def submit(self, request: Request) -> JobHandle[Any]:
        if isinstance(request, GenerationRequest):
            if self._training is not None:
                self._training.check_generation_allowed()
            self._check_generation(request)
            kind = "img2img" if type(request).__name__ == "Img2ImgRequest" else "txt2img"
            return self._forward(request, self._model_id(request), kind)
        if isinstance(request, ExtrasRequest):
            return self._forward(request, "", "extras")
        if isinstance(request, SwitchModel | UnloadModel | ReloadModel):
            return self._model_job(request)
        return super().submit(request)

    def _check_generation(self, request: GenerationRequest) -> None:
        """The checks the single process makes before queueing (scripts, sizes, samplers, names)."""
        generation = self._generation
        if generation.scripts is not None:
            generation.scripts.check(request)
        elif request.script_name:
            raise ValidationError(f"Selectable script not found: {request.script_name!r}")
        generation.prepare(request)

    def _model_id(self, request: GenerationRequest) -> str:
        """The checkpoint the job runs with, by its registry name (stable: a title gains the hash
        once it is computed)."""
        wanted = request.override_settings.get("sd_model_checkpoint") or self.selected_checkpoint
        if not wanted:
            first = self._registry.checkpoints()
            if not first:
                raise NotFoundError("no checkpoints found: put .safetensors or .ckpt files in models/Stable-diffusion")
            return first[0].name
        return self._registry.find_checkpoint(str(wanted)).name

    def _forward(self, request: Any, model_id: str, kind: str) -> JobHandle[Any]:
        task_id = getattr(request, "force_task_id", None) or f"task({uuid.uuid4().hex[:15]})"
        if isinstance(request, GenerationRequest):
            request = dataclasses.replace(
                request, force_task_id=task_id, override_settings=dict(request.override_settings)
            )
        remote = RemoteJob(task_id, request, model_id, kind)
        with self._remote_lock:
            in_flight = sum(1 for r in self._remote.values() if not r.done)
            if in_flight >= self.capacity:
                retry = self._retry_after()
                raise QueueFullError(
                    f"the cluster is full ({in_flight} jobs running or waiting); try again in about {retry} s",
                    retry_after=retry,
                )
            self._remote[task_id] = remote
            while len(self._remote) > 512 and next(iter(self._remote.values())).done:
                self._remote.popitem(last=False)
        handle = RemoteJobHandle(remote, self)
        with self._lock:
            self._handles[task_id] = handle
        forwarded = ForwardedJob(task_id, request, self._options.stored(), self._save_on_replica)
        asyncio.run_coroutine_threadsafe(self._dispatch(remote, forwarded), self._loop)
        return handle

    def _retry_after(self) -> int:
        if not self._durations:
            return 5
        recent = self._durations[-16:]
        return max(1, min(600, math.ceil(sum(recent) / len(recent) / max(1, self.capacity))))

    async def _dispatch(self, remote: RemoteJob, forwarded: ForwardedJob) -> None:
        from ray.exceptions import RayTaskError
        from ray.serve.exceptions import BackPressureError, RequestCancelledError

        future = remote.job.future
        began = time.monotonic()
        tries = 0
        try:
            # jobs wait here, not in Serve's router: a router queue polls the replicas while it waits
            # (with backoff), which costs CPU and leaves a freed replica idle until the next poll
            async with self._slots:
                if remote.cancelled or future.cancelled():
                    raise RequestCancelledError(remote.task_id)
                while True:
                    tries += 1
                    outcome = await self._send(remote, forwarded, tries)
                    if outcome is not None:
                        break
            if isinstance(outcome.error, JobInterrupted) and outcome.result is None:
                raise RequestCancelledError(remote.task_id)  # interrupted before it ran: cancelled, as queued jobs are
            if outcome.error is not None:
                raise outcome.error
            result = outcome.result
            request, saver = remote.request, self._front_saver
            if saver is not None and isinstance(request, GenerationRequest) and not request.do_not_save_samples:
                await asyncio.to_thread(saver, result, request, self.hooks)
            log.info("%s ran on %s (%s)", remote.task_id, outcome.replica, remote.model_id or remote.kind)
            self._finish(remote, began)
            if not future.done():  # not cancelled meanwhile
                future.set_result(result)
        except RequestCancelledError:
            self._finish(remote, None)
            future.cancel()
        except BackPressureError as exc:
            self._finish(remote, None)
            _fail(future, QueueFullError(f"the cluster is full: {exc}", retry_after=self._retry_after()))
        except RayTaskError as exc:
            self._finish(remote, None)
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            log.error("%s failed on a replica: %s", remote.task_id, cause)
            _fail(future, cause)
        except BaseException as exc:
            self._finish(remote, None)
            if not isinstance(exc, SdWebuiError):
                log.exception("%s failed", remote.task_id)
            _fail(future, exc)

    async def _send(self, remote: RemoteJob, forwarded: ForwardedJob, tries: int) -> Outcome | None:
        """One try on a replica: its Outcome, or None to send it again (its replica died before the
        job began running, the first time)."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        remote.response = self._deployment.options(multiplexed_model_id=remote.model_id).run.remote(forwarded)
        if remote.cancelled:
            remote.response.cancel()
        try:
            outcome: Outcome = await remote.response
            return outcome
        except (RayActorError, ActorUnavailableError) as exc:
            state = await self._board.get.remote(remote.task_id)
            began_running = state is not None and state.began
            replica = state.replica if state is not None else "a replica"
            if not began_running and tries == 1 and not remote.cancelled:
                log.warning("%s: %s died before the job began; sending it again", remote.task_id, replica)
                return None
            log.error("%s: %s died while running it: %s", remote.task_id, replica, exc)
            raise WorkerDiedError(
                f"the worker running {remote.task_id} ({replica}) died; the job was lost (a new worker "
                "is being started): send the request again"
            ) from None

    def _finish(self, remote: RemoteJob, began: float | None) -> None:
        remote.done = True
        remote.response = None
        if began is not None:
            self._durations.append(time.monotonic() - began)
            del self._durations[:-64]

    # -- model jobs: the front only selects ---------------------------------------------------

    def _model_job(self, request: SwitchModel | UnloadModel | ReloadModel) -> JobHandle[Any]:
        started = time.perf_counter()
        context = JobContext(id=f"task({uuid.uuid4().hex[:15]})", description="model-switch")
        job: Job[Any] = Job(context=context, fn=_never)
        if isinstance(request, (UnloadModel, ReloadModel)):
            log.warning(
                "--ray: %s is not applied: the replicas keep their models (each holds the checkpoints it was "
                "routed; Ray Serve evicts them by its own LRU)",
                "unload-checkpoint" if isinstance(request, UnloadModel) else "reload-checkpoint",
            )
        if isinstance(request, SwitchModel) and request.checkpoint:
            self._select(self._registry.find_checkpoint(request.checkpoint))  # 404 for an unknown one
        if isinstance(request, SwitchModel) and request.vae and request.vae not in (VAE_AUTOMATIC, VAE_NONE):
            self._registry.find_vae(request.vae)  # replicas follow the sd_vae option with each job
        job.future.set_result(
            ModelSwitched(checkpoint=self.selected_checkpoint, vae=None, seconds=time.perf_counter() - started)
        )
        return JobHandle(job, self.front_worker, "model-switch")

    def switch_model(self, checkpoint: str | None = None, vae: str | None = None) -> ModelSwitched:
        switched: ModelSwitched = self.submit(SwitchModel(checkpoint=checkpoint, vae=vae)).result()
        return switched

    def model_status(self) -> ModelStatus:
        """The selected checkpoint (replicas load it on demand); nothing is loaded in this process."""
        info = self._selected
        vae_choice = str(self._options.get("sd_vae")) if "sd_vae" in self._options else "Automatic"
        return ModelStatus(
            checkpoint=info.title if info else None,
            checkpoint_name=info.name if info else None,
            model_name=info.model_name if info else None,
            checkpoint_hash=info.shorthash if info else None,
            sha256=info.sha256 if info else None,
            vae_choice=vae_choice,
        )

    # -- reading and control -----------------------------------------------------------------

    def task_state(self, remote: RemoteJob, *, want_preview: bool = False) -> TaskState | None:
        now = time.monotonic()
        if remote.done and remote.state is not None:
            return remote.state
        if want_preview or now - remote.state_at > STATE_TTL_S:
            import ray

            remote.state = ray.get(self._board.get.remote(remote.task_id, want_preview))
            remote.state_at = now
        return remote.state

    def _running_ids(self) -> list[str]:
        import ray

        return list(ray.get(self._board.running.remote()))

    def _remote_job(self, job_id: str) -> RemoteJob | None:
        with self._remote_lock:
            return self._remote.get(job_id)

    def progress(self, job_id: str | None = None, *, with_preview: bool = True) -> dict[str, Any]:
        """A1111's `/progress` for `job_id`, or for the longest-running job of the cluster."""
        if job_id is None:
            running = self._running_ids()
            if not running:
                return super().progress(None, with_preview=with_preview)  # a local job (merge, training)
            job_id = running[0]
        remote = self._remote_job(job_id)
        if remote is None:
            return super().progress(job_id, with_preview=with_preview)
        return _progress_body(self.task_state(remote, want_preview=with_preview), with_preview)

    def current_job_id(self) -> str | None:
        running = self._running_ids()
        return running[0] if running else super().current_job_id()

    def running(self, job_id: str) -> JobHandle[Any] | None:
        remote = self._remote_job(job_id)
        if remote is None:
            return super().running(job_id)
        handle = self.handle(job_id)
        return handle if handle.is_running() else None

    def _targets(self, job_id: str | None) -> list[RemoteJob]:
        if job_id is not None:
            remote = self._remote_job(job_id)
            return [remote] if remote is not None and not remote.done else []
        running = set(self._running_ids())
        with self._remote_lock:
            return [r for r in self._remote.values() if r.task_id in running and not r.done]

    def interrupt(self, job_id: str | None = None) -> None:
        """Interrupt `job_id` wherever it runs (a job not yet on a replica is cancelled), or every
        running job when no id is given; local jobs as the single process does."""
        import ray

        calls = []
        for remote in self._targets(job_id):
            remote.cancelled = not self._began(remote)
            if remote.cancelled and remote.response is not None:
                self._loop.call_soon_threadsafe(remote.response.cancel)
            elif remote.cancelled:  # still waiting for a replica slot here
                remote.job.future.cancel()
            calls.append(self._board.interrupt.remote(remote.task_id))
        ray.get(calls)
        super().interrupt(job_id)

    def _began(self, remote: RemoteJob) -> bool:
        state = self.task_state(remote)
        return state is not None and bool(state.replica)

    def skip(self, job_id: str | None = None) -> None:
        import ray

        ray.get([self._board.skip.remote(r.task_id) for r in self._targets(job_id)])
        super().skip(job_id)

    def stop_generating(self, job_id: str | None = None) -> None:
        import ray

        ray.get([self._board.stop_generating.remote(r.task_id) for r in self._targets(job_id)])
        super().stop_generating(job_id)

    def queue_status(self, job_id: str) -> QueueStatus:
        remote = self._remote_job(job_id)
        if remote is None:
            return super().queue_status(job_id)
        waiting = self._waiting()
        state = self.task_state(remote)
        active = state is not None and state.running and not remote.done
        position = waiting.index(job_id) + 1 if job_id in waiting else 0
        return QueueStatus(active, position > 0, remote.done, position, len(waiting))

    def _waiting(self) -> list[str]:
        """Forwarded jobs not running yet on any replica, in the order they came."""
        running = set(self._running_ids())
        with self._remote_lock:
            return [r.task_id for r in self._remote.values() if not r.done and r.task_id not in running]

    def pending_count(self) -> int:
        return len(self._waiting()) + super().pending_count()
