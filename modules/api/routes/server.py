"""/sdapi/v1 routes: stop, restart and kill the server (only with `--api-server-stop`).

Without the flag the three routes answer exactly like a route that does not exist (404). With it:
- `POST /server-stop`: graceful shutdown, exit code 0; answers the text "Stopping." like A1111.
  As on SIGTERM (`modules.api.lifecycle.GracefulServer`): queued jobs fail at once with 503
  `ServerShuttingDown`, the running job is interrupted, the open requests get their answers.
- `POST /server-restart`: the same, exit code 3, which `webui.sh` and the systemd unit
  (`RestartForceExitStatus=3`) take as "start me again"; 501 when the process was not started
  by something that restarts it.
- `POST /server-kill`: immediate exit (A1111's `stop_program`), right after the answer is sent.

The routes act on the `ServerControl` in `app.state.server_control`, which the composition root
creates and attaches to the uvicorn server; tests inject their own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from modules.api.deps import get_services
from modules.services import Services

log = logging.getLogger(__name__)

EXIT_STOP = 0
EXIT_RESTART = 3  # webui.sh loops and systemd restarts on it (modules.app.EXIT_RESTART)
EXIT_KILL = 0  # A1111's stop_program exits with 0

router = APIRouter(tags=["server"])


class _Stoppable(Protocol):
    """What ServerControl needs of `uvicorn.Server`."""

    should_exit: bool


class ServerControl:
    """How the API asks the process to stop, restart or die.

    The composition root builds one, puts it on `app.state.server_control`, `attach()`es the
    `uvicorn.Server` it runs, and after `server.run()` returns exits with `exit_code`.
    """

    def __init__(
        self,
        *,
        restartable: bool = True,
        exit_process: Callable[[int], object] = os._exit,
    ) -> None:
        self.restartable = restartable
        self.exit_code = EXIT_STOP
        self.stop_requested = threading.Event()
        self._exit_process = exit_process
        self._server: _Stoppable | None = None

    def attach(self, server: _Stoppable) -> None:
        """The server to shut down gracefully (`uvicorn.Server`: its `should_exit` flag)."""
        self._server = server
        if self.stop_requested.is_set():
            server.should_exit = True

    def _shutdown(self, code: int) -> None:
        self.exit_code = code
        self.stop_requested.set()
        if self._server is None:
            log.warning("no server attached to ServerControl: nothing to stop (wire it in modules.app)")
            return
        self._server.should_exit = True

    def stop(self) -> None:
        log.info("stop requested through the API")
        self._shutdown(EXIT_STOP)

    def restart(self) -> None:
        log.info("restart requested through the API (exit code %d)", EXIT_RESTART)
        self._shutdown(EXIT_RESTART)

    def kill(self) -> None:
        log.warning("kill requested through the API: exiting now")
        self._exit_process(EXIT_KILL)


def get_server_control(request: Request, services: Services = Depends(get_services)) -> ServerControl:
    """The app's ServerControl; a 404 (like an unknown route) unless `--api-server-stop`."""
    if not services.settings.api_server_stop:
        raise HTTPException(status_code=404, detail="Not Found")
    control = getattr(request.app.state, "server_control", None)
    if not isinstance(control, ServerControl):
        control = ServerControl()  # not wired by the composition root: requests are only logged
        request.app.state.server_control = control
    return control


@router.post("/server-stop", response_class=PlainTextResponse, include_in_schema=False)
def server_stop(control: ServerControl = Depends(get_server_control)) -> PlainTextResponse:
    return PlainTextResponse("Stopping.", background=BackgroundTask(control.stop))


@router.post("/server-restart", response_class=PlainTextResponse, include_in_schema=False)
def server_restart(control: ServerControl = Depends(get_server_control)) -> PlainTextResponse:
    if not control.restartable:
        raise HTTPException(status_code=501, detail="Server is not restartable: start it with webui.sh or systemd")
    return PlainTextResponse("Restarting.", background=BackgroundTask(control.restart))


@router.post("/server-kill", response_class=PlainTextResponse, include_in_schema=False)
def server_kill(control: ServerControl = Depends(get_server_control)) -> PlainTextResponse:
    return PlainTextResponse("Killing.", background=BackgroundTask(control.kill))
