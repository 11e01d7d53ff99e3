"""A generation request whose client disconnects: a queued job is dropped (it never runs), a
running one is interrupted (issue 19, item 4). A real uvicorn server: only it sends the ASGI
`http.disconnect` a closed socket causes."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from modules.engine.sampling import StepInfo
from modules.services import Services

API_CHECKPOINTS = {"sd1": "sd1.safetensors"}


def _post_then_hang_up(url: str, path: str, payload: dict[str, object]) -> socket.socket:
    """Send a whole POST and keep the socket open without reading (the caller closes it)."""
    parts = urlsplit(url)
    body = json.dumps(payload).encode()
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_queued_job_whose_client_disconnects_never_runs(live_server: str, api_services: Services) -> None:
    worker = api_services.worker
    gate = threading.Event()
    blocker = worker.submit(lambda ctx: gate.wait(30))  # keeps the worker busy
    task_id = "task(disconnected-while-queued)"
    before = worker.cancelled_count
    payload = {"prompt": "a", "steps": 2, "width": 64, "height": 64, "force_task_id": task_id}
    sock = _post_then_hang_up(live_server, "/sdapi/v1/txt2img", payload)
    try:
        _wait_for(lambda: worker.queue_status(task_id)[1], "the job to be queued")
    finally:
        sock.close()
    _wait_for(lambda: worker.cancelled_count > before, "the queued job to be dropped")
    assert worker.queue_status(task_id) == (False, False, False, 0)
    gate.set()
    blocker.future.result(30)
    _wait_for(lambda: worker.current is None and worker.pending_count() == 0, "the worker to be idle")
    assert not worker.is_completed(task_id)  # it never ran
    progress = httpx.post(live_server + "/internal/progress", json={"id_task": task_id}, timeout=10).json()
    assert progress["completed"] is False and progress["queued"] is False and progress["active"] is False


def test_a_running_job_whose_client_disconnects_is_interrupted(live_server: str, api_services: Services) -> None:
    stepped, gate = threading.Event(), threading.Event()

    def hold(info: StepInfo) -> None:
        stepped.set()
        gate.wait(30)

    remove = api_services.engine.hooks.on_step.add(hold)
    task_id = "task(disconnected-while-running)"
    try:
        payload = {"prompt": "a", "steps": 6, "width": 64, "height": 64, "force_task_id": task_id}
        sock = _post_then_hang_up(live_server, "/sdapi/v1/txt2img", payload)
        try:
            assert stepped.wait(60), "the job did not start"
        finally:
            sock.close()
        current = api_services.worker.current
        assert current is not None and current.id == task_id
        _wait_for(lambda: current.interrupted, "the running job to be interrupted")
    finally:
        gate.set()
        remove()
    result = api_services.engine.handle(task_id).result(60)
    assert result.interrupted
