"""EngineReplica: one worker replica of the Serve deployment.

Each replica builds an unchanged engine with the composition root (`build`, i.e.
`modules.app.build_services`, handed over by the front) and runs jobs through its `Engine`.
Serve's model multiplexing routes a request to a replica that already holds its checkpoint (the
multiplexed model id is the checkpoint's title); `checkpoint()` is the multiplexed loader, and
every job names its checkpoint in `override_settings`, so a job runs on the checkpoint it was
routed for whatever the replica loaded last (the manager's RAM cache keeps the others, as in the
single process). While a job runs, its progress goes to the JobBoard and its interrupt / skip /
stop flags come back from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
from ray import serve

from modules.core.errors import SdWebuiError
from modules.core.requests import GenerationRequest
from modules.core.settings import Settings
from modules.engine.facade import JobHandle, JobInterrupted
from modules.serve.messages import BOARD_NAME, NAMESPACE, ForwardedJob, Outcome
from modules.services import Services

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.25  # progress published to the board / flags read back, per running job
MODELS_PER_REPLICA = 3  # checkpoints Serve counts as held by one replica (its routing memory)
# options the front's snapshot never overwrites on a replica: the checkpoint comes with the routing,
# the hash is the replica's own report
_NOT_FORWARDED = frozenset({"sd_model_checkpoint", "sd_checkpoint_hash"})


_UNSEEN = object()


class _Held:
    """What the multiplexed loader returns: the checkpoint stays in the engine's own caches."""

    def __init__(self, title: str) -> None:
        self.title = title


class EngineReplica:
    def __init__(
        self,
        settings: Settings,
        build: Callable[[Settings, Path, Mapping[str, str] | None], Services],
        repo_root: str,
        environ: dict[str, str] | None,
        threads: int,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        services = build(settings, Path(repo_root), environ)
        services.registry.refresh()
        services.options.path = None  # the front owns config.json; replicas only follow it
        self._services = services
        self._engine = services.engine
        self._options_seen: dict[str, Any] = {}
        self.name = ray.get_runtime_context().get_actor_name() or "replica"
        self._board_handle: Any = None
        services.models.on_loaded.append(lambda info: self._board().loaded.remote(self.name, info.title))
        log.info("replica %s ready (%d torch threads)", self.name, threads)

    def _board(self) -> Any:
        if self._board_handle is None:
            self._board_handle = ray.get_actor(BOARD_NAME, namespace=NAMESPACE)
        return self._board_handle

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def checkpoint(self, title: str) -> _Held:
        """Load `title` (Serve calls this once per checkpoint it routes here, until it drops it)."""
        await asyncio.to_thread(self._engine.switch_model, title)
        return _Held(title)

    def _follow_options(self, stored: dict[str, Any]) -> None:
        changed = {
            k: v for k, v in stored.items() if k not in _NOT_FORWARDED and self._options_seen.get(k, object()) != v
        }
        if changed:
            self._services.options.update(changed, allow_restricted=True)
            self._options_seen.update(changed)

    def _prepared(self, job: ForwardedJob, title: str) -> Any:
        request = job.request
        if isinstance(request, GenerationRequest):
            overrides = dict(request.override_settings)
            if title:
                overrides.setdefault("sd_model_checkpoint", title)
            changes: dict[str, Any] = {"override_settings": overrides, "force_task_id": job.task_id}
            if not job.save_on_replica:
                changes.update(do_not_save_samples=True, do_not_save_grid=True)
            request = dataclasses.replace(request, **changes)
        return request

    async def run(self, job: ForwardedJob) -> Outcome:
        title = serve.get_multiplexed_model_id()
        try:
            if title:
                await self.checkpoint(title)
            if any(self._options_seen.get(k, _UNSEEN) != v for k, v in job.options.items() if k not in _NOT_FORWARDED):
                await asyncio.to_thread(self._follow_options, job.options)
            handle: JobHandle[Any] = await asyncio.to_thread(self._engine.submit, self._prepared(job, title))
        except SdWebuiError as exc:
            return Outcome(self.name, error=exc)
        task_id = handle.id
        board = self._board()
        # sent now, awaited by the reporter: where the task is, and any flag set before it got here
        accepted = board.accepted.remote(task_id, self.name, title)
        reporter = asyncio.create_task(self._report(task_id, handle, accepted))
        try:
            result = await asyncio.wrap_future(handle.future)
        except asyncio.CancelledError:
            if not handle.future.cancelled():  # the front cancelled the request: stop the job
                self._engine.interrupt(task_id)
                raise
            return Outcome(self.name, interrupted=True, error=JobInterrupted())
        except (SdWebuiError, JobInterrupted) as exc:
            return Outcome(self.name, error=exc, interrupted=handle.interrupted)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            await board.finished.remote(task_id)  # its last report stays (where it stopped)
        return Outcome(self.name, result=result, interrupted=handle.interrupted)

    def _obey(self, task_id: str, flags: dict[str, bool]) -> None:
        if flags.get("interrupt"):
            self._engine.interrupt(task_id)
        if flags.get("skip"):
            self._engine.skip(task_id)
        if flags.get("stop"):
            self._engine.stop_generating(task_id)

    async def _report(self, task_id: str, handle: JobHandle[Any], accepted: Any) -> None:
        board = self._board()
        self._obey(task_id, await accepted)
        want_preview = False
        sent_version = -1
        while not handle.done():
            running = handle.is_running()
            body = handle.progress(with_preview=False) if running else None
            preview, version = None, handle.preview_version()
            if running and want_preview and version != sent_version:
                preview = await asyncio.to_thread(handle.preview)
                sent_version = version
            flags = await board.report.remote(task_id, running, body, preview, version)
            want_preview = flags.get("preview", False)
            self._obey(task_id, flags)
            await asyncio.sleep(REPORT_EVERY_S)

    async def describe(self) -> dict[str, Any]:
        """The replica's name and model state (tests, operators)."""
        status = self._engine.model_status()
        return {"replica": self.name, "checkpoint": status.checkpoint, "cached": list(status.cached)}
