"""Bounded fuzz of the mounted API: random JSON bodies to every POST route, random query strings to
every GET route (routes enumerated at run time). Whatever the input, the answer is never a 5xx.

Generation stays cheap: a tiny SD1 checkpoint, `max_pixels_times_batch` set to 64x64x2 (so the
512x512 defaults and big sizes are a 422), and the keys that cost time (`steps`, `n_iter`, ...)
drawn small or of the wrong type. Deterministic (`derandomize=True`) for CI.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modules.app import build_services, create_app
from modules.core.settings import parse_settings
from modules.services import Services
from tests.fixtures.module_tmp import ModuleTempDirs

pytestmark = pytest.mark.usefixtures("no_network")

AUTH = ("fuzz", "fuzz-pw")
MAX_PIXELS = 64 * 64 * 2
# Routes that can end the process when enabled (404 without --api-server-stop): never fuzzed.
SKIP = re.compile(r"/server-(kill|stop|restart)$")
_PARAM = re.compile(r"\{([^}:]+)(?::([^}]+))?\}")


@dataclass
class FuzzApp:
    app: FastAPI
    services: Services
    client: TestClient
    post_routes: list[tuple[str, list[str]]]  # (path, body keys known from the schema)
    get_routes: list[tuple[str, list[str]]]  # (path, query parameter names)
    requests: int = 0
    failures: list[str] = field(default_factory=list)

    def check(self, method: str, path: str, **kwargs: Any) -> None:
        response = self.client.request(method, path, auth=AUTH, **kwargs)
        self.requests += 1
        if response.status_code >= 500:
            shown = {k: (v if k != "content" else v[:300]) for k, v in kwargs.items()}
            self.failures.append(f"{response.status_code} {method} {path} {shown!r}: {response.text[:300]}")


def _concrete(path: str) -> str:
    return _PARAM.sub(lambda m: "1" if m.group(2) in ("int", "float") else "fuzz", path)


def _schema_keys(spec: dict[str, Any], schema: dict[str, Any], depth: int = 0) -> list[str]:
    """Property names of a request-body schema ($refs and allOf/anyOf followed a little)."""
    if depth > 4:
        return []
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _schema_keys(spec, spec.get("components", {}).get("schemas", {}).get(name, {}), depth + 1)
    keys = list(schema.get("properties", {}))
    for combo in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(combo, []):
            keys += _schema_keys(spec, sub, depth + 1)
    return keys


def _routes(app: FastAPI) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]]]:
    from fastapi.routing import iter_route_contexts

    spec = app.openapi()
    posts: list[tuple[str, list[str]]] = []
    gets: list[tuple[str, list[str]]] = []
    for context in iter_route_contexts(app.routes):
        template = str(context.path or "")
        methods = context.methods or set()
        if not template.startswith("/sdapi/") or SKIP.search(template):
            continue
        operations = spec.get("paths", {}).get(template, {})
        if "POST" in methods:
            body = operations.get("post", {}).get("requestBody", {}).get("content", {})
            schema = body.get("application/json", {}).get("schema", {})
            posts.append((_concrete(template), sorted(set(_schema_keys(spec, schema)))))
        if "GET" in methods:
            params = [p["name"] for p in operations.get("get", {}).get("parameters", []) if p.get("in") == "query"]
            gets.append((_concrete(template), params))
    return sorted(posts), sorted(gets)


@pytest.fixture(scope="module")
def fuzz_app(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Iterator[FuzzApp]:
    data_dir = module_tmp.mktemp("fuzz-data")
    checkpoints = data_dir / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copy(tiny_models["sd1"], checkpoints / "tiny.safetensors")
    services = build_services(parse_settings(["--api", "--api-auth", ":".join(AUTH)], {}), data_dir, {})
    services.options.set("max_pixels_times_batch", MAX_PIXELS)
    services.options.set("samples_save", False)
    services.options.set("grid_save", False)
    app = create_app(services)
    posts, gets = _routes(app)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield FuzzApp(app, services, client, posts, gets)
    services.worker.shutdown()


# --- strategies ------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 2**31, 2**63, 10**30, -(10**30)])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "1", "512", "-1", "nan", "1e400", "data:image/png;base64,AAAA", "../../etc/passwd"])
)
_junk = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_wrong_type = (
    st.none()
    | st.text(max_size=8)
    | st.lists(_scalars, max_size=2)
    | st.dictionaries(st.text(max_size=4), _scalars, max_size=2)
)

# Keys that make a request expensive: small values or the wrong type only (a wrong value must be a 4xx).
_COST: dict[str, st.SearchStrategy[Any]] = {
    "steps": st.integers(-2, 3),
    "n_iter": st.integers(-2, 2),
    "batch_size": st.integers(-2, 2),
    "batch_count": st.integers(-2, 2),
    "width": st.integers(-64, 80) | st.sampled_from([10**9, 2**31, 4096]),  # big: 422 by max_pixels
    "height": st.integers(-64, 80) | st.sampled_from([10**9, 2**31, 4096]),
    "hr_scale": st.floats(-2, 2),
    "hr_second_pass_steps": st.integers(-2, 2),
    "hr_resize_x": st.integers(-64, 64),
    "hr_resize_y": st.integers(-64, 64),
    "firstphase_width": st.integers(-64, 64),
    "firstphase_height": st.integers(-64, 64),
    "upscaling_resize": st.floats(-2, 2),
    "upscaling_resize_w": st.integers(-64, 64),
    "upscaling_resize_h": st.integers(-64, 64),
}


def _value_for(key: str) -> st.SearchStrategy[Any]:
    if key in _COST:
        return _COST[key] | _wrong_type
    return _junk


@st.composite
def _body(draw: st.DrawFn, keys: list[str]) -> Any:
    kind = draw(st.sampled_from(["object", "object", "object", "junk"]))
    if kind == "junk":
        value = draw(_junk)
        if isinstance(value, dict):  # a random dict must not sneak expensive keys in unbounded
            value = {k: v for k, v in value.items() if k not in _COST}
        return value
    known = draw(st.lists(st.sampled_from(keys), max_size=8, unique=True)) if keys else []
    body = {key: draw(_value_for(key)) for key in known}
    extra = draw(st.dictionaries(st.text(max_size=12).filter(lambda k: k not in _COST), _junk, max_size=3))
    return {**extra, **body}


# --- tests -----------------------------------------------------------------------------------


def test_the_api_has_routes_to_fuzz(fuzz_app: FuzzApp) -> None:
    assert fuzz_app.post_routes or fuzz_app.get_routes


@pytest.mark.timeout(300)
def test_fixed_nasty_bodies_never_5xx(fuzz_app: FuzzApp) -> None:
    bodies: list[dict[str, Any]] = [
        {},
        {"content": b""},
        {"content": b"{", "headers": {"Content-Type": "application/json"}},
        {"content": b"\xff\xfe\x00", "headers": {"Content-Type": "application/json"}},
        {"json": None},
        {"json": []},
        {"json": "string"},
        {"json": 10**40},
        {"json": {"": None}},
        {"json": [[[[[]]]]]},
        {"content": json.dumps({"a": 1}).encode(), "headers": {"Content-Type": "text/plain"}},
        {"content": b"a=1&b=2", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
    ]
    small = {"prompt": "fuzz", "width": 64, "height": 64, "steps": 1, "batch_size": 1, "n_iter": 1}
    for path, keys in fuzz_app.post_routes:
        if path.endswith("/txt2img"):  # one real (tiny) generation, then with junk riding along
            fuzz_app.check("POST", path, json=small)
            fuzz_app.check("POST", path, json={**small, "sampler_name": 5, "seed": 2**70, "styles": {"a": 1}})
        for kwargs in bodies:
            fuzz_app.check("POST", path, **kwargs)
        fuzz_app.check("POST", path, json={k: "not-the-right-type" for k in keys if k not in _COST})
        fuzz_app.check("POST", path, json={k: None for k in keys})
    for path, params in fuzz_app.get_routes:
        fuzz_app.check("GET", path)
        fuzz_app.check("GET", path, params={p: "../../../etc/passwd" for p in params} or {"x": "\x00"})
        fuzz_app.check("GET", path, params={p: str(2**70) for p in params} or {"x": "-1"})
    print(f"fixed nasty bodies: {fuzz_app.requests} requests")
    assert not fuzz_app.failures, "\n".join(fuzz_app.failures)


@pytest.mark.timeout(300)
def test_random_requests_never_5xx(fuzz_app: FuzzApp) -> None:
    routes = [("POST", p, k) for p, k in fuzz_app.post_routes] + [("GET", p, k) for p, k in fuzz_app.get_routes]
    before = fuzz_app.requests

    @settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        method, path, keys = data.draw(st.sampled_from(routes), label="route")
        if method == "POST":
            fuzz_app.check("POST", path, json=data.draw(_body(keys), label="body"))
        else:
            names = st.sampled_from(keys) | st.text(max_size=10) if keys else st.text(max_size=10)
            params = data.draw(st.dictionaries(names, st.text(max_size=30) | st.integers().map(str), max_size=4))
            fuzz_app.check("GET", path, params=params)

    one()
    print(f"random fuzz: {fuzz_app.requests - before} requests over {len(routes)} routes")
    assert not fuzz_app.failures, "\n".join(fuzz_app.failures)
