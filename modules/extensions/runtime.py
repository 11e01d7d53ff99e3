"""What A1111-style script code reaches at run time: the app's parts (one `ScriptEnvironment`, set
by the composition root before extensions load) and the scripted job running on this thread.

A1111's modules are globals (`shared.opts`, `shared.state`, `processing.process_images`); our
facade modules (`modules.shared`, `modules.processing`, ...) are thin views over this module, so
the global state lives here alone and internal packages never read it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modules.core.options import Options
from modules.core.paths import Paths
from modules.core.requests import GenerationRequest
from modules.core.results import Result
from modules.core.settings import Settings
from modules.engine.hooks import Hooks
from modules.engine.worker import JobContext

if TYPE_CHECKING:
    from modules.core.styles import StyleDatabase
    from modules.engine.facade import Engine
    from modules.engine.outputs import ImageSaver
    from modules.extensions.callbacks import CallbackRegistry
    from modules.extensions.runner import ScriptRunner
    from modules.models.registry import ModelRegistry

Process = Callable[[GenerationRequest, Hooks | None], Result]


@dataclass
class ScriptEnvironment:
    """The app as script code sees it (read through the facades)."""

    settings: Settings
    paths: Paths
    options: Options
    engine: Engine | None = None
    styles: StyleDatabase | None = None
    registry: ModelRegistry | None = None
    upscalers: Any = None  # the app's UpscalerRegistry (models internals stay out of this package)
    face_restorers: Any = None  # the app's FaceRestorers
    saver: ImageSaver | None = None
    callbacks: CallbackRegistry | None = None
    runner: ScriptRunner | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_env: ScriptEnvironment | None = None
_local = threading.local()


def install(env: ScriptEnvironment | None) -> None:
    """Make `env` the one the facades read (None: none; tests)."""
    global _env
    _env = env


def environment() -> ScriptEnvironment:
    if _env is None:
        raise RuntimeError("the script API is not set up: no ScriptEnvironment installed (see modules.app)")
    return _env


def maybe_environment() -> ScriptEnvironment | None:
    return _env


@dataclass
class ScriptJob:
    """A generation job that runs scripts: its context and how to process one request in it."""

    ctx: JobContext
    process: Process
    request: GenerationRequest
    is_api: bool = False
    warnings: list[str] = field(default_factory=list)


@contextmanager
def running(job: ScriptJob) -> Iterator[ScriptJob]:
    """`job` is the current scripted job on this thread for the block."""
    stack: list[ScriptJob] = getattr(_local, "jobs", None) or []
    stack.append(job)
    _local.jobs = stack
    try:
        yield job
    finally:
        stack.pop()


def current_job() -> ScriptJob | None:
    stack: list[ScriptJob] | None = getattr(_local, "jobs", None)
    return stack[-1] if stack else None
