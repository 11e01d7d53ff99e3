"""Mounting the API on the app: `/sdapi/v1` routers, error handlers, the services in app.state."""

from __future__ import annotations

from fastapi import FastAPI

from modules.api.errors import install_error_handlers
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


def install_api(app: FastAPI, services: Services) -> None:
    """`/sdapi/v1` plus A1111's `/internal/progress`. Security (auth, CSRF, CORS, api-log) is
    installed on the whole app by `modules.app.create_app`, API or not."""
    install_security(app, services)  # idempotent; here too so a bare install_api is never open
    app.state.services = services
    install_error_handlers(app)
    for module in ROUTERS:
        app.include_router(module.router, prefix=PREFIX)
    app.include_router(progress.internal_router)
    app.include_router(controlnet.router)  # sd-webui-controlnet's /controlnet/* (not under /sdapi/v1)
