"""Every mounted /sdapi/v1 route answers through a real uvicorn server (not only the test client)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

pytestmark = pytest.mark.usefixtures("no_network")

# Routes that need a body to do anything useful, or that change server state: a bodyless call
# must still get a clean answer (never a 5xx).
GENERATION = {"/sdapi/v1/txt2img", "/sdapi/v1/img2img"}


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    from tests.api.test_security import iter_routes

    found = set()
    for route, path in iter_routes(app):
        if isinstance(route, APIRoute) and path.startswith("/sdapi/v1/"):
            for method in route.methods:
                found.add((method, path))
    return sorted(found)


def test_every_route_answers_on_a_live_server(api_app: FastAPI, live_server: str) -> None:
    routes = _routes(api_app)
    assert len(routes) >= 30
    seen = {}
    with httpx.Client(base_url=live_server, timeout=60) as http:
        for method, path in routes:
            if method == "GET":
                r = http.get(path)
                assert r.status_code == 200, (path, r.text[:200])
            elif path in GENERATION:
                body = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "sampler_name": "Euler"}
                if path.endswith("img2img"):
                    body["init_images"] = []
                r = http.post(path, json=body)
                assert r.status_code in (200, 404, 422), (path, r.status_code, r.text[:200])
            else:
                r = http.request(method, path, json={})
                assert r.status_code < 500, (path, r.status_code, r.text[:200])
            seen[(method, path)] = r.status_code
    print(f"{len(seen)} routes answered on the live server")
