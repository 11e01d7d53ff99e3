"""What the front and a replica pass each other: plain, picklable data (no Ray types)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modules.core.errors import UserError

BOARD_NAME = "sdw-job-board"
NAMESPACE = "sd-webui"
APP_NAME = "sd-webui"
DEPLOYMENT_NAME = "sdw-engine"


@dataclass(frozen=True)
class ForwardedJob:
    """One job for a replica: the request as the front received it (its task id set), the front's
    stored options (so /options changes reach every replica) and where outputs are saved."""

    task_id: str
    request: Any  # a GenerationRequest or ExtrasRequest (modules.core)
    options: dict[str, Any] = field(default_factory=dict)
    save_on_replica: bool = True


@dataclass
class Outcome:
    """A replica's answer: the job's result, or the user error it raised (4xx on the front), and
    where it ran."""

    replica: str
    result: Any = None
    error: BaseException | None = None
    interrupted: bool = False


class WorkerDiedError(UserError):
    """The replica running a job died (its process or node went away). Serve starts another; the
    job's work is lost. A 5xx in A1111's error shape."""

    status_code = 503
