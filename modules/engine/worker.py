"""The one generation worker: a single thread runs jobs from a bounded FIFO queue.

UI and API submit a function and get a `concurrent.futures.Future`; the API awaits it with
`asyncio.wrap_future`, so the event loop stays free. Progress, ETA, the live preview, interrupt,
skip and stop-after-this-image live on the running job's `JobContext` and are readable at any
time without waiting for the worker (A1111's `/progress` semantics and idle shape).
"""

from __future__ import annotations

import errno
import gc
import itertools
import logging
import math
import queue
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from modules.core.errors import DiskFullError, OutOfMemoryError, UserError

log = logging.getLogger(__name__)

T = TypeVar("T")


class QueueFullError(UserError):
    """The queue holds `max_queue` jobs already (the `--queue-limit` flag): HTTP 429, with
    `Retry-After` = about one job's duration (when a place frees up)."""

    status_code = 429

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class ServerShuttingDown(UserError):
    """The server is stopping (SIGTERM/SIGINT, `/server-stop`, `/server-restart`): a job still
    queued is failed with this at once and no new job is accepted. HTTP 503."""

    status_code = 503

    def __init__(
        self, message: str = "server is shutting down: the job was not run; try again when it is back"
    ) -> None:
        super().__init__(message)


class JobCancelled(UserError):
    """A queued job was dropped before it ran (`Worker.cancel`, e.g. its API client went away)."""

    status_code = 499  # nginx's "client closed request"; nobody is left to read it

    def __init__(self, message: str = "the job was cancelled before it ran") -> None:
        super().__init__(message)


class JobInterrupted(Exception):
    """Raised inside a job's loop to stop the whole job (partial results are kept by the job)."""


class ImageSkipped(Exception):
    """Raised inside a job's loop to abandon the current image and go on with the next."""


@dataclass
class JobContext:
    """What a running job reports and what it must obey. Written by the worker thread; read by
    anyone (single attribute reads and writes are atomic under the GIL)."""

    id: str
    description: str = ""
    job_count: int = -1  # -1 until the job knows how many images it will make
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False
    stopping_generation: bool = False
    started: float = field(default_factory=time.time)
    job_timestamp: str = field(default_factory=lambda: datetime.now().strftime("%Y%m%d%H%M%S"))
    textinfo: str | None = None
    preview_every: int = 0  # 0 = no previews
    _preview_source: Any = None  # e.g. a latent tensor; decoded lazily by `preview_decoder`
    preview_decoder: Callable[[Any], Any] | None = None
    _preview_cache: tuple[int, Any] | None = None
    _preview_version: int = 0

    # -- called by the job -------------------------------------------------------------------

    def begin_image(self, job_no: int, job_count: int | None = None) -> None:
        self.job_no = job_no
        if job_count is not None:
            self.job_count = job_count
        self.sampling_step = 0
        self.skipped = False

    def begin_pass(self, steps: int) -> None:
        self.sampling_steps = steps
        self.sampling_step = 0

    def step(self, step: int, preview_source: Any = None) -> None:
        """Report progress; raises `JobInterrupted` / `ImageSkipped` when asked to stop."""
        self.sampling_step = step
        if preview_source is not None and self.preview_every and step % self.preview_every == 0:
            self.set_preview(preview_source)
        self.check()

    def check(self) -> None:
        if self.interrupted:
            raise JobInterrupted()
        if self.skipped:
            raise ImageSkipped()

    @property
    def preview_version(self) -> int:
        return self._preview_version

    def set_preview(self, source: Any) -> None:
        self._preview_source = source
        self._preview_version += 1

    # -- read by anyone ----------------------------------------------------------------------

    def preview(self) -> Any:
        """The live preview image, decoded from the latest source only when asked for."""
        source, version, decoder = self._preview_source, self._preview_version, self.preview_decoder
        if source is None or decoder is None:
            return None
        cached = self._preview_cache
        if cached is not None and cached[0] == version:
            return cached[1]
        image = decoder(source)
        self._preview_cache = (version, image)
        return image

    def progress(self) -> float:
        if self.job_count == 0:
            return 0.0
        count = max(self.job_count, 1)
        value = 0.01 + self.job_no / count
        if self.sampling_steps > 0:
            value += self.sampling_step / self.sampling_steps / count
        return min(value, 1.0)

    def eta(self) -> float:
        progress = self.progress()
        elapsed = time.time() - self.started
        return elapsed / progress - elapsed if progress > 0 else 0.0


@dataclass
class Job(Generic[T]):
    context: JobContext
    fn: Callable[[JobContext], T]
    future: Future[T] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.time)


IDLE_STATE: dict[str, Any] = {
    "skipped": False,
    "interrupted": False,
    "stopping_generation": False,
    "job": "",
    "job_count": 0,
    "job_timestamp": "0",
    "job_no": 0,
    "sampling_step": 0,
    "sampling_steps": 0,
}


def idle_progress() -> dict[str, Any]:
    """A1111's `/sdapi/v1/progress` body when nothing runs."""
    return {"progress": 0.0, "eta_relative": 0.0, "state": dict(IDLE_STATE), "current_image": None, "textinfo": None}


def _is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA, MPS, XPU), or a RuntimeError/MemoryError saying so."""
    torch = sys.modules.get("torch")
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _out_of_memory(ctx: JobContext, exc: BaseException) -> OutOfMemoryError:
    log.error("job %s ran out of memory (%s); memory freed, the worker goes on", ctx.id, exc)
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return OutOfMemoryError(
        f"Out of memory while running {ctx.description or 'a job'}: {first_line}. The memory was freed; try a "
        "smaller size, batch size or upscale, or a lower-memory mode (--medvram, --lowvram)."
    )


def _free_memory() -> None:
    """After an out-of-memory error: drop the failed job's tensors and return cached blocks."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class Worker:
    """Runs submitted jobs one at a time on its own thread."""

    def __init__(self, max_queue: int = 64, *, name: str = "generation worker") -> None:
        self.max_queue = max_queue
        self._queue: queue.Queue[Job[Any] | None] = queue.Queue()
        self._pending: deque[Job[Any]] = deque()
        self._lock = threading.Lock()
        self._current: Job[Any] | None = None
        self._completed: deque[str] = deque(maxlen=256)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._ids = itertools.count(1)
        self._durations: deque[float] = deque(maxlen=16)  # seconds of the last finished jobs
        self._closing = False
        self.cancelled_count = 0  # queued jobs dropped by `cancel` (they never ran)
        self.failed_at_shutdown = 0  # queued jobs failed by `begin_shutdown`

    def on_worker_thread(self) -> bool:
        """True when called from the worker's own thread (i.e. from inside a job)."""
        return threading.current_thread() is self._thread

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    @property
    def closing(self) -> bool:
        """True once `begin_shutdown` ran: no job is accepted any more."""
        return self._closing

    def begin_shutdown(self, reason: str | None = None) -> int:
        """Stop accepting jobs, fail every queued job with `ServerShuttingDown` (503) at once,
        interrupt the running job at its next step check (it keeps and saves its partial result
        as on any interrupt) and let the thread end after it. Returns how many queued jobs were
        failed. Idempotent; does not wait (`join` does)."""
        with self._lock:
            first = not self._closing
            self._closing = True
            pending = list(self._pending)
            self._pending.clear()
            current = self._current
        failure = ServerShuttingDown(reason) if reason else ServerShuttingDown()
        failed = 0
        for job in pending:
            if job.future.done():
                continue
            try:
                job.future.set_exception(failure)
                failed += 1
            except Exception:  # cancelled or finished between the check and here
                continue
        self.failed_at_shutdown += failed
        if current is not None:
            current.context.interrupted = True
        if first:
            self._queue.put(None)
            if failed or current is not None:
                log.info(
                    "shutting down: %d queued job(s) failed, %s",
                    failed,
                    f"job {current.context.id} interrupted" if current is not None else "no job running",
                )
        return failed

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after `begin_shutdown`); True when it has."""
        if self._started and not self.on_worker_thread():
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return not self._started

    def shutdown(self, timeout: float | None = 10) -> None:
        """Interrupt the running job, fail queued ones and stop the thread."""
        self.begin_shutdown()
        self.join(timeout)

    # -- submitting --------------------------------------------------------------------------

    def submit(self, fn: Callable[[JobContext], T], *, task_id: str | None = None, description: str = "") -> Job[T]:
        with self._lock:
            if self._closing:
                raise ServerShuttingDown()
            if len(self._pending) >= self.max_queue:
                retry = self.retry_after()
                raise QueueFullError(
                    f"the queue is full ({self.max_queue} jobs waiting); try again in about {retry} s",
                    retry_after=retry,
                )
            context = JobContext(id=task_id or f"task({uuid.uuid4().hex[:15]})", description=description)
            job: Job[T] = Job(context=context, fn=fn)
            self._pending.append(job)
        self._queue.put(job)
        self.start()
        return job

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely to free up: the mean of the last jobs'
        durations (5 before any job finished), within 1..600."""
        if not self._durations:
            return 5
        return max(1, min(600, math.ceil(sum(self._durations) / len(self._durations))))

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job in self._pending:
                    self._pending.remove(job)
                if self._closing or job.future.done() or not job.future.set_running_or_notify_cancel():
                    continue  # cancelled, or failed by begin_shutdown
                self._current = job
            failure: BaseException | None = None
            result: Any = None
            began = time.monotonic()
            try:
                result = job.fn(job.context)
            except BaseException as exc:  # the worker must survive every job
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    log.error("job %s: no space left on device (%s)", job.context.id, exc)
                    failure = DiskFullError(
                        f"No space left on device while running {job.context.description or 'a job'} ({exc}); "
                        "no partial file was written. Free some disk space and try again."
                    )
                elif _is_out_of_memory(exc):
                    failure = _out_of_memory(job.context, exc)
                    del exc
                    _free_memory()
                else:
                    if not isinstance(exc, UserError | JobInterrupted):
                        log.exception("job %s failed", job.context.id)
                    failure = exc
            # the job is over before its caller hears of it: a client that reads /progress right
            # after its answer sees the worker idle, not the job it has its result for
            with self._lock:
                self._current = None
                self._completed.append(job.context.id)
                self._durations.append(time.monotonic() - began)
            if failure is not None:
                job.future.set_exception(failure)
            else:
                job.future.set_result(result)

    # -- control -----------------------------------------------------------------------------

    def _targets(self, task_id: str | None) -> JobContext | None:
        current = self._current
        if current is None:
            return None
        if task_id is not None and current.context.id != task_id:
            return None
        return current.context

    def interrupt(self, task_id: str | None = None) -> None:
        """Stop the running job at its current step (it returns what it has); with a task id,
        only that job, and queued jobs with that id are cancelled too. A no-op when idle."""
        context = self._targets(task_id)
        if context is not None:
            context.interrupted = True
        if task_id is not None:
            with self._lock:
                for job in [j for j in self._pending if j.context.id == task_id]:
                    self._pending.remove(job)
                    job.future.cancel()

    def cancel(self, job: Job[Any] | Future[Any]) -> bool:
        """Drop `job` (a job, or its future) if it is still queued: it never runs and its future
        fails with `JobCancelled`; True. Interrupt it if it is running (it stops at its next step
        check); False. False too when it is over already."""
        future = job.future if isinstance(job, Job) else job
        with self._lock:
            queued = next((j for j in self._pending if j.future is future), None)
            if queued is not None:
                self._pending.remove(queued)
                if not future.done():
                    future.set_exception(JobCancelled(f"job {queued.context.id} was cancelled before it ran"))
                self.cancelled_count += 1
                return True
            current = self._current
        if current is not None and current.future is future:
            current.context.interrupted = True
        return False

    def skip(self, task_id: str | None = None) -> None:
        context = self._targets(task_id)
        if context is not None:
            context.skipped = True

    def stop_generating(self, task_id: str | None = None) -> None:
        """Finish the current image, then stop."""
        context = self._targets(task_id)
        if context is not None:
            context.stopping_generation = True

    # -- reading -----------------------------------------------------------------------------

    @property
    def current(self) -> JobContext | None:
        job = self._current
        return job.context if job else None

    def is_completed(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._completed

    def pending_count(self) -> int:
        """How many jobs wait behind the running one."""
        with self._lock:
            return len(self._pending)

    def queue_status(self, task_id: str) -> tuple[bool, bool, bool, int]:
        """(active, queued, completed, position in queue) for `/internal/progress`."""
        with self._lock:
            current = self._current
            pending = [j.context.id for j in self._pending]
            completed = task_id in self._completed
        active = current is not None and current.context.id == task_id
        position = pending.index(task_id) + 1 if task_id in pending else 0
        return active, position > 0, completed, position

    def progress(self, *, with_preview: bool = True) -> dict[str, Any]:
        """A1111's `/sdapi/v1/progress` body (without base64 encoding of the preview)."""
        context = self.current
        if context is None:
            return idle_progress()
        return {
            "progress": context.progress(),
            "eta_relative": context.eta(),
            "state": {
                "skipped": context.skipped,
                "interrupted": context.interrupted,
                "stopping_generation": context.stopping_generation,
                "job": context.description or context.id,
                "job_count": context.job_count,
                "job_timestamp": context.job_timestamp,
                "job_no": context.job_no,
                "sampling_step": context.sampling_step,
                "sampling_steps": context.sampling_steps,
            },
            "current_image": context.preview() if with_preview else None,
            "textinfo": context.textinfo,
        }
