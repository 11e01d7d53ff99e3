"""Holding the server's answers to a page's unqueued UI events (Gradio's `run/predict`): a test
that a click reads what the page shows, not what a server round trip has yet to set."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

EVENT_ROUTE = "**/run/predict"


@contextmanager
def server_events_held(page: Any) -> Iterator[None]:
    """Inside the block, every unqueued event the page sends (a POST to `run/predict`) waits
    unanswered; queued events (Generate: the queue's `join`) go through. On exit the held requests
    go on to the server, in order (those the page has dropped meanwhile are skipped)."""
    held: list[Any] = []

    def hold(route: Any) -> None:
        if route.request.method == "POST":
            held.append(route)
        else:
            route.continue_()

    page.route(EVENT_ROUTE, hold)
    try:
        yield
    finally:
        page.unroute(EVENT_ROUTE, hold)
        for route in held:
            try:
                route.continue_()
            except Exception as error:  # the page dropped the request meanwhile: nothing to send
                if "already handled" not in str(error):
                    raise
