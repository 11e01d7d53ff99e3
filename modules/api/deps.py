"""Dependencies injected into the routes: the services built by the composition root."""

from __future__ import annotations

from fastapi import Request

from modules.services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
