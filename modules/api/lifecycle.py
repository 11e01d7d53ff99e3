"""The server's lifecycle around uvicorn: readiness for systemd and a graceful, bounded stop.

`GracefulServer` is the `uvicorn.Server` the composition root runs. It adds two things:

* readiness: once uvicorn listens it tells systemd `READY=1` over `$NOTIFY_SOCKET` (the unit is
  `Type=notify`), with a plain datagram socket: no dependency; a no-op outside systemd;
* a stop that fits the unit's `TimeoutStopSec`: when uvicorn begins its exit (SIGTERM, SIGINT,
  `/server-stop`, `/server-restart`) the worker stops taking jobs, every queued job fails at once
  with `ServerShuttingDown` (503, A1111's error shape, to the API clients still waiting), and the
  running job is interrupted at its next step check (it keeps and saves its partial images, as on
  any interrupt; every save is atomic, so nothing is half-written). uvicorn then waits for the
  open requests (at most `graceful_timeout` s: a Gradio event stream does not end by itself), and
  the server waits for the worker thread (at most `worker_timeout` s) before it returns; after it
  uvicorn re-raises the signal it caught, so a SIGTERM still ends the process by that signal.

Without it, uvicorn waits for every open request, so a queue of jobs ran to its end before the
process exited, past the unit's stop timeout (issue 19).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Protocol

import uvicorn

log = logging.getLogger(__name__)


class Drainable(Protocol):
    """What the stop needs of the engine (`modules.engine.facade.Engine`)."""

    def begin_shutdown(self) -> None: ...

    def join(self, timeout: float | None = None) -> bool: ...


GRACEFUL_TIMEOUT_S = 15.0
"""How long uvicorn waits for open requests once the queue has been failed (the running job's
request waits for its partial result); then it cancels them."""

WORKER_TIMEOUT_S = 20.0
"""How long the server waits for the worker thread to end (a job that checks for interrupts ends
within one step; a model load or a merge does not check)."""


def sd_notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` (e.g. "READY=1") to systemd's notify socket; False when not under a
    `Type=notify` unit (`$NOTIFY_SOCKET` unset) or when the send fails (logged, never raised)."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", message.split("=", 1)[0], exc)
        return False
    return True


class GracefulServer(uvicorn.Server):
    """`uvicorn.Server` with systemd readiness and a stop that fails the queue at once.

    `engine` returns the engine (whose worker runs the jobs), or None while the services are still
    being built (the fast start serves before they exist; `main` shuts a late worker down itself)."""

    def __init__(
        self,
        config: uvicorn.Config,
        engine: Callable[[], Drainable | None],
        *,
        graceful_timeout: float = GRACEFUL_TIMEOUT_S,
        worker_timeout: float = WORKER_TIMEOUT_S,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if config.timeout_graceful_shutdown is None:
            config.timeout_graceful_shutdown = int(graceful_timeout) if graceful_timeout >= 1 else 1
        super().__init__(config)
        self._engine = engine
        self._worker_timeout = worker_timeout
        self._environ = os.environ if environ is None else environ
        self._signals: list[int] = []
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)  # only this here: a signal handler must not take locks
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            sd_notify("READY=1\nSTATUS=serving", self._environ)

    def begin_shutdown(self) -> None:
        """Fail the queue and interrupt the running job (once); called as uvicorn begins its exit."""
        if self._draining:
            return
        self._draining = True
        why = f"signal {signal.Signals(self._signals[0]).name}" if self._signals else "stop requested"
        log.info("shutting down (%s): no new jobs; queued jobs fail with 503; the running job is interrupted", why)
        sd_notify("STOPPING=1\nSTATUS=stopping", self._environ)
        engine = self._engine()
        if engine is not None:
            engine.begin_shutdown()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.begin_shutdown()
        await super().shutdown(sockets=sockets)
        engine = self._engine()
        if engine is not None:
            engine.begin_shutdown()  # built meanwhile: it gets no job either
            if not await asyncio.to_thread(engine.join, self._worker_timeout):
                log.warning(
                    "the running job did not stop within %.0f s (it does not check for interrupts); exiting anyway",
                    self._worker_timeout,
                )
