"""`follow` shows a job's own progress and live preview, read from its `JobHandle` (not whatever
job the worker runs), and returns when the job is done."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import gradio as gr
import pytest

from modules.core.errors import UserError
from modules.core.results import Result
from modules.ui.common import follow, progress_html, result_of


class ScriptedHandle:
    """A handle that is queued, then runs two steps with a preview, then finishes."""

    def __init__(self, outcome: Result | Exception) -> None:
        self.future: Future[Result] = Future()
        self.polls = 0
        self.outcome = outcome
        self.preview_image = object()

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> Result:
        self.polls += 1
        if self.polls >= 3 and not self.future.done():
            if isinstance(self.outcome, Exception):
                self.future.set_exception(self.outcome)
            else:
                self.future.set_result(self.outcome)
        return self.future.result(timeout=0)

    def progress(self, *, with_preview: bool = False) -> dict[str, Any]:
        if self.polls == 0:  # queued: the idle shape
            return {"progress": 0.0, "eta_relative": 0.0, "state": {"sampling_step": 0, "sampling_steps": 0}}
        return {
            "progress": self.polls / 2,
            "eta_relative": 1.0,
            "state": {"sampling_step": self.polls, "sampling_steps": 2},
        }

    def preview(self) -> Any:
        return self.preview_image if self.polls else None


def test_follow_renders_the_jobs_own_progress_and_each_new_preview_once() -> None:
    job = ScriptedHandle(Result(seeds=[7]))
    shown = list(follow(job, progress_html))  # type: ignore[arg-type]
    texts = [text for text, _ in shown]
    assert "waiting…" in texts[0] and "step 1/2" in texts[1] and "step 2/2" in texts[2]
    previews = [p for _, p in shown if isinstance(p, list)]
    assert previews == [[job.preview_image]]  # sent once, then skipped while unchanged
    assert result_of(job).seeds == [7]  # type: ignore[arg-type]


def test_result_of_turns_a_user_error_into_gr_error() -> None:
    job = ScriptedHandle(UserError("no such sampler"))
    list(follow(job, progress_html))  # type: ignore[arg-type]
    with pytest.raises(gr.Error, match="no such sampler"):
        result_of(job)  # type: ignore[arg-type]


def test_updates_come_every_live_preview_refresh_period(tmp_path: Any) -> None:
    from types import SimpleNamespace

    from modules.core.option_defaults import default_option_infos
    from modules.core.options import Options
    from modules.ui.common import refresh_period

    options = Options(default_option_infos(), tmp_path / "config.json")
    services: Any = SimpleNamespace(options=options)
    assert refresh_period(services) == 1.0  # A1111's default: 1000 ms
    options.set("live_preview_refresh_period", 250.0)
    assert refresh_period(services) == 0.25
    options.set("live_preview_refresh_period", 0.0)
    assert refresh_period(services) == 0.1  # a floor: the page must keep answering

    job = ScriptedHandle(Result(seeds=[1]))
    waits: list[float | None] = []
    original = job.result

    def result(timeout: float | None = None) -> Result:
        waits.append(timeout)
        return original(timeout)

    job.result = result  # type: ignore[method-assign]
    list(follow(job, progress_html, 0.75))  # type: ignore[arg-type]
    assert waits and set(waits) == {0.75}
