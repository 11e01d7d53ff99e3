"""A1111's error object: `{"error": <type>, "detail": <message>, "body": <request body>, "errors": <message>}`
with the status code of the error (404 "Sampler not found", 422 validation, 401 auth, 500 bugs)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modules.core.errors import UserError

log = logging.getLogger(__name__)


def error_response(
    status: int, error: str, detail: Any, body: Any = "", errors: Any = None, *, extra: dict[str, Any] | None = None
) -> JSONResponse:
    """A1111's error object; `extra` adds keys a route's clients also read (e.g. `info`)."""
    content = {"error": error, "detail": detail, "body": body, "errors": str(detail) if errors is None else errors}
    return JSONResponse(status_code=status, content={**content, **(extra or {})})


async def _body_text(request: Request) -> str:
    try:
        raw = await request.body()
    except Exception:  # body already consumed or stream closed
        return ""
    return raw[:4096].decode("utf-8", errors="replace")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        response = error_response(exc.status_code, type(exc).__name__, exc.message, await _body_text(request))
        for key, value in (getattr(exc, "headers", None) or {}).items():  # e.g. 429's Retry-After
            response.headers[key] = str(value)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return error_response(422, "RequestValidationError", details, await _body_text(request), str(details))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_response(exc.status_code, "HTTPException", exc.detail, await _body_text(request))
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, type(exc).__name__, str(exc), await _body_text(request))
