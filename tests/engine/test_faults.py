"""Faults inside jobs (issue 19, item 3): out of memory leaves the worker serving."""

from __future__ import annotations

import pytest
import torch

from modules.core.errors import OutOfMemoryError
from modules.engine.worker import JobContext, Worker


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"),
        MemoryError(),
    ],
)
def test_out_of_memory_fails_the_job_clearly_and_the_worker_goes_on(
    error: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modules.engine.worker as worker_module

    freed: list[bool] = []
    real_free = worker_module._free_memory
    monkeypatch.setattr(worker_module, "_free_memory", lambda: (freed.append(True), real_free())[1])
    worker = Worker()
    try:

        def explode(ctx: JobContext) -> None:
            raise error

        failed = worker.submit(explode, description="txt2img")
        with pytest.raises(OutOfMemoryError) as caught:
            failed.future.result(30)
        assert caught.value.status_code == 507
        assert "Out of memory while running txt2img" in caught.value.message
        assert freed == [True]
        assert worker.submit(lambda ctx: 42).future.result(30) == 42
    finally:
        worker.shutdown()


def test_other_errors_are_not_called_out_of_memory() -> None:
    worker = Worker()
    try:

        def explode(ctx: JobContext) -> None:
            raise RuntimeError("shapes do not match")

        with pytest.raises(RuntimeError, match="shapes"):
            worker.submit(explode).future.result(30)
    finally:
        worker.shutdown()
