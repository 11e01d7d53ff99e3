"""Mounting the API on the app: `/sdapi/v1` routers, error handlers, the services in app.state."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from modules.api.errors import error_responses, install_error_handlers
from modules.api.routes import (
    controlnet,
    extensions,
    extras,
    generation,
    info,
    interrogate,
    merge,
    models,
    options,
    pnginfo,
    progress,
    server,
    training,
)
from modules.api.security import install_security
from modules.services import Services

PREFIX = "/sdapi/v1"
ROUTERS = (
    generation,
    progress,
    pnginfo,
    options,
    models,
    info,
    server,
    extras,
    extensions,
    training,
    interrogate,
    merge,
)


# The error answers each router's routes can give, declared in /openapi.json (`ErrorBody`, A1111's
# shape). Every route: 400 (a UserError with no more precise status), 401 (auth), 403 (cross-site,
# restricted), 413 (body cap), 429 (failed logins; the queue where a route queues), 500 (a bug);
# 422 is FastAPI's own `HTTPValidationError` declaration, which our 422 bodies match (api/errors.py).
COMMON_ERRORS = (400, 401, 403, 413, 429, 500)
ROUTER_ERRORS: dict[str, tuple[int, ...]] = {
    # 409: refused while a training run waits (its policy option); 503: queued when the server stops
    generation.__name__: (404, 409, 503, 507),
    extras.__name__: (404, 409, 503, 507),
    models.__name__: (404, 503, 507),  # unload/reload run on the worker
    interrogate.__name__: (404, 409, 503, 507),
    merge.__name__: (404, 409, 503, 507),
    training.__name__: (404, 409, 503, 507),
    options.__name__: (404,),
    extensions.__name__: (404, 503),
    server.__name__: (404, 501),
    controlnet.__name__: (404, 503),
}


def _errors(module: object) -> dict[int | str, dict[str, Any]]:
    return error_responses(*COMMON_ERRORS, *ROUTER_ERRORS.get(getattr(module, "__name__", ""), ()))


def install_api(app: FastAPI, services: Services) -> None:
    """`/sdapi/v1` plus A1111's `/internal/progress`. Security (auth, CSRF, CORS, api-log) is
    installed on the whole app by `modules.app.create_app`, API or not."""
    install_security(app, services)  # idempotent; here too so a bare install_api is never open
    app.state.services = services
    install_error_handlers(app)
    for module in ROUTERS:
        app.include_router(module.router, prefix=PREFIX, responses=_errors(module))
    app.include_router(progress.internal_router, responses=_errors(progress))
    app.include_router(
        controlnet.router, responses=_errors(controlnet)
    )  # sd-webui-controlnet's /controlnet/* (not under /sdapi/v1)
