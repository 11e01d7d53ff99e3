"""A1111's error object: `{"error": <type>, "detail": <message>, "body": <request body>, "errors": <message>}`
with the status code of the error (404 "Sampler not found", 422 validation, 401 auth, 500 bugs).

A 422 always carries `detail` as the array FastAPI's published `HTTPValidationError` schema (the one
A1111's /openapi.json declares for 422) says: `[{"loc": [...], "msg": ..., "type": ...}]`, also for
our own validation errors (`UserError` with status 422, `HTTPException(422, "...")`), whose message
is then the one item's `msg` and, as a string, `errors`. Other statuses keep `detail` a string.
The error responses are declared in /openapi.json (`ErrorBody`, `error_responses`)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from modules.core.errors import UserError

log = logging.getLogger(__name__)

VALIDATION_STATUS = 422


class ErrorBody(BaseModel):
    """The error object every 4xx/5xx other than 422 answers (A1111's shape)."""

    error: str = Field(description="the error's class name (A1111: the exception's type)")
    detail: Any = Field(description="the message (a string; FastAPI's validation items for a 422)")
    body: Any = Field(description="the start of the request body, or an empty string")
    errors: Any = Field(description="the message as a string")


_DESCRIPTIONS = {
    401: "Not authenticated (--api-auth / --gradio-auth)",
    403: "Refused: a cross-site request, or a setting that cannot be changed",
    404: "A named thing (checkpoint, sampler, upscaler, job...) does not exist",
    409: "The job was interrupted",
    413: "The request body is larger than --max-body-mb",
    429: "The queue is full (--queue-limit), or too many failed logins; retry after Retry-After seconds",
    500: "An unexpected error (a bug)",
    501: "Not available on this server",
    503: "Not available now (the server is stopping, or the feature is not installed)",
    507: "Out of memory or disk space; the server goes on serving",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route or router: each code answers `ErrorBody` (429 with Retry-After)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorBody, "description": _DESCRIPTIONS.get(code, "Error")}
        if code == 429:
            entry["headers"] = {
                "Retry-After": {
                    "description": "seconds until a place in the queue frees up",
                    "schema": {"type": "integer"},
                }
            }
        out[code] = entry
    return out


def validation_items(
    message: str, loc: tuple[str | int, ...] = ("body",), kind: str = "value_error"
) -> list[dict[str, Any]]:
    """One of our validation messages as FastAPI's `ValidationError` items."""
    return [{"loc": list(loc), "msg": message, "type": kind}]


def error_response(
    status: int, error: str, detail: Any, body: Any = "", errors: Any = None, *, extra: dict[str, Any] | None = None
) -> JSONResponse:
    """A1111's error object; `extra` adds keys a route's clients also read (e.g. `info`). A 422's
    string `detail` becomes the one-item array of the published schema (the message stays in `errors`)."""
    if errors is None:
        errors = str(detail)
    if status == VALIDATION_STATUS and not isinstance(detail, list):
        detail = validation_items(str(detail))
    content = {"error": error, "detail": detail, "body": body, "errors": errors}
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
