"""An Interrupt that lands between two jobs of an img2img batch (when no job is there to receive
it) still stops the batch: `run_batch` checks the prompt row's stop flag after each image."""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image

from modules.services import Services
from modules.ui.img2img_batch import BatchItem, BatchPlan, run_batch
from tests.ui.test_img2img_modes_unit import DEFAULTS


def _plan(tmp_path: Path, count: int) -> BatchPlan:
    items = []
    for i in range(count):
        path = tmp_path / f"in{i}.png"
        Image.new("RGB", (64, 64), (40 * i, 80, 120)).save(path)
        items.append(BatchItem(path))
    return BatchPlan(tuple(items), output_dir=tmp_path / "out")


def _values() -> dict[str, object]:
    return {**DEFAULTS, "prompt": "batch stop", "steps": 2, "width": 64, "height": 64}


def _processed(outputs: list[tuple[object, ...]]) -> str:
    return str(outputs[-1][2])


def test_batch_runs_every_image_without_a_stop(ui_services: Services, tmp_path: Path) -> None:
    outputs = list(run_batch(ui_services, _values(), _plan(tmp_path, 2), threading.Event()))
    assert "Processed 2/2 images" in _processed(outputs)


def test_a_stop_between_jobs_ends_the_batch_after_the_current_image(ui_services: Services, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()  # Interrupt came while no job was running
    outputs = list(run_batch(ui_services, _values(), _plan(tmp_path, 3), stop))
    assert "Processed 1/3 images" in _processed(outputs)
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
