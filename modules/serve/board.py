"""JobBoard: where a task's state lives while it runs on some replica.

A plain class; `modules.serve.cluster` runs it as one named, detached Ray actor (0 CPUs). Replicas
publish each running task's A1111 `/progress` body (and, when the front has asked for one lately,
the live preview) and read back the flags the front set for it (interrupt, skip, stop after this
image). The front reads it to answer `/progress`, `/internal/progress` and the UI's poll for a job
wherever it runs. Calls to an actor run one at a time, so no locking is needed here.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

KEEP_TASKS = 512  # finished tasks remembered (their replica, their last state)
PREVIEW_WANTED_S = 3.0  # a replica decodes previews only while the front asked this recently


@dataclass
class TaskState:
    task_id: str
    replica: str = ""
    model_id: str = ""
    running: bool = False  # its job runs on the replica's worker now
    began: bool = False  # it ran at some point (a replica dying later means the job is lost)
    finished: bool = False
    progress: dict[str, Any] | None = None  # A1111's /progress body without the image
    preview: Any = None  # PIL image
    preview_version: int = 0
    interrupt: bool = False
    skip: bool = False
    stop: bool = False
    preview_wanted_at: float = 0.0
    updated: float = field(default_factory=time.time)


class JobBoard:
    def __init__(self, keep: int = KEEP_TASKS) -> None:
        self._tasks: OrderedDict[str, TaskState] = OrderedDict()
        self._keep = keep
        self._loads: list[tuple[str, str]] = []  # (replica, checkpoint title) per real load
        self._runs: dict[str, list[str]] = {}  # replica -> task ids it ran

    def _task(self, task_id: str) -> TaskState:
        state = self._tasks.get(task_id)
        if state is None:
            state = self._tasks[task_id] = TaskState(task_id)
            while len(self._tasks) > self._keep:
                self._tasks.popitem(last=False)
        return state

    # -- replicas ------------------------------------------------------------------------------

    def accepted(self, task_id: str, replica: str, model_id: str) -> dict[str, bool]:
        """A replica took the task (it is queued on its worker); returns the flags set so far."""
        state = self._task(task_id)
        state.replica, state.model_id, state.updated = replica, model_id, time.time()
        self._runs.setdefault(replica, []).append(task_id)
        return self._flags(state)

    def report(
        self, task_id: str, running: bool, progress: dict[str, Any] | None, preview: Any = None, version: int = 0
    ) -> dict[str, bool]:
        """A replica's periodic report for a task; returns its flags (skip is delivered once)."""
        state = self._task(task_id)
        state.running = running
        state.began = state.began or running
        if progress is not None:
            state.progress = progress
        if preview is not None:
            state.preview, state.preview_version = preview, version
        state.updated = time.time()
        return self._flags(state)

    def finished(self, task_id: str) -> None:
        state = self._task(task_id)
        state.running, state.finished, state.preview = False, True, None
        state.updated = time.time()

    def loaded(self, replica: str, checkpoint: str) -> None:
        """A replica loaded a checkpoint from disk (not from its RAM cache)."""
        self._loads.append((replica, checkpoint))

    def _flags(self, state: TaskState) -> dict[str, bool]:
        flags = {
            "interrupt": state.interrupt,
            "skip": state.skip,
            "stop": state.stop,
            "preview": time.time() - state.preview_wanted_at < PREVIEW_WANTED_S,
        }
        state.skip = False
        return flags

    # -- the front -----------------------------------------------------------------------------

    def get(self, task_id: str, want_preview: bool = False) -> TaskState | None:
        state = self._tasks.get(task_id)
        if state is not None and want_preview:
            state.preview_wanted_at = time.time()
        return state

    def running(self) -> list[str]:
        """Task ids running now, the longest running first."""
        return [s.task_id for s in self._tasks.values() if s.running]

    def interrupt(self, task_id: str) -> None:
        self._task(task_id).interrupt = True

    def skip(self, task_id: str) -> None:
        self._task(task_id).skip = True

    def stop_generating(self, task_id: str) -> None:
        self._task(task_id).stop = True

    # -- what ran where (tests, bench, operators) ----------------------------------------------

    def loads(self) -> list[tuple[str, str]]:
        return list(self._loads)

    def runs(self) -> dict[str, list[str]]:
        return {replica: list(ids) for replica, ids in self._runs.items()}

    def replica_of(self, task_id: str) -> str:
        state = self._tasks.get(task_id)
        return state.replica if state is not None else ""
