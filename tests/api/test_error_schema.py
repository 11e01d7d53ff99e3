"""Error bodies match the OpenAPI schema the app publishes (issue 19, item 4).

Each bad request below is answered with a status its route declares in /openapi.json, and its body
validates against that declaration: FastAPI's `HTTPValidationError` for 422 (`detail` an array of
`{loc, msg, type}`, also for our own validation errors), `ErrorBody` (A1111's
`{error, detail, body, errors}`) for the others. No schemathesis: a fixed set of requests that fail
before anything is queued, plus one 429 (a full queue), one 413 and one 507.

Also here: `/progress` is answered while the worker is held by a job and the queue is full.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from modules.app import build_services
from modules.core.settings import parse_settings
from modules.engine.worker import JobContext
from modules.services import Services

pytestmark = pytest.mark.usefixtures("no_network")

API_CHECKPOINTS = {"sd1": "sd1.safetensors"}
BASE = {"prompt": "a cat", "steps": 1, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1}
A1111_KEYS = {"error", "detail", "body", "errors"}


@pytest.fixture(scope="module")
def api_services(api_data_dir: Path) -> Iterator[Services]:
    """This module's services: a queue of one waiting job and a 1 MB body cap."""
    flags = ["--data-dir", str(api_data_dir), "--api", "--queue-limit", "1", "--max-body-mb", "1"]
    services = build_services(parse_settings(flags, {}), api_data_dir, {})
    services.engine.switch_model(checkpoint="sd1.safetensors")
    yield services
    services.worker.shutdown()


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def check_against_spec(spec: dict[str, Any], method: str, path: str, response: httpx.Response) -> dict[str, Any]:
    """The response's status is declared for the route and its body validates against it."""
    operation = spec["paths"][path.split("?")[0]][method.lower()]
    status = str(response.status_code)
    declared = operation["responses"].get(status)
    assert declared is not None, f"{method} {path}: {status} is not declared (has {sorted(operation['responses'])})"
    schema = declared["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": spec["components"]})
    body: dict[str, Any] = response.json()
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not problems, (method, path, status, problems, body)
    assert set(body) >= A1111_KEYS and isinstance(body["errors"], str), body  # what A1111 clients read
    for header in declared.get("headers", {}):
        assert header in response.headers, (method, path, status, header)
    return body


BAD_REQUESTS: list[tuple[str, str, Any, int]] = [
    ("POST", "/sdapi/v1/txt2img", {**BASE, "steps": "many"}, 422),  # FastAPI's own validation
    ("POST", "/sdapi/v1/txt2img", {**BASE, "seed": 2**70}, 422),  # ours (ValidationError)
    ("POST", "/sdapi/v1/txt2img", {**BASE, "sampler_name": "nope"}, 404),
    ("POST", "/sdapi/v1/img2img", {**BASE, "init_images": []}, 404),
    ("POST", "/sdapi/v1/img2img", {**BASE, "init_images": ["not base64!"]}, 422),
    ("POST", "/sdapi/v1/extra-single-image", {"image": ""}, 422),
    ("POST", "/sdapi/v1/extra-batch-images", {"imageList": "x"}, 422),
    ("POST", "/sdapi/v1/png-info", {"image": "zzz"}, 422),
    ("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "nope"}, 404),
    ("POST", "/sdapi/v1/interrogate", {"image": ""}, 404),
    ("POST", "/sdapi/v1/merge-checkpoint", {"primary_model_name": "nope"}, 422),
    ("POST", "/sdapi/v1/extract-lora", {}, 422),
    ("POST", "/sdapi/v1/train/lora", {"bogus": 1}, 422),
    ("POST", "/sdapi/v1/create/embedding", {"bogus": 1}, 422),  # A1111's `info` beside the error
    ("GET", "/sdapi/v1/train/status?task_id=task(nope)", None, 404),
    ("GET", "/sdapi/v1/progress?skip_current_image=maybe", None, 422),
    ("POST", "/internal/progress", {"id_task": 1}, 422),
    ("POST", "/controlnet/detect", {"controlnet_module": "nope", "controlnet_input_images": []}, 422),  # HTTPException
    ("GET", "/controlnet/model_list?update=maybe", None, 422),
    ("POST", "/sdapi/v1/txt2img", {**BASE, "prompt": "x" * (1024 * 1024 + 1)}, 413),
]


@pytest.mark.parametrize(("method", "path", "payload", "status"), BAD_REQUESTS, ids=lambda v: str(v)[:40])
def test_error_bodies_match_the_declared_schema(
    client: TestClient, spec: dict[str, Any], method: str, path: str, payload: Any, status: int
) -> None:
    response = client.request(method, path, json=payload)
    assert response.status_code == status, response.text[:300]
    body = check_against_spec(spec, method, path, response)
    if status == 422:  # A1111's published HTTPValidationError: an array of {loc, msg, type}
        assert isinstance(body["detail"], list) and body["detail"], body


def test_our_validation_message_is_the_items_msg_and_the_errors_string(client: TestClient) -> None:
    body = client.post("/sdapi/v1/txt2img", json={**BASE, "seed": 2**70}).json()
    assert body["error"] == "ValidationError"
    assert body["detail"] == [{"loc": ["body"], "msg": body["errors"], "type": "value_error"}]
    assert "seed" in body["errors"] and "64-bit" in body["errors"]


def test_every_api_route_declares_a1111s_error_answers(spec: dict[str, Any]) -> None:
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in spec["paths"].items():
        if not path.startswith(("/sdapi/", "/internal/progress", "/controlnet/")):
            continue
        for method, operation in operations.items():
            for status in ("400", "401", "403", "413", "429", "500"):  # auth, CSRF, body cap, login limit
                declared = operation["responses"].get(status)
                assert declared and declared["content"]["application/json"]["schema"] == error_body, (
                    method,
                    path,
                    status,
                )
            assert "Retry-After" in operation["responses"]["429"]["headers"]
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/extra-single-image"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"404", "422", "507"} <= set(responses), (path, sorted(responses))
        assert responses["422"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/HTTPValidationError"
        }


@pytest.fixture
def full_queue(api_services: Services) -> Iterator[threading.Event]:
    """The worker runs a job blocked on an Event (yielded, unset) and one more job waits: with
    `--queue-limit 1` the queue is full."""
    release, started = threading.Event(), threading.Event()

    def hold(ctx: JobContext) -> None:
        started.set()
        release.wait(120)

    held = api_services.engine.submit_call(hold, "hold")
    assert started.wait(60)
    waiting = api_services.engine.submit_call(lambda ctx: None, "waiting")
    try:
        yield release
    finally:
        release.set()
        held.result(60)
        waiting.result(60)


def test_a_full_queue_is_a_declared_429_and_progress_still_answers(
    client: TestClient, spec: dict[str, Any], api_services: Services, full_queue: threading.Event
) -> None:
    for path, payload in (
        ("/sdapi/v1/txt2img", BASE),
        ("/sdapi/v1/extra-single-image", {"image": "", "upscaling_resize": 2}),
    ):
        response = client.post(path, json=payload)
        if path.endswith("txt2img"):
            assert response.status_code == 429, response.text[:300]
            body = check_against_spec(spec, "POST", path, response)
            assert body["error"] == "QueueFullError" and int(response.headers["Retry-After"]) >= 1
        else:  # validation comes before queueing
            assert response.status_code == 422, response.text[:300]
            check_against_spec(spec, "POST", path, response)

    # progress is read from the running job: answered while the job is still blocked (a hang here
    # would be a /progress waiting for the worker; the join only keeps a broken build from hanging)
    answers: dict[str, httpx.Response] = {}

    def poll() -> None:
        answers["progress"] = client.get("/sdapi/v1/progress")
        answers["internal"] = client.post("/internal/progress", json={"id_task": "nope"})

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    poller.join(120)
    assert set(answers) == {"progress", "internal"} and not full_queue.is_set()
    progress = answers["progress"].json()
    assert answers["progress"].status_code == 200
    running = api_services.engine.current_job_id()
    assert running is not None and progress["current_task"] == running  # the blocked job, not idle
    assert answers["internal"].status_code == 200


def test_out_of_memory_is_a_declared_507(
    client: TestClient, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 24.00 GiB")

    monkeypatch.setattr(UNet2DConditionModel, "forward", failing)
    response = client.post("/sdapi/v1/txt2img", json=BASE)
    assert response.status_code == 507, response.text[:300]
    assert check_against_spec(spec, "POST", "/sdapi/v1/txt2img", response)["error"] == "OutOfMemoryError"


def test_auth_refusals_are_declared_and_match(tmp_path: Path) -> None:
    """401 (no login), 403 (cross-site POST with a login), 429 (failed logins) from the security
    layer, on an app built with --api-auth (no model needed)."""
    from modules.app import create_app

    flags = ["--data-dir", str(tmp_path), "--nowebui", "--api-auth", "user:secret-pw"]
    services = build_services(parse_settings(flags, {}), tmp_path, {})
    try:
        with TestClient(create_app(services)) as client:
            spec = client.get("/openapi.json", auth=("user", "secret-pw")).json()
            response = client.get("/sdapi/v1/options")
            assert response.status_code == 401
            check_against_spec(spec, "GET", "/sdapi/v1/options", response)
            cross_site = {"Origin": "https://evil.example", "Content-Type": "text/plain"}  # a simple request
            response = client.post("/sdapi/v1/txt2img", content=b"{}", auth=("user", "secret-pw"), headers=cross_site)
            assert response.status_code == 403, response.text[:300]
            check_against_spec(spec, "POST", "/sdapi/v1/txt2img", response)
            for _ in range(20):
                response = client.post("/sdapi/v1/txt2img", json=BASE, auth=("user", "wrong"))
                if response.status_code == 429:
                    break
                assert response.status_code == 401
            assert response.status_code == 429, response.text[:300]
            check_against_spec(spec, "POST", "/sdapi/v1/txt2img", response)
    finally:
        services.worker.shutdown()
