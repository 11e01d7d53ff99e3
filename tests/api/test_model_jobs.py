"""Model switches are jobs on the worker: `POST /options` with a checkpoint switches on the worker
thread and answers only once the model is loaded (behind a running generation); unload/reload are
jobs too; generation info comes from the Result, not from whatever model is active afterwards;
every door goes through the one job interface."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modules.core.jobs import ExtrasRequest, SwitchModel
from modules.models.registry import CheckpointInfo
from modules.services import Services

V1 = "/sdapi/v1"

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture
def loads(api_services: Services) -> Iterator[list[dict[str, Any]]]:
    """Every checkpoint load: which thread did it, and when."""
    seen: list[dict[str, Any]] = []

    def record(info: CheckpointInfo) -> None:
        seen.append(
            {
                "name": info.name,
                "on_worker": api_services.worker.on_worker_thread(),
                "thread": threading.current_thread().name,
                "at": time.monotonic(),
            }
        )

    api_services.models.on_loaded.append(record)
    yield seen
    api_services.models.on_loaded.remove(record)
    api_services.engine.switch_model(checkpoint="sd1.safetensors")


def test_checkpoint_switch_from_options_runs_on_the_worker_and_answers_when_loaded(
    client: TestClient, api_services: Services, loads: list[dict[str, Any]]
) -> None:
    response = client.post(f"{V1}/options", json={"sd_model_checkpoint": "sd2"})
    assert response.status_code == 200, response.text
    # the load happened before the answer, on the worker thread, not on the HTTP thread
    assert [(entry["name"], entry["on_worker"]) for entry in loads] == [("sd2.safetensors", True)]
    assert loads[0]["thread"] == "generation worker"
    assert api_services.engine.model_status().checkpoint_name == "sd2.safetensors"
    assert client.get(f"{V1}/options").json()["sd_model_checkpoint"].startswith("sd2.safetensors")


def test_a_switch_waits_behind_a_running_generation(
    client: TestClient, api_services: Services, loads: list[dict[str, Any]]
) -> None:
    body = {"prompt": "a", "steps": 40, "width": 64, "height": 64, "sampler_name": "Euler"}
    generated: dict[str, Any] = {}

    def generate() -> None:
        generated["response"] = client.post(f"{V1}/txt2img", json=body)
        generated["at"] = time.monotonic()

    finished: list[float] = []
    remove = api_services.engine.hooks.after_batch.add(lambda _event: finished.append(time.monotonic()))
    runner = threading.Thread(target=generate)
    runner.start()
    deadline = time.monotonic() + 30
    while api_services.engine.current_job_id() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert api_services.engine.current_job_id() is not None
    response = client.post(f"{V1}/options", json={"sd_model_checkpoint": "sd2"})
    answered = time.monotonic()
    runner.join(60)
    remove()
    assert response.status_code == 200 and generated["response"].status_code == 200
    info = json.loads(generated["response"].json()["info"])
    assert info["sd_model_name"] == "sd1"  # the generation ran with the model it started with
    # the switch was asked while the generation ran, and loaded only after it had finished
    assert len(finished) == 1 and len(loads) == 1 and loads[0]["on_worker"]
    assert finished[0] <= loads[0]["at"] <= answered


def test_unknown_checkpoint_is_404_before_queueing_and_the_model_stays(
    client: TestClient, api_services: Services, loads: list[dict[str, Any]]
) -> None:
    response = client.post(f"{V1}/options", json={"sd_model_checkpoint": "nope"})
    assert response.status_code == 404, response.text
    assert loads == []
    assert api_services.engine.model_status().checkpoint_name == "sd1.safetensors"


def test_unload_and_reload_are_model_jobs(
    client: TestClient, api_services: Services, loads: list[dict[str, Any]]
) -> None:
    assert client.post(f"{V1}/unload-checkpoint").status_code == 200
    assert api_services.engine.model_status().checkpoint is None
    assert client.post(f"{V1}/reload-checkpoint").status_code == 200
    assert api_services.engine.model_status().checkpoint_name == "sd1.safetensors"
    assert [entry["on_worker"] for entry in loads] == [True]


def test_generation_info_names_the_model_the_job_ran_with(client: TestClient, api_services: Services) -> None:
    body = {"prompt": "a", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}
    handle = api_services.engine.submit(_t2i(body))
    result = handle.result(60)
    api_services.engine.switch_model(checkpoint="sd2.safetensors")
    try:
        from modules.core.generation_info import generation_info

        info = generation_info(_t2i(body), result)
        assert info["sd_model_name"] == "sd1" and info["sd_model_hash"] == result.model.shorthash
        assert api_services.engine.result(handle.id) is result  # results are kept by job id
    finally:
        api_services.engine.switch_model(checkpoint="sd1.safetensors")


def test_every_kind_of_work_is_a_job_with_an_id(api_services: Services) -> None:
    from PIL import Image

    engine = api_services.engine
    extras = engine.submit(ExtrasRequest(images=(Image.new("RGB", (16, 16)),), upscaler_1="Lanczos"))
    switch = engine.submit(SwitchModel(checkpoint="sd1.safetensors"))
    assert extras.kind == "extras" and switch.kind == "model-switch"
    assert extras.result(60)[0].image.size == (32, 32)
    assert switch.result(60).checkpoint is not None
    assert engine.queue_status(extras.id).completed and engine.queue_status(switch.id).completed


def _t2i(body: dict[str, Any]) -> Any:
    from modules.core.requests import Txt2ImgRequest

    return Txt2ImgRequest(**body)
