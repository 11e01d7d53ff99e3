"""Every event of the whole page shows its progress on a few components.

Gradio's front end keeps a loading status for each progress target of every event that has run in
the page (an event's `show_progress_on`, else all of its outputs), and on each status change of
any event re-applies all of them, walking its whole component tree (~1500 components) for each.
The Settings tab's page-load event alone had ~160 outputs: a page load took 10-12 s in Chromium on
this CPU instead of ~5 s, and every later click paid for them again; the send-to and paste
buttons (80-90 outputs each) did the same once used. Events with many outputs name one component
as their progress target."""

from __future__ import annotations

from pathlib import Path

from modules.app import build_services
from modules.core.settings import parse_settings
from modules.ui.blocks import build_blocks
from tests.ui.gradio_loop import in_a_loop

MOST_TARGETS = 16


def test_no_event_tracks_the_progress_of_many_components(tmp_path: Path) -> None:
    data = tmp_path / "data"
    services = build_services(parse_settings(["--data-dir", str(data)], {}), data, {})
    try:
        blocks = in_a_loop(lambda: build_blocks(services))
        crowded = {}
        many_outputs = 0
        for fn in blocks.fns.values():
            targets = fn.show_progress_on or fn.outputs
            many_outputs += len(fn.outputs) > MOST_TARGETS
            if fn.fn is not None and len(targets) > MOST_TARGETS:
                crowded[fn.api_name or str(fn.targets)] = len(targets)
        assert crowded == {}
        assert many_outputs >= 10  # the events this is about are there (settings load, send-to, paste)
    finally:
        services.worker.shutdown()
