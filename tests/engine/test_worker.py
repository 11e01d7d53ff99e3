"""The single generation worker: FIFO, bounded queue, progress, interrupt, skip, survival."""

from __future__ import annotations

import threading
import time

import pytest

from modules.engine.worker import IDLE_STATE, ImageSkipped, JobContext, JobInterrupted, QueueFullError, Worker


def stepping_job(images: int, steps: int, gate: threading.Event | None = None, delay: float = 0.0):  # type: ignore[no-untyped-def]
    """A fake generation: `images` images of `steps` steps; returns the images it finished."""

    def run(ctx: JobContext) -> list[str]:
        done: list[str] = []
        ctx.job_count = images
        for i in range(images):
            ctx.begin_image(i)
            ctx.begin_pass(steps)
            try:
                for s in range(1, steps + 1):
                    if gate is not None:
                        gate.wait(10)
                    time.sleep(delay)
                    ctx.step(s)
            except ImageSkipped:
                continue
            except JobInterrupted:
                done.append(f"partial{i}@{ctx.sampling_step}")
                break
            done.append(f"image{i}")
            if ctx.stopping_generation:
                break
        return done

    return run


@pytest.fixture()
def worker():  # type: ignore[no-untyped-def]
    w = Worker(max_queue=3)
    yield w
    w.shutdown()


def test_idle_progress_is_a1111s_idle_shape(worker: Worker) -> None:
    p = worker.progress()
    assert p["progress"] == 0.0 and p["state"] == IDLE_STATE and p["state"]["job_count"] == 0
    worker.interrupt()  # harmless while idle
    worker.skip()
    assert worker.submit(stepping_job(1, 2)).future.result(5) == ["image0"]


def test_jobs_run_in_order_one_at_a_time(worker: Worker) -> None:
    order: list[int] = []
    running = threading.Semaphore(1)

    def make(i: int):  # type: ignore[no-untyped-def]
        def fn(ctx: JobContext) -> int:
            assert running.acquire(blocking=False), "two jobs ran at once"
            time.sleep(0.02)
            order.append(i)
            running.release()
            return i

        return fn

    jobs = [worker.submit(make(i)) for i in range(3)]
    assert [j.future.result(5) for j in jobs] == [0, 1, 2]
    assert order == [0, 1, 2]


def test_full_queue_is_429(worker: Worker) -> None:
    gate = threading.Event()
    first = worker.submit(stepping_job(1, 1, gate))
    while worker.current is None:
        time.sleep(0.01)
    queued = [worker.submit(stepping_job(1, 1)) for _ in range(3)]
    with pytest.raises(QueueFullError) as err:
        worker.submit(stepping_job(1, 1))
    assert err.value.status_code == 429
    gate.set()
    assert first.future.result(5) == ["image0"]
    assert all(j.future.result(5) == ["image0"] for j in queued)


def test_progress_is_monotonic_and_reports_steps(worker: Worker) -> None:
    gate = threading.Event()
    job = worker.submit(stepping_job(2, 5, delay=0.01), task_id="task(mine)")
    seen: list[float] = []
    while not job.future.done():
        p = worker.progress()
        if p["state"]["job_count"] > 0:
            assert 0.0 <= p["progress"] <= 1.0
            assert p["state"]["sampling_steps"] == 5
            assert p["state"]["job"] == "task(mine)"
            seen.append(p["progress"])
        time.sleep(0.003)
    gate.set()
    assert seen == sorted(seen) and len(seen) > 3


def test_interrupt_returns_the_partial_image_and_cancels_the_rest(worker: Worker) -> None:
    gate = threading.Event()
    job = worker.submit(stepping_job(3, 10, gate))
    while worker.current is None or worker.current.sampling_steps == 0:
        time.sleep(0.005)
    for _ in range(3):  # let it reach step 3
        gate.set()
        gate.clear()
        time.sleep(0.02)
    worker.interrupt()
    gate.set()
    result = job.future.result(5)
    assert len(result) == 1 and result[0].startswith("partial0@")
    assert worker.submit(stepping_job(1, 2)).future.result(5) == ["image0"]  # flags do not leak


def test_skip_drops_the_current_image_and_goes_on(worker: Worker) -> None:
    gate = threading.Event()
    job = worker.submit(stepping_job(3, 5, gate))
    while worker.current is None or worker.current.sampling_steps == 0:
        time.sleep(0.005)
    worker.skip()
    gate.set()
    assert job.future.result(5) == ["image1", "image2"]


def test_stop_after_this_image(worker: Worker) -> None:
    gate = threading.Event()
    job = worker.submit(stepping_job(3, 5, gate))
    while worker.current is None:
        time.sleep(0.005)
    worker.stop_generating()
    gate.set()
    assert job.future.result(5) == ["image0"]


def test_interrupt_by_task_id_only_hits_that_task(worker: Worker) -> None:
    gate = threading.Event()
    running = worker.submit(stepping_job(1, 3, gate), task_id="a")
    queued = worker.submit(stepping_job(1, 1), task_id="b")
    while worker.current is None:
        time.sleep(0.005)
    worker.interrupt("b")  # queued job b is cancelled; a keeps going
    assert queued.future.cancelled()
    gate.set()
    assert running.future.result(5) == ["image0"]
    assert worker.queue_status("a")[2]  # completed


def test_worker_survives_a_failing_job(worker: Worker) -> None:
    def boom(ctx: JobContext) -> None:
        raise RuntimeError("something broke")  # out of memory: tests/engine/test_faults.py

    with pytest.raises(RuntimeError):
        worker.submit(boom).future.result(5)
    assert worker.progress()["state"]["job_count"] == 0
    assert worker.submit(stepping_job(1, 1)).future.result(5) == ["image0"]


def test_preview_is_decoded_lazily_and_cached(worker: Worker) -> None:
    decoded: list[int] = []
    gate = threading.Event()

    def fn(ctx: JobContext) -> None:
        ctx.preview_every = 1
        ctx.preview_decoder = lambda src: decoded.append(src) or f"img{src}"
        ctx.job_count = 1
        ctx.begin_pass(2)
        ctx.step(1, preview_source=1)
        gate.wait(5)

    job = worker.submit(fn)
    while worker.current is None or worker.current.sampling_step < 1:
        time.sleep(0.005)
    assert worker.progress()["current_image"] == "img1"
    assert worker.progress()["current_image"] == "img1"
    assert decoded == [1]  # decoded once, only because progress asked
    gate.set()
    job.future.result(5)


@pytest.mark.parametrize("fails", [False, True])
def test_a_job_is_over_before_its_caller_hears_of_it(worker: Worker, fails: bool) -> None:
    """A client reading /progress right after its answer must see the worker idle: the future
    is settled only after the job left the worker (its callbacks run on the worker thread at
    set_result, so they see exactly what a waiting caller could see first)."""

    gate = threading.Event()

    def job(ctx: JobContext) -> str:
        gate.wait(10)  # until the callback is on the future
        if fails:
            raise RuntimeError("boom")
        return "done"

    seen: list[tuple[object, bool, bool]] = []
    submitted = worker.submit(job)
    task_id = submitted.context.id
    submitted.future.add_done_callback(
        lambda _f: seen.append((worker.current, worker.is_completed(task_id), worker.queue_status(task_id)[0]))
    )
    gate.set()
    if fails:
        with pytest.raises(RuntimeError):
            submitted.future.result(timeout=10)
    else:
        assert submitted.future.result(timeout=10) == "done"
    assert seen == [(None, True, False)]


def test_begin_shutdown_interrupts_the_running_job_and_fails_the_queued_ones_at_once() -> None:
    from modules.engine.worker import ServerShuttingDown

    worker = Worker(max_queue=8)
    gate = threading.Event()
    running = worker.submit(stepping_job(1, 1000, gate))
    while worker.current is None:
        time.sleep(0.01)
    queued = [worker.submit(stepping_job(1, 2)) for _ in range(3)]
    assert worker.begin_shutdown() == 3
    for job in queued:  # failed before the running job has even reached its next step
        exc = job.future.exception(0)
        assert isinstance(exc, ServerShuttingDown) and exc.status_code == 503
        assert "shutting down" in str(exc)
    with pytest.raises(ServerShuttingDown):
        worker.submit(stepping_job(1, 1))
    gate.set()
    assert running.future.result(5) == ["partial0@1"]  # stopped at its next step check
    assert worker.join(5)
    assert worker.failed_at_shutdown == 3 and worker.is_completed(running.context.id)
    assert not any(worker.is_completed(j.context.id) for j in queued)
    assert worker.begin_shutdown() == 0  # idempotent


def test_cancel_drops_a_queued_job_and_interrupts_a_running_one(worker: Worker) -> None:
    from modules.engine.worker import JobCancelled

    gate = threading.Event()
    ran: list[str] = []
    first = worker.submit(stepping_job(1, 1000, gate))
    while worker.current is None:
        time.sleep(0.01)
    second = worker.submit(lambda ctx: ran.append("second"))
    third = worker.submit(lambda ctx: ran.append("third"))
    assert worker.cancel(second) is True
    assert isinstance(second.future.exception(0), JobCancelled)
    assert worker.pending_count() == 1 and worker.cancelled_count == 1
    assert worker.cancel(first) is False  # running: interrupted instead
    gate.set()
    assert first.future.result(5) == ["partial0@1"]
    third.future.result(5)
    assert ran == ["third"]  # the cancelled job never ran
    assert not worker.is_completed(second.context.id)
    assert worker.cancel(third) is False and worker.cancelled_count == 1  # over already: nothing to do
