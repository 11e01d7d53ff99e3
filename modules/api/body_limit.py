"""Request body size cap (`--max-body-mb`), as pure ASGI middleware around the whole app.

A body whose `Content-Length` is over the cap is refused with 413 before any of it is read; a
body without one (chunked) is counted as it streams in and refused as soon as the count passes
the cap, so no request holds more than the cap in memory. The answer is A1111's error object
(`{"error", "detail", "body", "errors"}`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_INSTALLED = "sd_webui_body_limit_installed"


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the cap. An HTTPException so that
    FastAPI's body reading passes it on (other errors there become 400) and the API's handler
    answers it in A1111's shape."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit))


def too_large_message(limit: int) -> str:
    return f"request body is larger than {limit} bytes ({limit / (1024 * 1024):g} MB, flag --max-body-mb)"


def too_large_response(limit: int) -> JSONResponse:
    message = too_large_message(limit)
    content: dict[str, Any] = {"error": "HTTPException", "detail": message, "body": "", "errors": message}
    return JSONResponse(status_code=413, content=content, headers={"Connection": "close"})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await too_large_response(limit)(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            if received > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await too_large_response(limit)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def install_body_limit(app: FastAPI, max_bytes: int) -> None:
    """Add the cap to the whole app (UI uploads too). Idempotent; call it before the app serves
    its first request."""
    if getattr(app.state, _INSTALLED, False):
        return
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_bytes)
    setattr(app.state, _INSTALLED, True)
