"""The app uvicorn serves from the first second of a start (fast start, issue 18).

`modules.app.main` starts uvicorn on a `StartupGate` right after parsing the flags, and builds the
services, the API and the UI on a thread. Until the real app is handed over (`StartupGate.open`)
the gate answers from a small app of its own:

* `/internal/ping`: `{}` (public, as always): A1111 clients and launchers poll it;
* `/health`: `{"status": "starting", "phase": ...}` (behind auth, as always);
* `GET /`: a page that says what is happening ("importing libraries", "loading model X") and
  reloads itself every few seconds;
* anything else (`/sdapi/v1/*`, Gradio's files): 503 with `Retry-After` and A1111's error object.

After the hand-over every request goes to the real app, except `GET /`, which keeps showing the
"loading model X" page until the initial model load has finished (`StartupState.page_held`).
The real app's lifespan (Gradio's queue starts there) is run on the server's loop when it is
handed over and closed when the server shuts down. Its middlewares (auth, body limit) are its
own; the gate's small app gets the same security middleware from the same flags.

Nothing here imports torch, diffusers or Gradio (a test checks): it has to be up in a second or two.
"""

from __future__ import annotations

import asyncio
import html
import logging
import threading
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from modules.api.errors import error_response
from modules.api.security import install_security, scope_path
from modules.core.settings import Settings

if TYPE_CHECKING:
    from modules.services import Services

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2
"""What `Retry-After` says while starting, and how often the starting page reloads itself."""

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class StartupState:
    """What the start-up is doing, for the starting page and `/health` (thread-safe)."""

    def __init__(self, *, hold_page: bool = False) -> None:
        self._lock = threading.Lock()
        self._phase = "starting"
        self._error: str | None = None
        self._page_held = hold_page

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self._phase = phase
        log.info("start-up: %s", phase)

    def failed(self, error: str) -> None:
        with self._lock:
            self._error = error
            self._page_held = False

    def release_page(self) -> None:
        """The initial model load is over (loaded or not): `GET /` goes to the real app."""
        with self._lock:
            self._page_held = False

    @property
    def phase(self) -> str:
        with self._lock:
            return self._phase

    @property
    def error(self) -> str | None:
        with self._lock:
            return self._error

    @property
    def page_held(self) -> bool:
        with self._lock:
            return self._page_held


def starting_page(state: StartupState) -> str:
    error = f"<p class='error'>{html.escape(state.error)}</p>" if state.error else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{RETRY_AFTER_S}'><title>sd-webui: starting</title></head>"
        "<body><h1>sd-webui is starting</h1>"
        f"<p id='startup-phase'>{html.escape(state.phase)}...</p>{error}"
        "<p>This page reloads itself until the UI is ready.</p></body></html>"
    )


def not_ready(state: StartupState) -> JSONResponse:
    """503 in A1111's error shape with `Retry-After`: clients that retry (or poll
    `/internal/ping` and then retry) get their answer once the services are up."""
    detail = f"sd-webui is starting ({state.phase}); retry in a few seconds"
    response = error_response(503, "HTTPException", detail)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def early_app(settings: Settings, state: StartupState) -> FastAPI:
    """The gate's own small app: ping, health, the starting page, 503 for the rest; with the same
    auth / CSRF / CORS / api-log middleware the real app gets from these flags."""

    async def ping(request: Request) -> JSONResponse:
        return JSONResponse({})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "starting",
                "phase": state.phase,
                "model": {"checkpoint": None, "loading": False, "error": state.error, "cached": []},
            }
        )

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(starting_page(state), headers={"Cache-Control": "no-store"})

    async def rest(request: Request) -> JSONResponse:
        return not_ready(state)

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.router.routes.extend(
        [
            Route("/internal/ping", ping, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/", page, methods=["GET", "HEAD"]),
            Route("/{rest:path}", rest, methods=_ALL_METHODS),
        ]
    )
    # install_security reads only the flags (`services.settings`)
    install_security(app, cast("Services", _FlagsOnly(settings)))
    return app


class _FlagsOnly:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings


class StartupGate:
    """The ASGI app uvicorn runs: the early app until `open(app)`, then `app` (see module doc)."""

    def __init__(self, settings: Settings, state: StartupState) -> None:
        self.state = state
        self._early: ASGIApp = early_app(settings, state)
        self._app: ASGIApp | None = None
        self._lifespan_state: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serving = threading.Event()  # uvicorn ran our lifespan startup
        self._stopped = threading.Event()  # ... and its shutdown
        self._stack = AsyncExitStack()

    @property
    def is_open(self) -> bool:
        return self._app is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        app = self._app
        if app is None or (self.state.page_held and _is_page(scope)):
            await self._early(scope, receive, send)
            return
        if self._lifespan_state:
            scope["state"] = {**self._lifespan_state, **scope.get("state", {})}
        await app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._loop = asyncio.get_running_loop()
                self._serving.set()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._stopped.set()
                try:
                    await self._stack.aclose()  # the real app's lifespan (Gradio's queue)
                except Exception:
                    log.exception("error while shutting the app down")
                await send({"type": "lifespan.shutdown.complete"})
                return

    def open(self, app: FastAPI) -> bool:
        """Called from the start-up thread: run `app`'s lifespan startup on the server's loop, then
        send every request to it. False when the server stopped first."""
        while not self._serving.wait(0.1):
            if self._stopped.is_set():
                return False
        loop = self._loop
        if loop is None or self._stopped.is_set() or loop.is_closed():
            return False
        opening = self._open(app)
        try:
            future = asyncio.run_coroutine_threadsafe(opening, loop)
        except RuntimeError:  # the loop closed in between
            opening.close()
            return False
        while True:
            try:
                return future.result(timeout=0.5)
            except TimeoutError:
                if self._stopped.is_set() or loop.is_closed():
                    future.cancel()
                    return False

    async def _open(self, app: FastAPI) -> bool:
        if self._stopped.is_set():
            return False
        state = await self._stack.enter_async_context(app.router.lifespan_context(app))
        if isinstance(state, Mapping):
            self._lifespan_state = dict(state)
        self._app = app
        return True


def _is_page(scope: Scope) -> bool:
    return scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and scope_path(scope) == "/"
