"""GracefulServer in-process (no model, no torch): READY=1 over $NOTIFY_SOCKET once listening;
SIGTERM and SIGINT stop the same way (queued jobs answered 503 at once, the running job
interrupted, the worker joined before the server returns). The real process under a supervisor:
tests/app/test_service_lifecycle.py."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from modules.api.errors import install_error_handlers
from modules.api.lifecycle import GracefulServer, sd_notify
from modules.engine.worker import JobContext, JobInterrupted, Worker


@pytest.fixture()
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    folder = tempfile.mkdtemp(prefix="sdw-notify-")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(folder)


def test_sd_notify_sends_a_datagram_and_is_a_no_op_outside_systemd(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": path})
    assert sock.recv(100) == b"READY=1"
    assert not sd_notify("READY=1", {})
    assert not sd_notify("READY=1", {"NOTIFY_SOCKET": path + "-missing"})  # logged, not raised


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_fails_the_queue_at_once_and_interrupts_the_running_job(
    sig: signal.Signals, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    worker = Worker(max_queue=8)
    step_gate = threading.Event()
    steps_done: list[int] = []

    def slow(ctx: JobContext) -> str:
        for step in range(1, 10_000):
            step_gate.wait(0.05)
            try:
                ctx.step(step)
            except JobInterrupted:
                return f"partial@{step}"
            steps_done.append(step)
        return "finished"

    app = FastAPI()
    install_error_handlers(app)

    @app.post("/job")
    async def job() -> dict[str, Any]:
        return {"result": await asyncio.wrap_future(worker.submit(slow).future)}

    server = GracefulServer(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"),
        lambda: worker,
        environ={"NOTIFY_SOCKET": path},
    )
    thread = threading.Thread(target=server.run, daemon=True)  # not the main thread: no handlers
    thread.start()
    assert sock.recv(200).split(b"\n")[0] == b"READY=1"
    assert server.started
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    answers: list[httpx.Response] = []

    def call() -> None:
        answers.append(httpx.post(url + "/job", timeout=60))

    callers = [threading.Thread(target=call) for _ in range(4)]
    callers[0].start()
    _wait_for(lambda: bool(steps_done), "the first job to run")
    for caller in callers[1:]:
        caller.start()
    _wait_for(lambda: worker.pending_count() == 3, "three queued jobs")
    server.handle_exit(sig, None)  # what uvicorn's signal handler calls
    thread.join(30)
    assert not thread.is_alive()
    for caller in callers:
        caller.join(30)
    assert sock.recv(200).split(b"\n")[0] == b"STOPPING=1"
    by_code = sorted(a.status_code for a in answers)
    assert by_code == [200, 503, 503, 503]
    failed = [a.json() for a in answers if a.status_code == 503]
    assert all(f["error"] == "ServerShuttingDown" and "shutting down" in f["detail"] for f in failed)
    assert next(a for a in answers if a.status_code == 200).json()["result"].startswith("partial@")
    assert worker.join(0)  # the worker thread ended before the server returned
    assert worker.failed_at_shutdown == 3
