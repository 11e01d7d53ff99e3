"""The adapters (API, UI) reach the engine only through its one job interface
(`services.engine`): no module under modules/api or modules/ui reads the worker or the model
manager's active model."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = ("modules/api", "modules/ui")
FORBIDDEN = re.compile(r"\bworker\.|\bmodels\.active\b|\bservices\.models\b|\bservices\.worker\b|engine\.worker\b")


def _sources() -> list[Path]:
    return sorted(p for folder in ADAPTERS for p in (ROOT / folder).rglob("*.py"))


def test_adapters_do_not_touch_the_worker_or_the_model_manager() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _sources()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert offenders == []


def test_the_check_sees_the_adapters() -> None:
    names = {p.name for p in _sources()}
    assert {"generation.py", "progress.py", "common.py", "merger.py"} <= names
    assert FORBIDDEN.search("data = services.worker.progress()")
    assert FORBIDDEN.search("active = services.models.active")
