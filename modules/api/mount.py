"""Mounting the API on the app: `/sdapi/v1` routers, error handlers, the services in app.state."""

from __future__ import annotations

from fastapi import FastAPI

from modules.api.errors import install_error_handlers
from modules.api.routes import generation, info, models, options, pnginfo, progress, server
from modules.services import Services

PREFIX = "/sdapi/v1"
ROUTERS = (generation, progress, pnginfo, options, models, info, server)


def install_api(app: FastAPI, services: Services) -> None:
    # --- security layer: auth / CSRF / CORS / api-log on the whole app (modules/api/security.py) ---
    from modules.api.security import install_security

    install_security(app, services)
    # --- end security layer ---
    app.state.services = services
    install_error_handlers(app)
    for module in ROUTERS:
        app.include_router(module.router, prefix=PREFIX)
