"""Waiting for the server's answer to a UI event that changes nothing visible (a sub-tab whose
select event only sets a `gr.State`): under load a Generate click sent before that answer ran
with the previous state."""

from __future__ import annotations

from typing import Any


def click_and_wait_for_server(page: Any, locator: Any, timeout_ms: float = 60_000) -> None:
    """Click `locator` and wait until the server has answered the event it triggers (a
    `queue=False` event: a POST to Gradio's `run/predict`). Any such answer counts: the callers
    click where no other unqueued event is running."""

    def is_event_answer(response: Any) -> bool:
        return response.request.method == "POST" and "/run/predict" in response.url

    with page.expect_response(is_event_answer, timeout=timeout_ms):
        locator.click()
