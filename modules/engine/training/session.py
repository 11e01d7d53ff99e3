"""What a trainer gets from the job it runs in: progress, interrupt, samples, atomic saves.

A training run is one job on the worker. `TrainingRun` is the trainer's side of it: it reports
each optimizer step (`step_done`), asks whether to stop (`should_stop`), makes sample images with
the model as it is now (`sample`), and passes on warnings. `TrainingProgress` is the reader's side:
the UI polls it for the loss plot and the sample gallery, the API for `/train/status`; the job's
`JobContext` carries A1111's `/progress` fields and `textinfo` (clients parse the loss from it).

`save_state` / `load_state` write and read a resume state (optimizer state, step, scheduler state,
RNG) atomically, in a form `torch.load(weights_only=True)` reads: tensors, numbers, strings,
lists and dicts only.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modules.core.atomic import atomic_write_bytes
from modules.core.requests import Txt2ImgRequest
from modules.core.results import Result
from modules.engine.worker import JobContext

if TYPE_CHECKING:
    from modules.models.embeddings import EmbeddingDatabase
    from modules.models.loader import StableDiffusionModel

log = logging.getLogger(__name__)

RUNNING, DONE, INTERRUPTED, FAILED = "running", "done", "interrupted", "failed"
_MAX_LOSSES = 20000  # points kept for the plot; older ones are thinned (every other one dropped)


@dataclass
class TrainingProgress:
    """A training run as anyone may read it (single attribute reads are atomic under the GIL;
    the lists are only appended to, and copied by `snapshot`)."""

    kind: str
    name: str
    job_id: str = ""
    state: str = RUNNING
    step: int = 0
    start_step: int = 0
    max_steps: int = 0
    epoch: int = 0
    learning_rate: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[tuple[int, str]] = field(default_factory=list)
    saved: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    message: str = ""
    filename: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_loss(self, step: int, loss: float) -> None:
        with self._lock:
            self.losses.append((step, loss))
            if len(self.losses) > _MAX_LOSSES:
                self.losses[:] = self.losses[::2]

    def mean_loss(self, last: int = 32) -> float | None:
        with self._lock:
            tail = self.losses[-last:]
        return sum(v for _, v in tail) / len(tail) if tail else None

    def eta(self) -> float | None:
        """Seconds left, from the pace of the steps run in this session."""
        done = self.step - self.start_step
        if done <= 0 or self.max_steps <= 0 or self.finished is not None:
            return None
        return (time.time() - self.started) / done * max(self.max_steps - self.step, 0)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy (the API's `/train/status`, the UI's poll)."""
        with self._lock:
            losses = list(self.losses)
            samples = list(self.samples)
            saved = list(self.saved)
            warnings = list(self.warnings)
        return {
            "kind": self.kind,
            "name": self.name,
            "job_id": self.job_id,
            "state": self.state,
            "step": self.step,
            "max_steps": self.max_steps,
            "epoch": self.epoch,
            "learning_rate": self.learning_rate,
            "loss": self.mean_loss(),
            "losses": [[s, v] for s, v in losses],
            "samples": [[s, p] for s, p in samples],
            "saved": [[s, p] for s, p in saved],
            "warnings": warnings,
            "message": self.message,
            "filename": self.filename,
            "eta": self.eta(),
            "elapsed": (self.finished or time.time()) - self.started,
        }


Sampler = Callable[[Txt2ImgRequest, JobContext], Result]


class TrainingRun:
    """The trainer's handle on its job. See the module docstring."""

    def __init__(
        self,
        ctx: JobContext,
        progress: TrainingProgress,
        model: StableDiffusionModel,
        *,
        sampler: Sampler | None = None,
        embeddings: EmbeddingDatabase | None = None,
    ) -> None:
        self.ctx = ctx
        self.progress = progress
        self.model = model
        self.embeddings = embeddings
        self._sampler = sampler
        progress.job_id = ctx.id

    @classmethod
    def for_tests(
        cls,
        model: StableDiffusionModel,
        *,
        kind: str = "lora",
        name: str = "test",
        sampler: Sampler | None = None,
        embeddings: EmbeddingDatabase | None = None,
    ) -> TrainingRun:
        """A run outside the worker (trainer unit tests): a fresh context; `ctx.interrupted =
        True` asks it to stop as the Interrupt button would."""
        return cls(
            JobContext(id="task(test-training)"),
            TrainingProgress(kind, name),
            model,
            sampler=sampler,
            embeddings=embeddings,
        )

    # -- called by the trainer -----------------------------------------------------------------

    def begin(self, max_steps: int, start_step: int = 0) -> None:
        """The run will go from `start_step` (a resumed run's saved step) to `max_steps`."""
        p = self.progress
        p.max_steps, p.step, p.start_step = max_steps, start_step, start_step
        p.started = time.time()
        self.ctx.begin_image(0, 1)
        self.ctx.begin_pass(max_steps)
        self.ctx.sampling_step = start_step
        self.ctx.textinfo = f"Training {p.name}: step {start_step}/{max_steps}"

    def step_done(self, step: int, loss: float, *, lr: float, epoch: int = 0) -> None:
        """One optimizer step is done (`step` counts from 1 over the whole run, resumed or not)."""
        p = self.progress
        p.step, p.epoch, p.learning_rate = step, epoch, lr
        p.add_loss(step, float(loss))
        mean = p.mean_loss()
        self.ctx.sampling_step = min(step, self.ctx.sampling_steps or step)
        # A1111's training textinfo carries "loss: <value>" (clients parse it from /progress)
        self.ctx.textinfo = (
            f"[Epoch {epoch}: {step}/{p.max_steps}] loss: {mean if mean is not None else loss:.7f} lr: {lr:.3g}"
        )

    def should_stop(self) -> bool:
        return self.ctx.interrupted or self.ctx.stopping_generation

    def warn(self, message: str) -> None:
        if message not in self.progress.warnings:
            log.warning("training %s: %s", self.progress.name, message)
            self.progress.warnings.append(message)

    def note_saved(self, step: int, path: Path) -> None:
        self.progress.saved.append((step, str(path)))

    def note_sample(self, step: int, path: Path) -> None:
        self.progress.samples.append((step, str(path)))

    @property
    def can_sample(self) -> bool:
        return self._sampler is not None

    def sample(self, request: Txt2ImgRequest) -> Result:
        """One txt2img made now, inside this job, with the leased model as the trainer has it
        (its hooks and overrides in force). Runs under its own progress context, so the run's
        progress is untouched; an interrupt during the sample stops the sample too."""
        if self._sampler is None:
            raise RuntimeError("this training run has no sampler")
        sample_ctx = JobContext(id=f"{self.ctx.id}-sample", description="training sample")
        sample_ctx.interrupted = self.ctx.interrupted
        was_training = {m: m.training for m in self.model.modules()}
        try:
            with torch.no_grad():
                for module in was_training:
                    module.eval()
                return self._sampler(request, sample_ctx)
        finally:
            for module, training in was_training.items():
                module.train(training)


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write a resume state atomically (temp file + rename): a kill mid-write leaves the old one."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path) -> dict[str, Any] | None:
    """A saved resume state, or None when there is none. Only plain data is read (weights_only)."""
    if not path.is_file():
        return None
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a training state")
    return data


def rng_state() -> dict[str, Any]:
    """Torch's CPU (and CUDA) RNG states, for a resume state."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if "cpu" in state:
        torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
